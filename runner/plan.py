"""The stage graph of a set of manifests before anything runs: which trainings and evaluations are
distinct, which are done, partly done or pending in storage, and who shares each training.

`runner plan` prints it; `just grid` and `runner k8s` take their run order from `Plan.schedule`,
so a grid whose manifests share trainings starts each training once, first.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from runner.checkpoints import newest_stored_checkpoint
from runner.context import DataRead, TrainingStage, identify, read_data
from runner.decoding import DECODINGS
from runner.errors import InfraError, UserError
from runner.identity import request_key, training_request
from runner.lease import current_holder
from runner.manifest import LoadedManifest, load_manifest
from runner.methods import METHODS
from runner.paths import RunKeys
from runner.shards import completed_shards
from runner.storage import Store, open_store
from runner.storage_uri import StorageLocation, choose_storage, redact

COMPLETE, PARTIAL, PENDING, UNKNOWN = "complete", "partial", "pending", "unknown"


@dataclass(frozen=True)
class PlannedTraining:
    """One distinct training and the manifests that need it."""

    key: str
    """The training digest, or `~<request digest>` when the model or data could not be resolved here."""
    what: str
    """`<method> on <model>` for people."""
    trained_by: tuple[str, ...]
    """Manifests whose own method trains it."""
    drafts_for: tuple[str, ...]
    """Manifests that use it as their speculative draft."""
    state: str
    detail: str = ""


@dataclass(frozen=True)
class PlannedEvaluation:
    """One manifest's evaluation."""

    manifest: str
    name: str
    digest: str | None
    training: str | None
    draft_training: str | None
    state: str
    detail: str = ""
    shards_done: int | None = None
    shards_total: int | None = None


@dataclass(frozen=True)
class Plan:
    """Trainings in order of first use, evaluations in manifest order."""

    trainings: tuple[PlannedTraining, ...]
    evaluations: tuple[PlannedEvaluation, ...]
    storage: tuple[str, ...] = ()
    unresolved: tuple[str, ...] = field(default=())
    """Why some identities could not be resolved (one line per distinct reason)."""

    def schedule(self) -> list[str]:
        """Manifests in run order: the first user of each training (in order of first use), then the rest.

        Started in this order with N workers, the first N trainings run side by side and the
        manifests that reuse a training come after it, so nobody waits on a lease they could avoid.
        """
        first = []
        for training in self.trainings:
            users = training.trained_by + training.drafts_for
            if users and users[0] not in first:
                first.append(users[0])
        return first + [e.manifest for e in self.evaluations if e.manifest not in first]

    def as_json(self) -> dict[str, Any]:
        """The plan for scripts."""
        return {
            "storage": list(self.storage),
            "counts": {"trainings": len(self.trainings), "evaluations": len(self.evaluations), **self.counts()},
            "unresolved": list(self.unresolved),
            "trainings": [asdict(training) for training in self.trainings],
            "evaluations": [asdict(evaluation) for evaluation in self.evaluations],
        }

    def counts(self) -> dict[str, dict[str, int]]:
        """How many trainings and evaluations are in each state."""
        result: dict[str, dict[str, int]] = {"training_states": {}, "evaluation_states": {}}
        for training in self.trainings:
            result["training_states"][training.state] = result["training_states"].get(training.state, 0) + 1
        for evaluation in self.evaluations:
            result["evaluation_states"][evaluation.state] = result["evaluation_states"].get(evaluation.state, 0) + 1
        return result


@dataclass
class _Training:
    key: str
    what: str
    stage: TrainingStage | None
    store: Store | None
    trained_by: list[str] = field(default_factory=list)
    drafts_for: list[str] = field(default_factory=list)


def _what(loaded: LoadedManifest) -> str:
    model = loaded.manifest.model
    return f"{loaded.manifest.method.kind} on {model.hub or model.path or model.package}"


def _training_status(stage: TrainingStage | None, store: Store | None) -> tuple[str, str]:
    if stage is None or store is None:
        return UNKNOWN, ""
    keys = stage.keys
    if store.exists(keys.success):
        return COMPLETE, ""
    holder = current_holder(store, keys)
    step = newest_stored_checkpoint(store, keys)
    training_now = f"; being trained by {holder.describe()}" if holder is not None and not holder.expired else ""
    if step is not None:
        return PARTIAL, f"resumes from checkpoint-{step}{training_now}"
    return (PARTIAL, training_now[2:]) if training_now else (PENDING, "")


def _unresolved_training_key(loaded: LoadedManifest) -> str | None:
    if not METHODS.get(loaded.manifest.method.kind).trains:
        return None
    return "~" + request_key(training_request(loaded.manifest))


def _draft_manifest(loaded: LoadedManifest, check_files: bool) -> LoadedManifest | None:
    spec = DECODINGS.get(loaded.manifest.decoding.kind).draft(loaded.manifest.decoding)
    if spec is None or spec.manifest is None:
        return None
    return load_manifest(loaded.resolve(spec.manifest), check_files=check_files)


def _resolved(loaded: LoadedManifest) -> tuple[Any, str | None]:
    """(identify's stages and keys plus the data read, None) or (None, why they cannot be resolved here)."""
    try:
        data = read_data(loaded)
        return (*identify(loaded, data), data), None
    except (UserError, InfraError) as exc:
        return None, str(exc).splitlines()[0]


def build_plan(manifests: list[LoadedManifest], storage: str | None, resolve: bool = True) -> Plan:
    """The stage graph of `manifests`; with `resolve`, identities from data, hub and storage.

    Without `resolve` (or when a manifest's data or hub revision cannot be read here), trainings
    are grouped by their manifest fields alone and their status is unknown.
    """
    stores: dict[StorageLocation, Store] = {}
    trainings: dict[str, _Training] = {}
    evaluations: list[PlannedEvaluation] = []
    reasons: list[str] = []

    def use(key: str, what: str, stage: TrainingStage | None, store: Store | None) -> _Training:
        return trainings.setdefault(key, _Training(key, what, stage, store))

    resolutions = []
    for loaded in manifests:
        shown = str(loaded.path)
        store = None
        if resolve:
            # Keyed by where it points: `runs` in two manifest folders is two stores (output.storage
            # resolves against each manifest's folder).
            location = choose_storage(storage, loaded.manifest.output.storage, loaded.base_dir)
            if location not in stores:
                stores[location] = open_store(location)  # an unreachable store is exit 3, naming the endpoint
            store = stores[location]
        resolved, reason = _resolved(loaded) if resolve else (None, None)
        if reason and reason not in reasons:
            reasons.append(reason)
        if resolved is None:
            key = _unresolved_training_key(loaded)
            if key is not None:
                use(key, _what(loaded), None, None).trained_by.append(shown)
            draft_loaded = _draft_manifest(loaded, check_files=resolve)
            draft_key = _unresolved_training_key(draft_loaded) if draft_loaded is not None else None
            if draft_key is not None:
                use(draft_key, _what(draft_loaded), None, None).drafts_for.append(shown)
            resolutions.append((loaded, None, None, key, draft_key, None))
            continue
        training, draft, keys, data = resolved
        if training is not None:
            use(training.keys.digest, _what(loaded), training, store).trained_by.append(shown)
        draft_training = draft.training if draft is not None else None
        if draft_training is not None:
            use(draft_training.keys.digest, _what(draft_training.loaded), draft_training, store).drafts_for.append(shown)
        resolutions.append((loaded, keys, store, training.keys.digest if training else None, draft_training.keys.digest if draft_training else None, data))

    planned_trainings = []
    for training in trainings.values():
        state, detail = _training_status(training.stage, training.store)
        planned_trainings.append(PlannedTraining(training.key, training.what, tuple(training.trained_by), tuple(training.drafts_for), state, detail))
    states = {training.key: training.state for training in planned_trainings}
    evaluations = [_evaluation(*resolution, states) for resolution in resolutions]
    return Plan(tuple(planned_trainings), tuple(evaluations), tuple(redact(s.uri) for s in stores.values()), tuple(reasons))


def _evaluation(
    loaded: LoadedManifest, keys: RunKeys | None, store: Store | None, training: str | None, draft_training: str | None, data: DataRead | None, states: dict[str, str]
) -> PlannedEvaluation:
    name = loaded.manifest.name
    if keys is None or store is None:
        return PlannedEvaluation(str(loaded.path), name, None, training, draft_training, UNKNOWN)
    total = -(-len(data.evaluate) // loaded.manifest.eval.shard_size)
    if store.exists(keys.success):
        return PlannedEvaluation(str(loaded.path), name, keys.digest, training, draft_training, COMPLETE, "", total, total)
    done = completed_shards(store, keys)
    waits = [key for key in (draft_training, training) if key is not None and states.get(key) != COMPLETE]
    after = f"after training {', '.join(waits)}" if waits else ""
    if done:
        resume = min(set(range(total)) - done, default=None)
        detail = f"{len(done)}/{total} shards; resumes at shard {resume}" if resume is not None else f"{total}/{total} shards; scoring left"
        return PlannedEvaluation(str(loaded.path), name, keys.digest, training, draft_training, PARTIAL, detail, len(done), total)
    return PlannedEvaluation(str(loaded.path), name, keys.digest, training, draft_training, PENDING, after, 0, total)


def render_text(plan: Plan) -> str:
    """The plan for people: counts, then one line per training and per evaluation."""
    lines = [f"{len(plan.trainings)} distinct training(s), {len(plan.evaluations)} evaluation(s)"]
    if plan.storage:
        lines[0] += f" — storage {', '.join(plan.storage)}"
    counts = plan.counts()
    for label, states in (("trainings", counts["training_states"]), ("evaluations", counts["evaluation_states"])):
        lines.append(f"  {label}: " + ", ".join(f"{n} {state}" for state, n in sorted(states.items())))
    for reason in plan.unresolved:
        lines.append(f"  not resolved here (grouped by manifest fields, status unknown): {reason}")
    lines += ["", "trainings"]
    for training in plan.trainings:
        users = [Path(m).name for m in training.trained_by] + [f"{Path(m).name} (draft)" for m in training.drafts_for]
        detail = f" ({training.detail})" if training.detail else ""
        lines.append(f"  {training.key:<13} {training.state:<9} {training.what}{detail}")
        lines.append(f"  {'':<13} used by {len(users)}: {', '.join(users)}")
    lines += ["", "evaluations"]
    for evaluation in plan.evaluations:
        where = f"{evaluation.name}/{evaluation.digest}" if evaluation.digest else evaluation.name
        uses = [f"training {evaluation.training}"] if evaluation.training else []
        uses += [f"draft training {evaluation.draft_training}"] if evaluation.draft_training else []
        detail = f" ({evaluation.detail})" if evaluation.detail else ""
        lines.append(f"  {where:<40} {evaluation.state:<9}{detail}" + (f" — {', '.join(uses)}" if uses else ""))
    return "\n".join(lines) + "\n"
