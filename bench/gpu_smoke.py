"""Every method end to end on a CUDA device with a tiny model: the GPU-only code paths run.

Exercises what CPU CI cannot: bf16 selected by dtype `auto`, bitsandbytes' CUDA 4- and 8-bit
kernels under QLoRA, trl's compact fused LM head on a Triton device, prompt tuning's cached
generation on CUDA. Prints one row per method and writes the rows as JSON to argv[1].
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from runner.atomic import write_atomic  # noqa: E402
from runner.cli import main  # noqa: E402
from runner.context import build_context  # noqa: E402
from runner.data.synthetic import write_synthetic  # noqa: E402
from runner.manifest import load_manifest  # noqa: E402
from tiny_models import save_tiny_model  # noqa: E402

DATASETS = ["synthetic_yes_no", "synthetic_multiple_choice", "synthetic_extractive", "synthetic_abstractive"]
METHODS = {
    "none": {"kind": "none"},
    "lora": {"kind": "lora", "r": 8, "alpha": 16},
    "qlora-4bit": {"kind": "qlora", "bits": 4, "r": 8, "alpha": 16},
    "qlora-8bit": {"kind": "qlora", "bits": 8, "r": 8, "alpha": 16},
    "adalora": {"kind": "adalora", "init_r": 6, "target_r": 2, "tinit": 2, "tfinal": 2},
    "ia3": {"kind": "ia3"},
    "prompt_tuning": {"kind": "prompt_tuning", "num_virtual_tokens": 8},
    "full": {"kind": "full"},
}


def main_smoke(out: Path) -> int:
    """Run every method once; return the number of failures."""
    root = Path(tempfile.mkdtemp())
    write_synthetic(root / "data", n_train=80, n_dev=16, seed=3)
    corpus = [l.replace("\\n", "\n") for f in (root / "data").rglob("*.tsv") for l in f.read_text().splitlines()]
    rows, failures = [], 0
    for family in ("llama", "gemma"):
        model = save_tiny_model(root / family, family, corpus)
        for label, method in METHODS.items():
            manifest = root / f"{family}-{label}.yaml"
            manifest.write_text(yaml.safe_dump({
                "name": f"{family}-{label}",
                "model": {"path": str(model), "dtype": "auto"},
                "data": {"root": str(root / "data"), "datasets": DATASETS},
                "method": method,
                "train": {"steps": 12, "batch_size": 8, "learning_rate": 2e-3, "save_steps": 6, "heldout_examples": 16},
                "decoding": {"kind": "greedy", "max_new_tokens": 8, "batch_size": 16},
                "eval": {"shard_size": 32},
            }))
            started = time.perf_counter()
            code = main(["run", str(manifest), "--storage", str(root / "runs")])
            row = {"family": family, "method": label, "exit": code, "seconds": round(time.perf_counter() - started, 2)}
            if code == 0:
                keys = build_context(load_manifest(manifest), str(root / "runs")).keys  # the evaluation's keys
                metrics = json.loads((root / "runs" / keys.metrics).read_text())
                provenance = json.loads((root / "runs" / keys.provenance).read_text())
                train = metrics.get("train", {})
                row.update(
                    device=provenance["device"].get("gpu", provenance["device"]["device"]),
                    n=metrics["overall"]["n"],
                    exact_match=metrics["overall"]["exact_match"],
                    heldout_loss_before=train.get("heldout_loss_before"),
                    heldout_loss=train.get("heldout_loss"),
                    train_tokens_per_second=train.get("tokens_per_second"),
                    peak_memory_mib=(train.get("peak_memory_bytes") or 0) / 2**20,
                    generated_tokens_per_second=metrics["generation"].get("generated_tokens_per_second"),
                )
            else:
                failures += 1
            rows.append(row)
            print(json.dumps(row), flush=True)
    write_atomic(out, json.dumps(rows, indent=2))
    return failures


if __name__ == "__main__":
    sys.exit(main_smoke(Path(sys.argv[1])))
