"""Bayesian view of a paired comparison: posterior region probabilities by the Bayesian bootstrap."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from study.analysis.stats.table import ROW_KEYS, key_columns
from study.sweep.hypotheses import Hypotheses

POSTERIOR_DRAWS = 20000  # Bayesian-bootstrap draws of the posterior of the mean difference


POSTERIOR_DECISION = 0.95  # posterior probability at which the Bayesian view calls a region


POSTERIOR_COLUMNS = ["p_a_worse", "p_equiv", "p_a_better"]


BAYES_COLUMNS = [
    "metric",
    "n_pairs",
    "margin",
    "mean_diff",
    "p_a_worse",
    "p_equiv",
    "p_a_better",
    "bayes_decision",
    "same_data_as",
    "verdict",
    "agrees",
]


def posterior_probs(d: np.ndarray, margin: float, higher: bool, seed: int = 0) -> dict[str, float]:
    """Posterior probabilities that a is worse / equivalent / better by more than `margin`.

    Bayesian bootstrap (Rubin 1981): the posterior of the mean paired difference under a Dirichlet-process
    model in its non-informative limit, mean = sum_i w_i d_i with w ~ Dirichlet(1, ..., 1); no normality
    assumption (unlike the t-test and TOST), `POSTERIOR_DRAWS` seeded draws. The region of practical
    equivalence (rope) is ±margin. For accuracies `a worse` is a - b < -margin; for losses the sides swap.
    """
    n = len(d)
    if n < 2:
        return {"p_a_worse": math.nan, "p_equiv": math.nan, "p_a_better": math.nan}
    rng = np.random.default_rng(seed)
    below = inside = 0
    chunk = max(1, min(POSTERIOR_DRAWS, 2_000_000 // n))
    for start in range(0, POSTERIOR_DRAWS, chunk):
        w = rng.standard_exponential((min(chunk, POSTERIOR_DRAWS - start), n))
        mu = (w @ np.asarray(d, dtype=float)) / w.sum(axis=1)
        below += int(np.sum(mu < -margin))
        inside += int(np.sum(np.abs(mu) < margin))
    below_p, inside_p = below / POSTERIOR_DRAWS, inside / POSTERIOR_DRAWS
    above_p = max(0.0, 1.0 - below_p - inside_p)
    worse, better = (below_p, above_p) if higher else (above_p, below_p)
    return {"p_a_worse": worse, "p_equiv": inside_p, "p_a_better": better}


def bayes_decision(p_a_worse: float, p_equiv: float, p_a_better: float) -> str:
    """The region the posterior puts at least `POSTERIOR_DECISION` on: `a better`, `b better`, `rope`,
    else `undecided` (empty when there is no posterior)."""
    if not np.isfinite(p_equiv):
        return ""
    for name, p in (("a better", p_a_better), ("b better", p_a_worse), ("rope", p_equiv)):
        if p >= POSTERIOR_DECISION:
            return name
    return "undecided"


def bayes_agrees(verdict_: str, better: str, decision: str) -> str:
    """`True`/`False`: does the Bayesian decision say what the verdict says? Empty without a posterior.

    different <-> the posterior puts >= 95% beyond the margin on the same side; equivalent and trivial
    <-> >= 95% inside the margin; inconclusive <-> no region reaches 95%.
    """
    if not decision or verdict_ == "identical":
        return ""
    expected = {
        "different": f"{better} better",
        "equivalent": "rope",
        "trivial": "rope",
        "inconclusive": "undecided",
    }.get(verdict_, "")
    return str(decision == expected)


def bayes_table(comparisons: pd.DataFrame, spec: dict[str, Any], hyp: Hypotheses) -> pd.DataFrame:
    """The Bayesian view per comparisons.csv row: posterior region probabilities, the region it decides
    on, and whether that agrees with the frequentist verdict (`posterior_probs`, `bayes_agrees`)."""
    rows = []
    for _, row in comparisons.iterrows():
        probs = {c: row.get(c, math.nan) for c in POSTERIOR_COLUMNS}
        decision = bayes_decision(probs["p_a_worse"], probs["p_equiv"], probs["p_a_better"])
        agrees = bayes_agrees(row["verdict"], row["better"], decision)
        rows.append(row.to_dict() | probs | {"bayes_decision": decision, "agrees": agrees})
    columns = ROW_KEYS + key_columns(spec) + BAYES_COLUMNS
    return pd.DataFrame(rows, columns=columns)
