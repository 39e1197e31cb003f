"""Figures along one factor: accuracy against precision and against leakage."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from study.analysis.figures import style as st
from study.analysis.figures.common import (
    Made,
    Output,
    Skip,
    StudyContext,
    _combo_handles,
    _legend_below,
    _n_text,
    _ordered_keys,
    _select,
    register_figure,
    seed_means,
    summarise,
)
from study.tables import (
    POLICY_COLUMNS,
)


# --- 7. accuracy against precision and leakage -----------------------------------------------------
@register_figure("accuracy_vs_precision")
def fig_accuracy_vs_precision(ctx: StudyContext) -> Iterator[Output]:
    """Accuracy against precision per policy (AnalogVNN's axis)."""
    yield _sweep(ctx, "precision")


@register_figure("accuracy_vs_leakage")
def fig_accuracy_vs_leakage(ctx: StudyContext) -> Iterator[Output]:
    """Accuracy against leakage per policy (AnalogVNN's axis)."""
    yield _sweep(ctx, "leakage")


def _sweep(ctx: StudyContext, factor: str) -> Output:
    name = f"accuracy_vs_{factor}"
    runs = ctx.runs
    if factor not in ctx.conditions or runs[factor].nunique(dropna=False) < 2:
        return Skip(name, f"the study lacks a varying {factor} factor")
    # the other factors are held at the one setting the sweep covers most (the centre of a one-factor-
    # at-a-time design): a point never averages conditions that differ in anything but `factor`
    others = [c for c in ctx.conditions if c not in ("dataset", factor) and runs[c].nunique(dropna=False) > 1]
    slice_note = ""
    if others:
        keys = _ordered_keys(ctx, runs, others)
        counts = {k: _select(runs, others, k)[factor].nunique(dropna=False) for k in keys}
        best = max(keys, key=lambda k: counts[k])
        if counts[best] < 2:
            return Skip(name, f"no setting of the other factors is run at two or more {factor} levels")
        runs = _select(runs, others, best)
        fixed = ", ".join(
            f"{st.factor_label(c).lower()} {st.level_label(c, v)}" for c, v in zip(others, best, strict=True)
        )
        slice_note = (
            f" Other factors fixed at {fixed}, the setting with the most values of "
            f"{st.factor_label(factor).lower()}; conditions that differ in anything else are not averaged in."
        )
    metric = ctx.metric
    datasets = ctx.levels("dataset") if "dataset" in ctx.conditions else [None]
    keep = (["dataset"] if "dataset" in ctx.conditions else []) + [factor, *POLICY_COLUMNS]
    summary = summarise(seed_means(runs, keep, metric), keep, metric)
    weights, signals = ctx.levels("weight_policy"), ctx.levels("signal_policy")
    styles = st.combo_styles(weights, signals)
    levels = ctx.levels(factor, runs)
    ncols = min(len(datasets), 2)
    nrows = math.ceil(len(datasets) / ncols)
    width = st.ONE_COLUMN if ncols == 1 else st.TWO_COLUMN
    fig = st.new_figure(width, 0.8 + 1.9 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
    n_styles = len(styles)
    for p, dataset in enumerate(datasets):
        ax = axes[p // ncols, p % ncols]
        sel = summary if dataset is None else summary[summary["dataset"].astype(str) == dataset]
        for s_idx, ((w, s), style) in enumerate(styles.items()):
            line = sel[(sel["weight_policy"] == w) & (sel["signal_policy"] == s)]
            if line.empty:
                continue
            pos = {lv: i for i, lv in enumerate(levels)}
            line = line.assign(x=line[factor].astype(str).map(pos)).dropna(subset=["x"]).sort_values("x")
            dodge = (s_idx - (n_styles - 1) / 2) * min(0.05, 0.4 / max(n_styles, 1))
            x = line["x"].to_numpy(float) + dodge
            yerr = np.vstack([line["mean"] - line["lo"], line["hi"] - line["mean"]])
            ax.errorbar(
                x,
                line["mean"],
                yerr=np.nan_to_num(yerr),
                color=style["color"],
                ls=style["linestyle"],
                marker=style["marker"],
                ms=3,
                lw=0.9,
                elinewidth=0.7,
                capsize=0,
                mfc=style["color"],
                mec="white",
                mew=0.3,
            )
        ax.set_xticks(range(len(levels)), [st.level_label(factor, lv) for lv in levels])
        ax.set_xlim(-0.4, len(levels) - 0.6)
        ax.set_xlabel(st.factor_label(factor) if factor != "leakage" else "Leakage (none = noiseless)")
        if p % ncols == 0:
            ax.set_ylabel(st.metric_label(metric))
        if dataset is not None:
            ax.set_title(str(dataset))
    for p in range(len(datasets), nrows * ncols):
        axes[p // ncols, p % ncols].set_visible(False)
    handles, ncol = _combo_handles(styles, weights, signals, markers=True)
    _legend_below(fig, handles, ncol=ncol)
    pooled = [c for c in ctx.conditions if c not in ("dataset", factor) and runs[c].nunique(dropna=False) > 1]
    pooled_text = (
        f" Each seed's value is first averaged over {', '.join(st.factor_label(c).lower() for c in pooled)}."
        if pooled
        else ""
    )
    axis_note = "full = unquantised" if factor == "precision" else "none = no noise"
    label = st.factor_label(factor).lower()
    axis_text = f"{label[:-1]}; {axis_note})" if label.endswith(")") else f"{label} ({axis_note})"
    caption = (
        f"Final {st.metric_name(metric)} against {axis_text} "
        f"for each policy combination, as in AnalogVNN's figures. Marker: mean over seeds; bar: 95% "
        f"t interval of the mean ({_n_text(summary['n'], 'seeds per point')}); markers slightly "
        f"offset horizontally so that they do not overlap. {st.combo_legend_note(weights, signals)}"
        f"{pooled_text}{slice_note}"
        + (" One panel per dataset." if len(datasets) > 1 else ctx.fixed_note(runs, ["dataset"]))
    )
    return Made(name, fig, caption)
