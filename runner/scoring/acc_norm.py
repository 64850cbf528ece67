"""`acc_norm`: lm-evaluation-harness's length-normalised accuracy — each choice's summed
log-probability divided by its length in characters before ranking, so long options are not
penalised for having more tokens. Only rows scored by `eval.protocol: loglikelihood` have it."""

from __future__ import annotations

from runner.scoring import Scored, Scorer, register
from runner.scoring._choices import ranked_correct


def acc_norm(item: Scored) -> float | None:
    return ranked_correct(item, normalise_by_length=True)


register("acc_norm", Scorer(score=acc_norm, higher_is_better=True, aggregation="mean"))
