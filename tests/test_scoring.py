"""Exact match and token F1 follow the SQuAD evaluation script."""

from __future__ import annotations

import pytest

from runner.scoring import SCORERS, aggregate
from runner.scoring._normalize import normalize_answer
from runner.scoring.exact_match import exact_match
from runner.scoring.f1 import f1


def test_normalisation_drops_case_punctuation_articles_and_extra_spaces():
    assert normalize_answer("  The  Eiffel-Tower, in PARIS! ") == "eiffeltower in paris"
    assert normalize_answer("an apple a day") == "apple day"


def test_exact_match_takes_the_best_reference():
    assert exact_match("the Paris.", ["London", "paris"]) == 1.0
    assert exact_match("Paris, France", ["paris"]) == 0.0


def test_f1_matches_hand_computed_overlap():
    # prediction tokens [blue, house, on, hill], reference [big, blue, house]: 2 common
    # precision 2/4, recall 2/3 → F1 = 2·(1/2)(2/3)/(1/2+2/3) = 4/7
    assert f1("the blue house on the hill", ["a big blue house"]) == pytest.approx(4 / 7)
    assert f1("blue", ["red", "blue"]) == 1.0
    assert f1("", ["red"]) == 0.0
    assert f1("", [""]) == 1.0


def test_missing_references_score_none_and_are_left_out_of_the_mean():
    scorer = SCORERS.get("exact_match")
    assert scorer.score("x", []) is None
    assert aggregate(scorer, [1.0, None, 0.0]) == 0.5
    assert aggregate(scorer, [None]) is None


def test_every_scorer_declares_its_direction():
    for name, scorer in SCORERS.discover().items():
        assert isinstance(scorer.higher_is_better, bool), name
