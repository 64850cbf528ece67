"""The GPU tier: today's inference and training paths on a CUDA device in bfloat16.

    pytest -m gpu tests/gpu                              on a GPU host (bench/gpu.sh --tier runs it)
    QABENCH_GPU_DRY_RUN=1 pytest -m gpu tests/gpu        the same tests on the CPU in float32

Every test module here is marked `gpu`; the default run (`just test`, `pytest -q`) deselects the
marker (pyproject addopts), and without CUDA and without the dry-run switch the tests skip.

bfloat16 changes numerics wherever the same work is split differently (a prefill in two parts, a
batch that shrinks, several tokens verified in one pass), so the GPU tests measure how often
answers agree and assert a stated lower bound; the float32 dry run asserts the exact equalities
the CPU suite proves. Each measurement is printed, recorded as a JUnit property and, when
QABENCH_GPU_MEASUREMENTS names a file, written there as JSON after every test (a tier cut off by
its time limit keeps what it measured).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from gpu.tier import DRY_RUN, current_tier, wide_model

_MEASURED: dict[str, dict[str, Any]] = {}


def pytest_collection_modifyitems(config, items):
    if os.environ.get(DRY_RUN) == "1":
        return
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason=f"no CUDA device ({DRY_RUN}=1 runs the GPU tier on the CPU in float32)")
        for item in items:
            if item.get_closest_marker("gpu"):
                item.add_marker(skip)


@pytest.fixture(scope="session")
def tier():
    """The device and dtype the tier runs in (CUDA bf16, or CPU float32 in a dry run)."""
    return current_tier()


@pytest.fixture
def measure(request, record_property):
    """`measure(name, value)`: print a measured value, keep it in the JUnit report and the JSON file."""

    def note(name: str, value: Any) -> None:
        print(f"{request.node.name}: {name} = {value}")
        record_property(name, json.dumps(value))
        _MEASURED.setdefault(request.node.nodeid, {})[name] = value
        target = os.environ.get("QABENCH_GPU_MEASUREMENTS")
        if target:
            from runner.atomic import write_atomic

            write_atomic(Path(target), json.dumps(_MEASURED, indent=2, sort_keys=True).encode())

    return note


@pytest.fixture(scope="session")
def tokenizer(tiny_models):
    """The tiny models' tokenizer (600 tokens, trained on the synthetic data), shared by every model here."""
    from runner.models import load_tokenizer

    return load_tokenizer(str(tiny_models["llama"]))


@pytest.fixture(scope="session")
def wide(tokenizer, tier):
    """The wider random Llama (tier.WIDE) on the tier's device and dtype."""
    return wide_model(tokenizer, tier)


@pytest.fixture(scope="session")
def wide_folder(tmp_path_factory, tokenizer, tier) -> Path:
    """The wider random Llama saved with the tokenizer, for manifests and `runner.models` to load."""
    folder = tmp_path_factory.mktemp("wide-llama")
    model = wide_model(tokenizer, tier)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
    return folder
