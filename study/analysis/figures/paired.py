"""Figures of the paired comparisons: per-seed differences, effect heatmap, weight × signal interaction."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from typing import Any

import matplotlib as mpl
import matplotlib.colors as mcolors
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analog.locations import is_uniform
from analog.policies import OTHER_SITE
from study.analysis.figures import style as st
from study.analysis.figures.common import (
    STATS_HINT,
    Made,
    Output,
    Skip,
    StudyContext,
    _color_text,
    _facet_title,
    _group_columns,
    _key_label,
    _keys,
    _n_text,
    _ordered_keys,
    _rows_label,
    _select,
    _slug,
    _text_color,
    register_figure,
    seed_means,
    summarise,
)
from study.sweep.hypotheses import SITES
from study.tables import (
    POLICY_COLUMNS,
    SITE_COLUMN,
    diff_unit,
    diff_unit_name,
    span,
)

MAX_ROWS = 48  # condition rows per panel of the paired-difference plot before it is split
MAX_SPLIT_FIGURES = 8  # more split figures than this help no reader: the figure is skipped, with the reason


ROLE_ORDER = {"primary": 0, "positive_control": 1, "secondary": 2}


def _comparison_order(df: pd.DataFrame) -> list[tuple[str, str, str, str]]:
    """(comparison, role, a, b) of the comparisons in `df`: primary first, then by policy."""
    combos = df[["comparison", "role", "policy_a", "policy_b"]].drop_duplicates()
    order = {p: i for i, p in enumerate(st.policy_order(set(combos["policy_a"]) | set(combos["policy_b"])))}
    items = [tuple(str(v) for v in row) for row in combos.itertuples(index=False)]
    return sorted(items, key=lambda t: (ROLE_ORDER.get(t[1], 9), order.get(t[2], 99), order.get(t[3], 99)))


def _verdict_symbol(verdict: Any) -> str:
    return st.VERDICT_SYMBOLS.get(str(verdict), st.VERDICT_SYMBOLS["inconclusive"])


def _ci_method_text(comps: pd.DataFrame) -> str:
    """How the stats stage computed the CIs (the paired t interval; older tables: BCa bootstrap)."""
    if "ci_method" not in comps:
        return "paired t"
    methods = {m for m in comps["ci_method"].dropna().astype(str) if m in ("t", "bca", "percentile")}
    if methods <= {"t"}:
        return "paired t"
    if methods <= {"bca"}:
        return "BCa bootstrap"
    return "BCa bootstrap (percentile where BCa is undefined)"


def _verdict_note(ctx: StudyContext) -> str:
    h = ctx.hypotheses
    names = {
        "holm": "Holm-adjusted",
        "bonferroni": "Bonferroni-adjusted",
        "fdr_bh": "Benjamini–Hochberg-adjusted",
        "none": "unadjusted",
    }
    correction = names.get(h.correction, h.correction)
    return (
        "Verdict (stats/comparisons.csv): ≡ identical (every pair of runs equal, no test); ≠ different "
        f"({correction} paired t-test p < α = {h.alpha:g}, CI reaching beyond ±δ); ≃ trivial (the same, "
        f"CI within ±δ); ≈ equivalent ({correction} TOST p < α); else ? inconclusive. A row repeating "
        "another row's paired runs shows the same numbers and counts once."
    )


# --- 1. paired-difference estimation plot ----------------------------------------------------------
@register_figure("paired_differences")
def fig_paired_differences(ctx: StudyContext) -> Iterator[Output]:
    """Per site: per-seed paired differences, their mean with its 95% CI, zero line, ±δ band.

    The comparisons of a condition factor (`factor` in the spec) at a site get their own figure per
    factor, `paired_differences_<site>_<factor>`, whose rows are the combinations of the other condition
    factors and both sites' policies (the pairs' conditions); the site's figure shows its policy
    comparisons.
    """
    comps = ctx.table("comparisons")
    for site in SITES:
        base = f"paired_differences_{site}"
        if comps is None:
            yield Skip(base, f"stats/comparisons.csv not found: {STATS_HINT}")
            continue
        sub = comps[comps["site"].astype(str) == site]
        if sub.empty:
            yield Skip(base, f"no comparison at the {site} site (its policies are absent from the study)")
            continue
        factor = ctx.compared_factor(sub)
        factors = list(dict.fromkeys(f for f in factor if f))
        policy_rows = sub[factor == ""]
        other = SITE_COLUMN[OTHER_SITE[site]]
        if policy_rows.empty:
            shown = ", ".join(f"{base}_{_slug(f)}" for f in factors)
            yield Skip(base, f"no comparison of the {site}-site policies (the factor comparisons: {shown})")
        elif not (policy_rows["policy_a"].map(is_uniform) & policy_rows["policy_b"].map(is_uniform)).all():
            yield Skip(base, "signal policies set by location: drawn as location_effects")
        else:
            key_cols = [c for c in ctx.conditions if c in policy_rows] + (
                [other] if other in policy_rows else []
            )
            yield from _paired_figures(
                ctx, site, base, policy_rows, key_cols, [other], f"{site.capitalize()} site"
            )
        for name in factors:
            rows = sub[factor == name]
            key_cols = [c for c in ctx.conditions if c in rows and c != name]
            key_cols += [c for c in POLICY_COLUMNS if c in rows]
            title = f"{site.capitalize()} site · {st.factor_label(name).lower()}"
            yield from _paired_figures(
                ctx, site, f"{base}_{_slug(name)}", rows, key_cols, [other, SITE_COLUMN[site]], title
            )


def _paired_figures(
    ctx: StudyContext,
    site: str,
    base: str,
    sub: pd.DataFrame,
    key_cols: list[str],
    split_first: list[str],
    heading: str,
) -> Iterator[Output]:
    """The paired-difference figure(s) of `sub` (rows of one site), rows keyed by `key_cols`; split into
    one figure per level of a factor (`split_first` first) when a panel would have too many rows."""
    diffs = ctx.table("differences")
    dsub = None if diffs is None else diffs[diffs["comparison"].astype(str).isin(set(sub["comparison"]))]
    varying = ctx.varying(key_cols, sub)
    facet = "dataset" if "dataset" in varying else None
    row_cols = [c for c in varying if c != facet]
    split_cols: list[str] = []
    candidates = [c for c in split_first if c in row_cols]
    candidates += [c for c in reversed(row_cols) if c not in split_first]
    while len(_ordered_keys(ctx, sub, row_cols)) > MAX_ROWS and len(row_cols) > 1 and candidates:
        col = candidates.pop(0)
        row_cols.remove(col)
        split_cols.append(col)
    splits = _ordered_keys(ctx, sub, split_cols)
    if len(splits) > MAX_SPLIT_FIGURES:
        yield Skip(
            base,
            f"its {len(sub)} rows would need {len(splits)} figures of at most {MAX_ROWS} rows (more than "
            f"{MAX_SPLIT_FIGURES}); every condition is in stats/comparisons.csv"
            + (" and in the forest plot effects_forest" if ctx.hypotheses.effect_model is not None else ""),
        )
        return
    for split_key in splits:
        suffix = "".join(f"_{_slug(c)}-{_slug(v)}" for c, v in zip(split_cols, split_key, strict=True))
        name = base + suffix
        part = _select(sub, split_cols, split_key)
        dpart = None if dsub is None else _select(dsub, split_cols, split_key)
        shown = ", ".join(
            f"{st.factor_label(c).lower()} {st.level_label(c, v)}"
            for c, v in zip(split_cols, split_key, strict=True)
        )
        title = heading + (f" · {shown}" if shown else "")
        fig, caption = _draw_paired(ctx, site, part, dpart, facet, row_cols, key_cols, title)
        if split_cols:
            caption += f" This figure shows the conditions with {shown} (one figure per level)."
        yield Made(name, fig, caption)


def _draw_paired(
    ctx: StudyContext,
    site: str,
    comps: pd.DataFrame,
    diffs: pd.DataFrame | None,
    facet: str | None,
    row_cols: list[str],
    key_cols: list[str],
    title: str,
) -> tuple[Figure, str]:
    metric = str(comps["metric"].iloc[0]) if "metric" in comps and len(comps) else ctx.metric
    delta = ctx.margin
    order = _comparison_order(comps)
    facets = ctx.levels(facet, comps) if facet else [None]
    rows = _ordered_keys(ctx, comps, row_cols)
    ypos = {k: i for i, k in enumerate(rows)}
    n_rows, n_panels = len(rows), len(order) * len(facets)
    many = n_rows > 8
    label_len = max((len(_key_label(row_cols, k)) for k in rows), default=0) if row_cols else 0
    width = st.ONE_COLUMN if n_panels <= 2 and label_len <= 14 else st.TWO_COLUMN
    height = (0.95 + 0.13 * n_rows) if many else (0.95 + 0.42 * max(n_rows, 1))
    fig = st.new_figure(width, height)
    fig.get_layout_engine().set(wspace=0.06)  # room between the panels' x tick labels
    axes = fig.subplots(1, n_panels, sharey=True, squeeze=False)[0]
    palette = st.policy_palette(set(comps["policy_a"]) | set(comps["policy_b"]))
    rng = np.random.default_rng(0)
    jitter = 0.28 if many else 0.22
    point_size = 1.5 if many else 3.0
    # x-range per comparison (shared across datasets), always wide enough to show the ±δ band
    xlims = {}
    for comp, *_ in order:
        values = list(comps.loc[comps["comparison"] == comp, ["ci_low", "ci_high", "mean_diff"]].stack())
        if diffs is not None:
            values += list(diffs.loc[diffs["comparison"] == comp, "diff"])
        vals = np.asarray(values, dtype=float)
        vals = vals[np.isfinite(vals)]
        lo, hi = min(vals.min(initial=0.0), -1.6 * delta), max(vals.max(initial=0.0), 1.6 * delta)
        pad = 0.06 * (hi - lo)
        xlims[comp] = (lo - pad, hi + pad + 0.12 * (hi - lo))  # the right margin holds the verdicts
    n_pairs = []
    for p, (level, (comp, _role, a, b)) in enumerate(itertools.product(facets, order)):
        ax = axes[p]
        color = palette.get(a, st.OTHER_POLICY_COLOR)
        sel = comps[comps["comparison"] == comp]
        dsel = None if diffs is None else diffs[diffs["comparison"] == comp]
        if facet:
            sel = sel[sel[facet].astype(str) == level]
            dsel = None if dsel is None else dsel[dsel[facet].astype(str) == level]
        ax.axvspan(-delta, delta, color=st.BAND_COLOR, lw=0, zorder=0)
        ax.axvline(0, color=st.REFERENCE_COLOR, lw=0.6, ls="--", zorder=1)
        if dsel is not None and len(dsel):
            ys = np.array([ypos.get(k, np.nan) for k in _keys(dsel, row_cols)], dtype=float)
            ys = ys + rng.uniform(-jitter, jitter, len(ys))
            ax.scatter(
                dsel["diff"].to_numpy(float),
                ys,
                s=point_size,
                color=color,
                alpha=0.45,
                lw=0,
                zorder=2,
                rasterized=False,
            )
        for key, row in zip(_keys(sel, row_cols), sel.itertuples(index=False), strict=True):
            y = ypos[key]
            mean, lo, hi = float(row.mean_diff), float(row.ci_low), float(row.ci_high)
            ax.plot(
                [lo, hi], [y, y], color="black", lw=1.3 if not many else 1.0, zorder=3, solid_capstyle="butt"
            )
            ax.plot(
                [mean],
                [y],
                marker="o",
                ms=3.6 if not many else 2.6,
                mfc=color,
                mec="black",
                mew=0.5,
                zorder=4,
            )
            symbol = _verdict_symbol(getattr(row, "verdict", ""))
            ax.text(
                0.955,
                y,
                symbol,
                transform=ax.get_yaxis_transform(),
                ha="center",
                va="center",
                fontsize=st.FONT_SMALL,
            )
            n_pairs.append(getattr(row, "n_pairs", math.nan))
        ax.set_xlim(*xlims[comp])
        label = f"{a} − {b}"
        ax.set_title(f"{level}: {label}" if facet else label, color=color, fontsize=st.FONT_MEDIUM)
        ax.set_xlabel(st.diff_label(metric))
        ax.tick_params(axis="y", length=0)
        if many and len(row_cols) > 1:  # thin separators between groups of the first row factor
            for i in range(1, n_rows):
                if rows[i][0] != rows[i - 1][0]:
                    ax.axhline(i - 0.5, color="0.75", lw=0.4, zorder=0)
    ax0 = axes[0]
    ax0.set_yticks(range(n_rows), [_key_label(row_cols, k) for k in rows] if row_cols else [""])
    ax0.set_ylim(n_rows - 0.5, -0.5)
    if row_cols:
        ax0.set_ylabel(_rows_label(row_cols, (0.13 if many else 0.42) * n_rows))
        if row_cols == [SITE_COLUMN[OTHER_SITE[site]]]:
            _color_text(ax0, "y", [k[0] for k in rows])
    fig.suptitle(title, fontsize=st.FONT_LARGE)
    fig.text(
        0.5,
        0,
        f"{st.VERDICT_LEGEND}    shaded: ±δ = {delta:g}{diff_unit(metric)}",
        ha="center",
        va="top",
        fontsize=st.FONT_SMALL,
    )
    rows_text = ", ".join(st.factor_label(c).lower() for c in row_cols) or "the single condition"
    comps_text = ", ".join(f"{a} − {b}" for _c, _r, a, b in order)
    caption = (
        f"Paired differences in {st.metric_name(metric)} at the {site} site ({comps_text}; "
        f"difference a − b within each seed, in {diff_unit_name(metric)})."
        f" Points: one per seed ({_n_text(n_pairs, 'pairs per condition')}); filled circle: mean; "
        f"bar: 95% {_ci_method_text(comps)} CI of the mean; dashed line: no difference; grey band: "
        f"equivalence margin ±δ = {delta:g}{diff_unit(metric)}. Rows: {rows_text}"
        + (f"; panels: {st.factor_label(facet).lower()} × comparison." if facet else ".")
        + f" {_verdict_note(ctx)}"
        + ctx.fixed_note(comps, key_cols)
    )
    if diffs is None:
        caption += " Per-seed points omitted: stats/differences.csv not found."
    return fig, caption


# --- 2. effect heatmap -----------------------------------------------------------------------------
@register_figure("effect_heatmap")
def fig_effect_heatmap(ctx: StudyContext) -> Iterator[Output]:
    """Per site: mean difference of the primary comparison over normalization × precision (× leakage).

    A primary comparison of a condition factor (`factor` in the spec) gets its own heatmap,
    `effect_heatmap_<site>_<factor>`, faceted by both sites' policies where they vary; it is skipped,
    with the reason, where its factor is the heatmap's normalization or precision axis (constant in its
    rows).
    """
    comps = ctx.table("comparisons")
    for site in SITES:
        base = f"effect_heatmap_{site}"
        if comps is None:
            yield Skip(base, f"stats/comparisons.csv not found: {STATS_HINT}")
            continue
        primary = comps[(comps["site"].astype(str) == site) & (comps["role"].astype(str) == "primary")]
        if primary.empty:
            yield Skip(base, f"no primary comparison at the {site} site")
            continue
        factor = ctx.compared_factor(primary)
        groups = [(base, primary[factor == ""], "")]
        groups += [
            (f"{base}_{_slug(f)}", primary[factor == f], f) for f in dict.fromkeys(f for f in factor if f)
        ]
        for group, sub, compared in groups:
            if sub.empty:
                yield Skip(group, f"no primary comparison of the {site}-site policies")
                continue
            yield from _heatmaps(ctx, site, group, sub, compared)


def _heatmaps(ctx: StudyContext, site: str, base: str, sub: pd.DataFrame, factor: str) -> Iterator[Output]:
    """The heatmaps of `sub` (primary rows of one site: its policy comparisons, or those of `factor`)."""
    if factor in ("precision", "norm") or factor.endswith("_norm"):
        yield Skip(base, f"it compares {factor}, an axis of the normalization x precision heatmap")
        return
    norms = ctx.varying([c for c in ctx.conditions if (c.endswith("_norm") or c == "norm")], sub)
    norm_col = f"{site}_norm" if f"{site}_norm" in norms else (norms[0] if norms else None)
    if norm_col is None:
        yield Skip(base, "the study lacks a varying normalization factor (weight_norm / signal_norm)")
        return
    if "precision" not in ctx.varying(["precision"], sub):
        yield Skip(base, "the study lacks a varying precision factor")
        return
    if ctx.hypotheses.effect_model is not None:
        yield Skip(
            base,
            "a designed study analysed by its effect model: a normalization x precision cell would pool "
            "the other factors' levels; see effects_factors (the model's marginal means)",
        )
        return
    key_cols = None
    if factor:  # the pairs' conditions: the other condition factors and both sites' policies
        key_cols = [c for c in ctx.conditions if c in sub and c != factor] + [
            c for c in POLICY_COLUMNS if c in sub
        ]
    order = _comparison_order(sub)
    for comp, _role, a, b in order:
        name = base if len(order) == 1 else f"{base}_{_slug(a)}-{_slug(b)}"
        part = sub[sub["comparison"] == comp]
        yield Made(name, *_draw_heatmap(ctx, site, part, norm_col, a, b, key_cols))


def _draw_heatmap(
    ctx: StudyContext,
    site: str,
    comps: pd.DataFrame,
    norm_col: str,
    a: str,
    b: str,
    key_cols: list[str] | None = None,
) -> tuple[Figure, str]:
    metric = str(comps["metric"].iloc[0]) if "metric" in comps else ctx.metric
    other = SITE_COLUMN[OTHER_SITE[site]]
    if key_cols is None:  # a policy comparison's conditions: the condition factors and the other site
        key_cols = [c for c in ctx.conditions if c in comps] + ([other] if other in comps else [])
    facet_col = "leakage" if "leakage" in ctx.varying(["leakage"], comps) else None
    row_facets = [c for c in ctx.varying(key_cols, comps) if c not in (norm_col, "precision", facet_col)]
    norms, precs = ctx.levels(norm_col, comps), ctx.levels("precision", comps)
    cols = ctx.levels(facet_col, comps) if facet_col else [None]
    frows = _ordered_keys(ctx, comps, row_facets)
    cell_w, cell_h = 0.42, 0.30
    panel_w = cell_w * len(precs) + 0.25
    width = min(st.TWO_COLUMN, 1.3 + panel_w * len(cols) + 0.6)
    facet_labels = [_key_label(row_facets, k) for k in frows] if row_facets else []
    # each facet row must be at least as tall as its (rotated) label
    panel_h = max(cell_h * len(norms), 0.065 * max(map(len, facet_labels), default=0) + 0.1)
    height = 0.9 + (panel_h + 0.35) * len(frows)
    fig = st.new_figure(width, height)
    axes = fig.subplots(len(frows), len(cols), squeeze=False, sharex=True, sharey=True)
    values = pd.to_numeric(comps["mean_diff"], errors="coerce")
    vmax = max(float(np.nanmax(np.abs(values))) if values.notna().any() else 0.0, 2 * ctx.margin)
    cnorm = mcolors.TwoSlopeNorm(0.0, -vmax, vmax)
    cmap = mpl.colormaps[st.DIVERGING_CMAP].with_extremes(bad="0.92")
    image = None
    for i, fkey in enumerate(frows):
        for j, level in enumerate(cols):
            ax = axes[i, j]
            sel = _select(comps, row_facets, fkey)
            if facet_col:
                sel = sel[sel[facet_col].astype(str) == level]
            grid = np.full((len(norms), len(precs)), np.nan)
            marks = np.full(grid.shape, "", dtype=object)
            for row in sel.itertuples(index=False):
                r, c = norms.index(str(getattr(row, norm_col))), precs.index(str(row.precision))
                grid[r, c] = float(row.mean_diff)
                marks[r, c] = _verdict_symbol(getattr(row, "verdict", ""))
            image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, norm=cnorm, aspect="auto")
            for r, c in itertools.product(range(len(norms)), range(len(precs))):
                if np.isnan(grid[r, c]):
                    ax.text(c, r, "–", ha="center", va="center", fontsize=st.FONT_SMALL, color="0.4")
                    continue
                tc = _text_color(cmap(cnorm(grid[r, c])))
                ax.text(
                    c,
                    r,
                    f"{grid[r, c]:+.2f}\n{marks[r, c]}",
                    ha="center",
                    va="center",
                    fontsize=st.FONT_SMALL,
                    color=tc,
                    linespacing=0.95,
                )
            ax.set_xticks(range(len(precs)), [st.level_label("precision", p) for p in precs])
            ax.set_yticks(range(len(norms)), [st.level_label(norm_col, n) for n in norms])
            ax.tick_params(length=0)
            for spine in ax.spines.values():
                spine.set_visible(False)
            if i == 0 and facet_col:
                ax.set_title(_facet_title(facet_col, level))
            if i == len(frows) - 1:
                ax.set_xlabel(st.factor_label("precision"))
            if j == 0:
                ax.set_ylabel(facet_labels[i] if row_facets else st.factor_label(norm_col))
    if row_facets:
        fig.supylabel(st.factor_label(norm_col), fontsize=st.FONT_MEDIUM)
    if image is not None:
        bar = fig.colorbar(image, ax=axes, shrink=min(1.0, 2.2 / height), aspect=25, pad=0.02)
        bar.set_label(f"{st.diff_label(metric)}, {a} − {b}")
        bar.outline.set_linewidth(0.4)
    fig.text(0.5, 0, st.VERDICT_LEGEND, ha="center", va="top", fontsize=st.FONT_SMALL)
    n = _n_text(comps.get("n_pairs", pd.Series(dtype=float)), "paired seeds per cell")
    facets_text = []
    if facet_col:
        facets_text.append(f"columns: {st.factor_label(facet_col).lower()}")
    if row_facets:
        policy_note = " (W / S = weight- / signal-site policy)" * any(c in POLICY_COLUMNS for c in row_facets)
        row_text = " · ".join(st.factor_label(c).lower() for c in row_facets)
        facets_text.append(f"rows: {row_text}{policy_note}")
    caption = (
        f"Mean paired difference in {st.metric_name(metric)} ({a} − {b} at the {site} site, "
        f"{diff_unit_name(metric, 'metric units')}) for each "
        f"{st.factor_label(norm_col).lower()} × precision condition ({n}); red: {a} better, blue: {b} "
        f"better, symmetric colour scale; grey '–': condition not run. Each cell shows the mean and the "
        f"verdict symbol. {_verdict_note(ctx)}"
        + (f" Facets: {'; '.join(facets_text)}." if facets_text else "")
        + ctx.fixed_note(comps, key_cols)
    )
    return fig, caption


# --- 3. policy-interaction grid --------------------------------------------------------------------
@register_figure("policy_interaction")
def fig_policy_interaction(ctx: StudyContext) -> Iterator[Output]:
    """Weight policy × signal policy grid of mean accuracy with 95% t interval, per dataset."""
    name = "policy_interaction"
    runs = ctx.runs
    weights, signals = ctx.levels("weight_policy"), ctx.levels("signal_policy")
    if len(weights) < 2 and len(signals) < 2:
        yield Skip(name, "the study varies neither the weight- nor the signal-site policy")
        return
    metric = ctx.metric
    panel_cols = _group_columns(ctx, runs)
    panels = _ordered_keys(ctx, runs, panel_cols) if panel_cols else [()]
    pooled = [c for c in ctx.conditions if c not in panel_cols and runs[c].nunique(dropna=False) > 1]
    keep = panel_cols + list(POLICY_COLUMNS)
    summary = summarise(seed_means(runs, keep, metric), keep, metric)
    n_panels = len(panels)
    ncols = min(n_panels, 4 if n_panels > 4 else 2)
    nrows = math.ceil(n_panels / ncols)
    width = st.ONE_COLUMN if ncols == 1 else st.TWO_COLUMN
    height = nrows * (0.36 * len(weights) + 0.8) + 0.1
    fig = st.new_figure(width, height)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    vmin, vmax = float(summary["mean"].min()), float(summary["mean"].max())
    cnorm = mcolors.Normalize(vmin, vmax if vmax > vmin else vmin + 1)
    cmap = mpl.colormaps[st.SEQUENTIAL_CMAP]
    for p, key in enumerate(panels):
        ax = axes[p // ncols, p % ncols]
        sel = _select(summary, panel_cols, key) if panel_cols else summary
        grid = np.full((len(weights), len(signals)), np.nan)
        for row in sel.itertuples(index=False):
            r, c = weights.index(str(row.weight_policy)), signals.index(str(row.signal_policy))
            grid[r, c] = row.mean
            tc = _text_color(cmap(cnorm(row.mean)))
            ci = f"\n{row.lo:.2f}–{row.hi:.2f}" if np.isfinite(row.lo) else ""
            ax.text(
                c,
                r,
                f"{row.mean:.2f}{ci}",
                ha="center",
                va="center",
                fontsize=st.FONT_SMALL,
                color=tc,
                linespacing=1.0,
            )
        ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, norm=cnorm, aspect="auto")
        ax.set_xticks(range(len(signals)), signals)
        ax.set_yticks(range(len(weights)), weights)
        _color_text(ax, "x", signals)
        _color_text(ax, "y", weights)
        ax.tick_params(length=0)
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.set_xlabel(st.factor_label("signal_policy"))
        ax.set_ylabel(st.factor_label("weight_policy"))
        if panel_cols:
            ax.set_title(" · ".join(st.level_label(c, v) for c, v in zip(panel_cols, key, strict=True)))
    for p in range(n_panels, nrows * ncols):
        axes[p // ncols, p % ncols].set_visible(False)
    counts = [len(_ordered_keys(ctx, _select(runs, panel_cols, k), pooled)) for k in panels] if pooled else []
    pooled_text = (
        f" Within a panel, each seed's value is first averaged over the panel's conditions, which differ "
        f"in {', '.join(st.factor_label(c).lower() for c in pooled)} ({span(min(counts), max(counts))} "
        "conditions per panel)."
        if pooled
        else ""
    )
    split_text = ""
    if panel_cols:
        names = " × ".join(st.factor_label(c).lower() if c != "dataset" else "dataset" for c in panel_cols)
        split_text = f" One panel per {names}: normalizations and data sets are never averaged together."
    caption = (
        f"Policy interaction: mean final {st.metric_name(metric)} for every weight-site × "
        f"signal-site policy combination (first line) and the 95% t interval of the mean over "
        f"seeds (second line; {_n_text(summary['n'], 'seeds per cell')}); cell colour: the mean (cividis, "
        f"dark = low, bright = high).{pooled_text}{split_text}"
        + ("" if panel_cols else ctx.fixed_note(runs, ["dataset"]))
    )
    yield Made(name, fig, caption)
