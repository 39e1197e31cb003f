"""Families and verdicts: multiplicity correction within each family and the decision rule per row.

Decision rule per comparison row (site, a, b, condition), all about the mean paired difference:

- `identical`: every pair of runs is equal in every metric runs.csv records; no test is run.
- Otherwise one pre-specified test, the paired t-test (a sign-flip permutation test of the mean is
  reported beside it, the Wilcoxon signed-rank p as a sensitivity column), and TOST with bounds ±margin.
  Both p-values are Holm-adjusted (the spec's `correction`) within the family, over the distinct rows
  tested (a row whose paired data equal an earlier row's of the same comparison is not tested again:
  it is merged into that row, `same_data_as`).
- `different`: adjusted t-test p < alpha and the 95% CI of the mean reaches outside ±margin;
  `trivial`: adjusted t-test p < alpha but the whole CI lies within ±margin; `equivalent`: adjusted
  TOST p < alpha and the difference test does not reject; `inconclusive`: neither.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from statsmodels.stats.multitest import multipletests

from analog.policies import OTHER_SITE
from study.analysis.stats.bayes import POSTERIOR_COLUMNS
from study.analysis.stats.paired import (
    STAT_COLUMNS,
    applicable_comparisons,
    pair_trials,
    row_statistics,
    seeds_needed_equivalence,
)
from study.analysis.stats.table import (
    ROW_KEYS,
    analogvnn_cell,
    expected_seeds,
    higher_is_better,
    key_columns,
    sort_rows,
    value_orders,
)
from study.sweep.hypotheses import Hypotheses
from study.tables import (
    PRESET_FLAG,
    SITE_COLUMN,
    condition_columns,
)

# the five verdicts, in the order every summary lists them
VERDICTS = ("identical", "equivalent", "different", "trivial", "inconclusive")


ADJUSTED = {"p_primary": "p_adjusted", "p_tost": "p_tost_adjusted", "p_permutation": "p_permutation_adjusted"}


def holm(p: np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values: the sorted p times (m - rank), running maximum, capped at 1.

    Written here rather than taken from statsmodels' `multipletests`, whose Holm branch calls
    `gc.collect()` on every call: ~0.15 s each with pandas and matplotlib loaded, which was 60 % of the
    statistics stage (the sensitivity check re-adjusts every family many times). Tested equal to it."""
    p = np.asarray(p, dtype=float)
    order = np.argsort(p, kind="stable")
    m = len(p)
    adjusted = np.minimum(np.maximum.accumulate(p[order] * (m - np.arange(m))), 1.0)
    out = np.empty_like(adjusted)
    out[order] = adjusted
    return out


def adjust_pvalues(p: np.ndarray, method: str) -> np.ndarray:
    """Multiplicity-adjusted p-values (Holm by `holm`, the others by statsmodels `multipletests`); NaN
    entries are left out and kept NaN."""
    p = np.asarray(p, dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.isfinite(p)
    if not ok.any():
        return out
    if method == "none":
        out[ok] = p[ok]
    elif method == "holm":
        out[ok] = holm(p[ok])
    else:
        out[ok] = multipletests(p[ok], method=method)[1]
    return out


def family_key(row: pd.Series, family: str) -> str:
    """Name of the multiple-comparison family a row belongs to."""
    return {"role": row["role"], "per_comparison": row["comparison"], "all": "all"}[family]


def is_identical(frame: pd.DataFrame) -> pd.Series:
    """Rows whose every pair of runs is identical in every recorded metric (at least one pair)."""
    n = pd.to_numeric(frame["n_pairs"], errors="coerce").fillna(0)
    return (n > 0) & (pd.to_numeric(frame["n_identical"], errors="coerce").fillna(-1) == n)


def merge_duplicates(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Mark rows whose paired data (seeds and every recorded metric of both runs) equal those of an
    earlier row of the same comparison: `same_data_as` names the earlier row's differing key values.

    Such a row is the same comparison of the same numbers (e.g. the signal-site rows with weight
    `exact` and `ste` where the weight policies give identical runs): it is tested and counted once.
    `frame` must be sorted; the private `_source` column holds the earlier row's position (-1 if none).
    """
    frame = frame.reset_index(drop=True).copy()
    same, source, first = [""] * len(frame), [-1] * len(frame), {}
    for i, (index, signature) in enumerate(zip(frame["_index"], frame["_signature"], strict=True)):
        if not signature:
            continue
        j = first.setdefault((index, signature), i)
        if j != i:
            differ = [c for c in keys if frame.at[i, c] != frame.at[j, c]]
            same[i] = ", ".join(f"{c}={frame.at[j, c]}" for c in differ)
            source[i] = j
    frame["same_data_as"], frame["_source"] = same, source
    return frame


def apply_correction(frame: pd.DataFrame, hyp: Hypotheses) -> pd.DataFrame:
    """Add `family` and the adjusted p-values (the spec's correction within each family).

    The t-test, TOST and permutation p-values are each adjusted over the family's distinct tested rows:
    identical rows are not tested, and a row with the same data as an earlier one (`_source` >= 0) is
    not tested again but takes that row's adjusted values.
    """
    frame = frame.reset_index(drop=True).copy()
    if "_source" not in frame:
        frame["_source"] = -1
    frame["family"] = frame.apply(family_key, axis=1, family=hyp.family) if len(frame) else []
    for column in ADJUSTED.values():
        frame[column] = np.nan
    frame["_tests"] = 0
    tested = ~is_identical(frame) & (frame["_source"] < 0)
    for _, idx in frame[tested].groupby("family", sort=True).groups.items():
        for raw, adjusted in ADJUSTED.items():
            frame.loc[idx, adjusted] = adjust_pvalues(frame.loc[idx, raw].to_numpy(), hyp.correction)
        family = frame["family"] == frame.at[idx[0], "family"]
        frame.loc[family, "_tests"] = int(np.isfinite(frame.loc[idx, "p_tost"].to_numpy(dtype=float)).sum())
    merged = frame.index[frame["_source"] >= 0]
    if len(merged):
        sources = frame.loc[merged, "_source"].to_numpy()
        for column in ADJUSTED.values():
            frame.loc[merged, column] = frame.loc[sources, column].to_numpy()
    return frame


def verdict(
    identical: bool,
    n: int,
    p_adjusted: float,
    p_tost_adjusted: float,
    ci_low: float,
    ci_high: float,
    margin: float,
    alpha: float,
) -> str:
    """The decision rule (module docstring): identical, different, trivial, equivalent or inconclusive."""
    if identical:
        return "identical"
    if n < 2:
        return "inconclusive"
    if np.isfinite(p_adjusted) and p_adjusted < alpha:
        inside = np.isfinite(ci_low) and np.isfinite(ci_high) and -margin < ci_low and ci_high < margin
        return "trivial" if inside else "different"
    if np.isfinite(p_tost_adjusted) and p_tost_adjusted < alpha:
        return "equivalent"
    return "inconclusive"


def better_side(verdict_: str, mean_diff: float, higher: bool) -> str:
    """`a` or `b` for a `different` or `trivial` row (by the sign of the mean difference), empty otherwise."""
    if verdict_ not in ("different", "trivial"):
        return ""
    return "a" if (mean_diff > 0) == higher else "b"


def planning_alpha(hyp: Hypotheses, tests: int) -> float:
    """Level at which each one-sided TOST must reject for a row to settle: alpha / m, m the TOST tests of
    its family (what Holm demands of the first one; Bonferroni's level), alpha without a correction."""
    return hyp.alpha / max(int(tests), 1) if hyp.correction != "none" else hyp.alpha


def decide(frame: pd.DataFrame, hyp: Hypotheses, planning: bool = True) -> pd.DataFrame:
    """Add `verdict`, `verdict_permutation`, `better` and `seeds_needed_equivalence` to rows that carry
    the adjusted p-values.

    `seeds_needed_equivalence` (inconclusive rows only): paired seeds for 80% TOST power at the row's
    observed sd if the true mean difference were 0 (the best case), at `planning_alpha`; left empty
    without `planning` (the planted-effect check needs only the verdicts, and this search is its cost).
    """
    frame = frame.copy()
    higher = higher_is_better(hyp.metric)
    same = is_identical(frame).to_numpy()

    def rule(p_column: str) -> list[str]:
        return [
            verdict(s, int(n), pa, pt, lo, hi, hyp.margin, hyp.alpha)
            for s, n, pa, pt, lo, hi in zip(
                same,
                frame["n_pairs"],
                frame[p_column],
                frame["p_tost_adjusted"],
                frame["ci_low"],
                frame["ci_high"],
                strict=True,
            )
        ]

    frame["verdict"] = rule("p_adjusted")
    frame["verdict_permutation"] = rule("p_permutation_adjusted")
    frame["better"] = [
        better_side(v, m, higher) for v, m in zip(frame["verdict"], frame["mean_diff"], strict=True)
    ]
    tests = frame["_tests"] if "_tests" in frame else pd.Series(0, index=frame.index)
    frame["seeds_needed_equivalence"] = [
        seeds_needed_equivalence(sd, hyp.margin, planning_alpha(hyp, m))
        if planning and v == "inconclusive" and n >= 2
        else math.nan
        for v, sd, n, m in zip(frame["verdict"], frame["sd_diff"], frame["n_pairs"], tests, strict=True)
    ]
    return frame


def preset_side(spec: dict[str, Any], row: pd.Series) -> str:
    """`a`/`b` when that side of the row is the `analogvnn` preset cell of its condition, else empty.

    Always empty for a row of a `factor` comparison (its own policy column is set): both sides run the
    same policies, so no side is the preset's choice of policy.
    """
    if str(row.get(SITE_COLUMN[row["site"]], "")) != "":
        return ""
    cell = analogvnn_cell(spec, row)
    other = SITE_COLUMN[OTHER_SITE[row["site"]]]
    if str(row[other]) != cell[other]:
        return ""
    own = cell[SITE_COLUMN[row["site"]]]
    return "a" if row["policy_a"] == own else "b" if row["policy_b"] == own else ""


def compare(
    table: pd.DataFrame, spec: dict[str, Any], hyp: Hypotheses, planning: bool = True
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(comparisons, differences, missing) frames for every applicable comparison.

    Comparisons are sorted (spec order), carry the verdicts and, in private columns, the posterior;
    `planning=False` skips the seeds each inconclusive row would need (`decide`).
    """
    conds, seeds = condition_columns(spec), expected_seeds(spec, table)
    kept, _ = applicable_comparisons(hyp, table)
    keys = key_columns(spec)
    checksums = bool(table.attrs.get("checksums", False))
    rows, diffs, missing = [], [], []
    for index, comp in enumerate(kept):
        pairs, miss, _ = pair_trials(table, comp, conds, seeds, index)
        missing.append(miss)
        diffs.append(pairs)
        groups = pairs.groupby(keys, dropna=False, sort=True) if len(pairs) else []
        for _, group in groups:
            group = group.sort_values("seed", kind="mergesort")
            same = (group["_fp_a"] == group["_fp_b"]).to_numpy()
            a, b = group["value_a"].to_numpy(), group["value_b"].to_numpy()
            stats = row_statistics(a, b, hyp, identical=bool(same.all()), checksums=checksums)
            stats["n_diverged"] = int(group["_diverged"].sum())
            stats["n_identical"] = int(same.sum())
            stats["_signature"] = tuple(zip(group["seed"], group["_fp_a"], group["_fp_b"], strict=True))
            rows.append(group.iloc[0][ROW_KEYS + ["_index"] + keys].to_dict() | stats)
        # conditions where every seed is incomplete still get an (inconclusive) row
        if len(miss):
            done = {tuple(r[k] for k in keys) for r in rows if r["_index"] == index}
            for _, group in miss.groupby(keys, dropna=False, sort=True):
                first = group.iloc[0]
                if tuple(first[k] for k in keys) not in done:
                    empty = np.array([], dtype=float)
                    stats = row_statistics(empty, empty, hyp) | {"n_diverged": 0, "n_identical": 0}
                    stats |= dict.fromkeys(POSTERIOR_COLUMNS, math.nan) | {"_signature": ()}
                    rows.append(first[ROW_KEYS + ["_index"] + keys].to_dict() | stats)
    columns = ROW_KEYS + ["_index"] + keys + STAT_COLUMNS + POSTERIOR_COLUMNS + ["_signature"]
    comparisons = pd.DataFrame(rows, columns=columns)
    if len(comparisons):
        comparisons = sort_rows(comparisons, ["_index"] + keys, value_orders(spec, table))
        comparisons = decide(apply_correction(merge_duplicates(comparisons, keys), hyp), hyp, planning)
        comparisons[PRESET_FLAG] = [preset_side(spec, r) for _, r in comparisons.iterrows()]
    return comparisons, _concat(diffs), _concat(missing)


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
