"""Paired comparisons: trials paired by seed within a condition, and every per-row statistic.

Bootstrap CI, t-test, sign-flip permutation and Wilcoxon p, TOST, effect sizes and power; the
multiplicity-dependent numbers and the verdicts are `study.analysis.stats.families`.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sst
from statsmodels.stats.power import TTestPower
from statsmodels.stats.weightstats import ttost_paired

from study.analysis.stats.bayes import posterior_probs
from study.analysis.stats.table import (
    ROW_KEYS,
    cell_text,
    expected_seeds,
    higher_is_better,
    key_columns,
    load_hypotheses,
    trial_table,
)
from study.sweep.hypotheses import Comparison, Hypotheses
from study.tables import (
    PRESET_FLAG,
    condition_columns,
)

POWER = 0.8


CI_LEVEL = 0.95


PERMUTATION_RESAMPLES = 9999  # sign-flip permutation test; exact enumeration when 2^n is not larger


STAT_COLUMNS = [
    "metric",
    "n_pairs",
    "n_diverged",
    "n_identical",
    "mean_diff",
    "median_diff",
    "sd_diff",
    "ci_low",
    "ci_high",
    "ci_method",
    "p_ttest",
    "p_permutation",
    "p_wilcoxon",
    "p_primary",
    "family",
    "p_adjusted",
    "p_permutation_adjusted",
    "p_tost",
    "p_tost_adjusted",
    "tost_ci_low",
    "tost_ci_high",
    "margin",
    "dz",
    "hodges_lehmann",
    "prob_a_better",
    "mde",
    "seeds_needed_equivalence",
    "same_data_as",
    "verdict",
    "verdict_permutation",
    "better",
    PRESET_FLAG,
]


def side_mask(table: pd.DataFrame, comp: Comparison, value: str) -> pd.Series:
    """The trials of `value` (`comp.a` or `comp.b`) in the compared column: the site's policy column, or
    the comparison's `factor`, whose numbers are compared as runs.csv spells them (16, 16.0, '16')."""
    if comp.factor is None:
        return table[comp.column] == value
    return table[comp.column].map(cell_text) == cell_text(value)


def _comparison_frame(
    table: pd.DataFrame, comp: Comparison, conds: list[str]
) -> tuple[pd.DataFrame, str, list[str]]:
    """(trials of a and b, the compared column, the columns held fixed within a pair).

    A policy comparison compares the site's policy column within each condition and policy of the other
    site; a `factor` comparison compares that condition column within each combination of the other
    condition columns and both sites' policies (its trials named by `a` and `b` as the spec writes them).
    """
    own = comp.column
    if comp.factor is None:
        frame = table[table[own].isin([comp.a, comp.b])].copy()
    else:
        is_a, is_b = side_mask(table, comp, comp.a), side_mask(table, comp, comp.b)
        frame = table[is_a | is_b].copy()
        frame[own] = np.where(is_a[frame.index], comp.a, comp.b)
    return frame, own, comp.held_columns(conds)


def _label(comp: Comparison, index: int) -> dict[str, Any]:
    return {
        "comparison": comp.label,
        "role": comp.role,
        "site": comp.site,
        "policy_a": comp.a,
        "policy_b": comp.b,
        "_index": index,
    }


def _absent_text(comp: Comparison, absent: list[str]) -> str:
    """`absent_policy` of skipped.csv: the absent policies (`exact/ste`); for a `factor` comparison the
    absent values with their factor (`weight_bound=project`)."""
    if comp.factor is None:
        return "/".join(absent)
    return "/".join(f"{comp.factor}={v}" for v in absent)


def pair_trials(
    table: pd.DataFrame, comp: Comparison, conds: list[str], seeds: list[int], index: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Pair the trials of `comp` by seed within each condition (`Comparison.held_columns`).

    Returns (differences, missing, skipped): the complete pairs; every expected seed whose pair is
    incomplete with both statuses; and the conditions where one side has no trial at all. The compared
    column is empty in every row (a policy comparison's own policy column, a `factor` comparison's
    factor column; its rows keep both policy columns).
    """
    frame, own, group_keys = _comparison_frame(table, comp, conds)
    pairs, missing, skipped = [], [], []
    for values, group in frame.groupby(group_keys, dropna=False, sort=True):
        cond = dict(zip(group_keys, values, strict=True)) | {own: ""}
        sides = {p: group[group[own] == p].set_index("seed") for p in (comp.a, comp.b)}
        if any(side.empty for side in sides.values()):
            absent = [p for p, side in sides.items() if side.empty]
            skipped.append(_label(comp, index) | cond | {"absent_policy": _absent_text(comp, absent)})
            continue
        for seed in seeds:
            status = [sides[p]["status"].get(seed, "absent") for p in (comp.a, comp.b)]
            if status == ["ok", "ok"]:
                va, vb = (float(sides[p].at[seed, "value"]) for p in (comp.a, comp.b))
                div = bool(sides[comp.a].at[seed, "diverged"] or sides[comp.b].at[seed, "diverged"])
                fa, fb = (str(sides[p].at[seed, "fingerprint"]) for p in (comp.a, comp.b))
                pairs.append(
                    _label(comp, index)
                    | cond
                    | {"seed": seed, "value_a": va, "value_b": vb, "diff": va - vb, "_diverged": div}
                    | {"_fp_a": fa, "_fp_b": fb}
                )
            else:
                missing.append(
                    _label(comp, index)
                    | cond
                    | {"seed": seed, "policy_a_status": status[0], "policy_b_status": status[1]}
                )
    return pd.DataFrame(pairs), pd.DataFrame(missing), pd.DataFrame(skipped)


def absent_sides(comp: Comparison, table: pd.DataFrame) -> list[str]:
    """`a` and/or `b` of `comp` where no trial of the table has them (every side, for a `factor` that is
    not a column of the trial table: not a condition factor of the study)."""
    if comp.column not in table:
        return [comp.a, comp.b]
    return [p for p in (comp.a, comp.b) if not side_mask(table, comp, p).any()]


def applicable_comparisons(hyp: Hypotheses, table: pd.DataFrame) -> tuple[list[Comparison], list[Comparison]]:
    """(comparisons whose two policies (or factor values) occur in the runs, comparisons skipped because
    one does not)."""
    kept, skipped = [], []
    for comp in hyp.comparisons:
        (skipped if absent_sides(comp, table) else kept).append(comp)
    return kept, skipped


SKIPPED_COLUMNS = ["scope", "absent_policy"]


def skipped_table(table: pd.DataFrame, spec: dict[str, Any], hyp: Hypotheses) -> pd.DataFrame:
    """What was not compared and why (`stats/skipped.csv`): one row per comparison whose policy is absent
    from every run (`scope` = `comparison`, key columns empty) and one per comparison × condition where
    one policy has no trial (`scope` = `condition`); `absent_policy` names the absent policies, for a
    `factor` comparison the absent factor values (`weight_bound=project`: e.g. a fractional design that
    runs `project` only with some policies leaves the other policies' `forward` trials unpaired)."""
    kept, skipped = applicable_comparisons(hyp, table)
    keys = key_columns(spec)
    rows = []
    for comp in skipped:
        absent = _absent_text(comp, absent_sides(comp, table))
        index = hyp.comparisons.index(comp)
        rows.append(
            _label(comp, index) | dict.fromkeys(keys, "") | {"scope": "comparison", "absent_policy": absent}
        )
    conds, seeds = condition_columns(spec), expected_seeds(spec, table)
    for i, comp in enumerate(kept):
        cells = pair_trials(table, comp, conds, seeds, i)[2]
        rows += [r | {"scope": "condition"} for r in cells.to_dict("records")]
    columns = ROW_KEYS + keys + SKIPPED_COLUMNS
    return pd.DataFrame(rows, columns=columns).fillna("") if rows else pd.DataFrame(columns=columns)


def skipped_conditions(runs: pd.DataFrame, spec: dict[str, Any]) -> pd.DataFrame:
    """Comparison × condition cells not compared because one policy has no trial in that condition."""
    hyp = load_hypotheses(spec)
    skipped = skipped_table(trial_table(runs, spec, hyp), spec, hyp)
    cells = skipped[skipped["scope"] == "condition"].reset_index(drop=True)
    return cells[ROW_KEYS + key_columns(spec) + ["absent_policy"]]


def describe_differences(d: np.ndarray) -> dict[str, float]:
    """n, mean, median and sample sd (ddof=1) of the paired differences."""
    n = len(d)
    return {
        "n_pairs": n,
        "mean_diff": float(np.mean(d)) if n else math.nan,
        "median_diff": float(np.median(d)) if n else math.nan,
        "sd_diff": float(np.std(d, ddof=1)) if n > 1 else math.nan,
    }


def bootstrap_ci(
    a: np.ndarray, b: np.ndarray, resamples: int, seed: int, level: float = CI_LEVEL
) -> tuple[float, float, str]:
    """Paired BCa bootstrap CI of mean(a - b).

    Fallbacks (the returned method): `percentile` when BCa is undefined, `degenerate` ([d, d]) when all
    differences are equal, `none` (NaN) with fewer than two pairs.
    """
    d = a - b
    if len(d) < 2:
        return math.nan, math.nan, "none"
    if np.all(d == d[0]):
        return float(d[0]), float(d[0]), "degenerate"

    def mean_diff(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.mean(x - y, axis=axis)

    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = sst.bootstrap(
                (a, b),
                mean_diff,
                paired=True,
                vectorized=True,
                n_resamples=resamples,
                confidence_level=level,
                method=method,
                rng=np.random.default_rng(seed),
            )
        low, high = res.confidence_interval
        if np.isfinite(low) and np.isfinite(high):
            return float(low), float(high), method.lower()
    return math.nan, math.nan, "none"


def t_interval(a: np.ndarray, b: np.ndarray, level: float = CI_LEVEL) -> tuple[float, float, str]:
    """The paired t interval of mean(a - b): the interval of the pre-specified paired t-test (it excludes
    0 exactly when that test rejects at 1 - level), with nominal coverage at every n for normal
    differences (benchmarks/coverage.py measures it against BCa, which undercovers at small n).

    `degenerate` ([d, d]) when all differences are equal, `none` (NaN) with fewer than two pairs.
    """
    d = a - b
    if len(d) < 2:
        return math.nan, math.nan, "none"
    if np.all(d == d[0]):
        return float(d[0]), float(d[0]), "degenerate"
    low, high = sst.ttest_rel(a, b).confidence_interval(confidence_level=level)
    return float(low), float(high), "t"


def ttest_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided paired t-test p of mean(a - b) = 0.

    Constant differences: 1 when they are all 0, 0 otherwise (the limit |t| -> inf); NaN below 2 pairs.
    """
    d = a - b
    if len(d) < 2:
        return math.nan
    if np.all(d == d[0]):
        return 1.0 if d[0] == 0 else 0.0
    return float(sst.ttest_rel(a, b).pvalue)


def _mean_statistic(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis)


def permutation_p(d: np.ndarray, resamples: int = PERMUTATION_RESAMPLES, seed: int = 0) -> float:
    """Two-sided sign-flip permutation p of the mean paired difference (`scipy.stats.permutation_test`).

    Exact (all 2^n sign patterns) when 2^n <= `resamples`, else `resamples` seeded random sign flips,
    with the observed statistic counted among them (p >= 1 / (resamples + 1)). NaN below 2 pairs.
    """
    if len(d) < 2:
        return math.nan
    if np.all(d == 0):
        return 1.0
    res = sst.permutation_test(
        (np.asarray(d, dtype=float),),
        _mean_statistic,
        vectorized=True,
        permutation_type="samples",
        n_resamples=resamples,
        alternative="two-sided",
        rng=np.random.default_rng(seed),
    )
    return float(min(1.0, res.pvalue))


def wilcoxon_p(d: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p (zeros dropped, scipy's default); 1 when all differences are 0.

    A sensitivity column only: it tests the pseudo-median, not the mean the verdicts are about.
    """
    if len(d) < 2:
        return math.nan
    if np.all(d == 0):
        return 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(sst.wilcoxon(d).pvalue)


def tost(a: np.ndarray, b: np.ndarray, margin: float, alpha: float) -> tuple[float, float, float]:
    """Paired TOST p for |mean(a - b)| < margin and the matching (1 - 2 alpha) t confidence interval.

    Constant differences (sd 0): p is the limit, 0 inside the margin and 1 outside.
    """
    d = a - b
    n = len(d)
    if n < 2:
        return math.nan, math.nan, math.nan
    mean, sd = float(np.mean(d)), float(np.std(d, ddof=1))
    if sd == 0:
        return (0.0 if abs(mean) < margin else 1.0), mean, mean
    p = float(ttost_paired(a, b, -margin, margin)[0])
    half = float(sst.t.ppf(1 - alpha, n - 1)) * sd / math.sqrt(n)
    return p, mean - half, mean + half


def cohen_dz(d: np.ndarray) -> float:
    """Standardized mean difference of paired data: mean(d) / sd(d)."""
    if len(d) < 2:
        return math.nan
    sd = float(np.std(d, ddof=1))
    return float(np.mean(d)) / sd if sd > 0 else math.nan


def hodges_lehmann(d: np.ndarray) -> float:
    """One-sample Hodges-Lehmann estimator: the median of the Walsh averages (d_i + d_j) / 2, i <= j."""
    if len(d) == 0:
        return math.nan
    i, j = np.triu_indices(len(d))
    return float(np.median((d[i] + d[j]) / 2))


def prob_a_better(d: np.ndarray, higher: bool) -> float:
    """Share of pairs where a strictly beats b (ties count as not better)."""
    if len(d) == 0:
        return math.nan
    return float(np.mean(d > 0 if higher else d < 0))


@functools.lru_cache(maxsize=256)
def _detectable_effect(n: int, alpha: float) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(TTestPower().solve_power(nobs=n, alpha=alpha, power=POWER, alternative="two-sided"))


def mde(n: int, sd: float, alpha: float) -> float:
    """Smallest mean difference a two-sided paired t-test detects with 80% power at this n and sd."""
    if n < 2 or not np.isfinite(sd):
        return math.nan
    return _detectable_effect(int(n), float(alpha)) * sd


def paired_t_power(effect: float, n: np.ndarray | int, alpha: float) -> np.ndarray:
    """Power of the two-sided paired t-test at standardized effect `effect` with `n` pairs (noncentral t)."""
    n = np.asarray(n, dtype=float)
    df, nc = n - 1, effect * np.sqrt(n)
    crit = sst.t.ppf(1 - alpha / 2, df)
    return sst.nct.sf(crit, df, nc) + sst.nct.cdf(-crit, df, nc)


_GAUSS_LEGENDRE = np.polynomial.legendre.leggauss(400)


def tost_power(n: int, sd: float, margin: float, alpha: float, mean: float = 0.0) -> float:
    """Exact power of the paired TOST (bounds ±margin, each one-sided test at `alpha`) with `n` pairs.

    TOST rejects when mean(d) ± t_{1-alpha, n-1} s / sqrt(n) lies inside ±margin. Given the sample sd s
    that is a normal probability for mean(d); it is integrated over the sampling distribution of s
    ((n - 1) s^2 / sd^2 ~ chi^2_{n-1}) by Gauss-Legendre quadrature (Owen 1965), not simulated.
    """
    if n < 2 or not np.isfinite(sd):
        return math.nan
    if sd == 0:
        return float(abs(mean) < margin)
    df = n - 1
    crit = float(sst.t.ppf(1 - alpha, df))
    se = sd / math.sqrt(n)
    # s above sd * sqrt(v_max / df) makes the interval wider than the margin: no rejection possible
    upper = float(sst.chi2.cdf(df * (margin * math.sqrt(n) / (crit * sd)) ** 2, df))

    if upper <= 0:
        return 0.0
    # Gauss-Legendre quadrature in u = F_chi2(v) over (0, upper): the integrand is bounded by 1 and
    # vanishes continuously at `upper`
    nodes, weights = _GAUSS_LEGENDRE
    u = upper * (nodes + 1) / 2
    s = sd * np.sqrt(sst.chi2.ppf(u, df) / df)
    half = np.maximum(margin - crit * s / math.sqrt(n), 0.0)
    inside = sst.norm.cdf((half - mean) / se) - sst.norm.cdf((-half - mean) / se)
    value = float(np.sum(weights * np.where(half > 0, inside, 0.0)) * upper / 2)
    return float(min(max(value, 0.0), 1.0))


def seeds_needed_equivalence(sd: float, margin: float, alpha: float, max_pairs: int = 10**7) -> float:
    """Paired seeds for 80% TOST power at this sd if the true mean difference is 0 (`tost_power`).

    NaN when sd is 0 or not finite, or when even `max_pairs` pairs do not reach 80%.
    """
    if not np.isfinite(sd) or sd <= 0:
        return math.nan

    def enough(n: int) -> bool:
        return tost_power(n, sd, margin, alpha) >= POWER

    high = 2
    while not enough(high):
        if high >= max_pairs:
            return math.nan
        high = min(2 * high, max_pairs)
    low = max(high // 2, 2)
    if enough(low):
        return float(low)
    while high - low > 1:  # enough(high), not enough(low)
        mid = (low + high) // 2
        low, high = (low, mid) if enough(mid) else (mid, high)
    return float(high)


def sd_limit_equivalence(n: int, margin: float, alpha: float) -> float:
    """Largest sample sd at which TOST can reject at all with `n` pairs: margin sqrt(n) / t_{1-alpha, n-1}."""
    if n < 2:
        return math.nan
    return margin * math.sqrt(n) / float(sst.t.ppf(1 - alpha, n - 1))


IDENTICAL_BY = {True: "identical (checksums)", False: "identical (recorded metrics)"}


def row_statistics(
    a: np.ndarray, b: np.ndarray, hyp: Hypotheses, identical: bool = False, checksums: bool = False
) -> dict[str, Any]:
    """Every per-row statistic of comparisons.csv except the multiplicity-dependent ones and the verdicts.

    `identical` rows get no test: their p-values, TOST, standardized effect, power and posterior are
    empty, their interval is [0, 0]; `ci_method` says what the identity rests on: equal checksums of the
    final parameters and test logits (`checksums`: bit-identical runs), or, for studies recorded before
    the checksums, equal values of every recorded metric.
    """
    d = a - b
    out: dict[str, Any] = {"metric": hyp.metric, "margin": hyp.margin} | describe_differences(d)
    n, sd = out["n_pairs"], out["sd_diff"]
    higher = higher_is_better(hyp.metric)
    if identical:
        nan = math.nan
        return out | {
            "ci_low": 0.0,
            "ci_high": 0.0,
            "ci_method": IDENTICAL_BY[checksums],
            "p_ttest": nan,
            "p_permutation": nan,
            "p_wilcoxon": nan,
            "p_primary": nan,
            "p_tost": nan,
            "tost_ci_low": nan,
            "tost_ci_high": nan,
            "dz": nan,
            "hodges_lehmann": 0.0,
            "prob_a_better": 0.0,
            "mde": nan,
            "p_a_worse": nan,
            "p_equiv": nan,
            "p_a_better": nan,
        }
    out["ci_low"], out["ci_high"], out["ci_method"] = t_interval(a, b)
    out["p_ttest"] = ttest_p(a, b)
    out["p_permutation"] = permutation_p(d, PERMUTATION_RESAMPLES, hyp.bootstrap_seed)
    out["p_wilcoxon"] = wilcoxon_p(d)
    out["p_primary"] = out["p_ttest"]
    out["p_tost"], out["tost_ci_low"], out["tost_ci_high"] = tost(a, b, hyp.margin, hyp.alpha)
    out["dz"] = cohen_dz(d)
    out["hodges_lehmann"] = hodges_lehmann(d)
    out["prob_a_better"] = prob_a_better(d, higher)
    out["mde"] = mde(n, sd, hyp.alpha)
    return out | posterior_probs(d, hyp.margin, higher, hyp.bootstrap_seed)
