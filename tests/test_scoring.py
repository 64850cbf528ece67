"""Scorers: hand-worked values, option and yes/no mapping, UnifiedQA's rules, missing scores."""

from __future__ import annotations

import pyarrow as pa
import pytest

from runner.data.example import DATASET_FORMATS
from runner.score import compute_metrics, score_rows
from runner.scoring import SCORERS, Scored, aggregate
from runner.scoring._normalize import normalize_answer
from runner.scoring.exact_match import exact_match
from runner.scoring.f1 import f1
from runner.scoring.jaccard import jaccard
from runner.scoring.option_accuracy import match_option, option_accuracy
from runner.scoring.rouge_l import rouge_l
from runner.scoring.unifiedqa import RULES, chosen_option, unifiedqa
from runner.scoring.yes_no_accuracy import yes_no_accuracy, yes_no_label

ANIMALS = ("tortoises", "dogs", "cats", "goats")


def test_normalisation_drops_case_punctuation_articles_and_extra_spaces():
    assert normalize_answer("  The  Eiffel-Tower, in PARIS! ") == "eiffeltower in paris"
    assert normalize_answer("an apple a day") == "apple day"
    # Punctuation goes first, so a hyphenated article is no longer a word of its own.
    assert normalize_answer("the-end of the theory") == "theend of theory"


def test_exact_match_takes_the_best_reference():
    assert exact_match("the Paris.", ["London", "paris"]) == 1.0
    assert exact_match("Paris, France", ["paris"]) == 0.0


def test_f1_matches_hand_computed_overlap():
    # prediction tokens [blue, house, on, hill], reference [big, blue, house]: 2 common
    # precision 2/4, recall 2/3 → F1 = 2·(1/2)(2/3)/(1/2+2/3) = 4/7
    assert f1("the blue house on the hill", ["a big blue house"]) == pytest.approx(4 / 7, abs=1e-12)
    assert f1("blue", ["red", "blue"]) == 1.0
    assert f1("", ["red"]) == 0.0
    assert f1("", [""]) == 1.0


def test_jaccard_gives_partial_credit_for_a_one_word_mismatch_in_a_longer_answer():
    # {big, red, house} vs {big, blue, house}: 2 shared of 4 distinct → 0.5, not 0.
    assert jaccard("the big red house", ["the big blue house"]) == 0.5
    # {lofen, his, sister} vs {his, sister, lofen, helped}: 3/4; best of two references.
    assert jaccard("Lofen, his sister", ["nobody", "his sister lofen helped"]) == 0.75
    assert jaccard("", [""]) == 1.0
    assert jaccard("", ["x"]) == 0.0
    assert jaccard("x", ["", "y"]) == 0.0


def test_rouge_l_matches_hand_computed_longest_common_subsequence():
    # pred [the, cat, sat, on, the, mat], ref [the, cat, on, the, mat]: LCS 5
    # P = 5/6, R = 5/5 → F = 2·(5/6)·1/(5/6+1) = 10/11
    assert rouge_l("The cat sat on the mat.", ["the cat on the mat"]) == pytest.approx(10 / 11, abs=1e-12)
    # Stemming: "flooded" and "flood" share the stem, so "river flooded" equals "river flood".
    assert rouge_l("river flooded", ["mine", "river flood"]) == 1.0
    assert rouge_l("", ["anything"]) == 0.0


def test_option_matching_prefers_exact_text_over_overlap():
    options = ("fish soup", "soup", "pears", "plums")
    assert match_option("soup", options) == 1  # exact beats the overlapping "fish soup"
    assert match_option("  Fish   SOUP ", options) == 0
    assert match_option("The pears.", options) == 2  # equal after normalisation


def test_option_matching_picks_the_highest_token_f1_on_partial_overlap():
    options = ("a basket of plums", "a basket of honey cakes", "nothing at all")
    # "honey cakes from the baker" → [honey, cakes, from, baker]; option b [basket, of, honey, cakes]
    # shares 2 of 4 each way (F1 0.5); option a shares none.
    assert match_option("honey cakes from the baker", options) == 1


def test_option_matching_breaks_ties_by_lowest_index():
    # "red or blue" overlaps "red paint" and "blue paint" equally (F1 2·(1/3)(1/2)/(5/6) = 0.4).
    assert match_option("red or blue", ("green paint", "red paint", "blue paint")) == 1
    # Two options spelled alike after normalisation: the first wins.
    assert match_option("dogs", ("the dogs", "dogs", "cats")) == 1  # the exact spelling first
    assert match_option("Dogs!", ("the dogs", "dogs", "cats")) == 0  # only normalised: lowest index


def test_option_matching_reads_a_bare_letter_as_that_option():
    assert match_option("b", ANIMALS) == 1
    assert match_option("(C)", ANIMALS) == 2
    assert match_option(" d. ", ANIMALS) == 3
    assert match_option("a", ANIMALS) == 0  # an article to SQuAD, but alone it is the letter a
    assert match_option("(e)", ANIMALS) is None  # no fifth option
    # An option whose text is a letter still wins by exact text before the letter rule.
    assert match_option("c", ("b", "c", "d")) == 1


def test_option_matching_without_overlap_or_options_matches_nothing():
    assert match_option("horses", ANIMALS) is None
    assert match_option("", ANIMALS) is None
    assert match_option("the", ("an", "cats")) is None  # empty after normalisation, like option a
    assert match_option("dogs", ()) is None


def test_option_accuracy_compares_mapped_options_and_is_none_without_options():
    item = Scored("I think it is the dogs", ("dogs",), options=ANIMALS, format="multiple_choice")
    assert option_accuracy(item) == 1.0
    assert option_accuracy(Scored("(c)", ("dogs",), options=ANIMALS)) == 0.0
    assert option_accuracy(Scored("horses", ("dogs",), options=ANIMALS)) == 0.0
    assert option_accuracy(Scored("dogs", ("dogs",))) is None
    assert option_accuracy(Scored("dogs", ("lions",), options=ANIMALS)) is None  # reference names no option


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("yes", "yes"),
        ("Yes, because the mine was empty.", "yes"),
        ("TRUE", "yes"),
        ("no", "no"),
        ("No.", "no"),
        ("false", "no"),
        ("No idea", "no"),  # the rule reads words, not meaning
        ("Not really", "unknown"),
        ("maybe yes", "unknown"),
        ("the answer is yes", "unknown"),
        ("", "unknown"),
    ],
)
def test_yes_no_label_reads_the_first_normalised_word(text, label):
    assert yes_no_label(text) == label


def test_yes_no_accuracy_scores_unknown_as_wrong_and_other_formats_as_none():
    assert yes_no_accuracy(Scored("Yes.", ("yes",), format="yes_no")) == 1.0
    assert yes_no_accuracy(Scored("no", ("yes",), format="yes_no")) == 0.0
    assert yes_no_accuracy(Scored("perhaps", ("no",), format="yes_no")) == 0.0
    assert yes_no_accuracy(Scored("yes", ("yes",), format="extractive")) is None
    assert yes_no_accuracy(Scored("yes", ("1905",), format="yes_no")) is None


def _uqa(dataset: str, prediction: str, references, options=()) -> float | None:
    return unifiedqa(Scored(prediction, tuple(references), tuple(options), dataset=dataset))


def test_every_known_dataset_has_a_unifiedqa_rule_and_every_rule_a_known_dataset():
    assert set(RULES) == set(DATASET_FORMATS)


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        ("yes", "yes", 1.0),
        ("No.", "no", 1.0),
        # [yes, it, is] vs [yes]: P 1/3, R 1 → F1 = 2·(1/3)/(4/3) = 0.5
        ("Yes, it is.", "yes", 0.5),
        # [no, it, is, not] vs [no]: P 1/4, R 1 → F1 = 2·(1/4)/(5/4) = 0.4
        ("no, it is not", "no", 0.4),
        ("true", "yes", 0.0),  # token F1 against "yes": true/false are not read as yes/no
        ("no", "yes", 0.0),
        ("", "yes", 0.0),
    ],
)
def test_unifiedqa_scores_yes_no_datasets_by_token_f1_against_yes_or_no(prediction, reference, expected):
    for dataset in ("boolq", "boolq_np", "multirc", "synthetic_yes_no"):
        assert _uqa(dataset, prediction, [reference]) == pytest.approx(expected, abs=1e-12), dataset
    # The clean scorer reads the first word instead: "Yes, it is." and "true" are right there.
    assert yes_no_accuracy(Scored("true", ("yes",), format="yes_no")) == 1.0


PAINTS = ("red paint", "blue paint", "green paint")


def test_unifiedqa_multiple_choice_picks_the_option_of_highest_string_similarity():
    # "the blue one" vs "blue paint": 1 shared word / max(3, 2) words = 1/3; the others share none.
    assert chosen_option("the blue one", PAINTS) == 1
    assert _uqa("arc_easy", "the blue one", ["blue paint"], PAINTS) == 1.0
    # Lowercased prediction equal to an option scores 3 and wins.
    assert _uqa("race_string", "Dogs", ["dogs"], ANIMALS) == 1.0
    # Equal text (3) beats equal once quotes are dropped (2).
    assert chosen_option("its red", ("it's red", "its red")) == 1
    assert chosen_option("it's red", ("its red", "it's red")) == 1


def test_unifiedqa_multiple_choice_tie_goes_to_option_a():
    # "paint" shares 1 word with each option: 1 / max(1, 2) = 0.5 three times → the first, A.
    assert chosen_option("paint", PAINTS) == 0
    assert _uqa("openbookqa", "paint", ["red paint"], PAINTS) == 1.0
    assert _uqa("openbookqa", "paint", ["blue paint"], PAINTS) == 0.0


def test_unifiedqa_multiple_choice_with_no_overlap_falls_back_to_option_a():
    # Single different words score 0 against every option: argmax of all zeros is option A.
    assert chosen_option("horses", ANIMALS) == 0
    assert _uqa("commonsenseqa", "horses", ["tortoises"], ANIMALS) == 1.0
    assert _uqa("commonsenseqa", "horses", ["dogs"], ANIMALS) == 0.0
    assert _uqa("mctest_corrected_the_separator", "", ["tortoises"], ANIMALS) == 1.0
    # The clean scorer counts no overlap as wrong.
    assert option_accuracy(Scored("horses", ("tortoises",), options=ANIMALS)) == 0.0


def test_unifiedqa_multiple_choice_splits_options_at_every_marker_as_unifiedqa_does():
    options = ("vitamin (c) tablets", "iron", "zinc")
    # "(a) vitamin (c) tablets (b) iron (c) zinc" splits into vitamin | tablets | iron | zinc, so
    # "iron" is the third candidate, letter C, while the gold letter is B.
    assert chosen_option("iron", options) == 2
    assert _uqa("arc_hard", "iron", ["iron"], options) == 0.0
    # QASC's options run to (h); elsewhere "(f)" stays inside option e's text.
    eight = tuple(f"option {w}" for w in "abcdefgh")
    assert _uqa("qasc", "option h", ["option h"], eight) == 1.0
    assert _uqa("commonsenseqa", "option h", ["option h"], eight) == 0.0


def test_unifiedqa_multiple_choice_without_options_or_gold_option_is_none():
    assert _uqa("arc_easy", "dogs", ["dogs"]) is None
    assert _uqa("arc_easy", "dogs", ["lions"], ANIMALS) is None


def test_unifiedqa_rouge_l_raises_precision_and_recall_to_the_power_1_over_1_2():
    # [river, flood] vs [river, rose] (stemmed): LCS 1, P = R = 1/2 → 0.5^(1/1.2) = 0.5612 → 0.56
    assert _uqa("narrativeqa", "river flooded", ["river rose"]) == 0.56
    assert rouge_l("river flooded", ["river rose"]) == 0.5  # the clean scorer: plain F1


def test_unifiedqa_rouge_l_rounds_to_two_decimals_and_takes_the_best_reference():
    # pred [the, cat, sat, on, the, mat], ref [the, cat, on, the, mat]: LCS 5
    # P = (5/6)^(1/1.2) = 0.85904, R = 1 → F = 2·0.85904/1.85904 = 0.92418 → 0.92
    assert _uqa("narrativeqa", "The cat sat on the mat.", ["nothing alike", "the cat on the mat"]) == 0.92
    assert _uqa("synthetic_abstractive", "The cat sat on the mat.", ["the cat on the mat"]) == 0.92


def test_unifiedqa_rouge_l_reads_only_the_first_100_words():
    # "paris" as word 100: LCS 1, P = (1/100)^(1/1.2) = 0.021544, R = 1 → F = 0.04218 → 0.04
    assert _uqa("narrativeqa", "filler " * 99 + "paris", ["paris"]) == 0.04
    # As word 101 it is cut off: nothing in common.
    assert _uqa("narrativeqa", "filler " * 100 + "paris", ["paris"]) == 0.0


def test_unifiedqa_squad_takes_the_best_of_every_gold_answer():
    golds = ["Broncos", "Denver Broncos", "the Broncos"]
    assert _uqa("squad1_1", "Denver Broncos", golds) == 1.0
    # [broncos, won] vs [broncos]: P 1/2, R 1 → 2/3; vs [denver, broncos]: 1/2 → best 2/3
    assert _uqa("squad1_1", "the Broncos won", golds) == pytest.approx(2 / 3, abs=1e-12)
    assert _uqa("newsqa", "in 1905", ["1905"]) == pytest.approx(2 / 3, abs=1e-12)
    # SQuAD v1.1: an empty answer scores 0 even against an empty reference (clean f1: 1).
    assert _uqa("squad1_1", "", [""]) == 0.0
    # A newline is deleted, not read as a space: "new\nyork" becomes "newyork".
    assert _uqa("squad1_1", "new\nyork", ["new york"]) == 0.0
    assert f1("new\nyork", ["new york"]) == 1.0


@pytest.mark.parametrize(
    ("prediction", "references", "expected"),
    [
        ("", ["<No Answer>"], 1.0),
        ("No answer.", ["<No Answer>"], 1.0),
        ("there is no answer", ["<No Answer>"], 1.0),
        ("paris", ["<No Answer>"], 0.0),
        ("<no answer>", ["paris"], 0.0),
        # A substring test on the raw lowercased text: two spaces are not "no answer".
        ("no  answer", ["<No Answer>"], 0.0),
        ("paris", ["Paris", "the city of Paris"], 1.0),
    ],
)
def test_unifiedqa_squad2_reads_no_answer_as_the_empty_answer(prediction, references, expected):
    assert _uqa("squad2", prediction, references) == expected


def test_unifiedqa_drop_f1_needs_matching_numbers_and_divides_by_the_gold_count():
    # bags {1000.0, men} vs {1000.0}: P 1/2, R 1 → 2/3 → 0.67 (rounded to 2 decimals)
    assert _uqa("drop", "1,000 men", ["1000"]) == 0.67
    # A gold number must appear in the prediction: {12.0, men} vs {13.0, men} scores 0.
    assert _uqa("quoref", "12 men", ["13 men"]) == 0.0
    assert f1("12 men", ["13 men"]) == 0.5
    # A perfect match with one of two gold answers: 1 / 2.
    assert _uqa("ropes", "x", ["x", "y"]) == 0.5
    # Quoref's "///" spans are gold answers too: {red, and, blue} vs {red}: F1 0.5, / 2 = 0.25.
    assert _uqa("quoref", "red and blue", ["red///blue"]) == 0.25


def test_unifiedqa_natqa_is_exact_match_with_the_first_reference_only():
    assert _uqa("natural_questions_with_dpr_para", "The Obama.", ["obama", "barack obama"]) == 1.0
    assert _uqa("natural_questions_with_dpr_para", "Obama", ["Barack Obama", "Obama"]) == 0.0
    assert exact_match("Obama", ["Barack Obama", "Obama"]) == 1.0


def test_unifiedqa_is_none_outside_unifiedqa_and_synthetic_datasets():
    assert _uqa("trivia", "x", ["x"]) is None
    assert _uqa("", "x", ["x"]) is None
    assert _uqa("squad1_1", "x", []) is None
    # A synthetic set takes the rule of its format's UnifiedQA dataset.
    assert _uqa("synthetic_multiple_choice", "horses", ["tortoises"], ANIMALS) == 1.0
    assert _uqa("synthetic_extractive", "in 1905", ["1905"]) == pytest.approx(2 / 3, abs=1e-12)


def test_missing_references_score_none_and_are_left_out_of_the_mean():
    scorer = SCORERS.get("exact_match")
    assert scorer.score(Scored("x", ())) is None
    assert aggregate(scorer, [1.0, None, 0.0]) == 0.5
    assert aggregate(scorer, [None]) is None


def test_every_scorer_declares_its_direction_and_aggregation():
    scorers = SCORERS.discover()
    assert set(scorers) >= {"exact_match", "f1", "jaccard", "rouge_l", "option_accuracy", "yes_no_accuracy", "unifiedqa"}
    for name, scorer in scorers.items():
        assert isinstance(scorer.higher_is_better, bool), name
        assert scorer.aggregation == "mean", name


def _rows() -> list[dict]:
    return [
        {"id": "y/0", "dataset": "synthetic_yes_no", "format": "yes_no", "prediction": "yes", "references": ["yes"], "options": []},
        {"id": "y/1", "dataset": "synthetic_yes_no", "format": "yes_no", "prediction": "not sure", "references": ["no"], "options": []},
        {"id": "m/0", "dataset": "synthetic_multiple_choice", "format": "multiple_choice", "prediction": "dogs",
         "references": ["dogs"], "options": list(ANIMALS)},
        {"id": "e/0", "dataset": "synthetic_extractive", "format": "extractive", "prediction": "in 1905",
         "references": ["1905"], "options": []},
    ]  # fmt: skip


def test_score_rows_takes_plain_dict_rows_and_leaves_inapplicable_metrics_none():
    scores = score_rows(_rows(), ["exact_match", "yes_no_accuracy", "option_accuracy", "unifiedqa"])
    assert [s["yes_no_accuracy"] for s in scores] == [1.0, 0.0, None, None]
    assert [s["option_accuracy"] for s in scores] == [None, None, 1.0, None]
    assert [s["exact_match"] for s in scores] == [1.0, 0.0, 1.0, 0.0]
    assert scores[3]["unifiedqa"] == pytest.approx(2 / 3, abs=1e-12)
    # A row with only prediction and references still scores the text metrics.
    assert score_rows([{"prediction": "a", "references": ["a"]}], ["f1", "unifiedqa"]) == [{"f1": 1.0, "unifiedqa": None}]


def test_compute_metrics_averages_each_metric_over_the_examples_it_applies_to():
    metrics = list(SCORERS.discover())
    timing = {"batch": "b0", "batch_seconds": 1.0, "output_tokens": 2, "prompt_tokens": 10}
    result = compute_metrics(pa.Table.from_pylist([{**row, **timing} for row in _rows()]), metrics)
    overall = result["overall"]
    assert overall["n"] == 4
    assert overall["yes_no_accuracy"] == 0.5  # two yes/no examples: 1 and 0
    assert overall["option_accuracy"] == 1.0  # one multiple-choice example
    assert overall["unifiedqa"] == pytest.approx((1 + 0 + 1 + 2 / 3) / 4, abs=1e-12)
    assert result["by_format"]["extractive"]["option_accuracy"] is None
    assert result["by_dataset"]["synthetic_yes_no"]["n"] == 2


def test_manifest_accepts_every_registered_scorer_and_rejects_unknown_names():
    from pydantic import ValidationError

    from runner.manifest import EvalSpec

    assert EvalSpec(metrics=tuple(SCORERS.discover())).metrics == tuple(SCORERS.discover())
    with pytest.raises(ValidationError, match="unknown metric"):
        EvalSpec(metrics=("rouge_l", "bleu"))
