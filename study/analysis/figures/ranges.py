"""Dose-response figure of a study that varies the hardware weight range c (`weight_clamp`, issue #29):
each weight-site comparison's mean paired difference with its 95 % t interval against c, one line per
(architecture, optimizer, initialisation), and the exact - ste difference against the exact arm's final
share of weights beyond the range (the dose the gradient policy acts on).

Drawn from `stats/comparisons.csv` and `runs.csv` only where `weight_clamp` takes at least three values
and a weight-site comparison was made; other studies skip it.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd

from study.analysis.figures import style as st
from study.analysis.figures.common import Made, Output, Skip, StudyContext, register_figure
from study.tables import diff_unit_name

RANGE_FIGURE = "weight_range_dose"
SERIES = ("arch", "optimizer", "weight_init")
SERIES_COLORS = (
    st.OKABE_ITO["blue"],
    st.OKABE_ITO["vermillion"],
    st.OKABE_ITO["green"],
    st.OKABE_ITO["purple"],
)
INIT_STYLES = {"default": "-", "in_range": "--"}


def _series(frame: pd.DataFrame) -> list[str]:
    return [c for c in SERIES if c in frame]


def _series_label(key: tuple[str, ...], names: list[str]) -> str:
    return " ".join(st.level_label(n, v, compact=True) for n, v in zip(names, key, strict=True))


def _saturation(ctx: StudyContext, policy: str = "exact") -> pd.DataFrame | None:
    """Mean over seeds of each condition's final pooled weight saturation under `policy` (forward clamp)."""
    runs = ctx.runs
    if "weight_saturation" not in runs or "weight_policy" not in runs:
        return None
    part = runs[runs["weight_policy"].astype(str) == policy]
    if "weight_bound" in part:
        part = part[part["weight_bound"].astype(str) == "forward"]
    keys = [c for c in ctx.conditions if c in part and c not in ("weight_policy", "weight_bound", "lr")]
    sat = part.assign(weight_saturation=pd.to_numeric(part["weight_saturation"], errors="coerce"))
    return sat.groupby(keys, as_index=False)["weight_saturation"].mean()


@register_figure(RANGE_FIGURE)
def fig_weight_range_dose(ctx: StudyContext) -> Iterator[Output]:
    """(a) weight exact - ste and (b) the other weight-site comparisons against c; (c) exact - ste against
    the exact arm's final saturated share. Points: mean paired difference; bars: 95 % t interval."""
    comps = ctx.table("comparisons")
    if "weight_clamp" not in ctx.conditions or comps is None or "weight_clamp" not in comps:
        yield Skip(RANGE_FIGURE, "the study does not vary the weight range (weight_clamp)")
        return
    comps = comps[comps["site"].astype(str) == "weight"].copy()
    comps["c"] = pd.to_numeric(comps["weight_clamp"], errors="coerce")
    if comps.empty or comps["c"].nunique() < 3:
        yield Skip(RANGE_FIGURE, "fewer than three weight ranges with a weight-site comparison")
        return
    labels = list(dict.fromkeys(comps["comparison"].astype(str)))
    names = _series(comps)
    keys = list(dict.fromkeys(tuple(r) for r in comps[names].astype(str).itertuples(index=False)))
    color_of = {}
    for key in keys:
        base = tuple(v for n, v in zip(names, key, strict=True) if n != "weight_init")
        color_of.setdefault(base, SERIES_COLORS[len(color_of) % len(SERIES_COLORS)])
    sat = _saturation(ctx)
    fig = st.new_figure(st.TWO_COLUMN, 2.6)
    axes = fig.subplots(1, len(labels) + (sat is not None))
    axes = np.atleast_1d(axes)
    unit = diff_unit_name(ctx.metric)
    for ax, label in zip(axes, labels, strict=False):
        ax.axhspan(-ctx.margin, ctx.margin, color=st.BAND_COLOR, lw=0)
        ax.axhline(0, color=st.REFERENCE_COLOR, lw=0.6, ls="--")
        part = comps[comps["comparison"].astype(str) == label]
        for i, key in enumerate(keys):
            rows = part[(part[names].astype(str) == pd.Series(key, index=names)).all(axis=1)].sort_values("c")
            if rows.empty:
                continue
            base = tuple(v for n, v in zip(names, key, strict=True) if n != "weight_init")
            init = dict(zip(names, key, strict=True)).get("weight_init", "default")
            x = rows["c"].to_numpy(dtype=float) * (1 + 0.03 * (i - len(keys) / 2))  # dodge on the log axis
            y = pd.to_numeric(rows["mean_diff"]).to_numpy(dtype=float)
            lo = y - pd.to_numeric(rows["ci_low"]).to_numpy(dtype=float)
            hi = pd.to_numeric(rows["ci_high"]).to_numpy(dtype=float) - y
            ax.errorbar(
                x,
                y,
                yerr=[lo, hi],
                marker="o",
                ms=3,
                lw=0.9,
                capsize=1.5,
                color=color_of[base],
                ls=INIT_STYLES.get(init, ":"),
                label=_series_label(key, names),
            )
        ax.set_xscale("log")
        ax.set_xlabel("weight range c")
        ax.set_title(label, fontsize=st.FONT_MEDIUM)
    axes[0].set_ylabel(f"difference a − b ({unit})")
    if sat is not None:
        ax = axes[-1]
        ax.axhspan(-ctx.margin, ctx.margin, color=st.BAND_COLOR, lw=0)
        ax.axhline(0, color=st.REFERENCE_COLOR, lw=0.6, ls="--")
        part = comps[comps["comparison"].astype(str) == labels[0]]
        on = [c for c in sat.columns if c != "weight_saturation" and c in part]
        merged = part.merge(sat.astype({c: str for c in on}), on=on, how="inner")
        for key in keys:
            rows = merged[(merged[names].astype(str) == pd.Series(key, index=names)).all(axis=1)]
            if rows.empty:
                continue
            base = tuple(v for n, v in zip(names, key, strict=True) if n != "weight_init")
            ax.plot(
                100 * rows["weight_saturation"].astype(float),
                pd.to_numeric(rows["mean_diff"]),
                "o",
                ms=3,
                color=color_of[base],
                mfc="none" if dict(zip(names, key, strict=True)).get("weight_init") == "in_range" else None,
            )
        ax.set_xlabel("exact arm's final weights beyond c (%)")
        ax.set_title(f"{labels[0]} vs saturation", fontsize=st.FONT_MEDIUM)
    axes[0].legend(fontsize=st.FONT_SMALL - 1, frameon=False, loc="best")
    seeds = pd.to_numeric(comps["n_pairs"], errors="coerce")
    n_text = (
        f"n = {int(seeds.min())} seeds"
        if seeds.min() == seeds.max()
        else (f"n = {int(seeds.min())}-{int(seeds.max())} seeds")
    )
    caption = (
        "Dose-response of the weight site: each weight-site comparison's mean paired difference "
        f"({unit}; bars: 95 % t interval over seeds, {n_text} per point; grey band: ±{ctx.margin:g} "
        "equivalence margin) "
        "against the weight range c (log axis), one line per architecture, optimizer and initialisation "
        "(solid: default, dashed: in_range); the last panel plots the first comparison against the exact "
        "arm's final share of weights beyond c (mean over seeds; open markers: in_range)."
    )
    yield Made(RANGE_FIGURE, fig, caption)
