"""Linear mixed model of the metric on the policies and the other factors (random intercept per seed)."""

from __future__ import annotations

import re
import warnings
from typing import Any

import numpy as np
import pandas as pd

from study.analysis.stats.duplicates import distinct_trials
from study.sweep.hypotheses import Hypotheses
from study.tables import (
    FLOAT_FORMAT,
    POLICY_COLUMNS,
    condition_columns,
    format_number,
    tidy_floats,
)

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

    Fitted on distinct runs: the trials of a combination that repeats another combination's runs seed
    by seed (`duplicates.distinct_trials`) are left out, so no run is counted twice. Returns the text
    for model.txt (summary plus every captured warning, or why no model was fitted) and the
    fixed-effect table. Never raises.
    """
    import statsmodels.formula.api as smf

    usable = table[table["status"] == "ok"].reset_index(drop=True)
    data = distinct_trials(usable, spec).drop(columns=["combo"]) if len(usable) else usable
    formula, refs = model_formula(data, spec, hyp.metric) if len(data) else ("", [])
    head = [
        f"formula: {formula}",
        "groups: seed (random intercept)",
        f"observations: {len(data)} distinct runs ({len(usable) - len(data)} trials repeating another "
        "combination's runs seed by seed left out)",
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
