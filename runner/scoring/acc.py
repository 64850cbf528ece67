"""`acc`: lm-evaluation-harness's multiple-choice accuracy — the choice with the highest summed
log-probability is the gold one. Only rows scored by `eval.protocol: loglikelihood` have it."""

from __future__ import annotations

from runner.scoring import Scored, Scorer, register
from runner.scoring._choices import ranked_correct


def acc(item: Scored) -> float | None:
    return ranked_correct(item, normalise_by_length=False)


register("acc", Scorer(score=acc, higher_is_better=True, aggregation="mean"))
