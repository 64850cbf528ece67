"""Stage identities: exactly what determines a training's weights and an evaluation's predictions.

A *training* is identified by the base model's weights (resolved hub commit, or file hashes),
the method, the training settings, the prompt layout training tokenizes with, the number of
data-parallel processes and the bytes of the train split. An *evaluation* is identified by its
training (or the base model when nothing is trained), the prompting, the decoding (a draft's own
training or weights included), the evaluated data and the evaluation settings. Names,
descriptions, storage and metric lists are in neither: they change nothing a stage produces.

Requests (the manifest fields alone) need no file and no network, so grids can be grouped by
training anywhere; digests add what the files and the hub say.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from runner.manifest import Manifest, resolved_dict
from runner.prompt_style import requested_style

PROMPT_LAYOUT = ("instruction", "example_template", "chat_template")
"""`icl` fields that shape every training sequence (shots do not: training is zero-shot)."""
OBSERVERS = ("report_to",)
"""`train` fields that only watch a training: they change no weight, so no digest."""
EVAL_SETTINGS = ("shard_size", "merge_adapter", "reference_perplexity", "protocol")
"""`eval` fields that change what an evaluation stores (`metrics` does not: scoring is redone from shards)."""


def digest_of(payload: Any) -> str:
    """12 hex digits of sha256 over canonical JSON."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:12]


def training_request(manifest: Manifest) -> dict[str, Any]:
    """The manifest fields that decide a training's weights, as written (model as named, not resolved)."""
    content = resolved_dict(manifest)
    data = content["data"]
    return {
        "model": {key: value for key, value in content["model"].items() if key != "trust_remote_code"},
        "method": content["method"],
        "train": {key: value for key, value in content["train"].items() if key not in OBSERVERS},
        "prompt": {**{key: content["icl"][key] for key in PROMPT_LAYOUT}, "style": requested_style(manifest)},
        "data": {key: data[key] for key in ("format", "datasets", "train_split", "max_train_examples", *_train_sample_keys(manifest))},
        # Data parallelism changes the effective batch and the order examples are seen in.
        "devices": content["devices"],
    }


def _train_sample_keys(manifest: Manifest) -> list[str]:
    """The training-sample fields, where they choose the examples: `first`, or no cap, keeps the digests it always had."""
    if manifest.data.max_train_examples is not None and manifest.data.train_sample == "random":
        return ["train_sample", "train_sample_seed"]
    return []


def training_digest(request: dict[str, Any], model_fingerprint: dict[str, str], train_data: dict[str, str]) -> str:
    """The training's storage identity: the request with the model replaced by what its weights are."""
    resolved = {**request, "model": {"dtype": request["model"]["dtype"], **model_fingerprint}}
    return digest_of({"training": resolved, "data": train_data})


def evaluation_request(manifest: Manifest) -> dict[str, Any]:
    """The manifest fields that decide an evaluation's predictions besides its training and files."""
    content = resolved_dict(manifest)
    data = content["data"]
    selection = ["format", "datasets", "eval_split", "max_eval_examples"]
    if manifest.data.max_eval_examples is not None and manifest.data.eval_sample == "random":
        # Only where they choose the examples: `first`, or no cap, keeps the digests it always had.
        selection += ["eval_sample", "eval_sample_seed"]
    if manifest.icl.shots:
        selection += ["train_split", "max_train_examples", *_train_sample_keys(manifest)]
    return {
        "model_dtype": content["model"]["dtype"],
        "method": content["method"],
        "icl": {**content["icl"], "style": requested_style(manifest)},
        "decoding": content["decoding"],
        "data": {key: data[key] for key in selection},
        "eval": {key: content["eval"][key] for key in EVAL_SETTINGS},
    }


def evaluation_digest(
    request: dict[str, Any],
    base: dict[str, str],
    draft: dict[str, str] | None,
    data: dict[str, str],
) -> str:
    """The evaluation's storage identity. `base` is {"training": digest} or the base model's fingerprint;
    `draft` the draft's (its training digest, or its weights and adapter hash)."""
    decoding = dict(request["decoding"])
    if draft is not None:
        decoding["draft"] = draft  # the draft as resolved weights, not as written
    return digest_of({"evaluation": {**request, "decoding": decoding}, "base": base, "data": data})


def request_key(request: dict[str, Any]) -> str:
    """A digest of a request alone: groups stages when the files or the hub cannot be read."""
    return digest_of(request)
