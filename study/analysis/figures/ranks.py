"""Rank figures: critical-difference diagrams of the policy combinations (or a rank heatmap).

The diagrams are drawn here rather than with `scikit_posthocs.critical_difference_diagram`: that one
joins methods by pairwise post-hoc p-values, one condition per axes, while these are Demšar's diagrams
(bars join combinations within the Nemenyi critical difference of `stats/omnibus.csv`, with its scale
bar), stacked one per condition on one figure, with the `analogvnn` preset cell marked; they read only
the stats tables, so the committed figures keep their meaning.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import matplotlib as mpl
import matplotlib.colors as mcolors
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from study.analysis.figures import style as st
from study.analysis.figures.common import (
    STATS_HINT,
    Made,
    Output,
    Skip,
    StudyContext,
    _key_label,
    _n_text,
    _ordered_keys,
    _rows_label,
    _select,
    _text_color,
    register_figure,
)
from study.analysis.stats.duplicates import GROUP_JOIN
from study.tables import (
    PRESET_FLAG,
    truthy,
)

MAX_CD_DIAGRAMS = 12  # conditions drawn as critical-difference diagrams; more become a rank heatmap
MAX_RANK_ROWS = 48  # above this many conditions a rank heatmap's rows cannot be read: no figure


# --- 6. critical-difference diagram ----------------------------------------------------------------
@register_figure("critical_difference")
def fig_critical_difference(ctx: StudyContext) -> Iterator[Output]:
    """Critical-difference diagram(s) of the policy combinations' mean ranks (Friedman + Nemenyi)."""
    name = "critical_difference"
    omni = ctx.table("omnibus")
    if omni is None:
        yield Skip(name, f"stats/omnibus.csv not found: {STATS_HINT}")
        return
    omni = omni[pd.to_numeric(omni["mean_rank"], errors="coerce").notna()]
    if omni.empty or omni.groupby("combo").ngroups < 2:
        yield Skip(name, "fewer than two policy combinations with mean ranks in stats/omnibus.csv")
        return
    cond_cols = ctx.varying([c for c in ctx.conditions if c in omni], omni)
    conds = _ordered_keys(ctx, omni, cond_cols)
    if len(conds) <= MAX_CD_DIAGRAMS:
        yield Made(name, *_draw_cd_stack(ctx, omni, cond_cols, conds))
    elif len(conds) > MAX_RANK_ROWS:
        yield Skip(
            name,
            f"{len(conds)} conditions, too many rows to read (more than {MAX_RANK_ROWS}); the mean ranks are "
            "in stats/omnibus.csv",
        )
    else:
        yield Made(name, *_draw_rank_heatmap(ctx, omni, cond_cols))


def _preset_combos(sel: pd.DataFrame) -> set[str]:
    """Combinations flagged as the `analogvnn` preset cell of their condition in stats/omnibus.csv."""
    return set(sel.loc[truthy(sel, PRESET_FLAG), "combo"].astype(str))


PRESET_NOTE = (
    "AnalogVNN 1.0.8's own choice in each condition (the `analogvnn` preset: weights ste; signals exact "
    "for clamps, ste for Lp norms)"
)


def _combo_text(combo: str) -> str:
    """`W ste · S exact`; a group of combinations with identical runs (`a/b = c/d`) joined by ` = `."""

    def one(member: str) -> str:
        w, _, s = member.partition("/")
        return st.combo_label(w, s) if s else member

    members = str(combo).split(GROUP_JOIN)
    if len(members) > 2:  # e.g. every combination with `zero` somewhere: one untrained network
        return f"{one(members[0])} (+{len(members) - 1} identical)"
    return GROUP_JOIN.join(one(m) for m in members)


def _members(omni: pd.DataFrame) -> pd.DataFrame:
    """One row per combination: a group row of stats/omnibus.csv (`a/b = c/d`, identical runs counted
    once) becomes one row per member, each with the group's mean rank."""
    rows = []
    for _, row in omni.iterrows():
        for member in str(row["combo"]).split(GROUP_JOIN):
            rows.append(row.to_dict() | {"combo": member, "_group": len(str(row["combo"]).split(GROUP_JOIN))})
    return pd.DataFrame(rows, columns=[*omni.columns, "_group"])


GROUP_NOTE = (
    "combinations whose runs are bit-identical seed by seed (stats/duplicates.csv) are one run recorded "
    "twice: they are ranked once, as one entry"
)


def _cliques(ranks: Sequence[float], cd: float) -> list[tuple[int, int]]:
    """Maximal runs (i, j) of rank-sorted methods whose rank range is below the critical difference."""
    out, last = [], -1
    for i in range(len(ranks)):
        j = i
        while j + 1 < len(ranks) and ranks[j + 1] - ranks[i] < cd:
            j += 1
        if j > i and j > last:
            out.append((i, j))
            last = j
    return out


def _draw_cd_stack(
    ctx: StudyContext, omni: pd.DataFrame, cond_cols: list[str], conds: list[tuple[str, ...]]
) -> tuple[Figure, str]:
    """Demšar-style critical-difference diagrams, one per condition, stacked; drawn in inch coordinates."""
    row_h, bar_h = 0.15, 0.06
    palette = st.policy_palette(set(omni["signal_policy"].astype(str)) if "signal_policy" in omni else [])
    longest = max(len(_combo_text(c)) for c in omni["combo"].astype(str)) + 7  # " (2.45)"
    label_w = 0.2 + 0.056 * longest
    width = st.ONE_COLUMN if 2 * label_w + 1.5 <= st.ONE_COLUMN else st.TWO_COLUMN
    y_title, y_cd, y_axis = -0.02, -0.25, -0.48
    blocks = []
    for key in conds:
        sel = _select(omni, cond_cols, key).sort_values(["mean_rank", "combo"], kind="mergesort")
        ranks = sel["mean_rank"].astype(float).tolist()
        cd = float(pd.to_numeric(sel["cd"], errors="coerce").iloc[0]) if "cd" in sel else math.nan
        cliques = _cliques(ranks, cd) if np.isfinite(cd) else []
        y_first = y_axis - bar_h * (len(cliques) + 1) - 0.05
        height = -(y_first - row_h * (math.ceil(len(ranks) / 2) - 1)) + 0.1
        blocks.append((key, sel, ranks, cd, cliques, y_first, height))
    total = sum(b[-1] for b in blocks)
    fig = Figure(figsize=(width, total))
    top = 1.0
    ns = []
    marked = False
    for key, sel, ranks, cd, cliques, y_first, height in blocks:
        ax = fig.add_axes((0, top - height / total, 1, height / total))
        top -= height / total
        ax.set_xlim(0, width)
        ax.set_ylim(-height, 0)
        ax.axis("off")
        k = int(pd.to_numeric(sel["k"], errors="coerce").iloc[0]) if "k" in sel else len(ranks)
        k = max(k, len(ranks), 2)
        x0, x1 = label_w, width - label_w

        def xr(r: float, k: int = k, x0: float = x0, x1: float = x1) -> float:
            return x0 + (r - 1) / (k - 1) * (x1 - x0)

        p = pd.to_numeric(sel.get("friedman_p", pd.Series([math.nan])), errors="coerce").iloc[0]
        n = pd.to_numeric(sel.get("n_seeds", pd.Series([math.nan])), errors="coerce").max()
        ns.append(n)
        title = _key_label(cond_cols, key) + ": " if cond_cols else ""
        ptext = f"Friedman p = {p:.2g}" if np.isfinite(p) else "Friedman test not run"
        ax.text(
            width / 2,
            y_title,
            f"{title}{ptext}, n = {n:g} seeds",
            ha="center",
            va="top",
            fontsize=st.FONT_SMALL,
        )
        ax.plot([xr(1), xr(k)], [y_axis, y_axis], color="black", lw=0.7)
        for r in range(1, k + 1):
            ax.plot([xr(r)] * 2, [y_axis, y_axis + 0.04], color="black", lw=0.7)
            ax.text(xr(r), y_axis + 0.055, str(r), ha="center", va="bottom", fontsize=st.FONT_SMALL)
        if np.isfinite(cd):
            ax.plot([xr(1), xr(1 + cd)], [y_cd, y_cd], color="black", lw=0.9)
            for xe in (xr(1), xr(1 + cd)):
                ax.plot([xe, xe], [y_cd - 0.025, y_cd + 0.025], color="black", lw=0.7)
            ax.text(xr(1 + cd) + 0.05, y_cd, f"CD = {cd:.2f}", ha="left", va="center", fontsize=st.FONT_SMALL)
        for c, (i, j) in enumerate(cliques):
            yb = y_axis - bar_h * (c + 1)
            ax.plot(
                [xr(ranks[i]) - 0.03, xr(ranks[j]) + 0.03],
                [yb, yb],
                color="black",
                lw=2.2,
                solid_capstyle="butt",
            )
        n_left = math.ceil(len(ranks) / 2)
        preset = _preset_combos(sel)
        marked = marked or bool(preset)
        for idx, (combo, r) in enumerate(zip(sel["combo"].astype(str), ranks, strict=True)):
            left = idx < n_left
            y = y_first - row_h * (idx if left else len(ranks) - 1 - idx)
            xe = x0 - 0.1 if left else x1 + 0.1
            signal = combo.split(GROUP_JOIN)[0].partition("/")[2]
            ax.plot([xr(r), xr(r), xe], [y_axis, y, y], color="0.35", lw=0.6)
            ax.plot([xr(r)], [y_axis], marker="o", ms=2.8, color=palette.get(signal, "black"), zorder=3)
            ax.text(
                xe + (-0.03 if left else 0.03),
                y,
                f"{'* ' if combo in preset else ''}{_combo_text(combo)} ({r:.2f})",
                ha="right" if left else "left",
                va="center",
                fontsize=st.FONT_SMALL,
            )
    caption = (
        f"Critical-difference diagram of the policy combinations (W = weight-site, S = signal-site policy): "
        f"mean rank of the final {st.metric_name(ctx.metric)} within each seed (1 = best; in "
        f"brackets), {_n_text(ns, 'seeds')}; Friedman test p above each diagram. Thick bars join "
        f"combinations whose mean ranks differ by less than the Nemenyi critical difference (CD, "
        f"α = {ctx.hypotheses.alpha:g}; scale bar at the top), i.e. that are not significantly different. "
        f"Dot colour: signal-site policy." + (f" *: {PRESET_NOTE}." if marked else "")
    )
    if (pd.to_numeric(omni.get("n_combos", 1), errors="coerce") > 1).any():
        caption += f" Ranks are over distinct runs: {GROUP_NOTE} (W a · S b = W c · S d)."
    if cond_cols:
        conds_text = " · ".join(st.factor_label(c).lower() for c in cond_cols)
        caption += f" One diagram per condition ({conds_text})."
    return fig, caption


def _draw_rank_heatmap(ctx: StudyContext, omni: pd.DataFrame, cond_cols: list[str]) -> tuple[Figure, str]:
    grouped = bool((pd.to_numeric(omni.get("n_combos", 1), errors="coerce") > 1).any())
    omni = _members(omni)
    facet = "dataset" if "dataset" in cond_cols else None
    row_cols = [c for c in cond_cols if c != facet]
    facets = ctx.levels(facet, omni) if facet else [None]
    names = set(omni["combo"].astype(str))
    order = {p: i for i, p in enumerate(st.policy_order({q for c in names for q in c.split("/")}))}
    combos = sorted(names, key=lambda c: tuple(order[q] for q in c.split("/")))
    rows = _ordered_keys(ctx, omni, row_cols)
    height = 1.2 + 0.13 * len(rows)
    fig = st.new_figure(st.TWO_COLUMN, height)
    axes = fig.subplots(1, len(facets), squeeze=False, sharey=True)[0]
    cmap = mpl.colormaps[f"{st.SEQUENTIAL_CMAP}_r"]
    k = len(combos)
    cnorm = mcolors.Normalize(1, max(k, 2))
    image = None
    outlined: list[tuple[int, int, int]] = []
    for p, level in enumerate(facets):
        ax = axes[p]
        sel = omni if facet is None else omni[omni[facet].astype(str) == level]
        grid = np.full((len(rows), k), np.nan)
        best = np.zeros(grid.shape, dtype=bool)
        pvals = []
        for r, key in enumerate(rows):
            cond = _select(sel, row_cols, key)
            ranks = dict(zip(cond["combo"].astype(str), cond["mean_rank"].astype(float), strict=True))
            cd = pd.to_numeric(cond["cd"], errors="coerce").iloc[0] if len(cond) else math.nan
            p_row = pd.to_numeric(cond["friedman_p"], errors="coerce").iloc[0] if len(cond) else math.nan
            pvals.append(p_row)
            for c, combo in enumerate(combos):
                grid[r, c] = ranks.get(combo, np.nan)
                if combo in _preset_combos(cond):
                    outlined.append((p, r, c))
            if np.isfinite(grid[r]).any():
                best[r] = grid[r] - np.nanmin(grid[r]) < (cd if np.isfinite(cd) else 0)
                best[r, np.nanargmin(grid[r])] = True
        image = ax.imshow(
            np.ma.masked_invalid(grid), cmap=cmap, norm=cnorm, aspect="auto", interpolation="nearest"
        )
        rr, cc = np.nonzero(best)
        dots = [_text_color(cmap(cnorm(grid[r, c]))) for r, c in zip(rr, cc, strict=True)]
        ax.scatter(cc, rr, s=4, marker="o", lw=0, c=dots)
        for _, r, c in (o for o in outlined if o[0] == p):
            ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, ec="black", lw=0.8))
        if len(row_cols) > 1:  # thin separators between groups of the first row factor
            for i in range(1, len(rows)):
                if rows[i][0] != rows[i - 1][0]:
                    ax.axhline(i - 0.5, color="white", lw=1.0)
        ax.set_xticks(
            range(k), [_combo_text(c) for c in combos], rotation=50, ha="right", rotation_mode="anchor"
        )
        ax.tick_params(length=0)
        ax.set_title(str(level) if level is not None else "")
        twin = ax.twinx()
        twin.set_ylim(ax.get_ylim())
        twin.set_yticks(range(len(rows)), [f"p={v:.1g}" if np.isfinite(v) else "" for v in pvals])
        twin.tick_params(length=0, labelsize=st.FONT_SMALL)
        for spine in (*ax.spines.values(), *twin.spines.values()):
            spine.set_visible(False)
    axes[0].set_yticks(range(len(rows)), [_key_label(row_cols, key) for key in rows])
    axes[0].set_ylabel(_rows_label(row_cols, 0.13 * len(rows)))
    if image is not None:
        bar = fig.colorbar(image, ax=list(axes), shrink=min(1.0, 3.0 / height), aspect=30, pad=0.08)
        bar.set_label("Mean rank (1 = best)")
        bar.outline.set_linewidth(0.4)
    ns = pd.to_numeric(omni.get("n_seeds", pd.Series(dtype=float)), errors="coerce")
    caption = (
        f"Mean rank of final {st.metric_name(ctx.metric)} of each policy combination "
        f"(W = weight-site, S = signal-site policy; 1 = best) in each of the {len(rows) * len(facets)} "
        f"conditions ({_n_text(ns, 'seeds')}); too many conditions for one critical-difference diagram each. "
        f"•: the best combination and those whose mean rank is within the Nemenyi critical difference of it "
        f"(α = 0.05, not significantly worse). Right: Friedman test p per condition."
        + (f" Outlined: {PRESET_NOTE}." if outlined else "")
        + (
            f" Ranks are over distinct runs: {GROUP_NOTE}, and share its rank here; Friedman's test needs "
            "three or more distinct combinations (no p where fewer remain)."
            if grouped
            else ""
        )
    )
    return fig, caption
