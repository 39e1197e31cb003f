"""Statistics stage: paired policy comparisons, equivalence tests, omnibus tests and a mixed model.

`compute_stats(DIR)` reads `DIR/spec.yaml` and `DIR/runs.csv` and writes `DIR/stats/`
(`comparisons.csv`, `differences.csv`, `missing.csv`, `bayes.csv`, `omnibus.csv`, `posthoc.csv`,
`model.csv`, `model.txt`, `report.md` and `latex/`). Every output is a deterministic function of the
two inputs: rows are sorted by stable keys, floats are written with `%.6g` and the bootstrap is seeded
by `hypotheses.bootstrap_seed`.

Pre-registered decision rule per comparison row (site, a, b, condition):
`different` if the adjusted p of the primary test is < alpha (paired t-test when Shapiro-Wilk on the
differences gives p >= `normality_alpha`, Wilcoxon signed-rank otherwise); else `equivalent` if the
TOST p with bounds ±margin is < alpha; else `inconclusive`.
"""

from __future__ import annotations

import functools
import math
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scikit_posthocs as sp
from scipy import stats as sst
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower
from statsmodels.stats.weightstats import ttost_paired

from study.hypotheses import Comparison, Hypotheses
from study.tables import POLICY_COLUMNS, SITE_COLUMN, condition_columns, load_runs, load_spec_dict

FLOAT_FORMAT = "%.6g"
POLICY_ORDER = ("exact", "ste", "zero")
POWER = 0.8
CI_LEVEL = 0.95
OTHER_SITE = {"weight": "signal", "signal": "weight"}
ANALOGVNN_CELL = {"weight_policy": "ste", "signal_policy": "exact"}

ROW_KEYS = ["comparison", "role", "site", "policy_a", "policy_b"]
STAT_COLUMNS = [
    "metric",
    "n_pairs",
    "n_diverged",
    "mean_diff",
    "median_diff",
    "sd_diff",
    "ci_low",
    "ci_high",
    "ci_method",
    "shapiro_p",
    "test_used",
    "p_ttest",
    "p_wilcoxon",
    "p_primary",
    "family",
    "p_adjusted",
    "p_tost",
    "tost_ci_low",
    "tost_ci_high",
    "margin",
    "dz",
    "hodges_lehmann",
    "prob_a_better",
    "mde",
    "seeds_needed",
    "verdict",
    "better",
]
BAYES_COLUMNS = ["metric", "n_pairs", "margin", "mean_diff", "p_a_worse", "p_equiv", "p_a_better", "verdict"]
MISSING_STATUS = ["policy_a_status", "policy_b_status"]


# --------------------------------------------------------------------------- inputs


def load_hypotheses(spec: dict[str, Any]) -> Hypotheses:
    """The spec's `hypotheses:` block, validated (defaults when absent)."""
    return Hypotheses.model_validate(spec.get("hypotheses") or {})


def higher_is_better(metric: str) -> bool:
    """Accuracies: higher is better; metrics whose name ends with `loss`: lower is better."""
    return not metric.endswith("loss")


def key_columns(spec: dict[str, Any]) -> list[str]:
    """Condition columns followed by both policy columns (the layout of every per-row output)."""
    return condition_columns(spec) + list(POLICY_COLUMNS)


def _truthy(frame: pd.DataFrame, column: str) -> pd.Series:
    if column not in frame:
        return pd.Series(False, index=frame.index)
    text = frame[column].astype(str).str.strip().str.lower()
    return text.isin({"true", "1", "1.0", "yes"})


def trial_status(runs: pd.DataFrame, hyp: Hypotheses) -> pd.Series:
    """Per trial: `failed` (raised or no metric), `diverged` (only when the spec excludes them) or `ok`."""
    failed = _truthy(runs, "failed") | pd.to_numeric(runs[hyp.metric], errors="coerce").isna()
    diverged = _truthy(runs, "diverged") & (hyp.diverged == "exclude")
    status = np.where(failed, "failed", np.where(diverged, "diverged", "ok"))
    return pd.Series(status, index=runs.index, name="status")


def trial_table(runs: pd.DataFrame, spec: dict[str, Any], hyp: Hypotheses) -> pd.DataFrame:
    """One row per (condition, weight_policy, signal_policy, seed): `value`, `status`, `diverged`.

    Duplicated trials keep the first usable one (ordered by `run_id`), so the pairing never shifts.
    """
    keys = key_columns(spec)
    missing = [c for c in keys + ["seed", hyp.metric] if c not in runs]
    if missing:
        raise ValueError(f"runs.csv lacks columns {missing}")
    table = runs[keys].astype(object).where(runs[keys].notna(), "").astype(str)
    table["seed"] = pd.to_numeric(runs["seed"]).astype(int)
    table["value"] = pd.to_numeric(runs[hyp.metric], errors="coerce")
    table["status"] = trial_status(runs, hyp)
    table["diverged"] = _truthy(runs, "diverged")
    table["_order"] = runs["run_id"].astype(str) if "run_id" in runs else ""
    table["_bad"] = table["status"] != "ok"
    table = table.sort_values(keys + ["seed", "_bad", "_order"], kind="mergesort")
    table = table.drop_duplicates(keys + ["seed"], keep="first")
    return table.drop(columns=["_order", "_bad"]).reset_index(drop=True)


def expected_seeds(spec: dict[str, Any], table: pd.DataFrame) -> list[int]:
    """Seeds listed in the spec (when a list) together with every seed seen in the runs."""
    seeds = set(table["seed"].tolist())
    listed = spec.get("seeds")
    if isinstance(listed, list):
        seeds |= {int(s) for s in listed}
    return sorted(seeds)


# --------------------------------------------------------------------------- ordering


def value_orders(spec: dict[str, Any], table: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Rank of every value of every key column: spec order first, then known policies, then sorted."""
    factors = spec.get("factors") or {}
    orders: dict[str, dict[str, int]] = {}
    for column in key_columns(spec):
        listed: list[str] = []
        for value in factors.get(column) or []:
            for text in ("none" if value is None else str(value), str(value).lower()):
                if text not in listed:
                    listed.append(text)
        if column in POLICY_COLUMNS:
            listed += [p for p in POLICY_ORDER if p not in listed]
        seen = sorted(set(table[column]) - set(listed)) if column in table else []
        orders[column] = {"": -1, **{v: i for i, v in enumerate(listed + seen)}}
    return orders


def sort_rows(frame: pd.DataFrame, by: list[str], orders: dict[str, dict[str, int]]) -> pd.DataFrame:
    """Stable sort of `frame` by `by`, using `orders` for the key columns and natural order otherwise."""

    def key(series: pd.Series) -> pd.Series:
        if series.name in orders:
            ranks = orders[series.name]
            return series.map(lambda v: ranks.get(v, len(ranks)))
        return series

    return frame.sort_values(by, key=key, kind="mergesort").reset_index(drop=True)


# --------------------------------------------------------------------------- pairing


def _comparison_frame(
    table: pd.DataFrame, comp: Comparison, conds: list[str]
) -> tuple[pd.DataFrame, str, list[str]]:
    """(trials of policies a and b, the site's policy column, the condition columns incl. the other site)."""
    own = SITE_COLUMN[comp.site]
    return table[table[own].isin([comp.a, comp.b])].copy(), own, conds + [SITE_COLUMN[OTHER_SITE[comp.site]]]


def _label(comp: Comparison, index: int) -> dict[str, Any]:
    return {
        "comparison": comp.label,
        "role": comp.role,
        "site": comp.site,
        "policy_a": comp.a,
        "policy_b": comp.b,
        "_index": index,
    }


def pair_trials(
    table: pd.DataFrame, comp: Comparison, conds: list[str], seeds: list[int], index: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Pair the trials of `comp` by seed within each condition.

    Returns (differences, missing, skipped): the complete pairs; every expected seed whose pair is
    incomplete with both statuses; and the conditions where one policy has no trial at all.
    """
    frame, own, group_keys = _comparison_frame(table, comp, conds)
    pairs, missing, skipped = [], [], []
    for values, group in frame.groupby(group_keys, dropna=False, sort=True):
        cond = dict(zip(group_keys, values, strict=True)) | {own: ""}
        sides = {p: group[group[own] == p].set_index("seed") for p in (comp.a, comp.b)}
        if any(side.empty for side in sides.values()):
            absent = [p for p, side in sides.items() if side.empty]
            skipped.append(_label(comp, index) | cond | {"absent_policy": "/".join(absent)})
            continue
        for seed in seeds:
            status = [sides[p]["status"].get(seed, "absent") for p in (comp.a, comp.b)]
            if status == ["ok", "ok"]:
                va, vb = (float(sides[p].at[seed, "value"]) for p in (comp.a, comp.b))
                div = bool(sides[comp.a].at[seed, "diverged"] or sides[comp.b].at[seed, "diverged"])
                pairs.append(
                    _label(comp, index)
                    | cond
                    | {"seed": seed, "value_a": va, "value_b": vb, "diff": va - vb, "_diverged": div}
                )
            else:
                missing.append(
                    _label(comp, index)
                    | cond
                    | {"seed": seed, "policy_a_status": status[0], "policy_b_status": status[1]}
                )
    return pd.DataFrame(pairs), pd.DataFrame(missing), pd.DataFrame(skipped)


def applicable_comparisons(hyp: Hypotheses, table: pd.DataFrame) -> tuple[list[Comparison], list[Comparison]]:
    """(comparisons whose two policies occur in the runs, comparisons skipped because one does not)."""
    kept, skipped = [], []
    for comp in hyp.comparisons:
        present = set(table[SITE_COLUMN[comp.site]])
        (kept if {comp.a, comp.b} <= present else skipped).append(comp)
    return kept, skipped


def skipped_conditions(runs: pd.DataFrame, spec: dict[str, Any]) -> pd.DataFrame:
    """Comparison × condition cells not compared because one policy has no trial in that condition."""
    hyp = load_hypotheses(spec)
    table = trial_table(runs, spec, hyp)
    kept, _ = applicable_comparisons(hyp, table)
    conds, seeds = condition_columns(spec), expected_seeds(spec, table)
    frames = [pair_trials(table, comp, conds, seeds, i)[2] for i, comp in enumerate(kept)]
    frames = [f for f in frames if not f.empty]
    columns = ROW_KEYS + key_columns(spec) + ["absent_policy"]
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True)[columns]


# --------------------------------------------------------------------------- per-row statistics


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


def shapiro_p(d: np.ndarray) -> float:
    """Shapiro-Wilk p of the differences; NaN when n < 3 or the differences are constant."""
    if len(d) < 3 or np.all(d == d[0]):
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(sst.shapiro(d).pvalue)


def ttest_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided paired t-test p; 1 when all differences are 0, NaN when constant and non-zero."""
    d = a - b
    if len(d) < 2:
        return math.nan
    if np.all(d == d[0]):
        return 1.0 if d[0] == 0 else math.nan
    return float(sst.ttest_rel(a, b).pvalue)


def wilcoxon_p(d: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p (zeros dropped, scipy's default); 1 when all differences are 0."""
    if len(d) < 2:
        return math.nan
    if np.all(d == 0):
        return 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(sst.wilcoxon(d).pvalue)


def choose_test(p_shapiro: float, normality_alpha: float) -> str:
    """`ttest` when Shapiro-Wilk does not reject normality, `wilcoxon` otherwise (or when undefined)."""
    return "ttest" if np.isfinite(p_shapiro) and p_shapiro >= normality_alpha else "wilcoxon"


def tost(a: np.ndarray, b: np.ndarray, margin: float, alpha: float) -> tuple[float, float, float]:
    """Paired TOST p for |mean(a - b)| < margin and the matching (1 - 2 alpha) t confidence interval."""
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


def seeds_needed(sd: float, margin: float, alpha: float) -> float:
    """Pairs needed for 80% power to detect a mean difference of `margin` at this sd (>= 2; NaN if sd = 0).

    Searched directly up to 200 pairs (statsmodels' solver fails for very large effects), solved beyond.
    """
    if not np.isfinite(sd) or sd <= 0:
        return math.nan
    effect = margin / sd
    nobs = np.arange(2, 201)
    reached = paired_t_power(effect, nobs, alpha) >= POWER
    if reached.any():
        return float(nobs[np.argmax(reached)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        n = TTestPower().solve_power(effect_size=effect, alpha=alpha, power=POWER, alternative="two-sided")
    return float(math.ceil(n)) if np.isfinite(n) else math.nan


def bayes_probs(n: int, mean: float, sd: float, margin: float, higher: bool) -> dict[str, float]:
    """Posterior probabilities that a is worse / equivalent / better by more than `margin`.

    Reference-prior posterior of the mean paired difference: Student t, df n-1, loc mean, scale sd/sqrt(n).
    For accuracies `a worse` is a - b < -margin; for losses the sides swap.
    """
    if n < 2 or not np.isfinite(sd):
        return {"p_a_worse": math.nan, "p_equiv": math.nan, "p_a_better": math.nan}
    if sd == 0:
        below, inside = float(mean <= -margin), float(abs(mean) < margin)  # -margin itself: not inside
    else:
        post = sst.t(df=n - 1, loc=mean, scale=sd / math.sqrt(n))
        below = float(post.cdf(-margin))
        inside = float(post.cdf(margin) - post.cdf(-margin))
    above = max(0.0, 1.0 - below - inside)
    worse, better = (below, above) if higher else (above, below)
    return {"p_a_worse": worse, "p_equiv": inside, "p_a_better": better}


def row_statistics(a: np.ndarray, b: np.ndarray, hyp: Hypotheses) -> dict[str, Any]:
    """Every per-row statistic of comparisons.csv except the adjusted p, verdict and better."""
    d = a - b
    out: dict[str, Any] = {"metric": hyp.metric, "margin": hyp.margin} | describe_differences(d)
    n, sd = out["n_pairs"], out["sd_diff"]
    out["ci_low"], out["ci_high"], out["ci_method"] = bootstrap_ci(
        a, b, hyp.bootstrap_resamples, hyp.bootstrap_seed
    )
    out["shapiro_p"] = shapiro_p(d)
    out["p_ttest"], out["p_wilcoxon"] = ttest_p(a, b), wilcoxon_p(d)
    out["test_used"] = choose_test(out["shapiro_p"], hyp.normality_alpha) if n >= 2 else ""
    out["p_primary"] = out["p_" + out["test_used"]] if n >= 2 else math.nan
    out["p_tost"], out["tost_ci_low"], out["tost_ci_high"] = tost(a, b, hyp.margin, hyp.alpha)
    out["dz"] = cohen_dz(d)
    out["hodges_lehmann"] = hodges_lehmann(d)
    out["prob_a_better"] = prob_a_better(d, higher_is_better(hyp.metric))
    out["mde"] = mde(n, sd, hyp.alpha)
    out["seeds_needed"] = seeds_needed(sd, hyp.margin, hyp.alpha)
    return out


# --------------------------------------------------------------------------- family-wise decisions


def adjust_pvalues(p: np.ndarray, method: str) -> np.ndarray:
    """Multiplicity-adjusted p-values (statsmodels `multipletests`); NaN entries are left out and kept NaN."""
    p = np.asarray(p, dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.isfinite(p)
    if not ok.any():
        return out
    out[ok] = p[ok] if method == "none" else multipletests(p[ok], method=method)[1]
    return out


def family_key(row: pd.Series, family: str) -> str:
    """Name of the multiple-comparison family a row belongs to."""
    return {"role": row["role"], "per_comparison": row["comparison"], "all": "all"}[family]


def apply_correction(frame: pd.DataFrame, hyp: Hypotheses) -> pd.DataFrame:
    """Add `family` and `p_adjusted` (the spec's correction within each family)."""
    frame = frame.copy()
    frame["family"] = frame.apply(family_key, axis=1, family=hyp.family) if len(frame) else []
    frame["p_adjusted"] = np.nan
    for _, idx in frame.groupby("family", sort=True).groups.items():
        frame.loc[idx, "p_adjusted"] = adjust_pvalues(frame.loc[idx, "p_primary"].to_numpy(), hyp.correction)
    return frame


def verdict(p_adjusted: float, p_tost: float, n: int, alpha: float) -> str:
    """The pre-registered decision rule."""
    if n < 2:
        return "inconclusive"
    if np.isfinite(p_adjusted) and p_adjusted < alpha:
        return "different"
    if np.isfinite(p_tost) and p_tost < alpha:
        return "equivalent"
    return "inconclusive"


def better_side(verdict_: str, mean_diff: float, higher: bool) -> str:
    """`a` or `b` for a `different` row (by the sign of the mean difference), empty otherwise."""
    if verdict_ != "different":
        return ""
    return "a" if (mean_diff > 0) == higher else "b"


def decide(frame: pd.DataFrame, hyp: Hypotheses) -> pd.DataFrame:
    """Add `verdict` and `better` to rows that already carry `p_adjusted` and `p_tost`."""
    frame = frame.copy()
    higher = higher_is_better(hyp.metric)
    frame["verdict"] = [
        verdict(pa, pt, n, hyp.alpha)
        for pa, pt, n in zip(frame["p_adjusted"], frame["p_tost"], frame["n_pairs"], strict=True)
    ]
    frame["better"] = [
        better_side(v, m, higher) for v, m in zip(frame["verdict"], frame["mean_diff"], strict=True)
    ]
    return frame


# --------------------------------------------------------------------------- comparisons


def compare(
    table: pd.DataFrame, spec: dict[str, Any], hyp: Hypotheses
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(comparisons, differences, missing) frames, unsorted, for every applicable comparison."""
    conds, seeds = condition_columns(spec), expected_seeds(spec, table)
    kept, _ = applicable_comparisons(hyp, table)
    keys = key_columns(spec)
    rows, diffs, missing = [], [], []
    for index, comp in enumerate(kept):
        pairs, miss, _ = pair_trials(table, comp, conds, seeds, index)
        missing.append(miss)
        diffs.append(pairs)
        groups = pairs.groupby(keys, dropna=False, sort=True) if len(pairs) else []
        for _, group in groups:
            stats = row_statistics(group["value_a"].to_numpy(), group["value_b"].to_numpy(), hyp)
            stats["n_diverged"] = int(group["_diverged"].sum())
            rows.append(group.iloc[0][ROW_KEYS + ["_index"] + keys].to_dict() | stats)
        # conditions where every seed is incomplete still get an (inconclusive) row
        if len(miss):
            done = {tuple(r[k] for k in keys) for r in rows if r["_index"] == index}
            for _, group in miss.groupby(keys, dropna=False, sort=True):
                first = group.iloc[0]
                if tuple(first[k] for k in keys) not in done:
                    empty = np.array([], dtype=float)
                    stats = row_statistics(empty, empty, hyp) | {"n_diverged": 0}
                    rows.append(first[ROW_KEYS + ["_index"] + keys].to_dict() | stats)
    comparisons = pd.DataFrame(rows, columns=ROW_KEYS + ["_index"] + keys + STAT_COLUMNS)
    if len(comparisons):
        comparisons = decide(apply_correction(comparisons, hyp), hyp)
    return comparisons, _concat(diffs), _concat(missing)


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def bayes_table(comparisons: pd.DataFrame, spec: dict[str, Any], hyp: Hypotheses) -> pd.DataFrame:
    """Posterior probabilities per comparisons.csv row (a cross-check of the verdicts)."""
    higher = higher_is_better(hyp.metric)
    rows = []
    for _, row in comparisons.iterrows():
        probs = bayes_probs(int(row["n_pairs"]), row["mean_diff"], row["sd_diff"], hyp.margin, higher)
        rows.append(row.to_dict() | probs)
    columns = ROW_KEYS + key_columns(spec) + BAYES_COLUMNS
    return pd.DataFrame(rows, columns=columns)


# --------------------------------------------------------------------------- omnibus


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
    """(omnibus, posthoc): Friedman test across all policy combinations present in each condition."""
    conds = condition_columns(spec)
    higher = higher_is_better(hyp.metric)
    data = sort_rows(table[table["status"] == "ok"], conds + list(POLICY_COLUMNS) + ["seed"], orders)
    data["combo"] = data["weight_policy"] + "/" + data["signal_policy"]
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
        for combo in combos:
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
                }
            )
        if testable:
            post += [cond | row for row in posthoc_pairs(block, ranks, hyp.alpha)]
    omni_cols = conds + [
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
    ]
    post_cols = conds + ["combo_a", "combo_b", "mean_rank_diff", "p_nemenyi", "significant"]
    return pd.DataFrame(omni, columns=omni_cols), pd.DataFrame(post, columns=post_cols)


# --------------------------------------------------------------------------- mixed model

MODEL_COLUMNS = ["term", "coef", "std_err", "z", "p", "ci_low", "ci_high"]


def _quoted(name: str) -> str:
    return name if name.isidentifier() else f'Q("{name}")'


def model_formula(data: pd.DataFrame, spec: dict[str, Any], metric: str) -> tuple[str, list[str]]:
    """Formula: metric ~ weight × signal policy + main effects of the other varying factors."""
    terms, refs = [], []
    policies = []
    for column in POLICY_COLUMNS:
        if data[column].nunique() > 1:
            ref = "ste" if "ste" in set(data[column]) else sorted(set(data[column]))[0]
            policies.append(f"C({column}, Treatment('{ref}'))")
            refs.append(f"{column}={ref}")
    if policies:
        terms.append(" * ".join(policies))
    for column in condition_columns(spec):
        if data[column].nunique() > 1:
            terms.append(f"C({_quoted(column)})")
            refs.append(f"{column}={sorted(set(data[column]))[0]}")
    return f"{_quoted(metric)} ~ " + (" + ".join(terms) if terms else "1"), refs


def short_term(term: str) -> str:
    """`C(weight_policy, Treatment('ste'))[T.exact]` -> `weight_policy[exact]`."""
    return re.sub(
        r"C\((?:Q\(\"([^\"]+)\"\)|([^,()]+))(?:, Treatment\('[^']*'\))?\)\[T\.([^\]]+)\]",
        lambda m: f"{m.group(1) or m.group(2)}[{m.group(3)}]",
        term,
    )


def fit_mixed_model(table: pd.DataFrame, spec: dict[str, Any], hyp: Hypotheses) -> tuple[str, pd.DataFrame]:
    """Linear mixed model (statsmodels `mixedlm`, REML) with a random intercept per seed.

    Returns the text for model.txt (summary plus every captured warning, or why no model was fitted)
    and the fixed-effect table. Never raises.
    """
    import statsmodels.formula.api as smf

    data = table[table["status"] == "ok"].reset_index(drop=True)
    formula, refs = model_formula(data, spec, hyp.metric) if len(data) else ("", [])
    head = [
        f"formula: {formula}",
        "groups: seed (random intercept)",
        f"observations: {len(data)}",
        "reference levels: " + (", ".join(refs) or "none"),
    ]
    empty = pd.DataFrame(columns=MODEL_COLUMNS)
    if data["seed"].nunique() < 2:
        return "\n".join(head + ["model not fitted: fewer than two seeds with usable trials."]) + "\n", empty
    data = data.rename(columns={"value": hyp.metric})
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = smf.mixedlm(formula, data, groups=data["seed"]).fit(reml=True)
            summary = str(result.summary())
    except Exception as exc:  # noqa: BLE001 - the stage must not crash on an unfittable design
        return "\n".join(head + [f"model not fitted: {type(exc).__name__}: {exc}"]) + "\n", empty
    messages = sorted({f"{w.category.__name__}: {' '.join(str(w.message).split())}" for w in caught})
    lines = head + ["", summary.rstrip(), "", f"warnings ({len(messages)}):"] + [f"- {m}" for m in messages]
    names = list(result.fe_params.index)
    ci = result.conf_int().loc[names]
    frame = pd.DataFrame(
        {
            "term": [short_term(t) for t in names],
            "coef": result.fe_params.to_numpy(),
            "std_err": result.bse_fe.loc[names].to_numpy(),
            "z": result.tvalues.loc[names].to_numpy(),
            "p": result.pvalues.loc[names].to_numpy(),
            "ci_low": ci[0].to_numpy(),
            "ci_high": ci[1].to_numpy(),
        }
    )
    return "\n".join(lines) + "\n", frame


# --------------------------------------------------------------------------- writing


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    """Deterministic CSV: no index, `%.6g` floats, `\\n` line endings."""
    frame.to_csv(path, index=False, float_format=FLOAT_FORMAT, lineterminator="\n")


def _finish(frame: pd.DataFrame, columns: list[str], by: list[str], orders: dict) -> pd.DataFrame:
    if frame.empty:
        return pd.DataFrame(columns=columns)
    return sort_rows(frame, by, orders)[columns]


def compute_stats(study_dir: Path) -> Path:
    """Run the statistics stage on `study_dir` (needs spec.yaml and runs.csv); returns `study_dir/stats`."""
    from study.report import write_latex, write_report

    study_dir = Path(study_dir)
    spec = load_spec_dict(study_dir)
    hyp = load_hypotheses(spec)
    table = trial_table(load_runs(study_dir), spec, hyp)
    orders = value_orders(spec, table)
    out = study_dir / "stats"
    out.mkdir(parents=True, exist_ok=True)

    keys = key_columns(spec)
    by = ["_index"] + keys
    comparisons, diffs, missing = compare(table, spec, hyp)
    comparisons = _finish(comparisons, ROW_KEYS + keys + STAT_COLUMNS + ["_index"], by, orders)
    write_csv(comparisons.drop(columns="_index"), out / "comparisons.csv")
    diff_cols = ROW_KEYS + keys + ["seed", "value_a", "value_b", "diff"]
    write_csv(
        _finish(diffs, diff_cols + ["_index"], by + ["seed"], orders)[diff_cols], out / "differences.csv"
    )
    miss_cols = ROW_KEYS + keys + ["seed"] + MISSING_STATUS
    write_csv(_finish(missing, miss_cols + ["_index"], by + ["seed"], orders)[miss_cols], out / "missing.csv")
    write_csv(bayes_table(comparisons, spec, hyp), out / "bayes.csv")

    omni, post = omnibus(table, spec, hyp, orders)
    write_csv(omni, out / "omnibus.csv")
    write_csv(post, out / "posthoc.csv")

    text, model = fit_mixed_model(table, spec, hyp)
    (out / "model.txt").write_text(text)
    write_csv(model, out / "model.csv")

    write_latex(study_dir)
    write_report(study_dir)
    return out
