"""Shared fixtures: small synthetic data, tiny saved models and manifests that use them."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
"""Headless Chromium, which renders report.html in the HTML tests; None skips them with NO_CHROMIUM."""
NO_CHROMIUM = (
    "chromium is not installed: `sudo apt-get install chromium` (Debian/Ubuntu; `just setup` does it when run as root "
    "or with password-less sudo), or put a Chromium on PATH as `chromium` or `chromium-browser`"
)

def checkov_command() -> str | None:
    """The checkov command: $QABENCH_CHECKOV, else on PATH or beside this Python; None skips with NO_CHECKOV."""
    return os.environ.get("QABENCH_CHECKOV") or shutil.which("checkov") or shutil.which("checkov", path=str(Path(sys.executable).parent))


NO_CHECKOV = (
    "checkov is not installed (it pins boto3 1.35, the project 1.44.8, so it needs its own venv: `just checkov`, "
    "or python3 -m venv /opt/checkov && /opt/checkov/bin/pip install checkov; then QABENCH_CHECKOV=/opt/checkov/bin/checkov)"
)
CHECKOV_OFFLINE_ENV = {"BC_SKIP_MAPPING": "TRUE", "LOG_LEVEL": "ERROR"}
"""With --skip-download: no guideline download, no external checks."""

SYNTHETIC = ["synthetic_yes_no", "synthetic_multiple_choice", "synthetic_extractive", "synthetic_abstractive"]


@pytest.fixture(scope="session")
def small_data(tmp_path_factory) -> Path:
    """Synthetic UnifiedQA-format data: 40 train and 6 dev examples per dataset."""
    from runner.data.synthetic import write_synthetic

    root = tmp_path_factory.mktemp("data")
    write_synthetic(root, n_train=40, n_dev=6, seed=1)
    return root


def tiny_corpus(root: Path) -> list[str]:
    """Every line of the data files under `root`, with literal \\n turned into newlines: text to train a tiny tokenizer on."""
    return [line.replace("\\n", "\n") for file in sorted(root.rglob("*.tsv")) for line in file.read_text().splitlines()]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, small_data) -> dict[str, Path]:
    """Saved tiny random Llama, Gemma and Mistral models sharing one locally trained tokenizer."""
    from tiny_models import save_tiny_model

    root = tmp_path_factory.mktemp("models")
    corpus = tiny_corpus(small_data)
    return {family: save_tiny_model(root / family, family, corpus) for family in ("llama", "gemma", "mistral")}


def write_manifest(folder: Path, name: str, **sections) -> Path:
    """Write a manifest YAML file named after the run and return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, **sections}, sort_keys=False))
    return path


@pytest.fixture
def tiny_manifest(tmp_path, small_data, tiny_models):
    """Factory for manifests that run a tiny model on the small synthetic data."""

    def make(name: str, family: str = "llama", method: dict | None = None, **overrides) -> Path:
        sections = {
            "model": {"path": str(tiny_models[family])},
            "data": {"root": str(small_data), "datasets": SYNTHETIC},
            "method": method or {"kind": "none"},
            "train": {"steps": 4, "batch_size": 4, "learning_rate": 1e-3, "save_steps": 2, "logging_steps": 1},
            "decoding": {"kind": "greedy", "max_new_tokens": 6, "batch_size": 4},
            "eval": {"shard_size": 5},
        }
        sections.update(overrides)
        return write_manifest(tmp_path / "manifests", name, **sections)

    return make


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory):
    """A SeaweedFS S3 server on 127.0.0.1 for the session (tests/seaweed.py); skips if it cannot start."""
    from seaweed import running_seaweed

    with running_seaweed(tmp_path_factory.mktemp("seaweed")) as server:
        yield server


def stage_folders(manifest: Path, storage: Path, overrides: tuple[str, ...] = ()) -> tuple[Path, Path | None]:
    """(evaluation folder, training folder or None) a manifest's run (with `--set` overrides) uses in a local storage folder."""
    from runner.context import build_context
    from runner.manifest import load_manifest, parse_overrides

    context = build_context(load_manifest(manifest, overrides=parse_overrides(list(overrides))), str(storage))
    return storage / context.keys.prefix, (storage / context.training.keys.prefix if context.training else None)
