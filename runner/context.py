"""Everything a run needs, built once: the manifest, its method and decoding records, the store,
the stage identities and keys, and the examples — each data file read once, hashed and parsed
from the same bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.data import Example
from runner.decoding import DECODINGS, Decoding
from runner.errors import DataError, Problem, UserError
from runner.identity import evaluation_digest, evaluation_request, training_digest, training_request
from runner.manifest import LoadedManifest, fetch_command, load_manifest, unfetched_data
from runner.methods import METHODS, Method
from runner.model_spec import DraftSpec, ModelSpec
from runner.models import ModelIdentity, folder_sha256, identify_model
from runner.paths import RunKeys, TrainingKeys
from runner.prompt_style import requested_style
from runner.readers import read_split
from runner.storage import Store, open_store
from runner.storage_uri import choose_storage, redact


@dataclass(frozen=True)
class DataRead:
    """A manifest's data files, each read once: sha256 per file and the parsed examples."""

    train_hashes: dict[str, str]
    """`<dataset>/<file>` → sha256 of every train-split file read (empty when none is)."""
    eval_hashes: dict[str, str]
    train: tuple[Example, ...]
    evaluate: tuple[Example, ...]
    eval_sample: dict[str, Any]
    """How the evaluated examples were chosen and which, for provenance.json: `max_per_dataset`,
    `sample` (`random`/`first`, None without a cap), `seed` (None unless random) and per dataset
    folder the examples `available` and the `ids` evaluated, in evaluation order."""
    train_sample: dict[str, Any]
    """The same for the training examples (and the shots drawn from them)."""
    train_eval_overlap: dict[str, dict[str, int]]
    """Per dataset whose train split the run reads: the examples `evaluated` and how many of them
    (`in_train`) have an input identical to one of the training examples read: not held out
    (UnifiedQA's MultiRC encoding is noted to write the same questions into train and dev)."""


def sample_examples(examples: Sequence[Example], limit: int | None, sample: str, seed: int, dataset: str) -> list[Example]:
    """At most `limit` of one dataset file's examples: the first ones, or a seeded sample in file order."""
    if limit is None or len(examples) <= limit:
        return list(examples)
    if sample == "first":
        return list(examples[:limit])
    # Ranked by sha256 of (seed, dataset folder, id), not by a PRNG stream: the same sample on
    # every machine and Python version, each dataset's independent of the others, and the sample
    # of N is contained in the sample of N + 1 (raising the cap only adds examples).
    def rank(position: int) -> bytes:
        return hashlib.sha256(f"{seed}\0{dataset}\0{examples[position].id}".encode()).digest()

    chosen = sorted(range(len(examples)), key=rank)[:limit]
    # In file order, as `first` gives them: the order examples are answered and sharded in
    # (eval.shard_size per shard) depends only on which were chosen, never on the ranking.
    return [examples[position] for position in sorted(chosen)]


def _read_split(
    loaded: LoadedManifest, files: list[Path], split: str, limit: int | None, sample: str = "first", seed: int = 0
) -> tuple[dict[str, str], list[Example], dict[str, dict[str, Any]]]:
    """Hashes and chosen examples of one split's files, and per dataset folder the examples
    available and the ids chosen."""
    hashes, examples, chosen, problems = {}, [], {}, []
    for file in files:
        try:
            read = read_split(file, file.parent.name, split, loaded.manifest.data.format)
        except OSError as exc:
            problems.append(Problem(f"cannot read: {exc.strerror}", exc.filename or str(file)))
            continue
        hashes.update({loaded.relative_data_name(path): sha for path, sha in read.sha256.items()})
        problems += read.problems  # every broken file is reported, not just the first
        dataset = file.parent.name
        picked = sample_examples(read.examples, limit, sample, seed, dataset)
        chosen[dataset] = {"available": len(read.examples), "ids": [example.id for example in picked]}
        examples += picked
    if problems:
        raise DataError(problems)
    return hashes, examples, chosen


def read_data(loaded: LoadedManifest) -> DataRead:
    """Hash and parse every data file the manifest reads; DataError naming unfetched or broken files."""
    missing = unfetched_data(loaded)
    if missing:
        raise DataError(f"{len(missing)} data file(s) not fetched yet, e.g. {missing[0]}; run `{fetch_command(missing)}`")
    data = loaded.manifest.data
    train_hashes, train, train_chosen = _read_split(
        loaded, loaded.train_files(), data.train_split, data.max_train_examples, data.train_sample, data.train_sample_seed
    )
    eval_hashes, evaluate, eval_chosen = _read_split(
        loaded, loaded.eval_files(), data.eval_split, data.max_eval_examples, data.eval_sample, data.eval_sample_seed
    )
    train_sample = _sample_record(data.max_train_examples, data.train_sample, data.train_sample_seed, train_chosen)
    eval_sample = _sample_record(data.max_eval_examples, data.eval_sample, data.eval_sample_seed, eval_chosen)
    return DataRead(train_hashes, eval_hashes, tuple(train), tuple(evaluate), eval_sample, train_sample, train_eval_overlap(train, evaluate))


def train_eval_overlap(train: Sequence[Example], evaluate: Sequence[Example]) -> dict[str, dict[str, int]]:
    """Per dataset with training examples: evaluated examples, and those whose input a training example has."""
    inputs: dict[str, set[str]] = {}
    for example in train:
        inputs.setdefault(example.dataset, set()).add(example.input)
    overlap: dict[str, dict[str, int]] = {}
    for example in evaluate:
        if example.dataset in inputs:
            counts = overlap.setdefault(example.dataset, {"evaluated": 0, "in_train": 0})
            counts["evaluated"] += 1
            counts["in_train"] += example.input in inputs[example.dataset]
    return overlap


def _sample_record(cap: int | None, sample: str, seed: int, chosen: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What provenance.json says of how a split's examples were chosen (the DataRead samples' layout)."""
    capped = cap is not None
    return {
        "max_per_dataset": cap,
        "sample": sample if capped else None,
        "seed": seed if capped and sample == "random" else None,
        "datasets": chosen,
    }


@dataclass(frozen=True)
class TrainingStage:
    """One training: stored once under its digest, whichever manifests need it."""

    keys: TrainingKeys
    loaded: LoadedManifest
    """The manifest whose model, method and training settings define the training."""
    request: dict[str, Any]
    """What was asked (model as named), stored as training.yaml."""
    model: ModelIdentity
    data_hashes: dict[str, str]
    examples: tuple[Example, ...]
    train_sample: dict[str, Any]
    """How `examples` were chosen and which (DataRead.train_sample), for the training's provenance.json."""

    @property
    def method(self) -> Method:
        return METHODS.get(self.loaded.manifest.method.kind)


def training_stage(loaded: LoadedManifest, data: DataRead) -> TrainingStage | None:
    """The training a manifest needs, or None when its method trains nothing."""
    if not METHODS.get(loaded.manifest.method.kind).trains:
        return None
    model = identify_model(loaded.manifest.model, loaded.base_dir)
    request = training_request(loaded.manifest)
    digest = training_digest(request, model.fingerprint, data.train_hashes)
    return TrainingStage(TrainingKeys(digest), loaded, request, model, data.train_hashes, data.train, data.train_sample)


@dataclass(frozen=True)
class DraftSource:
    """Where a speculative draft's weights come from: a model block, plus an adapter or a training."""

    model_spec: ModelSpec
    owner: LoadedManifest
    """The manifest that declares `model_spec` (relative paths resolve against it)."""
    training: TrainingStage | None
    adapter: Path | None
    fingerprint: dict[str, str]
    """What enters the evaluation digest: the training digest, or the weights (+ adapter hash)."""


def draft_source(loaded: LoadedManifest, draft: DraftSpec) -> DraftSource:
    """Resolve a draft block: another manifest's training, a saved adapter, or a plain model."""
    if draft.manifest is not None:
        owner = load_manifest(loaded.resolve(draft.manifest))
        stage = training_stage(owner, read_data(owner))
        model = identify_model(owner.manifest.model, owner.base_dir)
        fingerprint = {"training": stage.keys.digest} if stage else {"dtype": owner.manifest.model.dtype, **model.fingerprint}
        return DraftSource(owner.manifest.model, owner, stage, None, fingerprint)
    model = identify_model(draft, loaded.base_dir)
    fingerprint = {"dtype": draft.dtype, **model.fingerprint}
    adapter = None
    if draft.adapter is not None:
        adapter = loaded.resolve(draft.adapter)
        if not adapter.is_dir():
            raise UserError(f"decoding.draft.adapter: {adapter} is not a folder")
        fingerprint["adapter_sha256"] = folder_sha256(adapter)
    return DraftSource(draft, loaded, None, adapter, fingerprint)


@dataclass(frozen=True)
class RunContext:
    """One manifest's run: built once by `build_context`, read by every stage."""

    loaded: LoadedManifest
    method: Method
    decoding: Decoding
    store: Store
    keys: RunKeys
    model: ModelIdentity
    training: TrainingStage | None
    draft: DraftSource | None
    data: DataRead

    @property
    def manifest(self):
        return self.loaded.manifest

    @property
    def trainings(self) -> list[TrainingStage]:
        """The training stages this evaluation needs, the draft's first (it is usually the smaller)."""
        stages = [self.draft.training if self.draft else None, self.training]
        return [stage for stage in stages if stage is not None]

    @property
    def location(self) -> str:
        """Where the evaluation is stored, for messages."""
        return redact(f"{self.store.uri}/{self.keys.prefix}")

    @property
    def prompt_style(self) -> str:
        """The prompt format asked for: `chat` (if the tokenizer has a template) or `plain`."""
        return requested_style(self.manifest)


def identify(loaded: LoadedManifest, data: DataRead) -> tuple[TrainingStage | None, DraftSource | None, RunKeys]:
    """The stages a manifest resolves to and its evaluation's keys (no store needed)."""
    manifest = loaded.manifest
    training = training_stage(loaded, data)
    spec = DECODINGS.get(manifest.decoding.kind).draft(manifest.decoding)
    draft = draft_source(loaded, spec) if spec is not None else None
    if training is not None:
        base = {"training": training.keys.digest}
    else:
        base = dict(identify_model(manifest.model, loaded.base_dir).fingerprint)
    eval_data = {**data.eval_hashes, **(data.train_hashes if manifest.icl.shots else {})}
    digest = evaluation_digest(evaluation_request(manifest), base, draft.fingerprint if draft else None, eval_data)
    return training, draft, RunKeys(manifest.name, digest)


def build_context(loaded: LoadedManifest, storage: str | None) -> RunContext:
    """Read the data, resolve the model and the stage identities, open the store."""
    data = read_data(loaded)
    training, draft, keys = identify(loaded, data)
    # --storage resolves against the working folder, output.storage against the manifest's folder.
    store = open_store(choose_storage(storage, loaded.manifest.output.storage, loaded.base_dir))
    return RunContext(
        loaded=loaded,
        method=METHODS.get(loaded.manifest.method.kind),
        decoding=DECODINGS.get(loaded.manifest.decoding.kind),
        store=store,
        keys=keys,
        model=identify_model(loaded.manifest.model, loaded.base_dir),
        training=training,
        draft=draft,
        data=data,
    )
