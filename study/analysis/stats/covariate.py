"""Weight saturation as a covariate of the weight-site difference (the `weights` study's H2).

Where exact and ste weight policies differ is set by how many weights sit beyond their range: there
``exact`` passes no gradient and ``ste`` passes it unchanged (`analog.diagnostics.weight_saturation`).
For every weight-site comparison, each seed's pair gives a difference d = a - b of the metric and a
covariate s, the pair's mean final pooled saturation (`weight_saturation` of runs.csv). Two linear
mixed models (statsmodels `mixedlm`, REML, random intercept per regime = condition) are fitted on
the pairs: the signed d ~ s (which policy wins, and where the fitted difference reaches the
equivalence margin) and |d| ~ s (the registered hypothesis: the size of the difference grows with s).

The saturation level at which the policies start to differ is where the fitted signed difference
reaches the margin (+margin for a rising fit, -margin for a falling one), with Fieller's 95 %
interval: the covariate values where the fitted line's 95 % confidence band still contains the margin.
Its upper end is where the band lies wholly beyond the margin. Written only where it can be fitted:
runs.csv records `weight_saturation`, the hypotheses compare the weight site, and at least two
regimes with saturation that varies across pairs.

Only comparisons of the weight policies: a weight-site comparison of a condition `factor`
(`Comparison.factor`, e.g. weight_bound project vs forward) is skipped. Its pairs hold both sites'
policies, so a regime (condition and signal policy) would hold several pairs per seed, and the
covariate's reading (what `exact` blocks and `ste` passes at saturated weights) is about the policies.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as st

from study.analysis.stats.paired import applicable_comparisons, pair_trials
from study.analysis.stats.table import expected_seeds, trial_table
from study.sweep.hypotheses import Hypotheses
from study.tables import FLOAT_FORMAT, condition_columns, format_number, tidy_floats

COVARIATE = "weight_saturation"
REGIME = "regime"
PAIR_COLUMNS = ["comparison", REGIME, "seed", "saturation", "diff"]
REGIME_COLUMNS = [
    "comparison",
    REGIME,
    "pairs",
    "saturation_mean",
    "saturation_min",
    "saturation_max",
    "diff_mean",
    "abs_diff_mean",
    "sd_diff",
    "ci_low",
    "ci_high",
    "verdict",
]
MODEL_COLUMNS = [
    "comparison",
    "response",
    "term",
    "coef",
    "std_err",
    "ci_low",
    "ci_high",
    "p",
    "groups",
    "pairs",
    "converged",
]
ONSET_COLUMNS = ["comparison", "margin", "saturation_at_margin", "ci_low", "ci_high", "bounded"]
CI = 0.95


def regime_labels(conds: pd.DataFrame) -> pd.Series:
    """Each condition named by the factor values where it departs from the most common value of that
    factor across conditions (`base` when it departs nowhere): e.g. `weight_clamp=0.05`."""
    distinct = conds.drop_duplicates()
    modes = {c: distinct[c].astype(str).value_counts(sort=True).index[0] for c in conds.columns}
    labels = []
    for _, row in conds.astype(str).iterrows():
        parts = [f"{c}={row[c]}" for c in conds.columns if row[c] != modes[c]]
        labels.append(", ".join(parts) or "base")
    return pd.Series(labels, index=conds.index, name=REGIME)


def saturation_pairs(
    table: pd.DataFrame, runs: pd.DataFrame, spec: dict[str, Any], hyp: Hypotheses
) -> pd.DataFrame:
    """One row per weight-site comparison, condition and seed with both trials usable: the difference
    `diff` (a - b) and `saturation`, the mean final pooled weight saturation of the two trials.
    Comparisons of a `factor` are skipped (module doc)."""
    if COVARIATE not in runs or pd.to_numeric(runs[COVARIATE], errors="coerce").isna().all():
        return pd.DataFrame(columns=PAIR_COLUMNS)
    conds = condition_columns(spec)
    seeds = expected_seeds(spec, table)
    # the covariate's own trial table: the same rows and keys, `value` = the trial's saturation
    covariate = trial_table(runs.assign(**{hyp.metric: runs[COVARIATE]}), spec, hyp)
    frames = []
    comps, _ = applicable_comparisons(hyp, table)
    for index, comp in enumerate(comps):
        if comp.site != "weight" or comp.factor is not None:
            continue  # a factor comparison: skipped (module doc)
        diffs, _, _ = pair_trials(table, comp, conds, seeds, index)
        sats, _, _ = pair_trials(covariate, comp, conds, seeds, index)
        if diffs.empty:
            continue
        key = ["comparison", *conds, "signal_policy", "seed"]
        sats = sats.assign(saturation=(sats["value_a"] + sats["value_b"]) / 2)[key + ["saturation"]]
        merged = diffs.merge(sats, on=key, how="inner", validate="one_to_one")
        where = [*conds, "signal_policy"]  # a regime: the condition and the other site's policy
        merged[REGIME] = regime_labels(merged[where])
        frames.append(merged[PAIR_COLUMNS + where])
    if not frames:
        return pd.DataFrame(columns=PAIR_COLUMNS)
    return pd.concat(frames, ignore_index=True).sort_values(["comparison", REGIME, "seed"], kind="stable")


def fittable(pairs: pd.DataFrame) -> bool:
    """At least two regimes, finite values and a covariate that varies across pairs."""
    usable = pairs.dropna(subset=["saturation", "diff"])
    return usable[REGIME].nunique() >= 2 and usable["saturation"].nunique() >= 2


def regime_table(pairs: pd.DataFrame, comparisons: pd.DataFrame, conds: list[str]) -> pd.DataFrame:
    """Per comparison and regime: pairs, the covariate's mean and range, the mean and mean absolute
    difference, and the comparison row's CI and verdict (from comparisons.csv, the same row)."""
    if pairs.empty:
        return pd.DataFrame(columns=REGIME_COLUMNS)
    g = pairs.groupby(["comparison", REGIME], sort=True)
    out = pd.DataFrame(
        {
            "pairs": g.size(),
            "saturation_mean": g["saturation"].mean(),
            "saturation_min": g["saturation"].min(),
            "saturation_max": g["saturation"].max(),
            "diff_mean": g["diff"].mean(),
            "abs_diff_mean": g["diff"].apply(lambda d: d.abs().mean()),
        }
    ).reset_index()
    keys = ["comparison", *conds, "signal_policy"]
    labels = pairs[keys + [REGIME]].drop_duplicates().astype({c: str for c in keys})
    rows = comparisons[keys + ["sd_diff", "ci_low", "ci_high", "verdict"]].astype({c: str for c in keys})
    verdicts = labels.merge(rows, on=keys, how="left", validate="one_to_one")
    out = out.merge(
        verdicts[["comparison", REGIME, "sd_diff", "ci_low", "ci_high", "verdict"]], on=["comparison", REGIME]
    )
    return out.sort_values(["comparison", "saturation_mean", REGIME], kind="stable")[REGIME_COLUMNS]


def _fit(data: pd.DataFrame, response: str) -> tuple[Any, list[str]]:
    import statsmodels.formula.api as smf

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = smf.mixedlm(f"{response} ~ saturation", data, groups=data[REGIME]).fit(reml=True)
    return result, sorted({f"{w.category.__name__}: {' '.join(str(w.message).split())}" for w in caught})


def fieller(
    b0: float, b1: float, cov: np.ndarray, target: float, level: float = CI
) -> tuple[float, float, bool]:
    """Fieller's interval for the covariate value s where b0 + b1 s = target: every s at which the
    line's `level` confidence band contains `target`. (lo, hi, bounded); unbounded (nan, nan, False)
    when the slope is not distinguishable from 0 at that level."""
    z = float(st.norm.ppf(0.5 + level / 2))
    a = b1**2 - z**2 * cov[1, 1]
    b = 2 * (b1 * (b0 - target) - z**2 * cov[0, 1])
    c = (b0 - target) ** 2 - z**2 * cov[0, 0]
    disc = b * b - 4 * a * c
    if a <= 0 or disc < 0:
        return float("nan"), float("nan"), False
    r = np.sqrt(disc)
    lo, hi = sorted(((-b - r) / (2 * a), (-b + r) / (2 * a)))
    return float(lo), float(hi), True


def saturation_models(pairs: pd.DataFrame, margin: float) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """(model table, onset table, model text) for every comparison whose pairs are `fittable`."""
    rows, onsets, text = [], [], []
    for comparison, data in pairs.groupby("comparison", sort=True):
        data = data.dropna(subset=["saturation", "diff"]).assign(abs_diff=lambda f: f["diff"].abs())
        if not fittable(data):
            continue
        text.append(f"comparison: {comparison}")
        for response in ("diff", "abs_diff"):
            try:
                result, messages = _fit(data.reset_index(drop=True), response)
            except Exception as exc:  # noqa: BLE001 - an unfittable design is reported, not raised
                text.append(
                    f"  {response} ~ saturation + (1 | regime): not fitted: {type(exc).__name__}: {exc}"
                )
                continue
            names = list(result.fe_params.index)
            ci = result.conf_int(alpha=1 - CI).loc[names]
            for name in names:
                rows.append(
                    {
                        "comparison": comparison,
                        "response": response,
                        "term": name,
                        "coef": float(result.fe_params[name]),
                        "std_err": float(result.bse_fe[name]),
                        "ci_low": float(ci.loc[name, 0]),
                        "ci_high": float(ci.loc[name, 1]),
                        "p": float(result.pvalues[name]),
                        "groups": int(result.model.n_groups),
                        "pairs": len(data),
                        "converged": "yes" if result.converged else "no",
                    }
                )
            fit = {
                "regime variance": float(np.asarray(result.cov_re)[0, 0]),
                "residual variance": float(result.scale),
            }
            text.append(
                f"  {response} ~ saturation + (1 | regime), REML, {int(result.model.n_groups)} regimes, "
                f"{len(data)} pairs; "
                + "; ".join(f"{k} {format_number(v)}" for k, v in fit.items())
                + f"; warnings ({len(messages)})"
                + "".join(f"\n    - {m}" for m in messages)
            )
            if response == "diff":
                b0, b1 = (float(result.fe_params[n]) for n in names)
                cov = np.asarray(result.cov_params().loc[names, names], dtype=float)
                target = margin if b1 >= 0 else -margin
                lo, hi, bounded = fieller(b0, b1, cov, target)
                at = (target - b0) / b1 if b1 != 0 else float("nan")
                onsets.append(
                    {
                        "comparison": comparison,
                        "margin": target,
                        "saturation_at_margin": at,
                        "ci_low": lo,
                        "ci_high": hi,
                        "bounded": "yes" if bounded else "no",
                    }
                )
    model = pd.DataFrame(rows, columns=MODEL_COLUMNS)
    if len(model):
        model["term"] = model["term"].replace({"Intercept": "intercept"})
        table = tidy_floats(model).to_string(index=False, float_format=lambda x: FLOAT_FORMAT % x)
        text += ["", "fixed effects (95% CI):", table]
    return model, pd.DataFrame(onsets, columns=ONSET_COLUMNS), "\n".join(text) + "\n" if text else ""
