"""Our scorers against independent re-implementations on thousands of seeded random answers.

The reference functions below copy the logic of the official SQuAD v1.1 evaluation script
(normalize_answer, exact_match_score, f1_score, metric_max_over_ground_truths) and SQuAD v2.0's
compute_f1, written here without importing anything from runner.scoring.
"""

from __future__ import annotations

import random
import re
import string
from collections import Counter

import pytest

from runner.scoring.exact_match import exact_match
from runner.scoring.f1 import f1
from runner.scoring.jaccard import jaccard
from runner.scoring.rouge_l import rouge_l

N_PAIRS = 5000


def official_normalize_answer(s):
    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    def lower(text):
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


def official_exact_match_score(prediction, ground_truth):
    return official_normalize_answer(prediction) == official_normalize_answer(ground_truth)


def official_f1_score(prediction, ground_truth):
    prediction_tokens = official_normalize_answer(prediction).split()
    ground_truth_tokens = official_normalize_answer(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    return (2 * precision * recall) / (precision + recall)


def official_v2_compute_f1(a_gold, a_pred):
    gold_toks = official_normalize_answer(a_gold).split() if a_gold else []
    pred_toks = official_normalize_answer(a_pred).split() if a_pred else []
    common = Counter(gold_toks) & Counter(pred_toks)
    num_same = sum(common.values())
    if len(gold_toks) == 0 or len(pred_toks) == 0:
        return int(gold_toks == pred_toks)
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(pred_toks)
    recall = 1.0 * num_same / len(gold_toks)
    return (2 * precision * recall) / (precision + recall)


def metric_max_over_ground_truths(metric_fn, prediction, ground_truths):
    return max(metric_fn(prediction, ground_truth) for ground_truth in ground_truths)


def set_jaccard(prediction, reference):
    a = set(official_normalize_answer(prediction).split())
    b = set(official_normalize_answer(reference).split())
    return 1.0 if not a | b else len(a & b) / len(a | b)


# Words chosen to stress normalisation: articles in every case, article look-alikes
# ("theory", "another", "ant"), stems that ROUGE's stemmer merges, digits, non-ASCII letters.
_WORDS = [
    "a", "an", "the", "A", "An", "THE", "The", "theory", "another", "ant", "thee",
    "river", "rivers", "flooded", "flooding", "flood", "mine", "silver", "miller", "millers",
    "cat", "cats", "dog", "house", "blue", "red", "big", "1905", "42", "3.5",
    "café", "naïve", "Ärger", "straße", "no", "answer", "yes",
]  # fmt: skip
_PUNCTUATION = list(string.punctuation) + ["...", "'s", "--", "«", "»", "’"]
_SPACES = [" ", " ", " ", "  ", "\t", "\n", " \u00a0 "]


def _random_answer(rng: random.Random, shared: list[str]) -> str:
    """An answer of 0-8 words, some from `shared`, with random case, punctuation and spacing."""
    if rng.random() < 0.08:
        return rng.choice(["", " ", "\t", ".", "the", "a, an"])
    parts = []
    for _ in range(rng.randint(1, 8)):
        word = rng.choice(shared) if shared and rng.random() < 0.4 else rng.choice(_WORDS)
        case = rng.random()
        word = word.upper() if case < 0.1 else word.capitalize() if case < 0.25 else word
        if rng.random() < 0.2:
            word = rng.choice([word + rng.choice(_PUNCTUATION), rng.choice(_PUNCTUATION) + word])
        parts.append(word)
        parts.append(rng.choice(_SPACES))
    lead = rng.choice(["", "", " ", "\n"])
    return lead + "".join(parts[:-1] if rng.random() < 0.7 else parts)


def _random_pairs(seed: int) -> list[tuple[str, list[str]]]:
    rng = random.Random(seed)
    pairs = []
    for _ in range(N_PAIRS):
        prediction = _random_answer(rng, [])
        shared = prediction.split()
        references = [_random_answer(rng, shared) for _ in range(rng.randint(1, 3))]
        pairs.append((prediction, references))
    return pairs


@pytest.fixture(scope="module")
def pairs() -> list[tuple[str, list[str]]]:
    return _random_pairs(seed=20240605)


def test_random_pairs_cover_the_hard_cases(pairs):
    """Guard the generator: it must produce the cases the comparisons below are meant to probe."""
    normalised = [official_normalize_answer(p) for p, _ in pairs]
    assert sum(not n for n in normalised) > 100, "predictions that normalise to nothing"
    assert sum(exact_match(p, r) == 1.0 for p, r in pairs) > 50, "exact matches"
    assert sum(0 < f1(p, r) < 1 for p, r in pairs) > 1000, "partial overlaps"


def test_normalisation_equals_the_official_squad_script(pairs):
    from runner.scoring._normalize import normalize_answer

    for prediction, references in pairs:
        for text in [prediction, *references]:
            assert normalize_answer(text) == official_normalize_answer(text), repr(text)


def test_exact_match_equals_the_official_squad_script(pairs):
    for prediction, references in pairs:
        official = metric_max_over_ground_truths(official_exact_match_score, prediction, references)
        assert exact_match(prediction, references) == float(official), (prediction, references)


def test_f1_equals_official_squad_v2_and_v1_whenever_the_prediction_has_a_token(pairs):
    for prediction, references in pairs:
        ours = f1(prediction, references)
        v2 = max(official_v2_compute_f1(ref, prediction) for ref in references)
        assert ours == pytest.approx(v2, abs=1e-9), (prediction, references)
        if official_normalize_answer(prediction):
            # v1.1 differs only for an empty prediction against an empty reference (0 vs 1).
            v1 = metric_max_over_ground_truths(official_f1_score, prediction, references)
            assert ours == pytest.approx(v1, abs=1e-9), (prediction, references)


def test_jaccard_equals_the_set_formula(pairs):
    for prediction, references in pairs:
        expected = max(set_jaccard(prediction, ref) for ref in references)
        assert jaccard(prediction, references) == pytest.approx(expected, abs=1e-9), (prediction, references)


def test_rouge_l_equals_rouge_score_with_stemming_max_over_references(pairs):
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    for prediction, references in pairs:
        expected = max(scorer.score(ref, prediction)["rougeL"].fmeasure for ref in references)
        assert rouge_l(prediction, references) == pytest.approx(expected, abs=1e-9), (prediction, references)
