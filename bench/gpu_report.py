"""One Markdown table set and one JSON file from the sections bench/gpu_bench.py wrote.

Reads DIR/<section>.json (absent when a section never started) and DIR/<section>.status (what
bench/gpu.sh saw: exit code, `timeout`, or `skipped: ...`). Missing numbers print as "—";
every issue-8 target is listed as met, missed or not measured. GB here is 10^9 bytes.
The GPU test tier's outcome comes from DIR/gpu-tier.xml (pytest's JUnit report, whose
properties are the tier's measurements) and DIR/tier.status.
"""

from __future__ import annotations

import json
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

from runner.atomic import write_atomic

GB = 1e9


def _load(folder: Path, section: str) -> tuple[dict[str, Any] | None, str]:
    path, status = folder / f"{section}.json", folder / f"{section}.status"
    data = json.loads(path.read_text()) if path.is_file() else None
    return data, status.read_text().strip() if status.is_file() else ("not run" if data is None else "")


def _num(value: Any, fmt: str = ".1f") -> str:
    return "—" if value is None else format(value, fmt)


def _status(data: dict[str, Any] | None, seen: str) -> str:
    if data is None:
        return seen or "not run"
    if data.get("ok"):
        return "ok"
    if data.get("error"):
        return f"failed: {data['error'].splitlines()[0][:160]}"
    return f"incomplete ({seen or 'cut off'})"


def _bound(env: dict[str, Any] | None, weight_bytes: int | None) -> float | None:
    tb_s = (env or {}).get("bandwidth_tb_s")
    return tb_s * 1e12 / weight_bytes if tb_s and weight_bytes else None


def _generation_lines(sections: dict[str, Any]) -> list[str]:
    lines = ["| shape | batch | prompts | qabench tok/s | loop tok/s | × loop | qabench s | loop s (extrapolated) | peak GB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name in ("generation-gemma-2b", "generation-llama-2-7b"):
        data = sections.get(name) or {}
        loop = data.get("loop") or {}
        for batch, m in (data.get("batches") or {}).items():
            if "skipped" in m:
                lines.append(f"| {data.get('shape')} | {batch} | — | skipped: {m['skipped']} | | | | | |")
                continue
            lines.append(
                f"| {data.get('shape')} | {batch} | {m['prompts']} | {m['tokens_per_second']:.1f} | {_num(loop.get('tokens_per_second'))} | "
                f"{m['x_loop']:.2f} | {m['seconds']:.2f} | {m['loop_seconds_extrapolated']:.2f} | {m['peak_memory_bytes'] / GB:.2f} |"
            )
    return lines


def _bound_lines(sections: dict[str, Any]) -> list[str]:
    env = sections.get("env")
    lines = ["| shape | weights GB | bound tok/s | loop tok/s | qabench decode tok/s | % of bound | static cache + compile decode tok/s | % of bound |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    compiled = (sections.get("compiled-gemma-2b") or {}).get("static_compiled") or {}
    for name in ("generation-gemma-2b", "generation-llama-2-7b"):
        data = sections.get(name) or {}
        one = (data.get("batches") or {}).get("1") or {}
        bound = _bound(env, data.get("weight_bytes"))
        decode = one.get("decode_tokens_per_second")
        fast = compiled.get("decode_tokens_per_second") if name == "generation-gemma-2b" else None
        lines.append(
            f"| {data.get('shape', name)} | {_num((data.get('weight_bytes') or 0) / GB or None, '.2f')} | {_num(bound)} | "
            f"{_num((data.get('loop') or {}).get('tokens_per_second'))} | {_num(decode)} | "
            f"{_num(100 * decode / bound if decode and bound else None)} | {_num(fast)} | {_num(100 * fast / bound if fast and bound else None)} |"
        )
    return lines


def _qlora_lines(data: dict[str, Any] | None) -> list[str]:
    d = data or {}
    return [
        "| shape | batch × tokens | gradient checkpointing | steps | s/step (median after the first) | tokens/s | peak allocated GB | peak reserved GB | model after loading GB |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
        f"| {d.get('shape', 'llama-2-7b')} | {d.get('batch_size', '—')} × {d.get('sequence_tokens', '—')} | {d.get('gradient_checkpointing', '—')} | "
        f"{d.get('steps', '—')} | {_num(d.get('median_step_seconds_after_first'), '.3f')} | {_num(d.get('tokens_per_second'), '.0f')} | "
        f"{_num((d.get('peak_memory_bytes') or 0) / GB or None, '.2f')} | {_num((d.get('peak_reserved_bytes') or 0) / GB or None, '.2f')} | "
        f"{_num((d.get('weights_allocated_bytes') or 0) / GB or None, '.2f')} |",
    ]


def _speculative_lines(data: dict[str, Any] | None) -> list[str]:
    d = data or {}
    plain, spec = d.get("plain") or {}, d.get("speculative") or {}
    return [
        "| shape | variant | prompts | tok/s | × plain | acceptance | target forwards/token | same tokens as plain |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
        f"| {d.get('shape', 'gemma-2b')} | greedy, batch 1 | {plain.get('prompts', '—')} | {_num(plain.get('tokens_per_second'))} | 1.00 | — | 1.00 | — |",
        f"| {d.get('shape', 'gemma-2b')} | speculative, self draft ({spec.get('num_draft_tokens', '—')} tokens, {spec.get('schedule', '—')}) | "
        f"{spec.get('prompts', '—')} | {_num(spec.get('tokens_per_second'))} | {_num(spec.get('x_plain'), '.2f')} | {_num(spec.get('acceptance'), '.2f')} | "
        f"{_num(spec.get('target_forwards_per_token'), '.2f')} | {spec.get('same_tokens_as_plain', '—')}/{spec.get('prompts', '—')} |",
    ]


def targets(sections: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 8's GPU targets with the value reached (None when not measured) and whether each is met."""
    gemma = sections.get("generation-gemma-2b") or {}
    at_64 = ((gemma.get("batches") or {}).get("64") or {}).get("x_loop")
    one = ((gemma.get("batches") or {}).get("1") or {}).get("decode_tokens_per_second")
    bound = _bound(sections.get("env"), gemma.get("weight_bytes"))
    fraction = one / bound if one and bound else None
    compiled = ((sections.get("compiled-gemma-2b") or {}).get("static_compiled") or {}).get("decode_tokens_per_second")
    compiled_fraction = compiled / bound if compiled and bound else None
    peak = (sections.get("qlora-llama-2-7b") or {}).get("peak_memory_bytes")
    rows = [
        ("Gemma-2B shape, bf16: batched ≥ 30× the loop at batch 64", at_64, lambda v: v >= 30, lambda v: f"{v:.1f}×"),
        ("Gemma-2B shape, bf16: ≥ 40% of the bandwidth bound at batch 1 (qabench as run)", fraction, lambda v: v >= 0.4, lambda v: f"{v:.0%}"),
        ("  same, static KV cache + torch.compile", compiled_fraction, lambda v: v >= 0.4, lambda v: f"{v:.0%}"),
        ("Llama-7B shape, QLoRA 4-bit, batch 4 × 512, gradient checkpointing: peak ≤ 8 GB", peak and peak / GB,
         lambda v: v <= 8, lambda v: f"{v:.2f} GB"),
    ]
    return [{"target": t, "value": v, "shown": "not measured" if v is None else show(v), "met": None if v is None else bool(ok(v))}
            for t, v, ok, show in rows]


def tier_results(folder: Path) -> dict[str, Any]:
    """The tier's status and, per test, its outcome, seconds and measurements (from the JUnit file)."""
    status = (folder / "tier.status").read_text().strip() if (folder / "tier.status").is_file() else "not run"
    junit = folder / "gpu-tier.xml"
    tests = []
    if junit.is_file():
        for case in ElementTree.parse(junit).getroot().iter("testcase"):
            # pytest cut off by SIGINT (the time limit) writes the running test as a nameless testcase.
            outcome = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed" if case.get("name") else "cut off")
            reason = next((child.get("message", "") for child in case if child.tag in ("failure", "error", "skipped")), "")
            measured = {prop.get("name"): json.loads(prop.get("value")) for prop in case.iter("property")}
            tests.append({"test": case.get("name") or "(the test running at the time limit)", "outcome": outcome, "seconds": float(case.get("time") or 0),
                          "reason": reason.splitlines()[0][:200] if reason else "", "measured": measured})
    return {"status": status, "tests": tests}


def _shown(value: Any) -> str:
    if isinstance(value, dict) and {"identical", "prefix"} <= value.keys():
        return f"{value['identical']:.2f} identical, {value['prefix']:.3f} prefix (n {value.get('n')})"
    return json.dumps(value)


def _tier_lines(tier: dict[str, Any]) -> list[str]:
    counts = {}
    for test in tier["tests"]:
        counts[test["outcome"]] = counts.get(test["outcome"], 0) + 1
    summary = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items())) or "no results"
    lines = [f"### GPU tier (`pytest -m gpu tests/gpu`): {summary}; {tier['status']}", "",
             "Agreement: share of answers identical to the reference, and the mean share of each answer before the "
             "first differing character (tests/gpu/tier.py).", "",
             "| test | outcome | s | measured |", "|---|---|---:|---|"]
    for test in tier["tests"]:
        measured = "; ".join(f"{name}: {_shown(value)}" for name, value in test["measured"].items())
        outcome = test["outcome"] + (f": {test['reason']}" if test["reason"] else "")
        lines.append(f"| {test['test']} | {outcome.replace('|', '/')} | {test['seconds']:.1f} | {measured.replace('|', '/')} |")
    return lines


def write_report(folder: Path, names: list[str]) -> str:
    """Write gpu-bench.md and gpu-bench.json into `folder`; return the Markdown."""
    loaded = {name: _load(folder, name) for name in names}
    sections = {name: data for name, (data, _) in loaded.items()}
    env = sections.get("env") or {}
    versions = ", ".join(f"{k} {v}" for k, v in (env.get("versions") or {}).items())
    card = f"{env.get('bandwidth_card')} at {env.get('bandwidth_tb_s')} TB/s" if env.get("bandwidth_tb_s") else "not in the table: no bound"
    gemma = sections.get("generation-gemma-2b") or {}
    found = targets(sections)
    tier = tier_results(folder)
    md = [
        f"## GPU benchmark: {env.get('device', 'unknown device')}, {time.strftime('%Y-%m-%d')}",
        "",
        f"{versions}. Bandwidth used for the bound: {card}. Random weights with the published shapes"
        f"{' (TINY dry-run shapes, float32: not a benchmark)' if env.get('tiny') else ''}; generation in {gemma.get('dtype', '—')}, "
        f"greedy, {gemma.get('new_tokens', '—')} new tokens per prompt (forced: random weights would stop at a random EOS), "
        f"prompts of {'–'.join(map(str, gemma.get('prompt_tokens') or ['—']))} tokens.",
        "",
        "### Generation: the original one-at-a-time loop vs qabench's batched `generate_batch`",
        "",
        f"The loop is timed on {(gemma.get('loop') or {}).get('prompts_measured', '—')} prompts; its time for a batch's prompts is that "
        "many times its mean seconds per prompt (extrapolated, not run). qabench at batch 1 runs the same prompts one by one.",
        "",
        *_generation_lines(sections),
        "",
        "### Batch 1 against the memory-bandwidth bound",
        "",
        "Bound = bandwidth / bytes of all weights (one decoder step reads each weight once). Decode tok/s leaves out the prefill "
        "pass before the first token.",
        "",
        *_bound_lines(sections),
        "",
        "### QLoRA 4-bit training (runner.train, NF4 + double quantization, LoRA r 8 on every projection)",
        "",
        *_qlora_lines(sections.get("qlora-llama-2-7b")),
        "",
        "### Speculative decoding with the model itself as draft (acceptance upper bound)",
        "",
        *_speculative_lines(sections.get("speculative-gemma-2b")),
        "",
        *_tier_lines(tier),
        "",
        "### Targets",
        "",
        "| target | reached | met |",
        "|---|---:|---|",
        *[f"| {t['target']} | {t['shown']} | {'—' if t['met'] is None else ('yes' if t['met'] else 'no')} |" for t in found],
        "",
        "### Sections",
        "",
        "| section | status | seconds |",
        "|---|---|---:|",
        *[f"| {name} | {_status(data, seen)} | {_num((data or {}).get('seconds'), '.0f')} |" for name, (data, seen) in loaded.items()],
        f"| tier | {tier['status']} | {_num(sum(t['seconds'] for t in tier['tests']) or None, '.0f')} |",
    ]
    text = "\n".join(md) + "\n"
    write_atomic(folder / "gpu-bench.md", text)
    raw = {"sections": sections, "status": {n: _status(d, s) for n, (d, s) in loaded.items()}, "targets": found, "tier": tier}
    write_atomic(folder / "gpu-bench.json", json.dumps(raw, indent=2, default=str))
    return text
