"""`data.max_eval_examples` evaluates a seeded random sample of each dataset (or, asked for, its first
N examples); the sample is part of the evaluation's identity and its ids are in provenance.json.
`data.max_train_examples` does the same for training (and the shots), `first` unless asked."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import SYNTHETIC, stage_folders, write_manifest
from runner.cli import main
from runner.context import read_data, sample_examples
from runner.data import Example
from runner.identity import evaluation_request, training_request
from runner.manifest import load_manifest


def _examples(dataset: str, count: int) -> list[Example]:
    return [Example(f"{dataset}/dev/{n}", dataset, "dev", "yes_no", "q", "q", (), "", ("yes",), n + 1) for n in range(count)]


def _positions(examples: list[Example]) -> list[int]:
    return [int(example.id.rsplit("/", 1)[1]) for example in examples]


def test_random_sample_is_a_fixed_function_of_seed_dataset_and_ids():
    # Golden: sha256 ranking, so these positions hold on every machine and Python version. If this
    # changes, stored evaluation digests would name different examples than they were run on.
    boolq = _examples("boolq", 20)
    assert _positions(sample_examples(boolq, 5, "random", 0, "boolq")) == [5, 8, 12, 15, 17]
    assert _positions(sample_examples(boolq, 5, "random", 1, "boolq")) == [0, 4, 12, 17, 19]
    # The dataset's name is in the seed: another dataset with the same ids gets another sample.
    assert _positions(sample_examples(boolq, 5, "random", 0, "squad1_1")) == [2, 4, 10, 12, 16]


def test_same_seed_same_sample_and_different_seed_different_sample():
    examples = _examples("boolq", 200)
    first = sample_examples(examples, 25, "random", 7, "boolq")
    assert first == sample_examples(list(examples), 25, "random", 7, "boolq")
    assert {e.id for e in first} != {e.id for e in sample_examples(examples, 25, "random", 8, "boolq")}


def test_sample_is_in_file_order_and_grows_by_adding_examples():
    examples = _examples("boolq", 200)
    small, large = sample_examples(examples, 25, "random", 0, "boolq"), sample_examples(examples, 50, "random", 0, "boolq")
    assert _positions(small) == sorted(_positions(small))
    assert set(_positions(small)) < set(_positions(large))
    assert _positions(small) != list(range(25)), "not the first N"


def test_first_keeps_the_first_n_and_a_cap_above_the_size_takes_everything():
    examples = _examples("boolq", 10)
    assert sample_examples(examples, 4, "first", 0, "boolq") == examples[:4]
    for sample in ("random", "first"):
        assert sample_examples(examples, 10, sample, 0, "boolq") == examples
        assert sample_examples(examples, 50, sample, 0, "boolq") == examples
        assert sample_examples(examples, None, sample, 0, "boolq") == examples


def _manifest(folder: Path, name: str, small_data: Path, tiny_models, training: bool = False, **data) -> Path:
    """A tiny model's manifest over the small data; `training`: a 2-step LoRA training first."""
    trains = {"method": {"kind": "lora", "r": 2, "alpha": 4, "target_modules": "attention"},
              "train": {"steps": 2, "batch_size": 2, "learning_rate": 1e-3, "heldout_examples": 0}}
    return write_manifest(
        folder,
        name,
        model={"path": str(tiny_models["llama"])},
        data={"root": str(small_data), "datasets": SYNTHETIC, **data},
        **(trains if training else {"method": {"kind": "none"}}),
        decoding={"kind": "greedy", "max_new_tokens": 4, "batch_size": 4},
    )


def test_each_dataset_contributes_n_examples_chosen_by_the_sample(tmp_path, small_data, tiny_models):
    def ids(name: str, **data) -> list[str]:
        return [e.id for e in read_data(load_manifest(_manifest(tmp_path, name, small_data, tiny_models, **data))).evaluate]

    # small_data: 6 dev examples per dataset.
    first = ids("first", max_eval_examples=3, eval_sample="first")
    assert first == [f"{d}/dev/{n}" for d in SYNTHETIC for n in range(3)], "first: today's behaviour"
    seeded = ids("seed0", max_eval_examples=3)
    assert seeded == ids("seed0-again", max_eval_examples=3, eval_sample="random", eval_sample_seed=0)
    assert seeded != ids("seed1", max_eval_examples=3, eval_sample_seed=1)
    for chosen in (first, seeded):
        assert [i.split("/")[0] for i in chosen] == [d for d in SYNTHETIC for _ in range(3)]
    assert len(ids("all", max_eval_examples=10)) == 24, "fewer than N: every example"

    read = read_data(load_manifest(tmp_path / "seed1.yaml"))
    assert read.eval_sample["max_per_dataset"] == 3 and read.eval_sample["sample"] == "random" and read.eval_sample["seed"] == 1
    assert {d: v["available"] for d, v in read.eval_sample["datasets"].items()} == dict.fromkeys(SYNTHETIC, 6)
    assert [i for d in SYNTHETIC for i in read.eval_sample["datasets"][d]["ids"]] == [e.id for e in read.evaluate]


def test_the_sample_enters_the_evaluation_identity_only_where_it_chooses(tmp_path, small_data, tiny_models):
    def selection(name: str, **data) -> dict:
        return evaluation_request(load_manifest(_manifest(tmp_path, name, small_data, tiny_models, **data)).manifest)["data"]

    assert selection("a", max_eval_examples=3) != selection("b", max_eval_examples=3, eval_sample_seed=1)
    assert selection("a", max_eval_examples=3) != selection("c", max_eval_examples=3, eval_sample="first")
    # No cap, or the first N: the selection (and so the digest) the manifest had before samples existed.
    assert "eval_sample" not in selection("d", eval_sample="first", max_eval_examples=3)
    assert "eval_sample" not in selection("e") and selection("e") == selection("f", eval_sample="first")


def test_evaluated_ids_are_recorded_in_provenance(tmp_path, small_data, tiny_models):
    manifest = _manifest(tmp_path / "manifests", "sampled", small_data, tiny_models, max_eval_examples=2, eval_sample_seed=5)
    assert main(["run", str(manifest), "--storage", str(tmp_path / "runs")]) == 0
    evaluation, _ = stage_folders(manifest, tmp_path / "runs")
    recorded = json.loads((evaluation / "provenance.json").read_text())["eval_sample"]
    shards = sorted((evaluation / "predictions").glob("*.parquet"))
    answered = [row["id"] for shard in shards for row in pq.read_table(shard).to_pylist()]
    assert (recorded["max_per_dataset"], recorded["sample"], recorded["seed"]) == (2, "random", 5)
    assert sorted(i for d in recorded["datasets"].values() for i in d["ids"]) == sorted(answered)
    assert all(len(d["ids"]) == 2 and d["available"] == 6 for d in recorded["datasets"].values())


@pytest.mark.parametrize(
    ("lines", "field", "message"),
    [
        (["  max_eval_examples: 3", "  eval_sample: randm"], "data.eval_sample", "'random' or 'first'"),
        (["  max_eval_examples: 3", "  eval_sample: first", "  eval_sample_seed: 2"], "data.eval_sample_seed", "seeds only a random sample"),
        (["  eval_sample_seed: 2"], "data.eval_sample_seed", "seeds only a random sample"),
        (["  max_eval_examples: 3", "  eval_sample_seed: -1"], "data.eval_sample_seed", "greater than or equal to 0"),
        (["  max_train_examples: 3", "  train_sample_seed: 2"], "data.train_sample_seed", "set max_train_examples and train_sample: random"),
        (["  train_sample: random", "  train_sample_seed: 2"], "data.train_sample_seed", "seeds only a random sample"),
        (["  max_train_examples: 3", "  train_sample: shuffled"], "data.train_sample", "'first' or 'random'"),
    ],
    ids=["unknown-sample", "seed-with-first", "seed-without-cap", "negative-seed", "train-seed-with-first", "train-seed-without-cap", "unknown-train-sample"],
)
def test_a_bad_sample_setting_is_rejected_at_its_line(lines, field, message, tmp_path, small_data, tiny_models, capsys):
    text = [
        "name: bad-sample",
        "model:",
        f"  path: {tiny_models['llama']}",
        "method: {kind: none}",
        "data:",
        f"  root: {small_data}",
        f"  datasets: [{', '.join(SYNTHETIC)}]",
        *lines,
    ]
    path = tmp_path / "bad-sample.yaml"
    path.write_text("\n".join(text) + "\n")
    capsys.readouterr()
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert any(line.startswith(f"{path}:{len(text)}: {field}: ") and message in line for line in err.splitlines()), err
    assert "Traceback" not in err


def test_training_takes_the_first_n_unless_asked_for_a_seeded_sample_and_records_which(tmp_path, small_data, tiny_models):
    def read(name: str, **data):
        return read_data(load_manifest(_manifest(tmp_path, name, small_data, tiny_models, training=True, **data)))

    first = read("first", max_train_examples=5)
    per_dataset = {d: [e for e in first.train if e.dataset == d] for d in SYNTHETIC}
    everything = {d: [e for e in read("all").train if e.dataset == d] for d in SYNTHETIC}
    assert all(len(everything[d]) == 40 and per_dataset[d] == everything[d][:5] for d in SYNTHETIC), "the default is the first N of each file"
    assert first.train_sample["sample"] == "first" and first.train_sample["seed"] is None

    sampled = read("random", max_train_examples=5, train_sample="random", train_sample_seed=3)
    for dataset in SYNTHETIC:
        chosen = [e for e in sampled.train if e.dataset == dataset]
        assert chosen == sample_examples(everything[dataset], 5, "random", 3, dataset) and chosen != everything[dataset][:5]
    assert (sampled.train_sample["max_per_dataset"], sampled.train_sample["sample"], sampled.train_sample["seed"]) == (5, "random", 3)
    assert [i for d in SYNTHETIC for i in sampled.train_sample["datasets"][d]["ids"]] == [e.id for e in sampled.train]


def test_the_training_sample_is_in_the_identity_only_where_it_chooses(tmp_path, small_data, tiny_models):
    def data_of(name: str, shots: int = 0, **data) -> tuple[dict, dict]:
        path = _manifest(tmp_path, name, small_data, tiny_models, **data)
        if shots:
            text = path.read_text() + f"icl:\n  shots: {shots}\n"
            path.write_text(text)
        manifest = load_manifest(path).manifest
        return training_request(manifest)["data"], evaluation_request(manifest)["data"]

    # Stored trainings that capped their data keep their digests: `first` adds nothing.
    assert data_of("a", max_train_examples=5)[0] == data_of("b", max_train_examples=5, train_sample="first")[0]
    assert "train_sample" not in data_of("c", max_train_examples=5)[0] and "train_sample" not in data_of("d", train_sample="random")[0]
    random_3, random_4 = data_of("e", max_train_examples=5, train_sample="random", train_sample_seed=3), data_of("f", max_train_examples=5, train_sample="random", train_sample_seed=4)
    assert random_3[0] != random_4[0] and random_3[0]["train_sample"] == "random"
    # The shots come from the training examples: a k-shot evaluation's identity follows the sample too.
    shot_3, shot_4 = data_of("g", 2, max_train_examples=5, train_sample="random", train_sample_seed=3), data_of("h", 2, max_train_examples=5, train_sample="random", train_sample_seed=4)
    assert shot_3[1] != shot_4[1] and random_3[1] == random_4[1], "zero-shot evaluations never read the training examples"


def test_a_trainings_provenance_lists_the_examples_it_trained_on(tmp_path, small_data, tiny_models):
    sample = {"max_train_examples": 4, "train_sample": "random", "train_sample_seed": 1, "max_eval_examples": 1}
    manifest = _manifest(tmp_path / "manifests", "sampled-training", small_data, tiny_models, training=True, **sample)
    assert main(["run", str(manifest), "--storage", str(tmp_path / "runs")]) == 0
    _, training = stage_folders(manifest, tmp_path / "runs")
    recorded = json.loads((training / "provenance.json").read_text())["train_sample"]
    assert (recorded["max_per_dataset"], recorded["sample"], recorded["seed"]) == (4, "random", 1)
    expected = read_data(load_manifest(manifest)).train
    assert [i for d in recorded["datasets"].values() for i in d["ids"]] == [e.id for e in expected]
    assert all(d["available"] == 40 and len(d["ids"]) == 4 for d in recorded["datasets"].values())
