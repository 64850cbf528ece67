"""Views that pair runs: decoding speed-up over greedy, and fine-tuning's payback over prompting.

Two runs are only paired when they were evaluated on the same data; a pair that would otherwise
match but was not is reported as a note, so a missing row is never a silent one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import pyarrow as pa

from analysis.aggregate import Summary
from analysis.load import RunInfo

BASELINE_DECODING = "greedy"
"""The strategy speed-ups are measured against: one target forward per token, batched."""

# Manifest sections that do not change what a run computes for a given decoding strategy; the
# remaining ones (model, data, method, train, icl) must match for a run to be another's baseline.
# `stages` names the trainings used: the run's own follows from model, method and train, and a
# draft's training belongs to the decoding.
_NOT_IDENTITY = ("name", "description", "output", "decoding", "eval", "stages")


@dataclass(frozen=True)
class SpeedUp:
    """A non-greedy run against the greedy run of the same manifest otherwise."""

    run: Summary
    baseline: Summary
    speed_up: float | None
    """Generated tokens/s of the run over the baseline's."""
    acceptance_rate: float | None
    quality_change: float | None
    """Headline metric of the run minus the baseline's (0 for exact speculative decoding)."""
    identical: int | None = None
    """Examples both answered whose answers are the same string; None when not counted."""
    compared: int | None = None
    """Examples both answered (matched by id)."""

    @property
    def identical_share(self) -> float | None:
        """Share of the shared examples answered identically: 1.0 means the strategy reproduced
        greedy's answers exactly, as speculative decoding and prompt lookup are meant to."""
        return self.identical / self.compared if self.identical is not None and self.compared else None


@dataclass(frozen=True)
class Payback:
    """A fine-tuned run against k-shot prompting of the same model: when training pays for itself."""

    tuned: Summary
    prompted: Summary
    tokens_saved_per_query: float
    prompt_tokens_per_second: float | None
    """Prefill throughput measured on the prompted run, where the extra tokens were paid for."""
    seconds_saved_per_query: float | None
    train_gpu_seconds: float | None
    """The training's wall time × the devices it occupied (analysis/cost.py)."""
    breakeven_queries: int | None
    """Queries after which training's GPU-seconds are repaid by shorter prompts; None if nothing is saved."""

    @property
    def tuned_seconds_per_query(self) -> float | None:
        """Prefill seconds of a fine-tuned query at the prompted run's measured throughput."""
        rate = self.prompt_tokens_per_second
        return self.tuned.speed["prompt_tokens_mean"] / rate if rate else None

    @property
    def prompted_seconds_per_query(self) -> float | None:
        """Prefill seconds of a k-shot query at its measured throughput."""
        rate = self.prompt_tokens_per_second
        return self.prompted.speed["prompt_tokens_mean"] / rate if rate else None


def _identity(run: RunInfo) -> dict:
    return {k: v for k, v in run.manifest.items() if k not in _NOT_IDENTITY}


def _same_except_decoding(a: RunInfo, b: RunInfo) -> bool:
    return _identity(a) == _identity(b)


def _eval_note(a: RunInfo, b: RunInfo, view: str) -> str | None:
    difference = a.eval_set.difference(b.eval_set)
    if difference is None:
        return None
    return (
        f"{a.ref.where(a.ref.keys.manifest)} and {b.ref.where(b.ref.keys.manifest)}: not compared in the {view} view, "
        f"evaluated on different data ({difference})"
    )


def _answers(table: pa.Table, run: RunInfo) -> dict[str, str]:
    rows = table.slice(run.start, run.stop - run.start)
    return dict(zip(rows.column("id").to_pylist(), rows.column("prediction").to_pylist()))


def identical_answers(table: pa.Table, a: RunInfo, b: RunInfo) -> tuple[int, int]:
    """(examples answered identically, examples both answered) of two runs, matched by example id."""
    mine, theirs = _answers(table, a), _answers(table, b)
    shared = mine.keys() & theirs.keys()
    return sum(1 for example in shared if mine[example] == theirs[example]), len(shared)


def speed_ups(summaries: Sequence[Summary], headline: str | None, table: pa.Table | None = None) -> tuple[list[SpeedUp], list[str]]:
    """Each non-greedy run against its greedy twin (with `table`, the loaded rows, also how many
    answers the two share); notes for twins on different data."""
    found, notes = [], []
    greedy = [s for s in summaries if s.run.decoding == BASELINE_DECODING]
    for summary in summaries:
        if summary.run.decoding == BASELINE_DECODING:
            continue
        twins = [g for g in greedy if _same_except_decoding(summary.run, g.run)]
        for twin in twins:
            note = _eval_note(summary.run, twin.run, "speed-up")
            if note:
                notes.append(note)
                continue
            fast, base = summary.speed["generated_tokens_per_second"], twin.speed["generated_tokens_per_second"]
            change = None
            if headline and summary.quality[headline].mean is not None and twin.quality[headline].mean is not None:
                change = summary.quality[headline].mean - twin.quality[headline].mean
            same, shared = identical_answers(table, summary.run, twin.run) if table is not None else (None, None)
            found.append(SpeedUp(summary, twin, fast / base if fast and base else None, summary.speed["acceptance_rate"], change, same, shared))
            break
    return found, notes


def paybacks(summaries: Sequence[Summary]) -> tuple[list[Payback], list[str]]:
    """Every fine-tuned run against every k-shot prompting run of its model and decoding."""
    found, notes = [], []
    tuned = [s for s in summaries if s.run.train]
    prompted = [s for s in summaries if not s.run.train and s.run.shots > 0]
    for t in tuned:
        for p in prompted:
            if (t.run.model, t.run.decoding) != (p.run.model, p.run.decoding):
                continue
            note = _eval_note(t.run, p.run, "fine-tuning cost")
            if note:
                notes.append(note)
                continue
            saved = p.speed["prompt_tokens_mean"] - t.speed["prompt_tokens_mean"]
            rate = p.speed["prompt_tokens_per_second"]
            per_query = saved / rate if rate else None
            wall = t.training["train_seconds"]
            # Training occupies every device of the manifest; a query's prefill runs on one.
            train_gpu_seconds = None if wall is None else wall * t.run.devices
            breakeven = None
            if per_query is not None and per_query > 0 and train_gpu_seconds is not None:
                # Each query repays per_query seconds, so ceil(train / per_query) queries repay training;
                # rounding first keeps 1800 / 0.018 at 100,000 instead of float's 100,000.000…1 → 100,001.
                breakeven = math.ceil(round(train_gpu_seconds / per_query, 6))
            found.append(Payback(t, p, saved, rate, per_query, train_gpu_seconds, breakeven))
    return found, notes
