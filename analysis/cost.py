"""What a configuration costs: GPU-hours to train it plus GPU-hours to answer 1,000 questions, and
that in dollars at a price per GPU-hour.

    training GPU-hours   = metrics.json train.seconds × devices / 3600   (0 when nothing was trained)
    eval GPU-hours / 1k  = device-seconds per question × 1000 / 3600
    cost                 = training GPU-hours + eval GPU-hours / 1k

Training keeps every device of the manifest busy for its wall time (data-parallel), so its wall
time counts once per device. Evaluation is timed per batch and a batch runs on one device, so the
batches' wall times already add up to device-seconds (analysis.aggregate.device_seconds_by_row);
a format's questions are charged their share of each batch they were in. The sum is the price of
choosing a configuration: train it once, then answer a thousand questions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from analysis.aggregate import Summary
from runner.errors import UserError

SECONDS_PER_HOUR = 3600
QUESTIONS = 1000
"""Evaluation cost is stated per this many questions."""

DEFINITION = (
    "Cost is GPU-hours to train a configuration and answer 1,000 questions with it: training GPU-hours (the training's "
    "wall time in `metrics.json` `train.seconds` × the manifest's `devices`, since data-parallel training occupies every "
    "device; 0 for methods that train nothing) plus evaluation GPU-hours per 1,000 questions (the evaluation's batch wall "
    "times, each batch on one device, summed and divided by the questions answered, × 1,000). Per answer format, a "
    "question is charged its batch's wall time over the batch's rows. On a CPU run the hours are CPU hours. Not included: "
    "loading models, a fine-tuned draft model's own training, and the time of a training interrupted and resumed before "
    "its last session (`train.seconds` counts the session that finished it)."
)


@dataclass(frozen=True)
class Cost:
    """A configuration's cost in GPU-hours; None where a run did not record what it needs."""

    train_gpu_hours: float | None
    eval_gpu_hours_per_1000: float | None

    @property
    def gpu_hours(self) -> float | None:
        """Training plus answering 1,000 questions."""
        if self.train_gpu_hours is None or self.eval_gpu_hours_per_1000 is None:
            return None
        return self.train_gpu_hours + self.eval_gpu_hours_per_1000

    def dollars(self, price_per_gpu_hour: float | None) -> float | None:
        """The cost at `price_per_gpu_hour`; None without a price or a cost."""
        hours = self.gpu_hours
        return None if price_per_gpu_hour is None or hours is None else hours * price_per_gpu_hour


def train_gpu_hours(summary: Summary) -> float | None:
    """GPU-hours of the training whose weights the configuration evaluates; 0 if it trained nothing."""
    if not summary.run.train:
        return 0.0
    seconds = summary.training.get("train_seconds")
    return None if seconds is None else seconds * summary.run.devices / SECONDS_PER_HOUR


def cost_of(summary: Summary, trained: Summary | None = None) -> Cost:
    """The cost of `summary` (a configuration, or a format slice of one with `trained` the
    configuration, whose training the slice shares)."""
    per_question = summary.speed.get("eval_device_seconds_per_example")
    evaluation = None if per_question is None else per_question * QUESTIONS / SECONDS_PER_HOUR
    return Cost(train_gpu_hours(trained or summary), evaluation)


def cost_columns(summary: Summary, price_per_gpu_hour: float | None) -> dict[str, Any]:
    """The cost columns of results.csv and results_by_config.csv (cost_usd empty without a price)."""
    cost = cost_of(summary)
    return {
        "train_gpu_hours": cost.train_gpu_hours,
        "eval_gpu_hours_per_1000": cost.eval_gpu_hours_per_1000,
        "cost_gpu_hours": cost.gpu_hours,
        "cost_usd": cost.dollars(price_per_gpu_hour),
    }


def parse_price(text: str) -> float:
    """`--price-per-gpu-hour` as dollars: a finite number ≥ 0, else UserError saying what was given."""
    try:
        price = float(text)
    except ValueError:
        raise UserError(f"--price-per-gpu-hour {text!r}: not a number (expected dollars per GPU-hour, e.g. 2.5)") from None
    if not math.isfinite(price) or price < 0:
        raise UserError(f"--price-per-gpu-hour {text!r}: must be a finite number of dollars ≥ 0 (e.g. 2.5)")
    return price
