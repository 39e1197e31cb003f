"""Figures over training: learning curves and the gradient-mismatch / saturation diagnostics."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pandas as pd
from matplotlib.figure import Figure

from study.analysis.figures import style as st
from study.analysis.figures.common import (
    Made,
    Output,
    Skip,
    StudyContext,
    _by_dataset,
    _combo_handles,
    _legend_below,
    _n_text,
    register_figure,
    seed_means,
    summarise,
)
from study.tables import (
    POLICY_COLUMNS,
)


# --- 4. learning curves ----------------------------------------------------------------------------
@register_figure("learning_curves")
def fig_learning_curves(ctx: StudyContext) -> Iterator[Output]:
    """Validation and test accuracy against epoch per policy: mean and 95% t interval band over seeds."""
    curves = ctx.curves()
    if curves is None:
        yield Skip("learning_curves", "curves.csv.gz not found: run `python -m study collect DIR` first")
        return
    metrics = [m for m in ("val_acc", "test_acc") if m in set(curves["metric"])]
    if not metrics:
        yield Skip("learning_curves", "curves.csv.gz has no val_acc / test_acc rows")
        return
    data = curves[curves["metric"].isin(metrics)]
    for name, note, part in _by_dataset(ctx, data, "learning_curves"):
        yield Made(name, *_draw_curves(ctx, part, metrics, note))


def _draw_curves(ctx: StudyContext, data: pd.DataFrame, metrics: list[str], note: str) -> tuple[Figure, str]:
    weights, signals = ctx.levels("weight_policy", data), ctx.levels("signal_policy", data)
    split_weight = len(weights) > 1 and len(signals) > 1
    styles = st.combo_styles(weights, signals)
    if split_weight:  # one column per weight policy: colour and line style show the signal policy
        per_signal = st.combo_styles(weights[:1], signals)
        styles = {(w, s): {**per_signal[(weights[0], s)], "label": s} for w, s in styles}
    columns = weights if split_weight else [None]
    pooled = [c for c in ctx.conditions if c != "dataset" and c in data and data[c].nunique(dropna=False) > 1]
    # pooled conditions of different lengths (e.g. an epochs factor): averaging past the shortest one
    # would mix different sets of conditions at different epochs, so the curves stop where it ends
    last = int(data.groupby(pooled, dropna=False)["epoch"].max().min()) if pooled else None
    cut = last is not None and last < int(data["epoch"].max())
    if cut:
        data = data[data["epoch"] <= last]
    keep = ["metric", *POLICY_COLUMNS, "epoch"]
    summary = summarise(seed_means(data, keep, "value"), keep, "value")
    fig = st.new_figure(st.TWO_COLUMN if len(columns) > 1 else st.ONE_COLUMN, 0.55 + 1.45 * len(metrics))
    axes = fig.subplots(len(metrics), len(columns), squeeze=False, sharex=True, sharey="row")
    for (i, metric), (j, wcol) in itertools.product(enumerate(metrics), enumerate(columns)):
        ax = axes[i, j]
        for (w, s), style in styles.items():
            if wcol is not None and w != wcol:
                continue
            sel = summary[
                (summary["metric"] == metric)
                & (summary["weight_policy"] == w)
                & (summary["signal_policy"] == s)
            ].sort_values("epoch")
            if sel.empty:
                continue
            ax.fill_between(sel["epoch"], sel["lo"], sel["hi"], color=style["color"], alpha=0.2, lw=0)
            ax.plot(sel["epoch"], sel["mean"], color=style["color"], ls=style["linestyle"], lw=1.0)
        if i == 0 and wcol is not None:
            ax.set_title(f"Weight-site policy {wcol}", color=st.policy_palette(weights)[wcol])
        if j == 0:
            ax.set_ylabel(st.metric_label(metric))
        if i == len(metrics) - 1:
            ax.set_xlabel("Epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
    if split_weight:
        first = {k: v for k, v in styles.items() if k[0] == weights[0]}
        handles, _ = _combo_handles(first, weights[:1], signals)
        legend_note = (
            "Colour and line style: signal-site policy (solid = exact, dashed = ste, dotted = zero); one "
            "column per weight-site policy."
        )
        _legend_below(fig, handles, title="Signal-site policy")
    else:
        handles, ncol = _combo_handles(styles, weights, signals)
        legend_note = st.combo_legend_note(weights, signals)
        _legend_below(fig, handles, ncol=ncol)
    pooled_text = (
        f" Each seed's curve is first averaged over {', '.join(st.factor_label(c).lower() for c in pooled)}."
        if pooled
        else ""
    )
    if cut:
        pooled_text += f" Shown up to epoch {last}, the last one every averaged condition reaches."
    counts = summary["n"].dropna()
    diverged_note = (
        "; fewer at late epochs, where trials had diverged"
        if len(counts) and counts.min() < counts.max()
        else ""
    )
    caption = (
        f"Learning curves: {' and '.join(st.metric_name(m) for m in metrics)} against epoch for "
        f"each policy combination. Line: mean over seeds; band: 95% t interval of the mean "
        f"({_n_text(summary['n'], 'seeds per point')}{diverged_note}). "
        f"{legend_note}{pooled_text}{note}"
    )
    return fig, caption


# --- 5. gradient mismatch --------------------------------------------------------------------------
MISMATCH_METRICS = ("grad_cosine", "sat_weight", "sat_signal_in", "sat_signal_out")


@register_figure("gradient_mismatch")
def fig_gradient_mismatch(ctx: StudyContext) -> Iterator[Output]:
    """Per layer: cosine similarity to the exact gradient and saturation fractions over epochs."""
    curves = ctx.curves()
    if curves is None:
        yield Skip("gradient_mismatch", "curves.csv.gz not found: run `python -m study collect DIR` first")
        return
    present = set(curves["metric"])
    metrics = [m for m in MISMATCH_METRICS if m in present]
    if "grad_cosine" not in metrics:
        yield Skip("gradient_mismatch", "curves.csv.gz has no per-layer grad_cosine rows")
        return
    data = curves[curves["metric"].isin(metrics) & curves["layer"].notna()]
    for name, note, part in _by_dataset(ctx, data, "gradient_mismatch"):
        yield Made(name, *_draw_mismatch(ctx, part, metrics, note))


def _draw_mismatch(
    ctx: StudyContext, data: pd.DataFrame, metrics: list[str], note: str
) -> tuple[Figure, str]:
    weights, signals = ctx.levels("weight_policy", data), ctx.levels("signal_policy", data)
    styles = st.combo_styles(weights, signals)
    layers = sorted(int(v) for v in data["layer"].dropna().unique())
    keep = ["metric", "layer", *POLICY_COLUMNS, "epoch"]
    summary = summarise(seed_means(data, keep, "value"), keep, "value")
    width = st.TWO_COLUMN if len(layers) > 1 else st.ONE_COLUMN
    fig = st.new_figure(width, 0.65 + 1.15 * len(metrics))
    axes = fig.subplots(len(metrics), len(layers), squeeze=False, sharex=True, sharey="row")
    for (i, metric), (j, layer) in itertools.product(enumerate(metrics), enumerate(layers)):
        ax = axes[i, j]
        for (w, s), style in styles.items():
            sel = summary[
                (summary["metric"] == metric)
                & (summary["layer"] == layer)
                & (summary["weight_policy"] == w)
                & (summary["signal_policy"] == s)
            ]
            if sel.empty:
                continue
            sel = sel.sort_values("epoch")
            ax.fill_between(sel["epoch"], sel["lo"], sel["hi"], color=style["color"], alpha=0.15, lw=0)
            ax.plot(sel["epoch"], sel["mean"], color=style["color"], ls=style["linestyle"], lw=1.0)
        if i == 0:
            ax.set_title(f"Layer {layer + 1}")
        if j == 0:
            ax.set_ylabel(_MISMATCH_LABELS.get(metric, st.metric_label(metric)))
        if i == len(metrics) - 1:
            ax.set_xlabel("Epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
    for i, metric in enumerate(metrics):
        if metric.startswith("sat_"):
            top = max(float(summary.loc[summary["metric"] == metric, "hi"].max(skipna=True) or 0), 0.0)
            top = max(top, float(summary.loc[summary["metric"] == metric, "mean"].max() or 0))
            axes[i, 0].set_ylim(0, min(1.0, top * 1.12) if top > 0 else 1.0)
    handles, ncol = _combo_handles(styles, weights, signals)
    _legend_below(fig, handles, ncol=ncol)
    caption = (
        "Gradient mismatch, the mechanism behind any effect: per analog layer (columns), the cosine "
        "similarity between the weight gradient the trial's policies give and the gradient the exact "
        "policies give on a fixed probe batch with identical noise, and the fraction of weights / input / "
        "output signals that the normalization alters (saturation), against epoch. Line: mean over seeds; "
        f"band: 95% t interval ({_n_text(summary['n'], 'seeds per point')}); "
        f"W exact · S exact is 1 by construction. {st.combo_legend_note(weights, signals)}{note}"
    )
    pooled = [c for c in ctx.conditions if c != "dataset" and c in data and data[c].nunique(dropna=False) > 1]
    if pooled:
        pooled_text = ", ".join(st.factor_label(c).lower() for c in pooled)
        caption += f" Each seed is first averaged over {pooled_text}."
    return fig, caption


_MISMATCH_LABELS = {
    "grad_cosine": "Cosine to exact\ngradient",
    "grad_norm_ratio": "‖g‖ / ‖g_exact‖",
    "sat_weight": "Weights altered\n(fraction)",
    "sat_signal_in": "Input signals\naltered (fraction)",
    "sat_signal_out": "Output signals\naltered (fraction)",
}
