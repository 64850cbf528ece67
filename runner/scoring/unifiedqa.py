"""`unifiedqa`: every dataset scored the way UnifiedQA's own evaluation code scores it, quirks included.

Transcribed from allenai/unifiedqa `evaluation/`, not from the paper. `evaluate_v2.py` maps a
dataset to an evaluation type and scores most of them; NarrativeQA, DROP/Quoref/ROPES and NatQA
follow their own scripts. `RULES` is the one table of dataset → rule: the 20 datasets of the
UnifiedQA paper, the AI2 science sets of its training mixture, and the synthetic sets (scored by
the rule of their answer format). Any other dataset, such as your own JSONL set, scores None.

What every rule shares with the scripts: a prediction is one line of their predictions file, so
its newlines are deleted (not replaced by spaces: "new\\nyork" is "newyork") and its ends stripped.
Where qabench has merged the TSV lines of one input into one example with several references,
a rule reads them as the script that groups lines by input does: NarrativeQA's ROUGE-L takes the
best, DROP's F1 divides the best by their count, NatQA keeps the first; evaluate_v2.py itself
scores each line on its own, which agrees whenever an input has one line.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any, Callable, Sequence

from runner.data.example import SYNTHETIC_DATASET_FORMATS
from runner.scoring import Scored, Scorer, register
from runner.scoring._normalize import answer_tokens, normalize_answer
from runner.scoring.f1 import token_f1


def _line(text: str) -> str:
    """A text as UnifiedQA's scripts read it from a one-answer-per-line file."""
    return text.replace("\n", "").strip()


# ---- SQuAD token F1: evaluate_v2.py "generic-f1" (f1_score, metric_max_over_ground_truths) ----


def _squad_v1_f1(prediction: str, reference: str) -> float:
    predicted, gold = answer_tokens(prediction.lower()), answer_tokens(reference.lower())
    # v1.1 returns 0 whenever nothing is shared, so an empty answer scores 0 even against "".
    return token_f1(predicted, gold) if predicted and gold else 0.0


def squad_f1(item: Scored) -> float | None:
    """SQuAD v1.1 token F1, best over every reference; an empty prediction scores 0."""
    if not item.references:
        return None
    prediction = _line(item.prediction)
    return max(_squad_v1_f1(prediction, _line(ref)) for ref in item.references)


# ---- SQuAD 2: evaluate_v2.py "squad2-f1" with evaluate_squad2.compute_f1 ----

_NO_ANSWER = "no answer"


def squad2_f1(item: Scored) -> float | None:
    """Token F1 where a text containing "no answer" (lowercased, as typed) is the empty answer."""
    if not item.references:
        return None
    prediction = _line(item.prediction)
    # A plain substring test: "<No Answer>" and "there is no answer" count, "no-answer" does not.
    references = ("",) if any(_NO_ANSWER in ref.lower() for ref in item.references) else item.references
    if _NO_ANSWER in prediction.lower():
        prediction = ""
    # compute_f1: two empty answers agree (1), one empty side scores 0 — token_f1's rule.
    return max(token_f1(answer_tokens(prediction.lower()), answer_tokens(ref.lower())) for ref in references)


# ---- Multiple choice: evaluate_v2.py evaluate_multple_choice_predictions, score_string_similarity ----

# UnifiedQA splits the lowercased options part at every marker in range, wherever it stands.
_MARKERS_A_E = re.compile(r"\([a-e]\)")
_MARKERS_A_H = re.compile(r"\([a-h]\)")  # QASC has eight options
# fix_buggy_characters: characters T5's vocabulary round-trips into "\u2047" become spaces.
_BUGGY = re.compile("[{}^\\\\`\u2047<]")


def _unquote(text: str) -> str:
    return _BUGGY.sub(" ", text.replace('"', "").replace("'", ""))


def string_similarity(option: str, prediction: str) -> float:
    """UnifiedQA's score_string_similarity: 3 equal, 2 equal without quotes, else word overlap."""
    if option == prediction:
        return 3.0
    option, prediction = _unquote(option), _unquote(prediction)
    if option == prediction:
        return 2.0
    if " " in option or " " in prediction:
        # split(" "), not split(): a double space makes an empty word that counts in the length.
        option_words, predicted_words = option.split(" "), prediction.split(" ")
        return len(set(option_words) & set(predicted_words)) / max(len(option_words), len(predicted_words))
    return 0.0  # two different single words share nothing


def chosen_option(prediction: str, options: Sequence[str], markers: re.Pattern[str] = _MARKERS_A_E) -> int | None:
    """Index UnifiedQA picks: the most similar option, the first on a tie (so option a when none overlap)."""
    # Rebuild the input's options part and split it as UnifiedQA does; an option whose own text
    # holds a marker such as "(c)" splits in two there, shifting the later options' letters.
    text = " ".join(f"({chr(ord('a') + i)}) {option}" for i, option in enumerate(options)).strip().lower()
    candidates = [part.strip() for part in markers.split(text) if part.strip()]
    if not candidates:
        return None
    predicted = _line(prediction).lower()
    scores = [string_similarity(candidate, predicted) for candidate in candidates]
    return scores.index(max(scores))  # np.argmax: the first of equal maxima


def _spelled(text: str) -> str:
    return " ".join(text.lower().split())


def _choice_scorer(markers: re.Pattern[str]) -> Callable[[Scored], float | None]:
    def choice_accuracy(item: Scored) -> float | None:
        """1.0 if the option UnifiedQA picks is the reference's option; None without options."""
        if not item.options or not item.references:
            return None
        # UnifiedQA reads the gold letter from a meta file; the reference is that option's text,
        # matched exactly, else up to case and spacing.
        gold = {i for i, option in enumerate(item.options) if option in item.references}
        spelled = {_spelled(ref) for ref in item.references}
        gold = gold or {i for i, option in enumerate(item.options) if _spelled(option) in spelled}
        if not gold:
            return None  # no reference is an option: the example cannot be judged
        return float(chosen_option(item.prediction, item.options, markers) in gold)

    return choice_accuracy


choice_accuracy = _choice_scorer(_MARKERS_A_E)
qasc_choice_accuracy = _choice_scorer(_MARKERS_A_H)


# ---- NarrativeQA: evaluate_narrativeqa.py, py-rouge ROUGE-L ----

_WORD_LIMIT = 100  # length_limit=100, length_limit_type="words"
_WEIGHT_FACTOR = 1.2
_ALPHA = 0.5
_NON_ALNUM = re.compile("[^A-Za-z0-9]")
_CANNOT = re.compile("cannot")
_CANNOT_KEPT = re.compile("_cannot_")


@cache
def _rouge_tools() -> tuple[Any, Any, dict[str, str]]:
    """nltk's word tokenizer and original Porter stemmer, and py-rouge's WordNet exceptions."""
    # Imported on first use: nltk is slow to import and `runner validate` never scores.
    from importlib.metadata import distribution

    from nltk.stem.porter import PorterStemmer
    from nltk.tokenize import NLTKWordTokenizer

    wordnet: dict[str, str] = {}
    # Read from the installed py-rouge without importing it: its module needs pkg_resources.
    rouge = distribution("py-rouge")
    for name in ("wordnet_key_value.txt", "wordnet_key_value_special_cases.txt"):
        with open(rouge.locate_file(f"rouge/{name}"), encoding="utf-8") as lines:
            for line in lines:
                key, value = line.strip().split("|")
                wordnet[key] = value
    return NLTKWordTokenizer(), PorterStemmer(PorterStemmer.ORIGINAL_ALGORITHM), wordnet


@lru_cache(maxsize=1 << 16)
def _stem(token: str) -> str:
    _, stemmer, wordnet = _rouge_tools()
    # Tokens longer than 3 characters take WordNet's exception form, else the Porter stem.
    if len(token) <= 3:
        return token
    return wordnet[token] if token in wordnet else stemmer.stem(token)


# Cached: a prediction meets each of its references, and a reference every run's prediction;
# the nltk tokenizer and stemmer are most of the ~0.1 ms a new text costs.
@lru_cache(maxsize=1 << 16)
def rouge_tokens(text: str) -> tuple[str, ...]:
    """py-rouge's preprocessing: first 100 words, lowercase ASCII alphanumerics, tokens, stems."""
    tokenizer = _rouge_tools()[0]
    # _preprocess_summary_per_sentence with ensure_compatibility: the text has no newline left
    # (_line deleted them), so it is one sentence, cut to its first 100 whitespace words.
    sentence = " ".join(text.split()[:_WORD_LIMIT])
    sentence = _NON_ALNUM.sub(" ", sentence.lower()).strip()
    # Only [a-z0-9_ ] reaches nltk.word_tokenize, which punkt never splits into sentences, so
    # its treebank tokenizer alone gives the same tokens (no punkt data needed offline).
    tokens = [_stem(t) for t in tokenizer.tokenize(_CANNOT.sub("_cannot_", sentence))]
    return tuple(_CANNOT_KEPT.sub("cannot", " ".join(tokens)).split())


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def py_rouge_l(prediction: str, reference: str) -> float:
    """py-rouge's ROUGE-L F with weight_factor=1.2: precision and recall raised to 1/1.2 first."""
    predicted, gold = rouge_tokens(prediction), rouge_tokens(reference)
    # For one sentence each side, py-rouge's union-LCS hit count is the plain LCS length.
    common = _lcs_length(gold, predicted)
    precision = 0.0 if not predicted else common / len(predicted)
    recall = 0.0 if not gold else common / len(gold)
    # _compute_p_r_f_score applies the ROUGE-W weight factor to ROUGE-L too: 0.5 → 0.5^(1/1.2) = 0.561.
    precision, recall = precision ** (1.0 / _WEIGHT_FACTOR), recall ** (1.0 / _WEIGHT_FACTOR)
    if precision == 0.0 or recall == 0.0:
        return 0.0
    return precision * recall / ((1 - _ALPHA) * precision + _ALPHA * recall)


def narrativeqa_rouge_l(item: Scored) -> float | None:
    """py-rouge ROUGE-L F (weight 1.2, 100-word cut), best over references, rounded to 2 decimals."""
    if not item.references:
        return None
    prediction = _line(item.prediction)
    # metric_max_over_ground_truths rounds the best F with Python's round: 0.125 → 0.12.
    return round(max(py_rouge_l(prediction, _line(ref)) for ref in item.references), 2)


# ---- DROP, Quoref, ROPES: evaluate_v2.py "allennlp-f1" with evaluate_drop_quoref_ropes.f1_metrics ----


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def drop_normalize(text: str) -> str:
    """DROP's normalisation: per space- or hyphen-separated token, numbers kept and written as floats."""
    parts = []
    for token in re.split(" |-", text):
        token = token.lower()
        if not _is_number(token):
            token = "".join(ch for ch in token if ch not in _PUNCTUATION)
        if _is_number(token):
            token = str(float(token))  # "1,000" → "1000" → "1000.0"; "2" and "2.0" then agree
        token = " ".join(_ARTICLES.sub(" ", token).split())
        if token.strip():
            parts.append(token)
    return " ".join(parts).strip()


def _bag_f1(predicted: set[str], gold: set[str]) -> float:
    shared = len(gold & predicted)
    precision = shared / len(predicted) if predicted else 1.0
    recall = shared / len(gold) if gold else 1.0
    return 0.0 if precision == 0.0 and recall == 0.0 else 2 * precision * recall / (precision + recall)


def _numbers_agree(gold: set[str], predicted: set[str]) -> bool:
    gold_numbers = {w for w in gold if _is_number(w)}
    return not gold_numbers or bool(gold_numbers & {w for w in predicted if _is_number(w)})


def drop_f1(item: Scored) -> float | None:
    """DROP bag F1 against the gold answers as one multi-span answer: best / count, 2 decimals."""
    if not item.references:
        return None
    import numpy as np

    predicted = set(drop_normalize(_line(item.prediction)).split())
    # evaluate_v2.py splits a target at "///" (Quoref's multi-span answers); the DROP script
    # passes every target of an input together. Both become the gold spans of f1_metrics.
    golds = [set(drop_normalize(span).split()) for ref in item.references for span in _line(ref).split("///")]
    best = max((_bag_f1(predicted, gold) if _numbers_agree(gold, predicted) else 0.0) for gold in golds)
    # _align_bags matches the one predicted bag to its best gold bag and scores the others 0,
    # then averages over max(golds, 1): two references and a perfect answer give 1/2 = 0.5.
    # round() of the numpy mean is numpy's rounding (scale by 100, round half to even).
    return float(round(np.float64(best) / len(golds), 2))


# ---- NatQA: evaluate_natural_questions_ambigqa.py ----


def first_answer_exact_match(item: Scored) -> float | None:
    """Exact match after SQuAD normalisation against the first reference only."""
    if not item.references:
        return None
    # The script keeps the first target line of each question and scores against it alone.
    return float(normalize_answer(_line(item.prediction)) == normalize_answer(_line(item.references[0])))


# ---- The table ----


@dataclass(frozen=True)
class Rule:
    """How UnifiedQA's evaluation code scores one dataset."""

    name: str
    """Short name, used in the documentation's tables."""
    score: Callable[[Scored], float | None]
    """Scored example → value in [0, 1], or None when it cannot be judged."""
    computes: str
    """What the rule computes, in one sentence."""
    source: str
    """The allenai/unifiedqa files and functions it transcribes."""
    clean: str
    """The clean per-format scorer beside it and how that one differs."""


SQUAD_F1 = Rule(
    "squad_f1",
    squad_f1,
    "SQuAD v1.1 token F1, best over every reference; an empty prediction scores 0.",
    "`evaluation/evaluate_v2.py` (`generic-f1`: `f1_score`, `metric_max_over_ground_truths`)",
    "`f1` is the same F1, except that an empty prediction against an empty reference scores 1 and "
    "a newline in the prediction separates words instead of joining them.",
)
YES_NO_F1 = Rule(
    "yes_no_f1",
    squad_f1,
    'SQuAD token F1 against the reference word: "yes" 1, "Yes, it is." 0.5, "no, it is not" 0.4, '
    '"true" 0.',
    "`evaluation/evaluate_v2.py` (`generic-f1`, the branch of boolq, boolq_np and multirc)",
    '`yes_no_accuracy` reads the first word (yes/true, no/false) and scores 1 or 0: "Yes, it is." '
    'and "true" are right.',
)
SQUAD2_F1 = Rule(
    "squad2_f1",
    squad2_f1,
    'SQuAD token F1 where a prediction or reference containing "no answer" (lowercased substring) '
    "is the empty answer; two empty answers score 1.",
    "`evaluation/evaluate_v2.py` (`squad2-f1`), `evaluation/evaluate_squad2.py` (`compute_f1`)",
    '`f1` knows no "no answer": the unanswerable reference "<No Answer>" is just two words.',
)
CHOICE = Rule(
    "choice_similarity",
    choice_accuracy,
    "The option most similar to the prediction is chosen (3 equal, 2 equal without quotes, else "
    "shared words / the longer length); a tie or no overlap at all picks option A; 1 if that is "
    "the reference's option.",
    "`evaluation/evaluate_v2.py` (`evaluate_multple_choice_predictions`, `score_string_similarity`), "
    "options split at `(a)`-`(e)`",
    "`option_accuracy` maps by exact text, a bare letter, then token F1, and scores an answer that "
    "shares no word with any option as wrong instead of as option A.",
)
QASC_CHOICE = Rule(
    "choice_similarity_a_h",
    qasc_choice_accuracy,
    "As `choice_similarity`, with options split at `(a)`-`(h)`.",
    "`evaluation/evaluate_v2.py` (the `/qasc/` regex)",
    CHOICE.clean,
)
ROUGE_L = Rule(
    "py_rouge_l",
    narrativeqa_rouge_l,
    "py-rouge ROUGE-L F with stemming, each text cut to 100 words, precision and recall raised to "
    "1/1.2 (`weight_factor=1.2`), best over references, rounded to 2 decimals.",
    "`evaluation/evaluate_narrativeqa.py` (`rouge_l_evaluator`, `metric_max_over_ground_truths`)",
    "`rouge_l` is rouge-score's ROUGE-L F1 with stemming on the whole texts, neither powered nor "
    "rounded: two words against two, one in common, score 0.50 there and 0.56 here.",
)
DROP_F1 = Rule(
    "drop_f1",
    drop_f1,
    "DROP's bag-of-words F1 (a reference's numbers must appear), best gold answer divided by the "
    "number of gold answers (references and their `///` spans), rounded to 2 decimals.",
    "`evaluation/evaluate_v2.py` (`allennlp-f1`), `evaluation/evaluate_drop_quoref_ropes.py` (`f1_metrics`)",
    "`f1` / `rouge_l` take the best reference without dividing by the count and without the "
    "number rule.",
)
FIRST_ANSWER_EM = Rule(
    "first_answer_em",
    first_answer_exact_match,
    "Exact match after SQuAD normalisation against the first reference only (the script prints F1 "
    "beside it).",
    "`evaluation/evaluate_natural_questions_ambigqa.py` (`exact_match_score`)",
    "`rouge_l` gives partial credit; `exact_match` accepts any reference.",
)

FORMAT_RULES: dict[str, Rule] = {
    "yes_no": YES_NO_F1,
    "multiple_choice": CHOICE,
    "extractive": SQUAD_F1,
    "abstractive": ROUGE_L,
}
"""The rule of each answer format's UnifiedQA dataset (BoolQ, RACE, SQuAD 1.1, NarrativeQA)."""

RULES: dict[str, Rule] = {
    # The training mixture (tasks.py union_datasets).
    "narrativeqa": ROUGE_L,
    "ai2_science_middle": CHOICE,
    "ai2_science_elementary": CHOICE,
    "arc_hard": CHOICE,
    "arc_easy": CHOICE,
    "mctest_corrected_the_separator": CHOICE,
    "squad1_1": SQUAD_F1,
    "squad2": SQUAD2_F1,
    "boolq": YES_NO_F1,
    "race_string": CHOICE,
    "openbookqa": CHOICE,
    # The 12 held-out datasets.
    "newsqa": SQUAD_F1,
    "quoref": DROP_F1,
    "ropes": DROP_F1,
    "drop": DROP_F1,
    "natural_questions_with_dpr_para": FIRST_ANSWER_EM,
    "qasc": QASC_CHOICE,
    "commonsenseqa": CHOICE,
    "winogrande_xl": CHOICE,
    "physical_iqa": CHOICE,
    "social_iqa": CHOICE,
    "boolq_np": YES_NO_F1,
    "multirc": YES_NO_F1,
    **{dataset: FORMAT_RULES[fmt] for dataset, fmt in SYNTHETIC_DATASET_FORMATS.items()},
}
"""Dataset name → how UnifiedQA's code scores it."""


def unifiedqa(item: Scored) -> float | None:
    """The example's score under its dataset's UnifiedQA rule; None for datasets not UnifiedQA's."""
    rule = RULES.get(item.dataset)
    return rule.score(item) if rule else None


register("unifiedqa", Scorer(score=unifiedqa, higher_is_better=True, aggregation="mean"))
