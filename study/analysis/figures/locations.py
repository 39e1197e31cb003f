"""Figures of studies that set the signal policy by location (`analog.locations`): the paired effect of
each location's policy (a forest plot) and where in the network the signals saturate.

Both draw only when some compared signal policy is location-wise (e.g. ``exact,readout_output=ste``);
other studies skip them with the reason.
"""

from __future__ import annotations

from collections.abc import Iterator

import matplotlib as mpl
import numpy as np
import pandas as pd

from analog.locations import is_uniform
from study.analysis.figures import style as st
from study.analysis.figures.common import (
    STATS_HINT,
    Made,
    Output,
    Skip,
    StudyContext,
    _n_text,
    _text_color,
    register_figure,
)
from study.tables import diff_unit_name

NAMES = {
    "hidden_input": "hidden in",
    "hidden_output": "hidden out",
    "readout_input": "readout in",
    "readout_output": "readout out",
    "input": "inputs",
    "output": "outputs",
    "hidden": "hidden",
    "readout": "readout",
}


LOCATION_FIGURES = ("location_effects", "location_diagnostics")
A_BETTER, B_BETTER = "#1b7837", "#b2182b"  # the first / the second policy better (verdict different)


def policy_text(policy: str) -> str:
    """Readable label of a (possibly location-wise) signal policy: ``exact,readout_output=ste`` ->
    ``exact, readout out: ste``."""
    parts = str(policy).split(",")
    out = [parts[0]]
    for item in parts[1:]:
        key, _, value = item.partition("=")
        out.append(f"{NAMES.get(key, key.replace('_', ' '))}: {value.replace(':', '/')}")
    return ", ".join(out)


def _location_rows(ctx: StudyContext) -> pd.DataFrame | None:
    """The signal-site rows of comparisons of signal policies (not those of a condition `factor`), when
    some compared policy is location-wise."""
    comps = ctx.table("comparisons")
    if comps is None or "signal" not in set(comps["site"].astype(str)):
        return None
    sub = comps[comps["site"].astype(str) == "signal"]
    sub = sub[ctx.compared_factor(sub) == ""]
    if sub.empty:
        return None
    located = ~(sub["policy_a"].map(is_uniform) & sub["policy_b"].map(is_uniform))
    return sub if located.any() else None


@register_figure("location_effects")
def fig_location_effects(ctx: StudyContext) -> Iterator[Output]:
    """Forest plot: each signal-site comparison's mean paired difference with its 95% CI, per dataset."""
    comps = ctx.table("comparisons")
    if comps is None:
        yield Skip("location_effects", f"stats/comparisons.csv not found: {STATS_HINT}")
        return
    sub = _location_rows(ctx)
    if sub is None:
        yield Skip("location_effects", "no comparison of location-wise signal policies")
        return
    datasets = ctx.levels("dataset", sub) or [None]
    others = [c for c in ctx.conditions if c not in ("dataset", "signal_policy")]
    group_cols = ctx.varying(others, sub)
    order = list(dict.fromkeys(zip(sub["policy_a"], sub["policy_b"], strict=True)))
    keys = [
        (a, b, *g)
        for a, b in order
        for g in (
            [tuple(str(v) for v in k) for k in sub[group_cols].drop_duplicates().itertuples(index=False)]
            if group_cols
            else [()]
        )
        if not _rows(sub, a, b, group_cols, g).empty
    ]
    keys = list(dict.fromkeys(keys))
    margin = ctx.margin
    height = 0.9 + 0.19 * len(keys)
    fig = st.new_figure(st.TWO_COLUMN, height)
    axes = fig.subplots(1, len(datasets), squeeze=False, sharey=True)[0]
    ns = []
    for ax, dataset in zip(axes, datasets, strict=True):
        part = sub if dataset is None else sub[sub["dataset"].astype(str) == dataset]
        ax.axvspan(-margin, margin, color="0.88", lw=0)
        ax.axvline(0, color="0.3", lw=0.6, ls="--")
        for y, key in enumerate(keys):
            a, b, *g = key
            rows = _rows(part, a, b, group_cols, tuple(g))
            if rows.empty:
                continue
            row = rows.iloc[0]
            mean, lo, hi = (float(row[c]) for c in ("mean_diff", "ci_low", "ci_high"))
            if not np.isfinite(mean):
                continue
            ns.append(int(row["n_pairs"]))
            better = str(row.get("better", ""))  # "a" or "b" where the verdict is different
            color = {"a": A_BETTER, "b": B_BETTER}.get(better, "0.55")
            if np.isfinite(lo) and np.isfinite(hi):
                ax.plot([lo, hi], [y, y], color=color, lw=1.1)
            ax.plot([mean], [y], "o", ms=3.2, color=color)
            symbol = st.VERDICT_SYMBOLS.get(str(row["verdict"]), st.VERDICT_SYMBOLS["inconclusive"])
            ax.annotate(
                symbol,
                (1.0, y),
                xycoords=("axes fraction", "data"),
                xytext=(3, 0),
                textcoords="offset points",
                va="center",
                fontsize=7,
            )
        ax.set_title(f"Dataset {dataset}" if dataset else "")
        ax.set_xlabel(st.diff_label(ctx.metric))
        ax.set_ylim(len(keys) - 0.5, -0.5)
    labels = [
        f"{policy_text(a)}  vs  {policy_text(b)}" + (f"  [{', '.join(g)}]" if g else "") for a, b, *g in keys
    ]
    axes[0].set_yticks(range(len(keys)), labels)
    grouping = ", ".join(st.factor_label(c).lower() for c in group_cols)
    caption = (
        f"Signal policies by location: mean paired difference in {st.metric_name(ctx.metric)} "
        f"(first policy minus second, {diff_unit_name(ctx.metric)}) with its 95% CI, per dataset"
        + (f"; brackets: {grouping}" if grouping else "")
        + f" ({_n_text(ns, 'paired seeds per row')}). A location label (e.g. 'readout out: ste') names the "
        "clamps whose policy differs from the first word's. Shaded: ±δ = "
        f"{ctx.margin:g} {diff_unit_name(ctx.metric)}; green: the first policy better, red: the second "
        "better (verdict 'different'), grey: no difference shown. Symbols: verdicts as in the statistics "
        "(≡ identical, ≈ equivalent, ≠ different, ≃ trivial, ? inconclusive)."
    )
    yield Made("location_effects", fig, caption)


def _rows(df: pd.DataFrame, a: str, b: str, cols: list[str], key: tuple[str, ...]) -> pd.DataFrame:
    mask = (df["policy_a"].astype(str) == a) & (df["policy_b"].astype(str) == b)
    for c, v in zip(cols, key, strict=True):
        mask &= df[c].astype(str) == v
    return df[mask]


DIAG = (
    ("sat_signal_out", "Saturated fraction\nat the output clamp"),
    ("grad_cosine_signal_out", "Cosine to the exact\nsignal gradient"),
)


@register_figure("location_diagnostics")
def fig_location_diagnostics(ctx: StudyContext) -> Iterator[Output]:
    """Per dataset: at the last epoch, per layer's output clamp, the saturated fraction and the cosine of
    the signal gradient with the all-exact one, for every signal policy cell (and readout)."""
    if _location_rows(ctx) is None:
        yield Skip("location_diagnostics", "no comparison of location-wise signal policies")
        return
    curves = ctx.curves()
    if curves is None or not {m for m, _ in DIAG} <= set(curves["metric"]):
        yield Skip("location_diagnostics", "curves.csv.gz has no per-position probe diagnostics")
        return
    last = curves[curves["metric"].isin([m for m, _ in DIAG]) & curves["layer"].notna()]
    last = last[last["epoch"] == last.groupby("run_id")["epoch"].transform("max")]
    rows_by = [c for c in ("readout", "signal_policy") if c in last]
    for dataset in ctx.levels("dataset", last) or [None]:
        part = last if dataset is None else last[last["dataset"].astype(str) == dataset]
        table = part.groupby([*rows_by, "metric", "layer"], dropna=False)["value"].mean().unstack("layer")
        row_keys = list(
            dict.fromkeys(
                tuple(str(v) for v in k) for k in part[rows_by].drop_duplicates().itertuples(index=False)
            )
        )
        row_keys.sort(key=lambda k: tuple(_level_rank(ctx, c, v) for c, v in zip(rows_by, k, strict=True)))
        layers = sorted(int(x) for x in table.columns)
        fig = st.new_figure(st.TWO_COLUMN, 0.9 + 0.17 * len(row_keys))
        axes = fig.subplots(1, len(DIAG), squeeze=False)[0]
        for ax, (metric, title) in zip(axes, DIAG, strict=True):
            grid = np.full((len(row_keys), len(layers)), np.nan)
            for i, key in enumerate(row_keys):
                idx = (*key, metric)
                if idx in table.index:
                    grid[i] = [table.loc[idx].get(layer, np.nan) for layer in layers]
            cmap = mpl.colormaps["viridis" if metric.startswith("sat") else "magma"]
            vmin, vmax = (0.0, 1.0) if metric.startswith("sat") else (min(0.0, np.nanmin(grid)), 1.0)
            ax.imshow(grid, aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax)
            for (i, j), v in np.ndenumerate(grid):
                if np.isfinite(v):
                    rgba = cmap((v - vmin) / (vmax - vmin) if vmax > vmin else 0.5)
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6.5, color=_text_color(rgba))
            ax.set_xticks(range(len(layers)), [_layer_name(i, len(layers)) for i in layers])
            ax.set_title(title)
            ax.set_yticks(
                range(len(row_keys)),
                [
                    " · ".join(
                        policy_text(v) if c == "signal_policy" else v for c, v in zip(rows_by, k, strict=True)
                    )
                    for k in row_keys
                ]
                if ax is axes[0]
                else [],
            )
        name = "location_diagnostics" + (f"_{dataset}" if dataset else "")
        caption = (
            "Where signals saturate: per layer's output clamp (before the activation), at the last epoch, "
            "the fraction of the probe batch's units clipped by the clamp (left) and the cosine between the "
            "loss gradient at that clamp's input under the cell's signal policies and under all-exact "
            "(right; 1 where they coincide), mean over seeds; rows: "
            + " · ".join(st.factor_label(c).lower() for c in rows_by)
            + (f". Dataset {dataset}." if dataset else ".")
        )
        yield Made(name, fig, caption)


def _level_rank(ctx: StudyContext, column: str, value: str) -> int:
    levels = ctx.levels(column)
    return levels.index(value) if value in levels else len(levels)


def _layer_name(i: int, n: int) -> str:
    return "readout" if i == n - 1 else f"hidden {i + 1}"
