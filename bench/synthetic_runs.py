"""Synthetic completed runs in exactly the layout the runner writes, for tests and benchmarks.

Everything is a function of its arguments (explicit `random.Random` seeds), so a golden test can
compare the report it produces byte for byte. Predictions are the right answer with a run's
`accuracy`, otherwise one of the example's fixed wrong answers, as real runs repeat the same few
mistakes; timings follow simple token-count formulas.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from runner.paths import RunKeys, TrainingKeys
from runner.shards import SHARD_SCHEMA
from runner.storage import LocalStore

FORMATS = {
    "boolq": "yes_no",
    "squad1_1": "extractive",
    "narrativeqa": "abstractive",
    "arc_easy": "multiple_choice",
    "openbookqa": "multiple_choice",
    "race_string": "multiple_choice",
    "squad2": "extractive",
    "arc_hard": "multiple_choice",
}
"""Datasets the synthetic examples are named after, with their answer formats."""

_WORDS = (
    "river castle harbour lantern meadow copper winter orchard falcon granite violet tunnel "
    "market beacon willow saddle thunder garden compass marble ember quarry ferry cedar"
).split()
_COLOURS = "red blue green white black silver golden orange".split()


@dataclass(frozen=True)
class Example:
    """One evaluation question with its references and the wrong answers runs give for it."""

    id: str
    dataset: str
    format: str
    context: str
    question: str
    references: tuple[str, ...]
    options: tuple[str, ...]
    wrong: tuple[str, ...]


def _phrase(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(low, high)))


def eval_examples(per_dataset: int, datasets: Sequence[str] = ("boolq", "squad1_1", "narrativeqa", "arc_easy"), seed: int = 0) -> list[Example]:
    """`per_dataset` examples of each dataset, ids `<dataset>/dev/<i>` as the runner writes them."""
    examples = []
    for dataset in datasets:
        fmt = FORMATS[dataset]
        rng = random.Random(f"{seed}:{dataset}")
        for i in range(per_dataset):
            context = _phrase(rng, 20, 60)
            question = f"what is the {rng.choice(_WORDS)} of the {rng.choice(_WORDS)}?"
            options: tuple[str, ...] = ()
            if fmt == "yes_no":
                right = rng.choice(["yes", "no"])
                references, wrong = (right,), ("no" if right == "yes" else "yes", "maybe")
            elif fmt == "multiple_choice":
                options = tuple(rng.sample(_COLOURS, 4))
                references = (options[rng.randrange(4)],)
                wrong = tuple(o for o in options if o != references[0])
            else:
                answer = _phrase(rng, 1, 3 if fmt == "extractive" else 6)
                references = (answer, f"the {answer}") if rng.random() < 0.3 else (answer,)
                wrong = (_phrase(rng, 1, 3), _phrase(rng, 2, 5), answer.split()[0] + " " + rng.choice(_WORDS))
            examples.append(Example(f"{dataset}/dev/{i}", dataset, fmt, context, question, references, options, wrong))
    return examples


@dataclass(frozen=True)
class SyntheticRun:
    """One run's configuration and the knobs that shape its predictions and timings."""

    name: str
    model: str = "tiny-llama"
    method: str = "none"
    shots: int = 0
    decoding: str = "greedy"
    accuracy: float = 0.5
    """Chance that a prediction is a reference answer (else a wrong answer of the example)."""
    correct: frozenset[str] | None = None
    """Ids answered right, every other one wrong; overrides `accuracy` (hand-built comparisons)."""
    seconds_per_token: float = 0.02
    batch_size: int = 8
    train_seconds: float | None = None
    """Training time in metrics.json; None for a run that trained nothing."""
    acceptance: float | None = None
    """Draft acceptance rate written into the rows (speculative runs); None leaves the columns null."""
    max_eval_examples: int | None = None
    data_tag: str = ""
    """Changes the data hashes in provenance.json: runs with different tags used different data."""
    model_tag: str = ""
    """Changes the model hash in provenance.json: runs with different tags used other weights."""
    seed: int = 0
    """`train.seed`; with the name, also seeds the run's predictions."""
    icl_seed: int = 0
    decoding_seed: int | None = None
    """`decoding.seed` (strategies that sample); None writes no such field."""
    learning_rate: float = 2e-4
    devices: int = 1
    """`devices`; written into the manifest only when not 1 (so older digests stay put)."""
    prompt_format: str | None = None
    """The shards' `prompt_format` column ('chat' | 'plain'); None writes no such column."""
    protocol: str | None = None
    """The shards' `protocol` column ('generate' | 'loglikelihood'); None writes no such column."""
    answers_as: str = ""
    """Draw predictions as the run of this name does (with the same seed): a decoding twin that
    gives the same answers, as exact speculative decoding and prompt lookup do."""
    train_log: bool = True
    """Write the training's train_log.jsonl (trained runs only)."""

    @property
    def training(self) -> str | None:
        """Digest of the synthetic training stage: shared by runs that differ only in decoding."""
        if self.train_seconds is None:
            return None
        key = f"{self.model}|{self.model_tag}|{self.method}|{self.learning_rate}|{self.seed}|{self.train_seconds}|{self.devices}|{self.accuracy}"
        return hashlib.sha256(key.encode()).hexdigest()[:12]


def manifest_of(run: SyntheticRun, datasets: Sequence[str], shard_size: int) -> dict:
    """A resolved manifest as the runner writes it (the fields analysis reads, and a few more)."""
    return {
        "name": run.name,
        "description": "",
        "model": {"hub": None, "revision": None, "path": None, "package": run.model, "dtype": "auto", "trust_remote_code": False},
        "data": {"root": "data", "datasets": list(datasets), "train_split": "train", "eval_split": "dev", "max_train_examples": None, "max_eval_examples": run.max_eval_examples},
        "method": {"kind": run.method},
        "train": {"steps": 10 if run.train_seconds is not None else None, "learning_rate": run.learning_rate, "seed": run.seed},
        "icl": {"shots": run.shots, "seed": run.icl_seed},
        "decoding": {
            "max_new_tokens": 16, "batch_size": 1 if run.acceptance is not None else run.batch_size, "stop": ["\n"], "kind": run.decoding,
            **({} if run.decoding_seed is None else {"seed": run.decoding_seed}),
        },
        "eval": {"metrics": ["exact_match", "f1"], "shard_size": shard_size},
        "output": {"storage": None},
        **({"devices": run.devices} if run.devices != 1 else {}),
    }


def _prediction(example: Example, rng: random.Random, run: SyntheticRun) -> str:
    if run.correct is not None:
        return example.references[0] if example.id in run.correct else example.wrong[0]
    if rng.random() < run.accuracy:
        return rng.choice(example.references)
    return rng.choice(example.wrong)


def shard_rows(run: SyntheticRun, examples: Sequence[Example], shard: int, rng: random.Random) -> pa.Table:
    """One shard's rows in SHARD_SCHEMA, batched and timed the way generate.py reports them."""
    batch_size = 1 if run.acceptance is not None else run.batch_size
    schema = SHARD_SCHEMA
    for name, value in (("prompt_format", run.prompt_format), ("protocol", run.protocol)):
        # Columns this runner's schema may not have yet: added when the run sets them.
        if value is not None and name not in schema.names:
            schema = schema.append(pa.field(name, pa.string()))
    columns: dict[str, list] = {field.name: [] for field in schema}
    for start in range(0, len(examples), batch_size):
        batch = examples[start : start + batch_size]
        predictions = [_prediction(e, rng, run) for e in batch]
        outputs = [len(p.split()) + 1 for p in predictions]
        prompts = [f"Answer the question.\n\n{e.context}\nQuestion: {e.question}\nAnswer:" for e in batch]
        prompt_tokens = [len(p.split()) + 45 * run.shots for p in prompts]
        # Wall time: prefill of every prompt, then the longest answer decoded for the whole batch.
        first = sum(prompt_tokens) * 2e-4
        seconds = round(first + max(outputs) * run.seconds_per_token, 6)
        for e, prediction, out, prompt, tokens in zip(batch, predictions, outputs, prompts, prompt_tokens):
            proposed = None if run.acceptance is None else 2 * out + 2
            row = {
                "id": e.id, "dataset": e.dataset, "format": e.format, "prompt": prompt,
                "prompt_sha256": hashlib.sha256(prompt.encode()).hexdigest(), "shot_ids": [f"{e.dataset}/train/{k}" for k in range(run.shots)],
                "n_shots": run.shots, "prediction": prediction, "raw_output": f" {prediction}\n", "references": list(e.references),
                "options": list(e.options), "prompt_tokens": tokens, "output_tokens": out, "stopped": True,
                "batch": f"{shard:05d}-{start // batch_size:04d}", "batch_size": len(batch), "batch_seconds": seconds,
                "batch_first_token_seconds": round(first, 6), "batch_peak_memory_bytes": 2**30 + 2**24 * run.shots + 2**20 * len(batch),
                "batch_output_tokens": sum(outputs), "batch_target_forwards": None if proposed is None else out,
                "draft_proposed_tokens": proposed, "draft_accepted_tokens": None if proposed is None else math.floor(proposed * run.acceptance),
                "prompt_format": run.prompt_format, "protocol": run.protocol,
            }
            for name in columns:
                columns[name].append(row.get(name))
    return pa.Table.from_pydict(columns, schema=schema)


def write_run(storage: Path, run: SyntheticRun, examples: Sequence[Example], shard_size: int = 16, success: bool = True) -> Path:
    """Write a run (manifest, provenance, shards, metrics.json, _SUCCESS last); return its folder."""
    datasets = list(dict.fromkeys(e.dataset for e in examples))
    if run.max_eval_examples is not None:
        examples = [e for e in examples if int(e.id.rsplit("/", 1)[-1]) < run.max_eval_examples]
    manifest = manifest_of(run, datasets, shard_size)
    text = yaml.safe_dump(manifest, sort_keys=False)
    keys = RunKeys(run.name, hashlib.sha256(text.encode()).hexdigest()[:12])
    store = LocalStore(storage)
    store.write_bytes(keys.manifest, text.encode())
    data = {f"{d}/dev.tsv": hashlib.sha256(f"{d}{run.data_tag}".encode()).hexdigest() for d in datasets}
    model = {"package": run.model, "sha256": hashlib.sha256(f"{run.model}{run.model_tag}".encode()).hexdigest()}
    store.write_bytes(keys.provenance, json.dumps({"digest": keys.digest, "model": model, "data": data}, indent=2).encode())
    rng = random.Random(f"{run.seed}:{run.answers_as or run.name}")
    for shard, start in enumerate(range(0, len(examples), shard_size)):
        table = shard_rows(run, examples[start : start + shard_size], shard, rng)
        store.write_bytes(keys.shard(shard), _parquet(table))
    metrics: dict = {"name": run.name, "digest": keys.digest, "training": run.training, "generation": {"examples": len(examples)}}
    if run.train_seconds is not None:
        metrics["train"] = {
            "steps": 10, "seconds": run.train_seconds, "tokens_per_second": 1000.0 / run.train_seconds * 50, "heldout_perplexity": 2.0 + run.accuracy,
            "trainable_percent": 1.25, "peak_memory_bytes": 3 * 2**30,
        }
    store.write_bytes(keys.metrics, json.dumps(metrics, indent=2).encode())
    if run.training is not None and run.train_log:
        store.write_bytes(TrainingKeys(run.training).train_log, train_log(run).encode())
    if success:
        store.write_bytes(keys.success, b"")
    return storage / keys.prefix


def train_log(run: SyntheticRun, steps: int = 10) -> str:
    """train_log.jsonl as the runner's trainer callback writes it: a held-out loss before the first
    step, the training loss every step, a held-out loss every fifth step, the closing summary
    record and the final held-out evaluation (which repeats the last step)."""
    rng = random.Random(f"train_log:{run.training}")
    floor = 1.6 - run.accuracy  # better runs settle lower
    start = 1.0 + floor

    def loss(step: float) -> float:
        return round(floor + (start - floor) * math.exp(-step / 3) + rng.uniform(-0.03, 0.03), 6)

    records: list[dict] = [{"step": 0, "epoch": 0, "eval_loss": loss(0) + 0.1, "eval_runtime": 1.5}]
    for step in range(1, steps + 1):
        records.append({"step": step, "epoch": step / steps, "loss": loss(step), "grad_norm": 1.0, "learning_rate": run.learning_rate})
        if step % 5 == 0:
            records.append({"step": step, "epoch": step / steps, "eval_loss": loss(step) + 0.1, "eval_runtime": 1.5})
    records.append({"step": steps, "epoch": 1.0, "train_runtime": run.train_seconds, "train_loss": loss(steps / 2)})
    records.append({"step": steps, "epoch": 1.0, "eval_loss": loss(steps) + 0.1, "eval_runtime": 1.5})
    return "".join(json.dumps({**r, "time": 1_700_000_000.0 + i}) + "\n" for i, r in enumerate(records))


def _parquet(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def sample_runs() -> list[SyntheticRun]:
    """A small grid with something for every view: a k-shot series, fine-tuned methods on two
    models, and a speculative twin of a greedy run (the golden test's input)."""
    return [
        SyntheticRun("zero-shot", accuracy=0.3),
        SyntheticRun("two-shot", shots=2, accuracy=0.45),
        SyntheticRun("four-shot", shots=4, accuracy=0.55),
        SyntheticRun("lora", method="lora", accuracy=0.7, train_seconds=120.0),
        SyntheticRun("lora", method="lora", decoding="speculative", accuracy=0.7, train_seconds=120.0, acceptance=0.7, seconds_per_token=0.001),
        SyntheticRun("big-zero-shot", model="big-model", accuracy=0.6, seconds_per_token=0.05),
        SyntheticRun("big-four-shot", model="big-model", shots=4, accuracy=0.7, seconds_per_token=0.05),
        SyntheticRun("big-full", model="big-model", method="full", accuracy=0.8, train_seconds=900.0, seconds_per_token=0.05),
    ]


def write_sample(storage: Path, per_dataset: int = 10) -> list[Path]:
    """Write `sample_runs()` over `per_dataset` examples of four datasets; return the run folders."""
    examples = eval_examples(per_dataset)
    return [write_run(storage, run, examples) for run in sample_runs()]


GRID_MODELS = (("gemma-2b", 0.45, 0.01, "chat"), ("gemma-7b", 0.6, 0.03, "plain"), ("llama-2-7b", 0.5, 0.03, "plain"), ("mistral-7b", 0.58, 0.03, "plain"))
"""(model, base accuracy, seconds per generated token, prompt format) of the synthetic grid."""

GRID_METHODS = (("lora", 0.22, 1.0), ("qlora", 0.2, 1.3), ("adalora", 0.21, 1.1), ("ia3", 0.12, 0.8), ("prompt_tuning", 0.08, 0.7))
"""(method, accuracy gain, training time factor) of the grid's trained methods."""


def grid_runs() -> list[SyntheticRun]:
    """101 runs shaped like manifests/grid.yaml: 4 models × (no training at 0/1/3/5 shots + 5
    trained methods) × greedy and prompt-lookup decoding (72), Gemma 7B's 9 setups drafted by
    Gemma 2B (81), and a second training seed of every trained greedy run (101). Prompt lookup
    and the draft give the greedy twin's answers faster; the 7B models run on two devices."""
    runs = []
    for model, base, spt, prompt_format in GRID_MODELS:
        devices = 2 if model.endswith("7b") else 1
        setups = [("none", k, base + 0.035 * k, None) for k in (0, 1, 3, 5)]
        setups += [(method, 0, base + gain, 1800.0 * factor * (3 if devices == 2 else 1)) for method, gain, factor in GRID_METHODS]
        decodings = [("greedy", spt, None), ("prompt_lookup", spt / 1.8, None)] + ([("speculative", spt / 2.5, 0.62)] if model == "gemma-7b" else [])
        for method, shots, accuracy, train_seconds in setups:
            greedy = f"{model}-{method}-{shots}-shot-greedy"
            for decoding, seconds, acceptance in decodings:
                common = dict(model=model, method=method, shots=shots, accuracy=min(accuracy, 0.95), train_seconds=train_seconds, devices=devices,
                              prompt_format=prompt_format, seconds_per_token=seconds, acceptance=acceptance)
                runs.append(SyntheticRun(f"{model}-{method}-{shots}-shot-{decoding.replace('_', '-')}", decoding=decoding, answers_as=greedy, **common))
                if train_seconds is not None and decoding == "greedy":
                    runs.append(SyntheticRun(f"{greedy}-seed1", decoding=decoding, seed=1, **common))
    return runs


def write_grid(storage: Path, per_dataset: int = 8) -> list[Path]:
    """Write `grid_runs()` over `per_dataset` examples of four datasets (one per answer format)."""
    examples = eval_examples(per_dataset)
    return [write_run(storage, run, examples) for run in grid_runs()]
