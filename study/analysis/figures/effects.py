"""Figures of studies with a pre-registered across-condition model (`hypotheses.effect_model`): every
condition's effect sorted by size (a forest plot per primary comparison), and the model's factor
effects with their CIs. Other studies skip both.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import numpy as np

from study.analysis.figures import style as st
from study.analysis.figures.common import Made, Output, Skip, StudyContext, register_figure
from study.tables import diff_unit_name

EFFECT_FIGURES = ("effects_forest", "effects_factors")
VERDICT_COLORS = {"different": "#1b7837", "trivial": "#7fbf7b", "equivalent": "#2166ac", "identical": "0.2"}


def _model_skip(ctx: StudyContext, name: str) -> Skip | None:
    if ctx.hypotheses.effect_model is None:
        return Skip(name, "the spec pre-registers no effect_model")
    if ctx.table("effects_terms") is None:
        return Skip(name, "stats/effects_terms.csv not found: run `python -m study stats` first")
    return None


@register_figure("effects_forest")
def fig_effects_forest(ctx: StudyContext) -> Iterator[Output]:
    """Per primary comparison: each condition's mean paired difference with its 95% CI, sorted."""
    skip = _model_skip(ctx, "effects_forest")
    comps = ctx.table("comparisons")
    if skip is not None or comps is None:
        yield skip or Skip("effects_forest", "stats/comparisons.csv not found")
        return
    comps = comps[comps["role"].astype(str) == "primary"]
    labels = list(dict.fromkeys(comps["comparison"].astype(str)))
    most = max(int((comps["comparison"].astype(str) == c).sum()) for c in labels)
    fig = st.new_figure(st.TWO_COLUMN, min(st.MAX_HEIGHT, 1.2 + 0.045 * most))
    axes = fig.subplots(1, len(labels), squeeze=False)[0]
    for ax, label in zip(axes, labels, strict=True):
        rows = comps[comps["comparison"].astype(str) == label].copy()
        rows["mean_diff"] = rows["mean_diff"].astype(float)
        rows = rows.sort_values("mean_diff", kind="stable").reset_index(drop=True)
        ax.axvspan(-ctx.margin, ctx.margin, color=st.BAND_COLOR, lw=0)
        ax.axvline(0, color=st.REFERENCE_COLOR, lw=0.6, ls="--")
        for y, r in rows.iterrows():
            color = VERDICT_COLORS.get(str(r["verdict"]), "0.6")
            lo, hi = float(r["ci_low"]), float(r["ci_high"])
            if np.isfinite(lo) and np.isfinite(hi):
                ax.plot([lo, hi], [y, y], color=color, lw=0.6)
            ax.plot([r["mean_diff"]], [y], "o", ms=1.8, color=color)
        ax.set_ylim(-1, len(rows))
        ax.set_yticks([])
        ax.set_ylabel(f"{len(rows)} conditions, sorted by effect")
        ax.set_xlabel(st.diff_label(ctx.metric))
        ax.set_title(label)
    caption = (
        f"Every condition's mean paired difference in {st.metric_name(ctx.metric)} (a minus b, "
        f"{diff_unit_name(ctx.metric)}) with its 95% CI, sorted, per primary comparison; colour: verdict "
        "(dark green different, light green trivial, blue equivalent, black identical, grey inconclusive); "
        f"shaded ±δ = {ctx.margin:g}."
    )
    yield Made("effects_forest", fig, caption)


def _term_label(term: str) -> str:
    """`C(arch)[T.mlp]` -> `arch: mlp`; `C(a)[T.x]:C(b)[T.y]` -> `a: x × b: y`."""
    parts = []
    for piece in str(term).split(":"):
        m = re.fullmatch(r"C\(([^)]+)\)\[T\.([^\]]+)\]", piece)
        parts.append(f"{m.group(1)}: {m.group(2)}" if m else piece)
    return " × ".join(parts)


def _model_unit(ctx: StudyContext) -> str:
    """The effect model's unit: logit units on the logit scale, else the metric's difference unit."""
    model = ctx.hypotheses.effect_model
    return "logit units" if model is not None and model.scale == "logit" else diff_unit_name(ctx.metric)


@register_figure("effects_factors")
def fig_effects_factors(ctx: StudyContext) -> Iterator[Output]:
    """The model's main-effect coefficients (change of the policy effect against the reference level)
    with 95% CIs, one panel per primary comparison; interaction terms are in stats/effects_terms.csv."""
    skip = _model_skip(ctx, "effects_factors")
    if skip is not None:
        yield skip
        return
    terms = ctx.table("effects_terms")
    terms = terms[(terms["term"].astype(str) != "Intercept") & ~terms["term"].astype(str).str.contains(":")]
    if terms.empty:
        yield Skip("effects_factors", "the effect model has no main-effect terms")
        return
    labels = list(dict.fromkeys(terms["comparison"].astype(str)))
    names = list(dict.fromkeys(terms["term"].astype(str)))
    fig = st.new_figure(st.TWO_COLUMN, min(st.MAX_HEIGHT, 1.0 + 0.17 * len(names)))
    axes = fig.subplots(1, len(labels), squeeze=False, sharey=True)[0]
    for ax, label in zip(axes, labels, strict=True):
        rows = terms[terms["comparison"].astype(str) == label].set_index("term")
        ax.axvline(0, color=st.REFERENCE_COLOR, lw=0.6, ls="--")
        for y, name in enumerate(names):
            if name not in rows.index:
                continue
            r = rows.loc[name]
            color = "#1b7837" if float(r["ci_low"]) > 0 or float(r["ci_high"]) < 0 else "0.5"
            ax.plot([float(r["ci_low"]), float(r["ci_high"])], [y, y], color=color, lw=1.0)
            ax.plot([float(r["coef"])], [y], "o", ms=2.8, color=color)
        ax.set_ylim(len(names) - 0.5, -0.5)
        ax.set_title(label)
        ax.set_xlabel(f"Change of the effect ({_model_unit(ctx)})")
    axes[0].set_yticks(range(len(names)), [_term_label(n) for n in names])
    model = ctx.hypotheses.effect_model
    caption = (
        "Main effects of the condition factors on the policy effect (a minus b) in the pre-registered "
        f"model d ~ {model.formula if model else ''}: each coefficient is the change of the mean paired "
        "difference against the factor's reference level, with its 95% CI (green: the CI excludes 0). "
        "Interaction terms are in stats/effects_terms.csv."
    )
    yield Made("effects_factors", fig, caption)
