"""Statistics stage: paired policy comparisons, equivalence tests, omnibus tests and a mixed model.

`compute_stats(DIR)` reads `DIR/spec.yaml` and `DIR/runs.csv` and writes `DIR/stats/`
(`comparisons.csv`, `differences.csv`, `missing.csv`, `bayes.csv`, `omnibus.csv`, `posthoc.csv`,
`model.csv`, `model.txt`, `report.md` and `latex/`). Every output is a deterministic function of the
two inputs: rows are sorted by stable keys, floats follow the number policy of `study.tables` (the same
digits on every machine) and every resampling (bootstrap, permutation, posterior) is seeded by
`hypotheses.bootstrap_seed`.

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

from analog.policies import resolve_preset
from study.config import TrialConfig
from study.hypotheses import Comparison, Hypotheses
from study.spec import StudySpec, cells, stored_spec_hash
from study.tables import (
    FLOAT_FORMAT,
    METRICS,
    POLICY_COLUMNS,
    REDO_COLLECT,
    SITE_COLUMN,
    check_spec_hashes,
    condition_columns,
    format_number,
    load_runs,
    load_spec_dict,
    tidy_floats,
    write_table,
    write_text_atomic,
)

POLICY_ORDER = ("exact", "ste", "zero")
POWER = 0.8
CI_LEVEL = 0.95
PERMUTATION_RESAMPLES = 9999  # sign-flip permutation test; exact enumeration when 2^n is not larger
POSTERIOR_DRAWS = 20000  # Bayesian-bootstrap draws of the posterior of the mean difference
POSTERIOR_DECISION = 0.95  # posterior probability at which the Bayesian view calls a region
OTHER_SITE = {"weight": "signal", "signal": "weight"}
# the five verdicts, in the order every summary lists them
VERDICTS = ("identical", "equivalent", "different", "trivial", "inconclusive")
PRESET = "analogvnn"  # AnalogVNN 1.0.8's own choice, resolved per condition (`analogvnn_cell`)

ROW_KEYS = ["comparison", "role", "site", "policy_a", "policy_b"]
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
    "analogvnn",
]
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


def condition_norms(spec: dict[str, Any], row: Any) -> tuple[str, str]:
    """(weight_norm, signal_norm) of a condition: the trial defaults, the spec's `base`, then the row's
    `norm` (both sites), `weight_norm` and `signal_norm` factor values, as `resolve_config` applies them."""
    base = spec.get("base") or {}
    fields = TrialConfig.model_fields
    norms = {site: str(base.get(site, fields[site].default)) for site in ("weight_norm", "signal_norm")}

    def value(name: str) -> str | None:
        text = str(row[name]) if name in row and row[name] is not None else ""
        return text if text not in ("", "nan") else None

    both = value("norm")
    if both is not None:
        norms = dict.fromkeys(norms, both)
    for site in norms:
        own = value(site)
        if own is not None:
            norms[site] = own
    return norms["weight_norm"], norms["signal_norm"]


def analogvnn_cell(spec: dict[str, Any], row: Any) -> dict[str, str]:
    """The `analogvnn` preset's (weight_policy, signal_policy) in the condition of `row`.

    Derived from `analog.policies.resolve_preset`, i.e. from what AnalogVNN 1.0.8 does for the
    condition's normalizations: weights straight-through; signals exact for clamps, ste for Lp norms.
    """
    weight, signal = resolve_preset(PRESET, *condition_norms(spec, row))
    return {"weight_policy": weight, "signal_policy": signal}


def norm_family(name: str) -> str:
    """`clamp` (clamp, clamp01), `Lp` (AnalogVNN's l1/l2 norms), `none` (identity), else the name."""
    if name in ("clamp", "clamp01"):
        return "clamp"
    if re.fullmatch(r"l\d+norm(_[a-z]+)?", name):
        return "Lp"
    return name


def _truthy(frame: pd.DataFrame, column: str) -> pd.Series:
    if column not in frame:
        return pd.Series(False, index=frame.index)
    text = frame[column].astype(str).str.strip().str.lower()
    return text.isin({"true", "1", "1.0", "yes"})


def trial_status(runs: pd.DataFrame, hyp: Hypotheses) -> pd.Series:
    """Per trial: `absent` (never ran: collect's `missing`), `failed` (raised or no metric), `diverged`
    (only when the spec excludes them) or `ok`."""
    never = (
        runs["status"].astype(str).eq("missing") if "status" in runs else pd.Series(False, index=runs.index)
    )
    failed = _truthy(runs, "failed") | pd.to_numeric(runs[hyp.metric], errors="coerce").isna()
    diverged = _truthy(runs, "diverged") & (hyp.diverged == "exclude")
    status = np.where(never, "absent", np.where(failed, "failed", np.where(diverged, "diverged", "ok")))
    return pd.Series(status, index=runs.index, name="status")


def trial_table(runs: pd.DataFrame, spec: dict[str, Any], hyp: Hypotheses) -> pd.DataFrame:
    """One row per (condition, weight_policy, signal_policy, seed): `value`, `status`, `diverged`.

    A trial listed twice (one `run_id`, e.g. two preset names of one policy pair) keeps its first usable
    row (ordered by `run_id`), so the pairing never shifts. Two *different* trials on one row differ in
    something that is not a factor, and pairing either would compare more than the policy: refused.
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
    # every metric runs.csv records, as written: two trials with equal fingerprints are identical runs
    recorded = [m for m in METRICS if m in runs]
    values = runs[recorded].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    table["fingerprint"] = ["|".join(repr(float(v)) for v in row) for row in values]
    table["_order"] = runs["run_id"].astype(str) if "run_id" in runs else ""
    clash = table.groupby(keys + ["seed"], sort=False)["_order"].nunique()
    clash = clash[clash > 1]
    if len(clash):
        first = dict(zip(keys + ["seed"], clash.index[0], strict=True))
        ids = sorted(table.loc[(table[keys + ["seed"]] == pd.Series(first)).all(axis=1), "_order"])
        raise ValueError(
            f"runs.csv: {len(clash)} row(s) of factors and seed hold trials with different configurations, "
            f"e.g. {first}: run_ids {', '.join(ids)}. They differ in a field that is not a factor, so "
            "pairing them would compare more than the gradient policy; fix the spec's cells "
            "(every field that varies must be a factor) and collect again"
        )
    table["_bad"] = table["status"] != "ok"
    table = table.sort_values(keys + ["seed", "_bad", "_order"], kind="mergesort")
    table = table.drop_duplicates(keys + ["seed"], keep="first")
    return table.drop(columns=["_order", "_bad"]).reset_index(drop=True)


def _cell_text(value: Any) -> str:
    """A factor value as runs.csv spells it, numbers normalised (16, 16.0 and '16' alike)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value)
    try:
        return f"{float(value):.6g}"
    except (TypeError, ValueError):
        return str(value).strip()


def check_coverage(runs: pd.DataFrame, spec: dict[str, Any], study_dir: Path | str = "runs.csv") -> None:
    """runs.csv must hold exactly one row per cell x seed of the spec (done, failed or missing alike).

    A table truncated by a crash, or collected from another spec, would otherwise be analysed as if
    complete; the message says which cells and seeds are absent or extra.
    """
    spec_model = StudySpec.model_validate(spec)
    names = list(spec_model.factors)
    absent = [n for n in [*names, "seed"] if n not in runs]
    if absent:
        raise ValueError(f"{study_dir}: runs.csv lacks the factor columns {absent}; {REDO_COLLECT}")
    want = {
        (*(_cell_text(cell.get(n)) for n in names), str(seed))
        for cell in cells(spec_model)
        for seed in spec_model.seed_list
    }
    rows = runs[names].astype(object).where(runs[names].notna(), None).map(_cell_text)
    have = list(zip(*(rows[n] for n in names), runs["seed"].astype(int).astype(str), strict=True))
    missing, extra = sorted(want - set(have)), sorted(set(have) - want)
    if missing or extra:

        def show(keys: list[tuple]) -> str:
            return "; ".join(
                ", ".join(f"{n}={v}" for n, v in zip([*names, "seed"], k, strict=True)) for k in keys[:5]
            )

        parts = []
        if missing:
            parts.append(f"{len(missing)} cell x seed row(s) of the spec missing (e.g. {show(missing)})")
        if extra:
            parts.append(f"{len(extra)} row(s) not in the spec (e.g. {show(extra)})")
        raise ValueError(f"{study_dir}: runs.csv does not cover the spec: {'; '.join(parts)}; {REDO_COLLECT}")


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


def row_statistics(a: np.ndarray, b: np.ndarray, hyp: Hypotheses, identical: bool = False) -> dict[str, Any]:
    """Every per-row statistic of comparisons.csv except the multiplicity-dependent ones and the verdicts.

    `identical` rows (every pair of runs equal in every recorded metric) get no test: their p-values,
    TOST, standardized effect, power and posterior are empty, their interval is [0, 0] (`identical`).
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
            "ci_method": "identical",
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
    out["ci_low"], out["ci_high"], out["ci_method"] = bootstrap_ci(
        a, b, hyp.bootstrap_resamples, hyp.bootstrap_seed
    )
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


# --------------------------------------------------------------------------- family-wise decisions

ADJUSTED = {"p_primary": "p_adjusted", "p_tost": "p_tost_adjusted", "p_permutation": "p_permutation_adjusted"}


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


def decide(frame: pd.DataFrame, hyp: Hypotheses) -> pd.DataFrame:
    """Add `verdict`, `verdict_permutation`, `better` and `seeds_needed_equivalence` to rows that carry
    the adjusted p-values.

    `seeds_needed_equivalence` (inconclusive rows only): paired seeds for 80% TOST power at the row's
    observed sd if the true mean difference were 0 (the best case), at `planning_alpha`.
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
        if v == "inconclusive" and n >= 2
        else math.nan
        for v, sd, n, m in zip(frame["verdict"], frame["sd_diff"], frame["n_pairs"], tests, strict=True)
    ]
    return frame


def preset_side(spec: dict[str, Any], row: pd.Series) -> str:
    """`a`/`b` when that side of the row is the `analogvnn` preset cell of its condition, else empty."""
    cell = analogvnn_cell(spec, row)
    other = SITE_COLUMN[OTHER_SITE[row["site"]]]
    if str(row[other]) != cell[other]:
        return ""
    own = cell[SITE_COLUMN[row["site"]]]
    return "a" if row["policy_a"] == own else "b" if row["policy_b"] == own else ""


# --------------------------------------------------------------------------- comparisons

POSTERIOR_COLUMNS = ["p_a_worse", "p_equiv", "p_a_better"]


def compare(
    table: pd.DataFrame, spec: dict[str, Any], hyp: Hypotheses
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(comparisons, differences, missing) frames for every applicable comparison.

    Comparisons are sorted (spec order), carry the verdicts and, in private columns, the posterior.
    """
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
            group = group.sort_values("seed", kind="mergesort")
            same = (group["_fp_a"] == group["_fp_b"]).to_numpy()
            a, b = group["value_a"].to_numpy(), group["value_b"].to_numpy()
            stats = row_statistics(a, b, hyp, identical=bool(same.all()))
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
        comparisons = decide(apply_correction(merge_duplicates(comparisons, keys), hyp), hyp)
        comparisons["analogvnn"] = [preset_side(spec, r) for _, r in comparisons.iterrows()]
    return comparisons, _concat(diffs), _concat(missing)


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


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
        preset = analogvnn_cell(spec, cond)
        preset_combo = f"{preset['weight_policy']}/{preset['signal_policy']}"
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
                    "analogvnn": combo == preset_combo,
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
        "analogvnn",
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
    except Exception as exc:  # noqa: BLE001 - the stage must not crash on an unfittable design
        return "\n".join(head + [f"model not fitted: {type(exc).__name__}: {exc}"]) + "\n", empty
    messages = sorted({f"{w.category.__name__}: {' '.join(str(w.message).split())}" for w in caught})
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
    # model.txt is written from the same rounded numbers as model.csv (statsmodels' own summary prints
    # exact zeros as "-0.000" or "0.000" depending on the machine's last bits)
    fit = {
        "method": "REML",
        "seeds (groups)": int(result.model.n_groups),
        "scale (residual variance)": result.scale,
        "seed variance": float(np.asarray(result.cov_re)[0, 0]),
        "log-likelihood": result.llf,
        "converged": "yes" if result.converged else "no",
    }
    fit_lines = [f"{k}: {format_number(v) if isinstance(v, float) else v}" for k, v in fit.items()]
    table_text = tidy_floats(frame).to_string(index=False, float_format=lambda x: FLOAT_FORMAT % x)
    lines = head + fit_lines + ["", "fixed effects:", table_text, "", f"warnings ({len(messages)}):"]
    lines += [f"- {m}" for m in messages]
    return "\n".join(lines) + "\n", frame


# --------------------------------------------------------------------------- writing


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    """Deterministic CSV at the number policy of `study.tables`, written atomically."""
    write_table(frame, path)


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
    runs = load_runs(study_dir)
    if "spec_hash" in runs:
        current = stored_spec_hash(spec)
        check_spec_hashes(
            study_dir, current, dict(zip(runs["run_id"], runs["spec_hash"].fillna(""), strict=True))
        )
    check_coverage(runs, spec, study_dir)
    table = trial_table(runs, spec, hyp)
    orders = value_orders(spec, table)
    out = study_dir / "stats"
    out.mkdir(parents=True, exist_ok=True)

    keys = key_columns(spec)
    by = ["_index"] + keys
    comparisons, diffs, missing = compare(table, spec, hyp)
    if comparisons.empty:
        comparisons = pd.DataFrame(columns=ROW_KEYS + keys + STAT_COLUMNS + POSTERIOR_COLUMNS + ["_index"])
    write_csv(comparisons[ROW_KEYS + keys + STAT_COLUMNS], out / "comparisons.csv")
    diff_cols = ROW_KEYS + keys + ["seed", "value_a", "value_b", "diff"]
    # per-seed measurements and their exact differences: data, not estimates (`RAW_FLOAT_FORMAT`)
    diffs = _finish(diffs, diff_cols + ["_index"], by + ["seed"], orders)[diff_cols]
    write_table(diffs, out / "differences.csv", raw=True)
    miss_cols = ROW_KEYS + keys + ["seed"] + MISSING_STATUS
    write_csv(_finish(missing, miss_cols + ["_index"], by + ["seed"], orders)[miss_cols], out / "missing.csv")
    write_csv(bayes_table(comparisons, spec, hyp), out / "bayes.csv")

    omni, post = omnibus(table, spec, hyp, orders)
    write_csv(omni, out / "omnibus.csv")
    write_csv(post, out / "posthoc.csv")

    text, model = fit_mixed_model(table, spec, hyp)
    write_text_atomic(out / "model.txt", text)
    write_csv(model, out / "model.csv")

    write_latex(study_dir)
    write_report(study_dir)
    return out
