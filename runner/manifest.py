"""The experiment manifest: schema, loading with FILE:LINE errors, and the run digest.

Importing this module must stay cheap (no torch): `runner validate` runs in a second.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import Discriminator, Field, Tag, ValidationError, field_validator, model_validator

from runner.decoding import DECODINGS
from runner.errors import ManifestError, Problem
from runner.methods import METHODS
from runner.model_spec import ModelSpec
from runner.scoring import SCORERS
from runner.spec import Spec

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class DataSpec(Spec):
    """UnifiedQA-format data: `<root>/<dataset>/<split>.tsv` for each dataset."""

    root: str
    """Folder holding one subfolder per dataset, relative to the manifest file."""
    datasets: tuple[str, ...] = Field(min_length=1)
    """UnifiedQA dataset names (boolq, squad1_1, ...) or synthetic_* sets; each fixes a format."""
    train_split: str = "train"
    """Split used for training and for in-context examples."""
    eval_split: str = "dev"
    """Split that is generated and scored; never used for training or as a shot."""
    max_train_examples: int | None = Field(None, ge=1)
    """Use only the first N training examples of each dataset."""
    max_eval_examples: int | None = Field(None, ge=1)
    """Score only the first N evaluation examples of each dataset."""

    @model_validator(mode="after")
    def _splits_differ(self) -> DataSpec:
        if self.train_split == self.eval_split:
            raise ValueError("train_split and eval_split must differ: evaluating on training data")
        return self


class TrainSpec(Spec):
    """Supervised fine-tuning (ignored by methods that do not train)."""

    steps: int | None = Field(None, ge=1)
    """Optimizer steps; set this or `epochs` (default: 100 steps)."""
    epochs: float | None = Field(None, gt=0)
    """Passes over the training set, instead of `steps`."""
    learning_rate: float = Field(2e-4, gt=0, le=1)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    warmup_steps: int = Field(0, ge=0)
    batch_size: int = Field(8, ge=1)
    """Examples per device per forward pass."""
    gradient_accumulation_steps: int = Field(1, ge=1)
    """Forward passes per optimizer step: effective batch = batch_size × this."""
    max_seq_length: int = Field(512, ge=16)
    """Longer prompt+answer sequences are truncated from the left of the prompt."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about 30% slower."""
    optimizer: Literal["adamw_torch", "adamw_torch_fused", "adamw_8bit", "paged_adamw_8bit", "sgd"] = "adamw_torch"
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    seed: int = 0
    """Seeds adapter initialisation, dropout and data order."""
    save_steps: int = Field(50, ge=1)
    """Checkpoint every N steps so an interrupted run resumes from the last one."""
    heldout_examples: int = Field(32, ge=0)
    """Train-split examples held out of training to measure held-out loss and perplexity
    (at most a fifth of the train split; 0 disables)."""
    eval_steps: int | None = Field(None, ge=1)
    """Held-out evaluation every N steps (default: save_steps), logged to train_log.jsonl."""
    logging_steps: int = Field(10, ge=1)

    @model_validator(mode="after")
    def _steps_or_epochs(self) -> TrainSpec:
        if self.steps is not None and self.epochs is not None:
            raise ValueError("set steps or epochs, not both")
        return self

    @property
    def max_steps(self) -> int:
        """Optimizer steps to run, or -1 when `epochs` decides."""
        if self.epochs is not None:
            return -1
        return self.steps if self.steps is not None else 100


class IclSpec(Spec):
    """How prompts are built: instruction, in-context examples (shots) and the query."""

    shots: int = Field(0, ge=0, le=64)
    """Solved examples from the train split placed before the query (0 = zero-shot)."""
    seed: int = 0
    """Seeds the choice of shots."""
    strategy: Literal["random", "per_dataset", "balanced"] = "random"
    """`random`: any train examples; `per_dataset`: from the query's own dataset; `balanced`: as
    many shots per answer label (yes/no, or the correct option's position) as possible."""
    same_shots_for_all: bool = False
    """Use one set of shots for every query (per dataset with per_dataset) instead of fresh ones
    per query."""
    instruction: str = "Answer the question with a short answer taken from or based on the text."
    """First line of every prompt."""
    example_template: str = "{context}Question: {question}\n{options}Answer:"
    """Layout of one example; fields: {question}, {options}, {context}, each empty or ending in a
    newline. A shot is followed by ' <answer>'."""
    chat_template: Literal["auto", "never"] = "auto"
    """`auto` wraps the prompt in the tokenizer's chat template when it has one."""

    @field_validator("example_template")
    @classmethod
    def _known_fields(cls, value: str) -> str:
        allowed = {"question", "options", "context"}
        try:
            used = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
        except ValueError as exc:
            raise ValueError(f"not a valid template: {exc}") from None
        unknown = used - allowed
        if unknown:
            raise ValueError(f"unknown field(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
        if "question" not in used:
            raise ValueError("the template must contain {question}")
        return value


class EvalSpec(Spec):
    """What is scored and how predictions are sharded."""

    metrics: tuple[str, ...] = ("exact_match", "f1", "jaccard", "rouge_l", "option_accuracy", "yes_no_accuracy", "official")
    """Scorers applied to every prediction. Not part of the run's identity: scoring reads saved
    predictions, so a finished run asked for other metrics is rescored without the model."""
    shard_size: int = Field(64, ge=1)
    """Examples per prediction shard; an interrupted run resumes at the last complete shard."""
    merge_adapter: bool = True
    """Fold a trained adapter into full-precision base weights before generating (faster; equal
    up to float rounding). Quantized bases and prompt tuning are always evaluated unmerged."""
    reference_perplexity: bool = True
    """Also score the first reference answer's likelihood given each prompt (one extra forward
    pass per batch, untimed): perplexity for any model, trained or not."""

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        known = SCORERS.discover()
        unknown = [m for m in value if m not in known]
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}; known: {', '.join(known)}")
        return value


class OutputSpec(Spec):
    """Where artifacts go. Not part of the run digest: the same run may be stored anywhere."""

    storage: str | None = None
    """Storage URI (a folder, file:// or s3://bucket/prefix); `--storage` on the command line wins. Default:
    the QABENCH_STORAGE environment variable, else runs/ in the working folder."""


def _kind_of(default: str):
    def discriminate(value: Any) -> str:
        if isinstance(value, dict):
            return value.get("kind", default)
        return getattr(value, "kind", default)

    return discriminate


def _union(registry, default: str | None):
    records = registry.discover()
    members = tuple(Annotated[record.spec, Tag(kind)] for kind, record in records.items())
    if default is None:
        return Annotated[Union[members], Field(discriminator="kind")]
    return Annotated[Union[members], Discriminator(_kind_of(default))]


MethodUnion = _union(METHODS, None)
DecodingUnion = _union(DECODINGS, "greedy")


class Manifest(Spec):
    """One experiment: a model, an adaptation method, a prompt setup and a decoding strategy."""

    name: str
    """Run name; a safe path component (letters, digits, . _ -), used as the storage folder."""
    description: str = ""
    """Free text for people; not part of the run digest."""
    model: ModelSpec
    """The pretrained model."""
    data: DataSpec
    """Training and evaluation data."""
    method: MethodUnion  # type: ignore[valid-type]
    """Adaptation method, chosen by `kind`."""
    train: TrainSpec = TrainSpec()
    """Fine-tuning settings, used when the method trains."""
    icl: IclSpec = IclSpec()
    """Prompt layout and in-context examples."""
    decoding: DecodingUnion = Field(default_factory=lambda: DECODINGS.get("greedy").spec())  # type: ignore[valid-type]
    """Decoding strategy, chosen by `kind` (default greedy)."""
    eval: EvalSpec = EvalSpec()
    """Metrics and sharding."""
    output: OutputSpec = OutputSpec()
    devices: int = Field(1, ge=1, le=64)
    """GPUs on this host to run on: above 1, `runner run` starts one process per device under
    torchrun (data-parallel training, evaluation shards split between the processes)."""
    """Where artifacts are stored."""

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not SAFE_NAME.match(value):
            raise ValueError("must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit")
        return value


@dataclass(frozen=True)
class LoadedManifest:
    """A validated manifest together with where it came from."""

    manifest: Manifest
    path: Path

    @property
    def base_dir(self) -> Path:
        """Folder that relative paths in the manifest are resolved against."""
        return self.path.parent

    def resolve(self, relative: str) -> Path:
        """A manifest path made absolute against the manifest's folder."""
        return (self.base_dir / relative).resolve()

    def data_file(self, dataset: str, split: str) -> Path:
        """The TSV holding one split of one dataset."""
        return self.resolve(self.manifest.data.root) / dataset / f"{split}.tsv"

    def data_files(self) -> list[Path]:
        """Every data file the run reads, train splits first."""
        data = self.manifest.data
        splits = (data.train_split, data.eval_split) if METHODS.get(self.manifest.method.kind).trains or self.manifest.icl.shots else (data.eval_split,)
        return [self.data_file(d, s) for s in splits for d in data.datasets]


# ---------------------------------------------------------------------------------------------
# Loading: YAML with line numbers, every problem at once.


class _LineIndex:
    """Maps a path of keys/indices in a YAML document to the line it starts on (1-based)."""

    def __init__(self, root: yaml.Node):
        self.root = root

    def locate(self, loc: tuple[Any, ...]) -> tuple[int, str]:
        """Line of the deepest node on `loc` that exists, and the dotted field for humans."""
        node = self.root
        line = node.start_mark.line + 1
        shown: list[str] = []
        for part in loc:
            if node is not None:
                child = self._child(node, part)
                if child is not None:
                    key_node, node = child
                    line = (key_node or node).start_mark.line + 1
                    shown.append(str(part))
                    continue
                if self._is_kind_tag(node, part):
                    continue  # pydantic names the union member; the YAML has no such level
                node = None  # a missing or unknown key: report at its parent's line
            shown.append(str(part))
        return line, ".".join(shown)

    @staticmethod
    def _child(node: yaml.Node | None, part: Any):
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                    return key, value
        if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            return None, node.value[part]
        return None

    @staticmethod
    def _is_kind_tag(node: yaml.Node | None, part: Any) -> bool:
        if not isinstance(node, yaml.MappingNode):
            return False
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value == "kind":
                return isinstance(value, yaml.ScalarNode) and value.value == str(part)
        # A missing `kind` defaults (decoding: greedy); pydantic still names the member.
        return isinstance(part, str) and part in DECODINGS.discover()


def _duplicate_keys(node: yaml.Node, path: tuple[str, ...] = ()) -> list[tuple[int, str, str]]:
    """(line, dotted path, key) for every key that appears twice in one mapping."""
    found: list[tuple[int, str, str]] = []
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            name = str(key.value)
            if name in seen:
                found.append((key.start_mark.line + 1, ".".join(path + (name,)), name))
            seen.add(name)
            found += _duplicate_keys(value, path + (name,))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            found += _duplicate_keys(item, path + (str(index),))
    return found


def _parse_yaml(path: Path, text: str) -> tuple[Any, _LineIndex | None, list[Problem]]:
    shown = str(path)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = mark.line + 1 if mark is not None else 1
        reason = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        return None, None, [Problem(f"invalid YAML: {reason}", shown, line)]
    if root is None or data is None:
        return None, None, [Problem("file is empty; expected a manifest mapping (name, model, data, method, ...)", shown, 1)]
    if not isinstance(data, dict):
        kind = "a list" if isinstance(data, list) else f"a {type(data).__name__}"
        return None, None, [Problem(f"expected a mapping of manifest sections at the top level, got {kind}", shown, root.start_mark.line + 1)]
    problems = [
        Problem(f"duplicate key {key!r} (the later value would silently win)", shown, line, dotted)
        for line, dotted, key in _duplicate_keys(root)
    ]
    return data, _LineIndex(root), problems


def _pydantic_problems(path: Path, error: ValidationError, index: _LineIndex) -> list[Problem]:
    problems = []
    for item in error.errors(include_url=False):
        line, field = index.locate(tuple(item["loc"]))
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key (check the spelling; `python -m runner schema` lists every field)"
        elif message.startswith("Value error, "):
            message = message[len("Value error, "):]
        problems.append(Problem(message, str(path), line, field or None))
    return problems


def unfetched_data(loaded: LoadedManifest) -> list[Path]:
    """Official UnifiedQA files the run reads that are not on disk yet (`runner data fetch` gets them).

    Validation accepts these, so manifests can be checked before a large download; the run
    itself stops with exit 2 naming the missing files."""
    from runner.data.example import OFFICIAL_DATASET_FORMATS

    official = {d for d in loaded.manifest.data.datasets if d in OFFICIAL_DATASET_FORMATS}
    return [f for f in loaded.data_files() if f.parent.name in official and not f.is_file()]


def fetch_command(files: list[Path]) -> str:
    """The `runner data fetch` command that downloads these official files (first data root)."""
    datasets = " ".join(sorted({f.parent.name for f in files}))
    root = sorted({str(f.parent.parent) for f in files})[0]
    return f"python -m runner data fetch {datasets} --to {root}"


def _data_problems(loaded: LoadedManifest, index: _LineIndex, shown: str) -> list[Problem]:
    """Checks that need the file system: the data root and every split file exist (fetchable
    official files excepted, see `unfetched_data`)."""
    from runner.data import DATASET_FORMATS

    problems = []
    data = loaded.manifest.data
    root = loaded.resolve(data.root)
    pending = set(unfetched_data(loaded))
    if not root.is_dir() and not pending:
        line, field = index.locate(("data", "root"))
        return [Problem(f"data folder {root} does not exist", shown, line, field)]
    for position, dataset in enumerate(data.datasets):
        line, field = index.locate(("data", "datasets", position))
        if dataset not in DATASET_FORMATS:
            problems.append(Problem(f"unknown dataset {dataset!r}; known: {', '.join(sorted(DATASET_FORMATS))}", shown, line, field))
            continue
        for split in (data.train_split, data.eval_split):
            file = loaded.data_file(dataset, split)
            if file not in loaded.data_files():
                continue
            if not file.is_file() and file not in pending:
                problems.append(Problem(f"missing data file {file}", shown, line, field))
    return problems


def _model_problems(loaded: LoadedManifest, index: _LineIndex, shown: str) -> list[Problem]:
    model = loaded.manifest.model
    if model.path is None:
        return []
    folder = loaded.resolve(model.path)
    if (folder / "config.json").is_file():
        return []
    line, field = index.locate(("model", "path"))
    return [Problem(f"{folder} is not a saved model folder (no config.json)", shown, line, field)]


def check_manifest(path: Path) -> tuple[LoadedManifest | None, list[Problem]]:
    """Validate one manifest file; return it (when valid) and every problem found."""
    shown = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        return None, [Problem("file is not UTF-8 text", shown, line)]
    except OSError as exc:
        return None, [Problem(f"cannot read: {exc.strerror}", shown)]
    data, index, problems = _parse_yaml(path, text)
    if index is None:
        return None, problems
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as exc:
        return None, problems + _pydantic_problems(path, exc, index)
    loaded = LoadedManifest(manifest=manifest, path=path.resolve())
    for loc, message in METHODS.get(manifest.method.kind).cross_checks(manifest):
        line, field = index.locate(loc)
        problems.append(Problem(message, shown, line, field))
    problems += _model_problems(loaded, index, shown) + _data_problems(loaded, index, shown)
    return (None if problems else loaded), problems


def load_manifest(path: Path) -> LoadedManifest:
    """Load and validate a manifest, raising ManifestError with every problem."""
    loaded, problems = check_manifest(Path(path))
    if problems or loaded is None:
        raise ManifestError(problems)
    return loaded


def manifest_files(paths: list[Path]) -> list[Path]:
    """Manifest files named directly, or found recursively (*.yaml, *.yml) under folders."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())
        else:
            found.append(path)
    return found


# ---------------------------------------------------------------------------------------------
# Identity of a run.


def resolved_dict(manifest: Manifest) -> dict[str, Any]:
    """The manifest with every default filled in, as plain data."""
    return manifest.model_dump(mode="json")


def run_digest(loaded: LoadedManifest, data_hash: str) -> str:
    """12 hex digits identifying the run: the resolved manifest (minus output, description and
    metrics, which change nothing the run produces) and the data bytes.

    Paths enter as written, relative to the manifest, so the same checkout gives the same digest
    on any host; the data hash catches a changed file behind an unchanged path.
    """
    content = resolved_dict(loaded.manifest)
    content.pop("output")
    content.pop("description")
    content["eval"].pop("metrics")
    payload = json.dumps({"manifest": content, "data": data_hash}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def json_schema() -> dict[str, Any]:
    """JSON schema of the manifest."""
    return Manifest.model_json_schema()
