"""The `model` block of a manifest (also used for a speculative draft model)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Literal

from pydantic import field_validator, model_validator

from runner.models import PACKAGED_MODELS
from runner.spec import Spec

if TYPE_CHECKING:
    from runner.manifest import LoadedManifest

# Hub ids are "org/name" or a bare "name"; anything else (spaces, "..") is a typo or a path.
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


class ModelSpec(Spec):
    """Which pretrained model to start from: exactly one of `hub`, `path` or `package`."""

    hub: str | None = None
    """Hugging Face Hub id, e.g. google/gemma-2b (needs network; gated models read HF_TOKEN)."""
    revision: str | None = None
    """Hub branch, tag or commit; pin a commit for reproducible runs. Only with `hub`."""
    path: str | None = None
    """Local folder with a saved transformers model, relative to the manifest file."""
    package: str | None = None
    """A model shipped as a Python package for offline use: gemma3-270m or smollm2-135m."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weight dtype; `auto` is bfloat16 on a GPU that supports it and float32 on CPU."""
    trust_remote_code: bool = False
    """Run model code shipped with a hub repository. Off unless you trust the repository."""
    instruction_tuned: bool | None = None
    """Whether the checkpoint is instruction-tuned (chat), which decides `icl.chat_template: auto`;
    null: read from the name (-it, -Instruct, -chat, ...; packaged models declare it). `runner
    validate` shows the prompt format each manifest gets."""

    @field_validator("hub")
    @classmethod
    def _hub_id_shape(cls, value: str | None) -> str | None:
        if value is not None and not HUB_ID.match(value):
            raise ValueError(f"{value!r} is not a hub id like 'org/name'")
        return value

    @field_validator("package")
    @classmethod
    def _known_package(cls, value: str | None) -> str | None:
        if value is not None and value not in PACKAGED_MODELS:
            known = ", ".join(sorted(PACKAGED_MODELS))
            raise ValueError(f"unknown packaged model {value!r}; known: {known}")
        return value

    @model_validator(mode="after")
    def _exactly_one_source(self) -> ModelSpec:
        given = [name for name in ("hub", "path", "package") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"set exactly one of hub, path, package (got {', '.join(given) or 'none'})")
        if self.revision is not None and self.hub is None:
            raise ValueError("revision applies only to a hub model")
        return self


class DraftSpec(ModelSpec):
    """A speculative draft: a pretrained model (`hub`, `path` or `package`, optionally with a saved
    `adapter`), or the trained model of another manifest (`manifest`)."""

    manifest: str | None = None
    """Another manifest, relative to this one: the draft is its model with its method's trained
    weights. Its training is a stage like any other: planned, reused, trained once."""
    adapter: str | None = None
    """A saved peft adapter folder (relative to this manifest) applied to the draft's base model."""

    @model_validator(mode="after")
    def _exactly_one_source(self) -> DraftSpec:
        given = [name for name in ("hub", "path", "package", "manifest") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"set exactly one of hub, path, package, manifest (got {', '.join(given) or 'none'})")
        if self.revision is not None and self.hub is None:
            raise ValueError("revision applies only to a hub model")
        if self.adapter is not None and self.manifest is not None:
            raise ValueError("adapter applies to a hub, path or package draft; a manifest's draft brings its own training")
        return self


def remote_code_warnings(loaded: LoadedManifest, shown: str) -> list[str]:
    """`FILE:LINE: warning: ...` for each model block (the model, a draft) with `trust_remote_code: true`.

    Transformers then imports and runs Python files from the model's repository or folder:
    `validate` and `runner k8s` say so for every manifest that asks for it.
    """
    from runner.decoding import DECODINGS
    from runner.yaml_lines import parse_yaml, read_text

    manifest = loaded.manifest
    blocks: list[tuple[tuple[str, ...], ModelSpec]] = [(("model",), manifest.model)]
    draft = DECODINGS.get(manifest.decoding.kind).draft(manifest.decoding)
    if draft is not None:
        # The decoding field holding the draft, whatever the strategy calls it.
        field = next((name for name in type(manifest.decoding).model_fields if getattr(manifest.decoding, name) is draft), None)
        blocks.append((("decoding", field) if field else ("decoding",), draft))
    flagged = [(loc, spec) for loc, spec in blocks if spec.trust_remote_code]
    if not flagged:
        return []
    text, _ = read_text(loaded.path)
    index = parse_yaml(loaded.path, text, "a manifest")[1] if text is not None else None
    warnings = []
    for loc, spec in flagged:
        line, dotted = index.locate((*loc, "trust_remote_code")) if index is not None else (1, ".".join((*loc, "trust_remote_code")))
        name = spec.hub or spec.path or spec.package or getattr(spec, "manifest", None)
        warnings.append(f"{shown}:{line}: warning: {dotted}: true runs Python code shipped with {name}; only for repositories you trust")
    return warnings
