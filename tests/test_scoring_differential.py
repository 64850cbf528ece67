"""Our scorers against independent re-implementations on seeded random answers.

The reference functions below copy the logic of the official SQuAD v1.1 evaluation script
(normalize_answer, exact_match_score, f1_score, metric_max_over_ground_truths) and SQuAD v2.0's
compute_f1, and (in the marked REFERENCE block) UnifiedQA's own evaluation code for the
`unifiedqa` scorer, written here without importing anything from runner.scoring.
"""

from __future__ import annotations

import random
import re
import string
from collections import Counter

import numpy as np
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


# =====================================================================================
# REFERENCE: UnifiedQA's evaluation code (allenai/unifiedqa, evaluation/), transcribed.
# Copied function by function from evaluate_v2.py, evaluate_narrativeqa.py,
# evaluate_drop_quoref_ropes.py and evaluate_natural_questions_ambigqa.py; only file reading
# is replaced by arguments. Nothing here imports runner.scoring.unifiedqa.
# =====================================================================================


def uqa_score_string_similarity(str1, str2):
    if str1 == str2:
        return 3.0  # Better than perfect token match
    str1 = uqa_fix_buggy_characters(uqa_replace_punctuation(str1))
    str2 = uqa_fix_buggy_characters(uqa_replace_punctuation(str2))
    if str1 == str2:
        return 2.0
    if " " in str1 or " " in str2:
        str1_split = str1.split(" ")
        str2_split = str2.split(" ")
        overlap = list(set(str1_split) & set(str2_split))
        return len(overlap) / max(len(str1_split), len(str2_split))
    else:
        if str1 == str2:
            return 1.0
        else:
            return 0.0


def uqa_replace_punctuation(str):
    return str.replace("\"", "").replace("'", "")


def uqa_fix_buggy_characters(str):
    return re.sub("[{}^\\\\`\u2047<]", " ", str)


# evaluate_v2.py's f1_score is the SQuAD v1.1 script's, line for line (transcribed above).
uqa_f1_score = official_f1_score


def uqa_metric_max_over_ground_truths(metric_fn, prediction, ground_truths):
    scores_for_ground_truths = []
    for ground_truth in ground_truths:
        score = metric_fn(prediction.lower(), ground_truth.lower())
        scores_for_ground_truths.append(score)
    return max(scores_for_ground_truths)


def uqa_evaluate_generic_one(golds_i, pred_line, variant_type):
    """evaluate_v2.evaluate_generic's loop body for one example (golds_i: its list of golds)."""
    prediction = pred_line.replace("\n", "").strip()
    if variant_type == "generic-f1":
        return uqa_metric_max_over_ground_truths(uqa_f1_score, prediction, golds_i)
    elif variant_type == "squad2-f1":
        no_ans = "no answer"
        for g in golds_i:
            if no_ans in g.lower():
                golds_i = [""]
                break
        if no_ans in prediction.lower():
            prediction = ""
        return uqa_metric_max_over_ground_truths(official_v2_compute_f1, prediction, golds_i)
    elif variant_type == "allennlp-f1":
        return uqa_f1_metrics(prediction, tuple(golds_i))[1]
    raise AssertionError(variant_type)


def uqa_multiple_choice_one(prediction, input, gold, regex):
    """evaluate_v2.evaluate_multple_choice_predictions's loop body: 1 if right, else 0."""
    prediction = prediction.replace("\n", "").strip().lower()
    input_split = input.split("\\n")
    candidates_string = input_split[1].strip().lower()
    candidates_split = regex.split(candidates_string)
    candidates_split = [x.strip() for x in candidates_split if len(x.strip()) > 0]
    scores = [uqa_score_string_similarity(x, prediction) for x in candidates_split]
    max_idx = np.argmax(scores)
    selected_ans = chr(ord('A') + max_idx)
    return 1 if selected_ans == gold else 0


def uqa_eval_type(target_dataset):
    """evaluate_v2.evaluate_for_size's if-chain from dataset name to evaluation type."""
    if "squad1_1" in target_dataset:
        return "generic-f1"
    elif "record_extractive" in target_dataset:
        return "generic-f1"
    elif "narrativeqa" in target_dataset:
        return "rouge-l"
    elif "tweetqa" in target_dataset:
        return "tweetqa-textgen"
    elif "squad2" in target_dataset:
        return "squad2-f1"
    elif len([x for x in ["quoref", "drop", "ropes"] if x in target_dataset]) > 0:
        return "allennlp-f1"
    elif "adversarialqa_" in target_dataset:
        return "generic-f1"
    elif "qaconv" in target_dataset:
        return "qaconv-f1"
    elif len([x for x in ["boolq", "csqa2", "squad", "multirc", "newsqa", "strategyqa", "pubmedqa_pqal_short_ans"] if x in target_dataset]) > 0:
        return "generic-f1"
    elif len([x for x in ["race_string", "race_c", "openbookqa", "aqua_rat", "quail",
                          "mcscript", "mcscript2", "measuring_massive_multitask_language_understanding",
                          "record_multiple_choice", "qasc", "qasc_with_ir", "mctest_corrected_the_separator",
                          "arc_hard_dev", "arc_hard_with_ir_dev", "arc_easy_with_ir_dev", "arc_easy_dev",
                          "openbookqa_dev", "openbookqa_with_ir_dev", "commonsenseqa", "dream",
                          "prost_multiple_choice_with_no_context", "prost_multiple_choice_with_context",
                          "head_qa_en_dev", "reclor", "cosmosqa",
                          "onestopqa_advanced", "onestopqa_elementry", "onestopqa_intermediate",
                          "processbank_test", "winogrande_xl", "social_iqa", "social_iqa_test",
                          "physical_iqa", "physical_iqa_test"] if x in target_dataset]) > 0:
        return "multiple-choice"
    return None  # raise Exception("unknown dataset . . . ")


def uqa_mc_regex(target_dataset):
    meta_file = f"t2t-data/{target_dataset}/dev_meta.tsv"
    if "/qasc/" in meta_file:
        return re.compile("\\([a-h]\\)")
    else:
        return re.compile("\\([a-e]\\)")


# evaluate_drop_quoref_ropes.py


def _uqa_answer_to_bags(answer):
    if isinstance(answer, (list, tuple)):
        raw_spans = answer
    else:
        raw_spans = [answer]
    normalized_spans = []
    token_bags = []
    for raw_span in raw_spans:
        normalized_span = _uqa_normalize_answer(raw_span)
        normalized_spans.append(normalized_span)
        token_bags.append(set(normalized_span.split()))
    return normalized_spans, token_bags


EXCLUDE = set(string.punctuation)


def _uqa_remove_punc(text):
    if not _uqa_is_number(text):
        return "".join(ch for ch in text if ch not in EXCLUDE)
    else:
        return text


def _uqa_normalize_answer(text):
    parts = [
        " ".join(re.sub(re.compile(r"\b(a|an|the)\b", re.UNICODE), " ", _uqa_normalize_number(_uqa_remove_punc(token.lower()))).split())
        for token in re.split(" |-", text)
    ]
    parts = [part for part in parts if part.strip()]
    normalized = " ".join(parts).strip()
    return normalized


def _uqa_is_number(text):
    try:
        float(text)
        return True
    except ValueError:
        return False


def _uqa_normalize_number(text):
    if _uqa_is_number(text):
        return str(float(text))
    else:
        return text


def _uqa_match_numbers_if_present(gold_bag, predicted_bag):
    gold_numbers = set()
    predicted_numbers = set()
    for word in gold_bag:
        if _uqa_is_number(word):
            gold_numbers.add(word)
    for word in predicted_bag:
        if _uqa_is_number(word):
            predicted_numbers.add(word)
    if (not gold_numbers) or gold_numbers.intersection(predicted_numbers):
        return True
    return False


def _uqa_compute_f1(predicted_bag, gold_bag):
    intersection = len(gold_bag.intersection(predicted_bag))
    if not predicted_bag:
        precision = 1.0
    else:
        precision = intersection / float(len(predicted_bag))
    if not gold_bag:
        recall = 1.0
    else:
        recall = intersection / float(len(gold_bag))
    f1 = (
        (2 * precision * recall) / (precision + recall)
        if not (precision == 0.0 and recall == 0.0)
        else 0.0
    )
    return f1


def _uqa_align_bags(predicted, gold):
    from scipy.optimize import linear_sum_assignment

    scores = np.zeros([len(gold), len(predicted)])
    for gold_index, gold_item in enumerate(gold):
        for pred_index, pred_item in enumerate(predicted):
            if _uqa_match_numbers_if_present(gold_item, pred_item):
                scores[gold_index, pred_index] = _uqa_compute_f1(pred_item, gold_item)
    row_ind, col_ind = linear_sum_assignment(-scores)

    max_scores = np.zeros([max(len(gold), len(predicted))])
    for row, column in zip(row_ind, col_ind):
        max_scores[row] = max(max_scores[row], scores[row, column])
    return max_scores


def uqa_f1_metrics(predicted, gold):
    predicted_bags = _uqa_answer_to_bags(predicted)
    gold_bags = _uqa_answer_to_bags(gold)

    if set(predicted_bags[0]) == set(gold_bags[0]) and len(predicted_bags[0]) == len(gold_bags[0]):
        exact_match = 1.0
    else:
        exact_match = 0.0

    f1_per_bag = _uqa_align_bags(predicted_bags[1], gold_bags[1])
    f1 = np.mean(f1_per_bag)
    f1 = round(f1, 2)
    return exact_match, f1


# evaluate_narrativeqa.py, with the real py-rouge (see the py_rouge fixture)


def uqa_narrativeqa_one(rouge_l_evaluator, prediction_line, gold_lines):
    """eval_dir's loop body: metric_max_over_ground_truths(rouge_l, ...)['rouge-l']['f']."""
    prediction = prediction_line.replace("\n", "").strip()
    golds_subset = [g.replace("\n", "").strip() for g in gold_lines]
    scores_for_ground_truths = [rouge_l_evaluator.get_scores(prediction, [g]) for g in golds_subset]
    return round(max([score["rouge-l"]["f"] for score in scores_for_ground_truths]), 2)


# evaluate_natural_questions_ambigqa.py: the first target line of each question, exact match.


def uqa_natqa_one(prediction_line, gold_lines):
    prediction = prediction_line.replace("\n", "").strip()
    first_gold = gold_lines[0].replace("\n", "").strip()
    return official_normalize_answer(prediction) == official_normalize_answer(first_gold)


# ===================================== end of REFERENCE =====================================


@pytest.fixture(scope="module")
def py_rouge():
    """evaluate_narrativeqa.py's rouge_l_evaluator: the real py-rouge, with two offline shims.

    py-rouge imports pkg_resources (gone from setuptools ≥ 81) only to find its WordNet files, and
    nltk.word_tokenize loads the punkt sentence model, which is not on PyPI. The shims give it
    the file path, and the treebank tokenizer without the punkt pass (preserve_line=True): the
    text reaching it is [a-z0-9_ ] only, which punkt never splits, so the tokens are the same.
    """
    import importlib
    import importlib.util
    import sys
    import types
    from importlib.metadata import distribution

    import nltk

    with pytest.MonkeyPatch.context() as patch:
        if importlib.util.find_spec("pkg_resources") is None:
            folder = distribution("py-rouge").locate_file("rouge")
            shim = types.ModuleType("pkg_resources")
            shim.resource_filename = lambda package, name: str(folder / name)
            patch.setitem(sys.modules, "pkg_resources", shim)
        rouge = importlib.import_module("rouge.rouge")

    class OfflineRouge(rouge.Rouge):
        @staticmethod
        def tokenize_text(text, language="english"):
            return nltk.word_tokenize(text, language, preserve_line=True)

    return OfflineRouge(
        metrics=["rouge-l"], max_n=4, limit_length=True, length_limit=100, length_limit_type="words",
        apply_avg=True, apply_best=True, alpha=0.5, weight_factor=1.2, stemming=True,
    )  # fmt: skip


N_UQA = 600  # examples per rule; the py-rouge reference is slow (dict-based LCS)


def _uqa_item(dataset, prediction, references, options=()):
    from runner.scoring import Scored

    return Scored(prediction, tuple(references), tuple(options), dataset=dataset)


def test_unifiedqa_rules_follow_evaluate_v2_dispatch():
    from runner.scoring import unifiedqa as u

    by_type = {"generic-f1": {u.SQUAD_F1, u.YES_NO_F1}, "squad2-f1": {u.SQUAD2_F1}, "allennlp-f1": {u.DROP_F1},
               "rouge-l": {u.ROUGE_L}, "multiple-choice": {u.CHOICE, u.QASC_CHOICE}}  # fmt: skip
    # Scored by their own scripts, which evaluate_v2.py's chain does not name.
    own_script = {"arc_easy": u.CHOICE, "arc_hard": u.CHOICE, "ai2_science_elementary": u.CHOICE,
                  "ai2_science_middle": u.CHOICE, "natural_questions_with_dpr_para": u.FIRST_ANSWER_EM}  # fmt: skip
    for dataset, rule in u.RULES.items():
        if dataset.startswith("synthetic_"):
            continue
        if dataset in own_script:
            assert uqa_eval_type(dataset) is None and rule is own_script[dataset], dataset
            continue
        assert rule in by_type[uqa_eval_type(dataset)], dataset
        if rule in (u.CHOICE, u.QASC_CHOICE):
            assert (rule is u.QASC_CHOICE) == (uqa_mc_regex(dataset).pattern == "\\([a-h]\\)"), dataset


def test_unifiedqa_yes_no_and_squad_equal_evaluate_v2_generic_f1(pairs):
    from runner.scoring.unifiedqa import unifiedqa

    rng = random.Random(7)
    yes_no = [(rng.choice(["yes", "Yes, it is.", "no", "No.", "true", "no, it is not", "", "yes\nno", "YES YES"]),
               [rng.choice(["yes", "no"])]) for _ in range(N_UQA)]  # fmt: skip
    for prediction, references in yes_no + pairs[:N_UQA]:
        expected = uqa_evaluate_generic_one([r.replace("\n", "").strip() for r in references], prediction, "generic-f1")
        for dataset in ("boolq", "squad1_1"):
            got = unifiedqa(_uqa_item(dataset, prediction, references))
            assert got == pytest.approx(expected, abs=1e-12), (dataset, prediction, references)


def test_unifiedqa_squad2_equals_evaluate_v2_squad2_f1(pairs):
    from runner.scoring.unifiedqa import unifiedqa

    rng = random.Random(8)
    no_answers = ["<No Answer>", "no answer", "No Answer.", "no  answer", "No\nanswer", "there is no answer"]
    for prediction, references in pairs[:N_UQA]:
        if rng.random() < 0.4:
            prediction = rng.choice(no_answers)
        if rng.random() < 0.4:
            references = [*references, rng.choice(no_answers)]
        expected = uqa_evaluate_generic_one(list(references), prediction, "squad2-f1")
        got = unifiedqa(_uqa_item("squad2", prediction, references))
        assert got == pytest.approx(expected, abs=1e-12), (prediction, references)


_OPTION_WORDS = ["red", "blue", "Red", "paint", "it's", "its", '"quoted"', "(c)", "(f)", "a<b", "x{y}", "", " ", "cat", "cats"]


def _random_option(rng):
    return " ".join(rng.choice(_OPTION_WORDS) for _ in range(rng.randint(1, 3))).strip() or "blank"


def test_unifiedqa_multiple_choice_equals_evaluate_v2_choice_scoring():
    from runner.scoring.unifiedqa import unifiedqa

    rng = random.Random(9)
    for _ in range(N_UQA):
        dataset = rng.choice(["arc_easy", "race_string", "qasc", "commonsenseqa"])
        # Distinct texts: the gold letter of two equal options cannot be told from the reference.
        options = list(dict.fromkeys(_random_option(rng) for _ in range(rng.choice([2, 4, 5, 8]))))
        gold = rng.randrange(len(options))
        prediction = rng.choice([options[gold], options[gold].upper(), rng.choice(options), _random_option(rng), "", "zebra"])
        # encode_datasets.py's layout: question \n (A) x (B) y ... \n context
        candidates = " ".join(f"({chr(ord('A') + i)}) {text}" for i, text in enumerate(options))
        source = f"which one? \\n {candidates} \\n some context"
        got = unifiedqa(_uqa_item(dataset, prediction, [options[gold]], options))
        expected = uqa_multiple_choice_one(prediction, source, chr(ord("A") + gold), uqa_mc_regex(dataset))
        assert got == expected, (dataset, prediction, options, gold)


def test_unifiedqa_drop_f1_equals_evaluate_drop_quoref_ropes_f1_metrics(pairs):
    from runner.scoring.unifiedqa import unifiedqa

    rng = random.Random(10)
    numbers = ["1,000", "1000", "2", "2.0", "two", "3-4", "1e3", "nan", "-5", "$7"]
    for prediction, references in pairs[:N_UQA]:
        if rng.random() < 0.5:
            prediction = f"{prediction} {rng.choice(numbers)}"
        if rng.random() < 0.5:
            references = [f"{r} {rng.choice(numbers)}" for r in references]
        if len(references) == 1 and rng.random() < 0.5:
            # A Quoref-style multi-span target: evaluate_v2.py splits it at "///".
            references = ["///".join([references[0], rng.choice(numbers)])]
            golds = references[0].replace("\n", "").strip().split("///")
        else:
            # Several targets of one input, as evaluate_drop_quoref_ropes.eval_dir groups them.
            golds = [r.replace("\n", "").strip() for r in references]
        expected = uqa_evaluate_generic_one(golds, prediction, "allennlp-f1")
        got = unifiedqa(_uqa_item(rng.choice(["drop", "quoref", "ropes"]), prediction, references))
        assert got == expected, (prediction, references)


def test_unifiedqa_narrativeqa_equals_evaluate_narrativeqa_with_py_rouge(pairs, py_rouge):
    from runner.scoring.unifiedqa import unifiedqa

    rng = random.Random(11)
    extra = ["cannot", "can not", "gonna", "wanna", "flooded", "rivers", "agreements", "acromia", "Ärger", "it's"]
    for prediction, references in pairs[:N_UQA]:
        if rng.random() < 0.3:
            prediction = f"{prediction} {' '.join(rng.choice(extra) for _ in range(rng.randint(1, 4)))}"
        if rng.random() < 0.1:
            # Past the 100-word cut on either side.
            prediction = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(95, 130)))
            references = [*references, " ".join(rng.choice(_WORDS) for _ in range(rng.randint(95, 130)))]
        expected = uqa_narrativeqa_one(py_rouge, prediction, references)
        got = unifiedqa(_uqa_item("narrativeqa", prediction, references))
        assert got == expected, (prediction, references)


def test_unifiedqa_natqa_equals_the_first_gold_exact_match(pairs):
    from runner.scoring.unifiedqa import unifiedqa

    for prediction, references in pairs[:N_UQA]:
        got = unifiedqa(_uqa_item("natural_questions_with_dpr_para", prediction, references))
        assert got == float(uqa_natqa_one(prediction, references)), (prediction, references)
