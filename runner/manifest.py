"""The experiment manifest: schema, and the one validation core (`content_problems`, `check_manifest`)
that `validate`, `run`, `plan`, grids and the Kubernetes renderer all use.

Importing this module must stay cheap (no torch): `runner validate` runs in a second.
"""

from __future__ import annotations

import copy
import json
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, Protocol, Union

from pydantic import Discriminator, Field, Tag, ValidationError, ValidationInfo, field_validator, model_validator

from runner.decoding import DECODINGS
from runner.errors import ManifestError, Problem, UserError
from runner.methods import METHODS
from runner.model_spec import ModelSpec
from runner.paths import TRAININGS
from runner.readers import READERS, read_split, split_file
from runner.scoring import SCORERS
from runner.spec import EXAMPLES_MAX, STEPS_MAX, Seed, Spec
from runner.storage_uri import storage_problem
from runner.yaml_lines import LineIndex, parse_value, parse_yaml, read_text

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class DataSpec(Spec):
    """Question-answering data: `<root>/<dataset>/<split>.<extension of the format>` for each dataset."""

    format: str = "unifiedqa_tsv"
    """File format, a registered reader: `unifiedqa_tsv` (UnifiedQA's TSV files, `<split>.tsv`) or
    `jsonl` (your own data, `<split>.jsonl`, see "Your own data" above)."""
    root: str
    """Folder holding one subfolder per dataset, relative to the manifest file."""
    datasets: tuple[str, ...] = Field(min_length=1)
    """Dataset folder names: UnifiedQA names (boolq, squad1_1, ...) or synthetic_* sets for
    `unifiedqa_tsv` (each fixes an answer format); any folder name for `jsonl`."""
    train_split: str = "train"
    """Split used for training and for in-context examples."""
    eval_split: str = "dev"
    """Split that is generated and scored; never used for training or as a shot."""
    max_train_examples: int | None = Field(None, ge=1, le=EXAMPLES_MAX)
    """Train on (and draw shots from) at most N training examples of each dataset, chosen by `train_sample`."""
    train_sample: Literal["first", "random"] = "first"
    """How `max_train_examples` chooses a dataset's examples: `first`, the first N of the file;
    `random`, a sample seeded by `train_sample_seed` and the dataset's name, kept in file order.
    UnifiedQA train files are in source order (SQuAD article by article), so the first N may cover
    few topics. `first` is the default so that trainings already stored keep their identity. The
    chosen ids are listed in the training's provenance.json (`train_sample`)."""
    train_sample_seed: Seed = 0
    """Seeds the `random` training sample."""
    max_eval_examples: int | None = Field(None, ge=1, le=EXAMPLES_MAX)
    """Score at most N evaluation examples of each dataset, chosen by `eval_sample`."""
    eval_sample: Literal["random", "first"] = "random"
    """How `max_eval_examples` chooses a dataset's examples: `random`, a sample seeded by
    `eval_sample_seed` and the dataset's name, kept in file order; `first`, the first N of the
    file (UnifiedQA dev files are not shuffled, so these are not representative). The evaluated
    ids are listed in the evaluation's provenance.json (`eval_sample`)."""
    eval_sample_seed: Seed = 0
    """Seeds the `random` sample: the same seed picks the same examples on every machine."""

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        known = READERS.discover()
        if value not in known:
            raise ValueError(f"unknown data format {value!r}; known: {', '.join(known)}")
        return value

    @field_validator("datasets")
    @classmethod
    def _each_once(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        repeated = sorted({d for d in value if value.count(d) > 1})
        if repeated:
            raise ValueError(f"{', '.join(repeated)} listed more than once: each dataset is read once")
        return value

    @field_validator("train_split", "eval_split")
    @classmethod
    def _plain_split_name(cls, value: str) -> str:
        # A split is a file name inside the dataset's folder: `../other/train` would read another
        # dataset's training data as this one's evaluation split.
        if not SAFE_NAME.match(value):
            raise ValueError("must be a plain file name (1-128 letters, digits, '.', '_' or '-', starting with a letter or digit), not a path")
        return value

    @field_validator("train_sample_seed", "eval_sample_seed")
    @classmethod
    def _seed_for_a_random_sample(cls, value: int, info: ValidationInfo) -> int:
        # Runs only for a value written in the manifest; 0 is the default a resolved manifest holds.
        # A field that failed its own check is absent from info.data and reported once, there.
        split = info.field_name.removesuffix("_sample_seed")
        first = info.data.get(f"{split}_sample", cls.model_fields[f"{split}_sample"].default) == "first"
        cap = f"max_{split}_examples"
        if value and (first or (cap in info.data and info.data[cap] is None)):
            raise ValueError(f"seeds only a random sample: set {cap} and {split}_sample: random, or remove it")
        return value

    @model_validator(mode="after")
    def _splits_differ(self) -> DataSpec:
        if self.train_split == self.eval_split:
            raise ValueError("train_split and eval_split must differ: evaluating on training data")
        return self


class TrainSpec(Spec):
    """Supervised fine-tuning (ignored by methods that do not train)."""

    steps: int | None = Field(None, ge=1, le=STEPS_MAX)
    """Optimizer steps; set this or `epochs` (default: 100 steps)."""
    epochs: float | None = Field(None, gt=0, le=1000)
    """Passes over the training set, instead of `steps`."""
    learning_rate: float = Field(2e-4, gt=0, le=1)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    warmup_steps: int = Field(0, ge=0, le=STEPS_MAX)
    batch_size: int = Field(8, ge=1, le=4096)
    """Examples per device per forward pass."""
    gradient_accumulation_steps: int = Field(1, ge=1, le=4096)
    """Forward passes per optimizer step: effective batch = batch_size × this."""
    max_seq_length: int = Field(512, ge=16, le=1_048_576)
    """Longer prompt+answer sequences are truncated from the left of the prompt."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about 30% slower."""
    optimizer: Literal["adamw_torch", "adamw_torch_fused", "adamw_8bit", "paged_adamw_8bit", "sgd"] = "adamw_torch"
    """`adamw_torch` (AdamW; `adamw_torch_fused`: in one fused kernel), `adamw_8bit` (bitsandbytes'
    AdamW with 8-bit moments: 2 bytes of state per trained weight instead of 8), `paged_adamw_8bit`
    (the same, its state paged to host memory when the GPU runs short; on CPU, where there is
    nothing to page, it runs as adamw_8bit and metrics.json `train.optimizer` says so), `sgd`."""
    weight_decay: float = Field(0.0, ge=0, le=1)
    max_grad_norm: float = Field(1.0, gt=0, le=1e6)
    seed: Seed = 0
    """Seeds adapter initialisation, dropout and data order."""
    save_steps: int = Field(50, ge=1, le=STEPS_MAX)
    """Checkpoint every N steps so an interrupted run resumes from the last one."""
    heldout_examples: int = Field(32, ge=0, le=1_000_000)
    """Train-split examples held out of training to measure held-out loss and perplexity
    (at most a fifth of the train split; 0 disables)."""
    eval_steps: int | None = Field(None, ge=1, le=STEPS_MAX)
    """Held-out evaluation every N steps (default: save_steps), logged to train_log.jsonl."""
    logging_steps: int = Field(10, ge=1, le=STEPS_MAX)
    """Trainer log records (loss, learning rate, grad norm) every N steps, in train_log.jsonl."""
    report_to: tuple[Literal["tensorboard"], ...] = ()
    """Also log training to these trackers: `tensorboard` writes event files next to the
    training's artifacts (`trainings/<digest>/tensorboard/`; `tensorboard --logdir` on a copy).
    Not part of the training's identity: a training reused from storage keeps the event files
    of the run that trained it."""

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
    seed: Seed = 0
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
    newline, inserted as they are (no format specs, conversions or attribute access). A shot is
    followed by ' <answer>'."""
    chat_template: Literal["auto", "always", "never"] = "auto"
    """`auto`: the tokenizer's chat template for instruction-tuned models (model.instruction_tuned,
    declared or read from the name), plain text for base models, so one grid compares models on
    one prompt format; `always`: the chat template whenever the tokenizer has one; `never`: plain
    text. Every prediction records the format it got (`prompt_format`)."""

    @field_validator("example_template")
    @classmethod
    def _known_fields(cls, value: str) -> str:
        allowed = {"question", "options", "context"}
        try:
            fields = [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(value) if name is not None]
        except ValueError as exc:
            raise ValueError(f"not a valid template: {exc}") from None
        # A field is replaced by its text as it is: a format spec ({question:>99999999999}) could
        # pad a prompt to gigabytes, a conversion ({question!r}) quotes it, and attribute or index
        # access ({question.x}) reaches into Python objects.
        for name, spec, conversion in fields:
            if conversion is not None:
                raise ValueError(f"{{{name}!{conversion}}}: conversions are not allowed; write {{{name}}}")
            if spec:
                raise ValueError(f"{{{name}:{spec}}}: format specs are not allowed; write {{{name}}}")
            if any(mark in name for mark in ".["):
                raise ValueError(f"{{{name}}}: attribute and index access are not allowed; fields: {{question}}, {{options}}, {{context}}")
        used = {name for name, _, _ in fields}
        unknown = used - allowed
        if unknown:
            raise ValueError(f"unknown field(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
        if "question" not in used:
            raise ValueError("the template must contain {question}")
        return value


class EvalSpec(Spec):
    """What is scored and how predictions are sharded."""

    metrics: tuple[str, ...] = ("exact_match", "f1", "jaccard", "rouge_l", "option_accuracy", "yes_no_accuracy", "unifiedqa")
    """Scorers applied to every prediction. Not part of the run's identity: scoring reads saved
    predictions, so a finished run asked for other metrics is rescored without the model."""
    shard_size: int = Field(64, ge=1, le=1_000_000)
    """Examples per prediction shard; an interrupted run resumes at the last complete shard."""
    merge_adapter: bool = True
    """Fold a trained adapter into full-precision base weights before generating (faster; equal
    up to float rounding). Quantized bases and prompt tuning are always evaluated unmerged."""
    protocol: str = "generate"
    """`generate`: the model writes its answer with the decoding strategy (every format).
    `loglikelihood`: multiple-choice options (and yes/no for yes/no questions) are ranked by the
    summed log-probability of each as a continuation of the prompt, as lm-evaluation-harness does;
    scored by `acc` and `acc_norm`. Only for yes/no and multiple-choice data (span and free-text
    questions have no choices to rank: refused at validation) and only with greedy decoding."""
    reference_perplexity: bool = True
    """Also score the first reference answer's likelihood given each prompt (one extra forward
    pass per batch, untimed): perplexity for any model, trained or not."""

    @model_validator(mode="before")
    @classmethod
    def _ranked_metrics_by_default(cls, data: Any) -> Any:
        # Ranked choices have their own scores; generated answers have none, so they are added
        # only where they mean something.
        if isinstance(data, dict) and data.get("protocol") == "loglikelihood" and "metrics" not in data:
            return {**data, "metrics": (*cls.model_fields["metrics"].default, "acc", "acc_norm")}
        return data

    @field_validator("protocol")
    @classmethod
    def _known_protocol(cls, value: str) -> str:
        from runner.protocols import PROTOCOLS

        known = PROTOCOLS.discover()
        if value not in known:
            raise ValueError(f"unknown protocol {value!r}; known: {', '.join(known)}")
        return value

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
    """Where to store: a folder (relative to this manifest's folder, like every path here),
    file:///ABSOLUTE/PATH (three slashes: file://runs or file://tmp/x would name a host and are
    refused) or s3://BUCKET/PREFIX (no credentials in it: they come from AWS_ACCESS_KEY_ID /
    AWS_SECRET_ACCESS_KEY or AWS_PROFILE). `--storage` on the command line wins; its relative
    folders, and those of QABENCH_STORAGE, are relative to the working folder. Default: the
    QABENCH_STORAGE environment variable, else runs/ in the working folder."""

    @field_validator("storage")
    @classmethod
    def _storage_location(cls, value: str | None) -> str | None:
        problem = None if value is None else storage_problem(value)
        if problem:
            raise ValueError(problem)
        return value


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
        if value == TRAININGS:
            raise ValueError(f"{TRAININGS!r} is the storage folder of training stages; choose another name")
        return value


class Override(NamedTuple):
    """One `--set FIELD=VALUE` of `run`, `validate` or `plan`: a field of the manifest replaced for this command."""

    path: str
    """Dotted manifest path, e.g. `decoding.batch_size` (a number picks an item of a list)."""
    value: str
    """The value as written, read as YAML like the file: `4`, `true`, `[a, b]`, `{kind: lora}`."""

    def __str__(self) -> str:
        return f"{self.path}={self.value}"


_PATH_PART = re.compile(r"^(?:[A-Za-z_][A-Za-z0-9_]*|[0-9]+)$")


def parse_overrides(texts: list[str] | None) -> tuple[Override, ...]:
    """`--set` arguments as overrides, in order; UserError naming each malformed one (before any manifest is read)."""
    overrides, problems = [], []
    for text in texts or []:
        path, equals, value = text.partition("=")
        if not equals:
            problems.append(f"--set {text}: expected FIELD=VALUE, e.g. --set decoding.batch_size=4")
            continue
        if not all(_PATH_PART.match(part) for part in path.split(".")):
            problems.append(f"--set {text}: {path!r} is not a dotted manifest field like decoding.batch_size")
            continue
        _, why = parse_value(value)
        if why:
            problems.append(f"--set {text}: {why}")
            continue
        overrides.append(Override(path, value))
    if problems:
        raise UserError(problems)
    return tuple(overrides)


def _describe(value: Any) -> str:
    if isinstance(value, list):
        return f"a list of {len(value)} item(s)"
    shown = json.dumps(value)
    return shown if len(shown) <= 40 else shown[:37] + "..."


def _apply(data: dict[str, Any], override: Override) -> str | None:
    """Set one override's value in a parsed manifest; why it cannot be set, or None.

    Sections the file leaves out are created (`--set train.steps=5` without a `train:` block).
    Every mapping and list on the path is copied first: YAML aliases may share one between sections.
    """
    value, why = parse_value(override.value)
    if why:
        return why
    parts = override.path.split(".")
    node: Any = data
    for depth, part in enumerate(parts):
        above = ".".join(parts[:depth])
        key: Any = part
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                return f"{above} is {_describe(node)}; {part} is not a position in it (the first is 0)"
            key = int(part)
        elif not isinstance(node, dict):
            return f"{above} is {_describe(node)}, not a mapping, so {override.path} cannot be set"
        if depth == len(parts) - 1:
            node[key] = value
            return None
        child = node[key] if isinstance(node, list) else node.get(key)
        if child is None:
            child = {}
        elif isinstance(child, (dict, list)):
            child = copy.copy(child)
        node[key] = child
        node = child
    return None


class Locator(Protocol):
    """Says where a field of a manifest was written: (line, dotted field)."""

    def locate(self, loc: tuple[Any, ...]) -> tuple[int | None, str]: ...


@dataclass(frozen=True)
class _OverriddenIndex:
    """Locates a problem of a manifest read with overrides: a field an override set is named by the
    override (no line of the file holds its value); every other field by its line in the file."""

    index: LineIndex
    overrides: tuple[Override, ...]

    def locate(self, loc: tuple[Any, ...]) -> tuple[int | None, str]:
        parts = tuple(str(part) for part in loc)
        for override in reversed(self.overrides):  # the last override of a field is the one that holds
            path = tuple(override.path.split("."))
            if parts and (parts[: len(path)] == path or path[: len(parts)] == parts):
                deeper = ".".join(parts[len(path):])
                return None, f"--set {override}" + (f": {override.path}.{deeper}" if deeper else "")
        return self.index.locate(loc)


@dataclass(frozen=True)
class LoadedManifest:
    """A validated manifest together with where it came from."""

    manifest: Manifest
    path: Path
    overrides: tuple[Override, ...] = ()
    """The `--set` overrides applied on top of the file, in order; `manifest` holds their values."""

    @property
    def base_dir(self) -> Path:
        """Folder that relative paths in the manifest are resolved against."""
        return self.path.parent

    def resolve(self, relative: str) -> Path:
        """A manifest path made absolute against the manifest's folder."""
        return (self.base_dir / relative).resolve()

    @property
    def data_root(self) -> Path:
        """The data folder, absolute."""
        return self.resolve(self.manifest.data.root)

    def data_file(self, dataset: str, split: str) -> Path:
        """The file holding one split of one dataset."""
        return split_file(self.data_root, dataset, split, self.manifest.data.format)

    @property
    def reads_train_split(self) -> bool:
        """Whether the run reads the train split: to train, or to draw shots from."""
        return METHODS.get(self.manifest.method.kind).trains or self.manifest.icl.shots > 0

    def train_files(self) -> list[Path]:
        """The train split's files (empty when the run reads no train split)."""
        data = self.manifest.data
        return [self.data_file(d, data.train_split) for d in data.datasets] if self.reads_train_split else []

    def eval_files(self) -> list[Path]:
        """The evaluated split's files."""
        data = self.manifest.data
        return [self.data_file(d, data.eval_split) for d in data.datasets]

    def data_files(self) -> list[Path]:
        """Every data file the run reads, train splits first."""
        return self.train_files() + self.eval_files()

    def relative_data_name(self, file: Path) -> str:
        """`<dataset>/<split file>`: a data file named independently of where the data folder is."""
        return file.relative_to(self.data_root).as_posix()


# ---------------------------------------------------------------------------------------------
# The validation core: content first (no files needed), then what needs this host's files.

MANIFEST_MAPPING = "a mapping of manifest sections"


def _parse_manifest_yaml(path: Path, text: str) -> tuple[Any, LineIndex | None, list[Problem]]:
    # A decoding block without `kind` is greedy, yet pydantic still names the member in locations.
    return parse_yaml(path, text, MANIFEST_MAPPING, frozenset(DECODINGS.discover()))


def _is_union_tag(data: Any, part: Any) -> bool:
    """Whether `part` is the union member pydantic names (method.lora.r) rather than a data key."""
    if not isinstance(data, dict) or part in data:
        return False
    return data.get("kind") == part or ("kind" not in data and part in DECODINGS.discover())


def _data_path(data: Any, loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """A pydantic error location as a path in the data: union member tags are dropped."""
    path: list[Any] = []
    for part in loc:
        if _is_union_tag(data, part):
            continue
        path.append(part)
        if isinstance(data, dict):
            data = data.get(part)
        elif isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
            data = data[part]
        else:
            data = None
    return tuple(path)


# pydantic's wording for numbers a manifest cannot use, in the manifest's terms.
_PLAINER = {
    "finite_number": "must be a finite number (not .inf or .nan)",
    "int_parsing_size": "is far too large a number for this field",
}


def content_problems(data: dict[str, Any]) -> tuple[Manifest | None, list[tuple[tuple[Any, ...], str]]]:
    """The manifest (when its content is valid) and every schema or cross-section problem as (path, message).

    Needs no file: grids and a cluster's manifests are checked on hosts that need not hold the data.
    """
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as exc:
        found = []
        for item in exc.errors(include_url=False):
            message = item["msg"].removeprefix("Value error, ")
            if item["type"] == "extra_forbidden":
                message = "unknown key (check the spelling; `python -m runner schema` lists every field)"
            elif item["type"] in _PLAINER:
                message = _PLAINER[item["type"]]
            found.append((_data_path(data, tuple(item["loc"])), message))
        return None, found
    found = [(tuple(loc), message) for loc, message in METHODS.get(manifest.method.kind).cross_checks(manifest)]
    found += protocol_problems(manifest)
    return (None if found else manifest), found


def protocol_problems(manifest: Manifest) -> list[tuple[tuple[Any, ...], str]]:
    """A protocol that cannot answer a dataset's format, or is given a decoding it would ignore."""
    from runner.data.example import DATASET_FORMATS
    from runner.protocols import PROTOCOLS

    name = manifest.eval.protocol
    protocol = PROTOCOLS.get(name)
    found = []
    if not protocol.decodes and manifest.decoding.kind != "greedy":
        found.append((("decoding", "kind"), f"eval.protocol: {name} generates nothing, so decoding.{manifest.decoding.kind} would change nothing; remove the decoding block"))
    if manifest.data.format == "unifiedqa_tsv":
        for position, dataset in enumerate(manifest.data.datasets):
            answer_format = DATASET_FORMATS.get(dataset)
            if answer_format is not None and answer_format not in protocol.formats:
                found.append((("data", "datasets", position), unanswerable(name, dataset, answer_format)))
    return found


def unanswerable(protocol: str, dataset: str, answer_format: str) -> str:
    """Why a protocol refuses a dataset (one message for validation and for the run)."""
    from runner.protocols import PROTOCOLS

    allowed = " and ".join(sorted(PROTOCOLS.get(protocol).formats))
    return (
        f"{dataset} is {answer_format}: eval.protocol: {protocol} ranks given choices, so it answers only {allowed} "
        "questions; evaluate this dataset in a manifest with eval.protocol: generate"
    )


def unfetched_data(loaded: LoadedManifest) -> list[Path]:
    """Files the run reads that `runner data fetch` can still download (official UnifiedQA files).

    Validation accepts these, so manifests can be checked before a large download; the run
    itself stops with exit 2 naming the missing files."""
    reader = READERS.get(loaded.manifest.data.format)
    return [f for f in loaded.data_files() if reader.fetchable(f.parent.name) and not f.is_file()]


def fetch_command(files: list[Path]) -> str:
    """The `runner data fetch` command that downloads these official files (first data root)."""
    datasets = " ".join(sorted({f.parent.name for f in files}))
    splits = sorted({f.stem for f in files})
    root = sorted({str(f.parent.parent) for f in files})[0]
    # The default splits (train, dev) need no flag; a test split does.
    wanted = "" if set(splits) <= {"train", "dev"} else f" --splits {' '.join(splits)}"
    return f"python -m runner data fetch {datasets}{wanted} --to {root}"


def _data_problems(loaded: LoadedManifest, index: Locator, shown: str) -> list[Problem]:
    """The data root and every split file exist (fetchable official files excepted, see `unfetched_data`)."""
    data = loaded.manifest.data
    reader = READERS.get(data.format)
    pending = set(unfetched_data(loaded))
    if not loaded.data_root.is_dir() and not pending:
        line, field = index.locate(("data", "root"))
        return [Problem(f"data folder {loaded.data_root} does not exist", shown, line, field)]
    problems = []
    reads = set(loaded.data_files())
    for position, dataset in enumerate(data.datasets):
        line, field = index.locate(("data", "datasets", position))
        problem = reader.dataset_problem(dataset)
        if problem:
            problems.append(Problem(problem, shown, line, field))
            continue
        for split in (data.train_split, data.eval_split):
            file = loaded.data_file(dataset, split)
            if file in reads and not file.is_file() and file not in pending:
                problems.append(Problem(f"missing data file {file}", shown, line, field))
    return problems


def train_pool_sizes(loaded: LoadedManifest) -> tuple[dict[str, int], list[Problem]]:
    """Train examples each dataset offers as shots (after max_train_examples), and the train files' problems.

    Only for manifests that draw shots and whose train files are on disk (empty otherwise)."""
    data = loaded.manifest.data
    if not loaded.manifest.icl.shots:
        return {}, []
    sizes, problems = {}, []
    for dataset in data.datasets:
        file = loaded.data_file(dataset, data.train_split)
        if not file.is_file():
            return {}, []
        try:
            read = read_split(file, dataset, data.train_split, data.format)  # cached: the run reuses it
        except OSError as exc:
            problems.append(Problem(f"cannot read: {exc.strerror}", str(file)))
            continue
        problems += read.problems
        count = len(read.examples)
        sizes[dataset] = count if data.max_train_examples is None else min(count, data.max_train_examples)
    return sizes, problems


def shot_notes(loaded: LoadedManifest) -> list[str]:
    """Datasets whose queries will get fewer shots than asked (per_dataset draws from a small pool)."""
    icl = loaded.manifest.icl
    if icl.strategy != "per_dataset":
        return []
    sizes, _ = train_pool_sizes(loaded)
    return [
        f"{loaded.path}: icl.shots: {dataset} has {size} train example(s), so its queries get {size} shot(s), not {icl.shots}; "
        "each prediction records the shots it got (n_shots) and metrics.json counts the short rows"
        for dataset, size in sizes.items()
        if size < icl.shots
    ]


def _shot_problems(loaded: LoadedManifest, index: Locator, shown: str) -> list[Problem]:
    """The train split holds at least as many examples as shots (the evaluated questions are never in it)."""
    sizes, problems = train_pool_sizes(loaded)
    shots = loaded.manifest.icl.shots
    if sizes and not problems and shots > sum(sizes.values()):
        line, field = index.locate(("icl", "shots"))
        problems.append(Problem(f"{shots} shots need at least as many train examples; the train split has {sum(sizes.values())}", shown, line, field))
    return problems


def _format_problems(loaded: LoadedManifest, index: Locator, shown: str) -> list[Problem]:
    """Malformed rows of the evaluated files, and datasets whose evaluated rows the protocol cannot
    answer (formats read from the files of datasets the format table does not know, e.g. JSONL)."""
    from runner.protocols import PROTOCOLS

    manifest = loaded.manifest
    protocol = PROTOCOLS.get(manifest.eval.protocol)
    problems = []
    for position, dataset in enumerate(manifest.data.datasets):
        file = loaded.data_file(dataset, manifest.data.eval_split)
        if not file.is_file():
            continue
        try:
            read = read_split(file, dataset, manifest.data.eval_split, manifest.data.format)  # cached: the run reuses it
        except OSError:
            continue  # reported where the run reads it
        problems += read.problems  # a malformed row stops the run before any model loads: say so now
        formats = sorted({e.format for e in read.examples} - protocol.formats)
        if formats:
            line, field = index.locate(("data", "datasets", position))
            problems.append(Problem(unanswerable(manifest.eval.protocol, dataset, " and ".join(formats)), shown, line, field))
    return problems


def _folder_problem(loaded: LoadedManifest, relative: str, marker: tuple[str, ...], what: str) -> str | None:
    folder = loaded.resolve(relative)
    found = next((folder / name for name in marker if (folder / name).is_file()), None)
    if found is None:
        return f"{folder} is not {what} (no {' or '.join(marker)})"
    # Read now, not when the model loads after the data and a draft: a broken config is known here.
    try:
        config = json.loads(found.read_bytes())
    except (OSError, ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return f"{found} is not a JSON file ({' '.join(str(exc).split())[:200] or 'nested too deeply'})"
    if not isinstance(config, dict):
        return f"{found} is not a JSON object"
    if found.name == "config.json" and not config.get("model_type"):
        return f"{found} has no model_type: not the config of a saved transformers model"
    return None


def _model_problems(loaded: LoadedManifest, index: Locator, shown: str, seen: frozenset[Path]) -> list[Problem]:
    """Model folders exist; a draft's saved adapter exists; a draft manifest is itself valid (no cycles)."""
    problems = []
    manifest = loaded.manifest
    if manifest.model.path is not None:
        problem = _folder_problem(loaded, manifest.model.path, ("config.json",), "a saved model folder")
        if problem:
            problems.append(Problem(problem, shown, *index.locate(("model", "path"))))
    draft = DECODINGS.get(manifest.decoding.kind).draft(manifest.decoding)
    if draft is None:
        return problems
    where = ("decoding", "draft")
    if draft.path is not None:
        problem = _folder_problem(loaded, draft.path, ("config.json",), "a saved model folder")
        if problem:
            problems.append(Problem(problem, shown, *index.locate(where + ("path",))))
    if draft.adapter is not None:
        problem = _folder_problem(loaded, draft.adapter, ("adapter_config.json", "config.json"), "a saved adapter or model folder")
        if problem:
            problems.append(Problem(problem, shown, *index.locate(where + ("adapter",))))
    if draft.manifest is not None:
        line, field = index.locate(where + ("manifest",))
        target = loaded.resolve(draft.manifest)
        if target in seen:
            problems.append(Problem(f"{target} drafts with itself, directly or through other manifests", shown, line, field))
        elif not target.is_file():
            problems.append(Problem(f"{target}: no such manifest", shown, line, field))
        else:
            referenced, found = _check(target, True, seen)
            if found:
                problems.append(Problem(f"the draft's manifest is invalid: {found[0]}" + (f" (and {len(found) - 1} more)" if len(found) > 1 else ""), shown, line, field))
    return problems


def _check(
    path: Path, check_files: bool, seen: frozenset[Path], overrides: tuple[Override, ...] = ()
) -> tuple[LoadedManifest | None, list[Problem]]:
    shown = str(path)
    text, problems = read_text(path)
    if text is None:
        return None, problems
    data, parsed, problems = _parse_manifest_yaml(path, text)
    if parsed is None:
        return None, problems
    index: Locator = parsed
    if overrides:
        # Applied to the data before validation, so an override meets the same schema and cross-checks as the file.
        unset = [Problem(why, shown, None, f"--set {override}") for override in overrides if (why := _apply(data, override))]
        if unset:
            return None, problems + unset
        index = _OverriddenIndex(parsed, overrides)
    manifest, found = content_problems(data)
    # A value the YAML check already refused (`1:30`) would fail its field's type too: say it once.
    refused = {(p.line, p.field) for p in problems}
    for loc, message in found:
        line, field = index.locate(loc)
        if (line, field or None) not in refused:
            problems.append(Problem(message, shown, line, field or None))
    if manifest is None:
        return None, problems
    loaded = LoadedManifest(manifest=manifest, path=path.resolve(), overrides=overrides)
    if check_files:
        problems += _model_problems(loaded, index, shown, seen | {loaded.path}) + _data_problems(loaded, index, shown)
        problems += [] if problems else _shot_problems(loaded, index, shown) + _format_problems(loaded, index, shown)
    return (None if problems else loaded), problems


def check_manifest(
    path: Path, check_files: bool = True, overrides: tuple[Override, ...] = ()
) -> tuple[LoadedManifest | None, list[Problem]]:
    """Validate one manifest file; return it (when valid) and every problem found, each at its line.

    `check_files=False` checks the content only (no data files, model folders or referenced
    manifests), for manifests that will run on another host. `overrides` replace fields of the
    file before it is validated (`--set`); a problem in a field one of them set names the override
    instead of a line. A draft's `manifest:` is read as written, without them.
    """
    return _check(Path(path), check_files, frozenset(), tuple(overrides))


def load_manifest(path: Path, check_files: bool = True, overrides: tuple[Override, ...] = ()) -> LoadedManifest:
    """Load and validate a manifest (with `--set` overrides, if any), raising ManifestError with every problem."""
    loaded, problems = check_manifest(Path(path), check_files, overrides)
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


def resolved_dict(manifest: Manifest) -> dict[str, Any]:
    """The manifest with every default filled in, as plain data."""
    return manifest.model_dump(mode="json")


def json_schema() -> dict[str, Any]:
    """JSON schema of the manifest; `manifests/schema.json`, which editors find through each manifest's first line."""
    schema = Manifest.model_json_schema()
    # `kind` chooses a union's member. A decoding block without one is greedy, so every other member
    # must name itself: otherwise `decoding: {batch_size: 8}` fits greedy, sample and prompt_lookup
    # alike and an editor flags the schema's oneOf, where the runner reads greedy.
    for registry, default in ((METHODS, None), (DECODINGS, "greedy")):
        for kind, record in registry.discover().items():
            spec = schema["$defs"][record.spec.__name__]
            if kind != default and "kind" not in spec.get("required", []):
                spec["required"] = ["kind", *spec.get("required", [])]
    return schema
