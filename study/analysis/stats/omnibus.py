"""Omnibus and post-hoc tests: Friedman across every policy combination of a condition, Nemenyi pairs."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import scikit_posthocs as sp
from scipy import stats as sst

from study.analysis.stats.duplicates import GROUP_JOIN, distinct_trials
from study.analysis.stats.table import analogvnn_cell, higher_is_better, sort_rows
from study.sweep.hypotheses import Hypotheses
from study.tables import (
    POLICY_COLUMNS,
    PRESET_FLAG,
    condition_columns,
)

OMNIBUS_COLUMNS: tuple[str, ...] = (
    "combo",
    *POLICY_COLUMNS,
    "metric",
    "n_seeds",
    "mean_metric",
    "mean_rank",
    "friedman_stat",
    "friedman_p",
    "cd",
    "k",
    "n_combos",
    PRESET_FLAG,
)
"""Columns of stats/omnibus.csv after the condition columns (one definition: the report reads it)."""


def nemenyi_cd(k: int, n: int, alpha: float) -> float:
    """Nemenyi critical difference of mean ranks: q_alpha(k, inf) / sqrt(2) * sqrt(k (k + 1) / (6 n))."""
    if k < 2 or n < 1:
        return math.nan
    q = float(sst.studentized_range.ppf(1 - alpha, k, np.inf)) / math.sqrt(2)
    return q * math.sqrt(k * (k + 1) / (6 * n))


def mean_ranks(block: pd.DataFrame, higher: bool) -> pd.Series:
    """Mean rank of each column over the rows (blocks); rank 1 = best, ties averaged."""
    return block.rank(axis=1, ascending=not higher, method="average").mean(axis=0)


def friedman(block: pd.DataFrame) -> tuple[float, float]:
    """Friedman chi-square and p over the columns of a complete block design (0 and 1 when all tied)."""
    if (block.nunique(axis=1) == 1).all():
        return 0.0, 1.0
    res = sst.friedmanchisquare(*[block[c].to_numpy() for c in block.columns])
    return float(res.statistic), float(res.pvalue)


def posthoc_pairs(block: pd.DataFrame, ranks: pd.Series, alpha: float) -> list[dict[str, Any]]:
    """Nemenyi post-hoc p for every pair of columns (scikit-posthocs), with the mean-rank difference."""
    pvals = sp.posthoc_nemenyi_friedman(block.to_numpy())
    combos = list(block.columns)
    rows = []
    for i, a in enumerate(combos):
        for j in range(i + 1, len(combos)):
            p = float(pvals.iloc[i, j])
            rows.append(
                {
                    "combo_a": a,
                    "combo_b": combos[j],
                    "mean_rank_diff": ranks[a] - ranks[combos[j]],
                    "p_nemenyi": p,
                    "significant": bool(p < alpha),
                }
            )
    return rows


def omnibus(
    table: pd.DataFrame, spec: dict[str, Any], hyp: Hypotheses, orders: dict[str, dict[str, int]]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(omnibus, posthoc): Friedman test across the distinct policy combinations of each condition.

    Combinations whose trials are bit-identical seed by seed (`duplicates.combo_groups`) are one
    training run recorded twice: they enter once, named by their group (`ste/exact = exact/exact`), so
    `k` counts distinct combinations and no run is counted twice.
    """
    conds = condition_columns(spec)
    higher = higher_is_better(hyp.metric)
    ordered = sort_rows(table, conds + list(POLICY_COLUMNS) + ["seed"], orders)
    data = distinct_trials(ordered, spec)
    data = data[data["status"] == "ok"].reset_index(drop=True)
    omni, post = [], []
    groups = data.groupby(conds, dropna=False, sort=False) if conds else [((), data)]
    for values, group in groups:
        cond = dict(zip(conds, values if isinstance(values, tuple) else (values,), strict=True))
        combos = list(dict.fromkeys(group["combo"]))
        block = group.pivot(index="seed", columns="combo", values="value")[combos].dropna()
        k, n = len(combos), len(block)
        ranks = mean_ranks(block, higher) if n else pd.Series(np.nan, index=combos)
        testable = k >= 3 and n >= 2
        stat, p = friedman(block) if testable else (math.nan, math.nan)
        cd = nemenyi_cd(k, n, hyp.alpha) if testable else math.nan
        policies = group.drop_duplicates("combo").set_index("combo")
        preset = analogvnn_cell(spec, cond)
        preset_combo = f"{preset['weight_policy']}/{preset['signal_policy']}"
        for combo in combos:
            members = combo.split(GROUP_JOIN)
            omni.append(
                cond
                | {
                    "combo": combo,
                    "weight_policy": policies.at[combo, "weight_policy"],
                    "signal_policy": policies.at[combo, "signal_policy"],
                    "metric": hyp.metric,
                    "n_seeds": n,
                    "mean_metric": block[combo].mean() if n else math.nan,
                    "mean_rank": ranks[combo],
                    "friedman_stat": stat,
                    "friedman_p": p,
                    "cd": cd,
                    "k": k,
                    "n_combos": len(members),
                    PRESET_FLAG: preset_combo in members,
                }
            )
        if testable:
            post += [cond | row for row in posthoc_pairs(block, ranks, hyp.alpha)]
    omni_cols = conds + list(OMNIBUS_COLUMNS)
    post_cols = conds + ["combo_a", "combo_b", "mean_rank_diff", "p_nemenyi", "significant"]
    return pd.DataFrame(omni, columns=omni_cols), pd.DataFrame(post, columns=post_cols)
