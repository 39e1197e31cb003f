"""The pre-registered across-condition model of the paired differences (`hypotheses.effect_model`).

For each primary comparison, every condition's paired differences d = a - b (one per seed) follow
d = X_c beta + u_c + v_s + e: fixed effects from the spec's formula over the condition factors (a
factor's coefficient is how that factor changes the policy effect: the factor-by-policy interaction),
crossed random intercepts per condition (u) and per seed (v; seeds are blocks, every condition runs
the same seeds) and residual noise. Every fixed term is a condition-level factor, so with the seeds
balanced across conditions the REML estimates of beta and their standard errors are those of ordinary
least squares on the condition means of d (the seed effects cancel in every contrast and add one
constant to the intercept; Var(mean d_c) = tau^2 + sigma^2/n is one constant): that is what is fitted
(statsmodels OLS, t intervals on conditions - columns degrees of freedom). It converges by
construction, where statsmodels' crossed-effects `mixedlm` often does not. Conditions with fewer
complete pairs than the others are weighted by their pair count (WLS; then only approximately the
mixed model). Estimated marginal means of d per level of each `marginal` factor average the fitted d
over the design's conditions with that factor set to the level, with t intervals from the
coefficients' covariance.

A `factor` comparison (`Comparison.factor`) is modelled the same way, its conditions being the
combinations of the other condition factors and both sites' policies; one whose model names the
compared factor is not fitted (said in the model text).

Writes nothing for studies without `effect_model`.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as st

from study.analysis.stats.paired import applicable_comparisons, pair_trials
from study.analysis.stats.table import expected_seeds
from study.sweep.hypotheses import Comparison, EffectModel, Hypotheses
from study.tables import FLOAT_FORMAT, condition_columns, format_number, tidy_floats

TERM_COLUMNS = ["comparison", "term", "coef", "std_err", "ci_low", "ci_high", "p"]
MARGINAL_COLUMNS = ["comparison", "factor", "level", "conditions", "emm", "std_err", "ci_low", "ci_high"]
CONDITION = "condition"
OVERALL = "all"  # the marginal mean over every condition of the design (factor and level both "all")
CI = 0.95


def names_compared_factor(model: EffectModel, comp: Comparison) -> str | None:
    """Where the model names the factor a `factor` comparison compares (`formula`, `derived` or
    `marginal`), else None: that factor is constant within the comparison's pairs (its column is empty
    in their rows), so such a model cannot be fitted to it."""
    if comp.factor is None:
        return None

    def words(text: str) -> set[str]:
        return set(re.findall(r"[A-Za-z_]\w*", str(text)))

    if comp.factor in words(model.formula):
        return "formula"
    if any(comp.factor in words(expression) for expression in model.derived.values()):
        return "derived"
    return "marginal" if comp.factor in model.marginal else None


def effect_data(
    table: pd.DataFrame, spec: dict[str, Any], hyp: Hypotheses, model: EffectModel
) -> dict[str, pd.DataFrame]:
    """Per primary comparison: one row per condition and seed with the paired difference `diff`, the
    condition columns (runs.csv text), the `derived` columns and a `condition` id.

    A condition is a combination of the columns within which the comparison pairs its trials
    (`Comparison.held_columns`): the condition factors and the other site's policy; for a `factor`
    comparison the other condition factors and both sites' policies. A `factor` comparison whose factor
    the model names (`names_compared_factor`) is left out (`effect_tables` says so in the model text).
    """
    conds = condition_columns(spec)
    seeds = expected_seeds(spec, table)
    comps, _ = applicable_comparisons(hyp, table)
    out = {}
    for index, comp in enumerate(comps):
        if comp.role != "primary" or names_compared_factor(model, comp) is not None:
            continue
        pairs, _, _ = pair_trials(table, comp, conds, seeds, index)
        if pairs.empty:
            continue
        held = comp.held_columns(conds)
        data = pairs[[*held, "seed", "diff", "value_a", "value_b"]].copy().reset_index(drop=True)
        data["diff_pp"] = data["diff"]
        if model.scale == "logit":
            data["diff"] = logit_percent(data["value_a"]) - logit_percent(data["value_b"])
        data = data.drop(columns=["value_a", "value_b"])
        data[CONDITION] = data[held].astype(str).agg("|".join, axis=1)
        for name, expression in model.derived.items():
            try:
                data[name] = data.eval(expression, engine="python").astype(float)
            except Exception as exc:  # noqa: BLE001 - a bad expression is named, whatever pandas raised
                raise ValueError(
                    f"hypotheses.effect_model.derived.{name}: cannot evaluate {expression!r} on the "
                    f"condition columns ({type(exc).__name__}: {exc})"
                ) from None
        out[comp.label] = data
    return out


LOGIT_CLIP = (0.001, 0.999)  # an accuracy of 0% or 100% has no finite log odds


def logit_percent(values: pd.Series) -> pd.Series:
    """log(p / (1 - p)) of accuracies in percent, p clipped to `LOGIT_CLIP`."""
    p = (pd.to_numeric(values, errors="coerce") / 100.0).clip(*LOGIT_CLIP)
    return np.log(p / (1.0 - p))


def condition_means(data: pd.DataFrame) -> pd.DataFrame:
    """One row per condition: its columns, the mean paired difference `diff` (the model's scale), its
    within-condition variance `var`, the mean in the metric's units `diff_pp` and the pair count `pairs`."""
    keep = [c for c in data.columns if c not in ("seed", "diff", "diff_pp")]
    grouped = data.groupby(CONDITION, sort=True)
    means = grouped["diff"].agg(["mean", "size", "var"]).rename(columns={"mean": "diff", "size": "pairs"})
    means["diff_pp"] = grouped["diff_pp"].mean()
    return data[keep].drop_duplicates(CONDITION).set_index(CONDITION).join(means).reset_index()


SHRINK_COLUMNS = [
    "comparison",
    "pairs",
    "diff_pp",
    "diff",
    "fitted",
    "shrinkage",
    "eb_diff",
    "eb_low",
    "eb_high",
]


def shrunken_effects(result: Any, means: pd.DataFrame, conds: list[str]) -> pd.DataFrame:
    """Empirical-Bayes (partially pooled) per-condition effects: each condition's mean difference pulled
    towards the model's fitted value by B = tau^2 / (tau^2 + sigma^2 / n), the normal-normal posterior
    mean; tau^2 (between-condition variance left by the factors) = the residual variance of the condition
    means less the mean sampling variance sigma^2 / n (pooled within-condition variance), at least 0; a
    condition whose pairs are all equal (identical runs) is known without sampling error and kept as is.
    `eb_low`/`eb_high`: the posterior mean -/+ 1.96 posterior SDs (sqrt(B sigma^2 / n); the uncertainty of
    the fitted value itself is left out, so these are a little narrow where a condition is pulled far)."""
    n = means["pairs"].to_numpy(dtype=float)
    exact = (means["var"] == 0).to_numpy()  # every pair equal (identical runs): known without error
    spread = means.loc[~exact, "var"]
    sigma2 = float(np.nanmean(spread)) if spread.notna().any() else 0.0
    sampling = np.where(exact, 0.0, sigma2 / n)
    tau2 = max(float(result.scale) - float(np.mean(sampling)), 0.0)
    fitted = np.asarray(result.fittedvalues, dtype=float)
    weight = np.where(exact, 1.0, tau2 / (tau2 + sampling) if tau2 > 0 else 0.0)
    diff = means["diff"].to_numpy(dtype=float)
    post = fitted + weight * (diff - fitted)
    sd = np.sqrt(weight * sampling)
    out = means[[c for c in conds if c in means]].copy()
    out = out.assign(
        pairs=means["pairs"].to_numpy(),
        diff_pp=means["diff_pp"].to_numpy(),
        diff=diff,
        fitted=fitted,
        shrinkage=1.0 - weight,
        eb_diff=post,
        eb_low=post - 1.959964 * sd,
        eb_high=post + 1.959964 * sd,
    )
    return out


def fit_effects(data: pd.DataFrame, model: EffectModel) -> tuple[Any, pd.DataFrame]:
    """Least squares of the condition means of d on the formula (WLS by pair count when unbalanced)."""
    import statsmodels.formula.api as smf

    means = condition_means(data)
    if means["pairs"].nunique() == 1:
        return smf.ols(f"diff ~ {model.formula}", means).fit(), means
    return smf.wls(f"diff ~ {model.formula}", means, weights=means["pairs"]).fit(), means


def marginal_means(result: Any, data: pd.DataFrame, factor: str, formula: str) -> pd.DataFrame:
    """Estimated marginal means of d per level of `factor`: the fitted fixed part averaged over the
    design's conditions with `factor` set to the level (derived columns are taken as observed);
    `factor` = `OVERALL`: one row, the average over the design's conditions as they are."""
    from patsy import build_design_matrices, dmatrix

    info = dmatrix(formula, data).design_info  # the model's columns, rebuilt by patsy from the same data
    names = list(result.params.index)
    if list(info.column_names) != names:
        raise ValueError(f"marginal means: design columns {info.column_names} are not the model's {names}")
    beta = result.params.to_numpy()
    cov = np.asarray(result.cov_params().loc[names, names], dtype=float)
    conditions = data.drop_duplicates(CONDITION)
    z = float(st.t.ppf(0.5 + CI / 2, result.df_resid))
    rows = []
    levels = [OVERALL] if factor == OVERALL else sorted(conditions[factor].astype(str).unique())
    for level in levels:
        grid = conditions if factor == OVERALL else conditions.assign(**{factor: level})
        (x,) = build_design_matrices([info], grid, return_type="matrix")
        weights = np.asarray(x).mean(axis=0)
        emm, se = float(weights @ beta), float(np.sqrt(weights @ cov @ weights))
        rows.append(
            {
                "factor": factor,
                "level": level,
                "conditions": len(conditions)
                if factor == OVERALL
                else int((conditions[factor].astype(str) == level).sum()),
                "emm": emm,
                "std_err": se,
                "ci_low": emm - z * se,
                "ci_high": emm + z * se,
            }
        )
    return pd.DataFrame(rows)


def effect_tables(
    table: pd.DataFrame, spec: dict[str, Any], hyp: Hypotheses
) -> tuple[pd.DataFrame, pd.DataFrame, str, pd.DataFrame] | None:
    """(terms, marginal means, model text, partially pooled per-condition effects) for the spec's
    `effect_model`; None when it has none."""
    model = hyp.effect_model
    if model is None:
        return None
    terms, marginals, shrunk, text = [], [], [], []
    unit = "logit(a) - logit(b)" if model.scale == "logit" else "a - b"
    held = {c.label: c.held_columns(condition_columns(spec)) for c in hyp.comparisons}
    for comparison, data in effect_data(table, spec, hyp, model).items():
        head = (
            f"comparison: {comparison}: diff ~ {model.formula} + (1 | condition) + (1 | seed), "
            f"fitted as least squares on the condition means of diff = {unit} per seed"
        )
        if data[CONDITION].nunique() < 2 or data["seed"].nunique() < 2:
            text.append(f"{head}\n  not fitted: needs at least two conditions and two seeds")
            continue
        try:
            result, means = fit_effects(data, model)
        except Exception as exc:  # noqa: BLE001 - an unfittable design is reported, not raised
            text.append(f"{head}\n  not fitted: {type(exc).__name__}: {exc}")
            continue
        names = list(result.params.index)
        ci = result.conf_int(alpha=1 - CI).loc[names]
        terms.append(
            pd.DataFrame(
                {
                    "comparison": comparison,
                    "term": names,
                    "coef": result.params.to_numpy(),
                    "std_err": result.bse.loc[names].to_numpy(),
                    "ci_low": ci[0].to_numpy(),
                    "ci_high": ci[1].to_numpy(),
                    "p": result.pvalues.loc[names].to_numpy(),
                }
            )
        )
        for factor in (OVERALL, *model.marginal):
            marginals.append(
                marginal_means(result, means, factor, model.formula).assign(comparison=comparison)
            )
        shrunk.append(shrunken_effects(result, means, held[comparison]).assign(comparison=comparison))
        fit = {
            "pairs": len(data),
            "conditions": len(means),
            "seeds": int(data["seed"].nunique()),
            "model columns": len(names),
            "residual df": int(result.df_resid),
            "residual SD of condition means": float(np.sqrt(result.scale)),
            "R^2": float(result.rsquared),
            "fit": "OLS" if means["pairs"].nunique() == 1 else "WLS (weights: pairs per condition)",
        }
        text.append(
            head
            + "\n"
            + "\n".join(f"  {k}: {format_number(v) if isinstance(v, float) else v}" for k, v in fit.items())
        )
    for comp in hyp.comparisons:
        where = names_compared_factor(model, comp) if comp.role == "primary" else None
        if where is not None:
            text.append(
                f"comparison: {comp.label}: not fitted: the model's `{where}` names {comp.factor}, the "
                "factor this comparison compares (constant within its pairs)"
            )
    term_frame = pd.concat(terms, ignore_index=True) if terms else pd.DataFrame(columns=TERM_COLUMNS)
    marg = (
        pd.concat(marginals, ignore_index=True)[MARGINAL_COLUMNS]
        if marginals
        else pd.DataFrame(columns=MARGINAL_COLUMNS)
    )
    if len(term_frame):
        body = tidy_floats(term_frame).to_string(index=False, float_format=lambda x: FLOAT_FORMAT % x)
        text += ["", "fixed effects (95% CI):", body]
    pooled = pd.concat(shrunk, ignore_index=True) if shrunk else pd.DataFrame(columns=SHRINK_COLUMNS)
    first = [c for c in pooled.columns if c not in SHRINK_COLUMNS]
    pooled = pooled[["comparison", *first, *SHRINK_COLUMNS[1:]]]
    return term_frame[TERM_COLUMNS], marg, "\n".join(text) + "\n", pooled
