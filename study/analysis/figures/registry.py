"""Figures of a study: `python -m study figures DIR`.

Reads `DIR/runs.csv`, `DIR/curves.csv.gz` and `DIR/stats/` (never the trial folders, never trains)
and writes `DIR/figures/NAME.pdf`, `NAME.png` (300 dpi) and `index.md` with one caption per figure.
Each figure is one generator function `fig_<name>(ctx)` in `REGISTRY`; it yields `Made` figures or
`Skip` reasons (e.g. when the study lacks the factor the figure needs).
"""

from __future__ import annotations

import argparse
import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import matplotlib as mpl
import matplotlib.colors as mcolors
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from study import style as st
from study.sweep.hypotheses import SITES, Hypotheses
from study.tables import (
    POLICY_COLUMNS,
    REDO_COLLECT,
    REDO_STATS,
    SITE_COLUMN,
    condition_columns,
    load_runs,
    load_spec_dict,
    read_csv,
    write_text_atomic,
)

OTHER_SITE = {"weight": "signal", "signal": "weight"}
ROLE_ORDER = {"primary": 0, "positive_control": 1, "secondary": 2}
MAX_ROWS = 48  # condition rows per panel of the paired-difference plot before it is split
MAX_CD_DIAGRAMS = 12  # conditions drawn as critical-difference diagrams; more become a rank heatmap
N_BOOT = 2000
STATS_HINT = "run `python -m study stats DIR` first"


# --- results ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FigureResult:
    """Outcome of one figure: made (with its caption and files) or skipped (with the reason)."""

    name: str
    status: Literal["made", "skipped"]
    reason: str = ""
    caption: str = ""
    files: tuple[Path, ...] = ()


@dataclass
class Made:
    """A drawn figure with its caption, yielded by a figure function."""

    name: str
    figure: Figure
    caption: str


@dataclass(frozen=True)
class Skip:
    """A figure a study cannot have, with the reason."""

    name: str
    reason: str


Output = Made | Skip


# --- inputs ---------------------------------------------------------------------------------------
@dataclass
class StudyContext:
    """Everything the figure functions read: spec, hypotheses, valid trials, curves and stats tables."""

    study_dir: Path
    spec: dict[str, Any]
    hypotheses: Hypotheses
    runs: pd.DataFrame
    conditions: list[str]
    _cache: dict[str, pd.DataFrame | None] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, study_dir: Path) -> StudyContext:
        """Read spec, hypotheses and `runs.csv` (failed trials dropped; diverged ones as pre-registered)."""
        study_dir = Path(study_dir)
        spec = load_spec_dict(study_dir)
        hyp = Hypotheses.model_validate(spec.get("hypotheses") or {})
        runs = load_runs(study_dir)
        for col in ("failed", "diverged"):
            if col in runs:
                flag = runs[col].astype(str).str.strip().str.lower().isin(["true", "1", "yes"])
                if col == "failed" or hyp.diverged == "exclude":
                    runs = runs[~flag]
        if hyp.metric in runs:
            runs = runs[pd.to_numeric(runs[hyp.metric], errors="coerce").notna()]
        conditions = [c for c in condition_columns(spec) if c in runs]
        runs = runs.assign(**{c: runs[c].fillna("none") for c in conditions})  # null factor = "none"
        return cls(study_dir, spec, hyp, runs.reset_index(drop=True), conditions)

    @property
    def name(self) -> str:
        """Study name (spec `name`, else the folder name)."""
        return str(self.spec.get("name") or self.study_dir.name)

    @property
    def metric(self) -> str:
        """The pre-registered primary metric."""
        return self.hypotheses.metric

    @property
    def margin(self) -> float:
        """Equivalence margin δ in the metric's units (as used by the stats stage when recorded)."""
        comps = self.table("comparisons")
        if comps is not None and "margin" in comps:
            values = pd.to_numeric(comps["margin"], errors="coerce").dropna()
            if len(values):
                return float(values.iloc[0])
        return float(self.hypotheses.margin)

    def table(self, name: str) -> pd.DataFrame | None:
        """`stats/NAME.csv` with factor columns as strings, or None when absent."""
        if name not in self._cache:
            self._cache[name] = self._read_stats(name)
        return self._cache[name]

    def _read_stats(self, name: str) -> pd.DataFrame | None:
        path = self.study_dir / "stats" / f"{name}.csv"
        if not path.exists():
            return None
        header = read_csv(path, REDO_STATS, nrows=0).columns
        text = {
            *self.conditions,
            *POLICY_COLUMNS,
            "comparison",
            "site",
            "role",
            "policy_a",
            "policy_b",
            "metric",
            "verdict",
            "better",
            "combo",
            "combo_a",
            "combo_b",
        }
        dtypes = {c: str for c in header if c in text}
        table = read_csv(
            path,
            REDO_STATS,
            dtype=dtypes,
            keep_default_na=False,
            na_values=[""],
        )
        return table.assign(**{c: table[c].fillna("none") for c in self.conditions if c in table})

    def curves(self) -> pd.DataFrame | None:
        """`curves.csv.gz` of the valid trials joined with their factors, or None when absent."""
        if "curves" not in self._cache:
            path = self.study_dir / "curves.csv.gz"
            if not path.exists():
                self._cache["curves"] = None
            else:
                curves = read_csv(
                    path,
                    REDO_COLLECT,
                    dtype={"run_id": str, "metric": str},
                )
                curves["layer"] = pd.to_numeric(curves["layer"], errors="coerce")
                curves["value"] = pd.to_numeric(curves["value"], errors="coerce")
                keep = ["run_id", "seed", *self.conditions, *POLICY_COLUMNS]
                self._cache["curves"] = curves.merge(self.runs[keep], on="run_id", how="inner")
        return self._cache["curves"]

    # --- factor levels --------------------------------------------------------------------------
    def levels(self, column: str, df: pd.DataFrame | None = None) -> list[str]:
        """Levels of a factor present in `df` (default: runs), in the spec's order when it has one."""
        df = self.runs if df is None else df
        if column not in df:
            return []
        present = {str(v) for v in df[column].dropna().unique()}
        if column in (*POLICY_COLUMNS, "policy_a", "policy_b"):
            return st.policy_order(present)
        spec_values = (self.spec.get("factors") or {}).get(column)
        if isinstance(spec_values, dict):
            spec_values = spec_values.get("values") or spec_values.get("levels")
        ordered = [_as_level(v) for v in spec_values] if isinstance(spec_values, list) else []
        ordered = [v for v in dict.fromkeys(ordered) if v in present]
        rest = sorted(present - set(ordered), key=lambda v: _natural_key(column, v))
        return ordered + rest

    def varying(self, columns: Iterable[str], df: pd.DataFrame | None = None) -> list[str]:
        """The columns among `columns` that take more than one value in `df` (default: runs)."""
        df = self.runs if df is None else df
        return [c for c in columns if c in df and df[c].nunique(dropna=False) > 1]

    def fixed_note(self, df: pd.DataFrame, columns: Iterable[str]) -> str:
        """Caption fragment naming the condition factors held at one level in `df`."""
        parts = [
            f"{st.factor_label(c).lower()} {st.level_label(c, df[c].iloc[0])}"
            for c in columns
            if c in df and df[c].nunique(dropna=False) == 1 and len(df)
        ]
        return f" Fixed: {', '.join(parts)}." if parts else ""


def _as_level(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _natural_key(column: str, value: str) -> tuple[int, float, str]:
    if value == "none":
        first = column in ("leakage", "noise")
        return (-1 if first else 2, 0.0, value)
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)


# --- small helpers --------------------------------------------------------------------------------
def _keys(df: pd.DataFrame, columns: Sequence[str]) -> list[tuple[str, ...]]:
    """Row keys: tuples of the string values of `columns` (empty tuples when none)."""
    if not columns:
        return [()] * len(df)
    return list(zip(*(df[c].astype(str) for c in columns), strict=True))


def _ordered_keys(ctx: StudyContext, df: pd.DataFrame, columns: Sequence[str]) -> list[tuple[str, ...]]:
    """Distinct keys of `columns` present in `df`, ordered by factor level."""
    present = set(_keys(df, columns))
    product = itertools.product(*(ctx.levels(c, df) for c in columns))
    return [k for k in product if k in present]


def _key_label(columns: Sequence[str], key: Sequence[str]) -> str:
    """Label of a row key: the level alone for one column, compact levels joined by ' · ' otherwise."""
    if len(columns) == 1:
        return st.level_label(columns[0], key[0])
    single_norm = sum((c.endswith("_norm") or c == "norm") for c in columns) == 1
    return " · ".join(
        st.level_label(
            c, v, compact=not (single_norm and (c.endswith("_norm") or c == "norm")) and c != "dataset"
        )
        for c, v in zip(columns, key, strict=True)
    )


def _rows_label(columns: Sequence[str], length: float) -> str:
    """Axis label naming the row factors; one factor a line when they do not fit `length` inches."""
    text = " · ".join(st.factor_label(c) for c in columns)
    if len(text) * st.FONT_MEDIUM * 0.55 / 72 <= length:
        return text
    return " ·\n".join(st.factor_label(c) for c in columns)


def _facet_title(column: str, level: str) -> str:
    """Title of a facet: "Leakage 0.2", "No leakage", "Precision full"."""
    if column == "leakage" and level == "none":
        return "No leakage"
    name = st.factor_label(column).split(" (")[0]
    return f"{name} {st.level_label(column, level)}"


def _combo_handles(
    styles: dict[tuple[str, str], dict[str, Any]],
    weights: list[str],
    signals: list[str],
    markers: bool = False,
) -> tuple[list[Line2D], int]:
    """Legend handles of `combo_styles`, one column per signal policy when both sites vary; and ncol."""
    both = len(weights) > 1 and len(signals) > 1
    order = [(w, s) for s in signals for w in weights] if both else list(styles)
    handles = [
        Line2D(
            [],
            [],
            color=styles[k]["color"],
            ls=styles[k]["linestyle"],
            lw=1.1,
            label=styles[k]["label"],
            marker=styles[k]["marker"] if markers else None,
            ms=3,
        )
        for k in order
        if k in styles
    ]
    return handles, (len(signals) if both else min(len(handles), 4))


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in text)


def _select(df: pd.DataFrame, columns: Sequence[str], key: Sequence[str]) -> pd.DataFrame:
    mask = np.ones(len(df), dtype=bool)
    for c, v in zip(columns, key, strict=True):
        mask &= (df[c].astype(str) == v).to_numpy()
    return df[mask]


def mean_ci(values: Iterable[float], n_boot: int = N_BOOT, seed: int = 0) -> tuple[float, float, float, int]:
    """Mean, 95% percentile-bootstrap CI of the mean (fixed seed: deterministic), and n."""
    x = np.asarray(list(values), dtype=float)
    x = x[np.isfinite(x)]
    n = len(x)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    mean = float(x.mean())
    if n < 2:
        return mean, math.nan, math.nan, n
    rng = np.random.default_rng(seed)
    boots = x[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return mean, float(lo), float(hi), n


def summarise(df: pd.DataFrame, by: list[str], value: str) -> pd.DataFrame:
    """Per group of `by`: mean, bootstrap CI (`lo`, `hi`) and n of `value`."""
    rows = []
    for key, grp in df.groupby(by, dropna=False, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        mean, lo, hi, n = mean_ci(grp[value])
        rows.append({**dict(zip(by, key, strict=True)), "mean": mean, "lo": lo, "hi": hi, "n": n})
    return pd.DataFrame(rows, columns=[*by, "mean", "lo", "hi", "n"])


def seed_means(df: pd.DataFrame, keep: list[str], value: str) -> pd.DataFrame:
    """Mean of `value` per seed over every factor not in `keep` (the unit of the CIs is the seed)."""
    return df.groupby([*keep, "seed"], dropna=False, sort=False)[value].mean().reset_index()


def _n_text(ns: Iterable[int], unit: str) -> str:
    ns = [int(n) for n in ns if n == n]
    if not ns:
        return f"n = 0 {unit}"
    lo, hi = min(ns), max(ns)
    return f"n = {lo} {unit}" if lo == hi else f"n = {lo}–{hi} {unit}"


def _color_text(ax: Axes, ticks: str, levels: Sequence[str]) -> None:
    """Colour the tick labels of policy levels with the policies' colours."""
    palette = st.policy_palette(levels)
    labels = ax.get_xticklabels() if ticks == "x" else ax.get_yticklabels()
    for label, level in zip(labels, levels, strict=False):
        label.set_color(palette.get(level, "0.15"))


def _text_color(rgba: Sequence[float]) -> str:
    r, g, b = rgba[:3]
    return "white" if 0.299 * r + 0.587 * g + 0.114 * b < 0.5 else "black"


def _legend_below(fig: Figure, handles: list[Any], ncol: int | None = None, title: str | None = None) -> None:
    """A figure legend below the panels, outside the data."""
    if not handles:
        return
    fig.legend(
        handles=handles,
        loc="outside lower center",
        ncol=ncol or min(len(handles), 4),
        title=title,
        handlelength=2.4,
        columnspacing=1.2,
    )


NORM_COLUMNS = ("norm", "weight_norm", "signal_norm")


def _group_columns(ctx: StudyContext, df: pd.DataFrame) -> list[str]:
    """Dataset and normalization columns that vary in `df`: a figure that pools seeds never pools these
    (a clamp and an Lp norm, or two data sets, are not conditions whose averages mean anything)."""
    return [c for c in ("dataset", *NORM_COLUMNS) if c in ctx.conditions and df[c].nunique(dropna=False) > 1]


def _group_note(columns: Sequence[str], key: Sequence[str]) -> str:
    parts = [
        f"{'dataset' if c == 'dataset' else st.factor_label(c).lower()} {st.level_label(c, v)}"
        for c, v in zip(columns, key, strict=True)
    ]
    text = "; ".join(parts)
    return f" {text[:1].upper()}{text[1:]}." if parts else ""


def _by_dataset(ctx: StudyContext, df: pd.DataFrame, base: str) -> Iterator[tuple[str, str, pd.DataFrame]]:
    """(name, note, subset) per dataset and per normalization when the study varies them, else the
    whole table once (named `base`)."""
    columns = _group_columns(ctx, df)
    if not columns:
        note = f" Dataset {df['dataset'].iloc[0]}." if "dataset" in df and len(df) else ""
        yield base, note, df
        return
    for key in _ordered_keys(ctx, df, columns):
        name = base + "".join(f"_{_slug(v)}" for v in key)
        yield name, _group_note(columns, key), _select(df, columns, key)


def _comparison_order(df: pd.DataFrame) -> list[tuple[str, str, str, str]]:
    """(comparison, role, a, b) of the comparisons in `df`: primary first, then by policy."""
    combos = df[["comparison", "role", "policy_a", "policy_b"]].drop_duplicates()
    order = {p: i for i, p in enumerate(st.policy_order(set(combos["policy_a"]) | set(combos["policy_b"])))}
    items = [tuple(str(v) for v in row) for row in combos.itertuples(index=False)]
    return sorted(items, key=lambda t: (ROLE_ORDER.get(t[1], 9), order.get(t[2], 99), order.get(t[3], 99)))


def _verdict_symbol(verdict: Any) -> str:
    return st.VERDICT_SYMBOLS.get(str(verdict), st.VERDICT_SYMBOLS["inconclusive"])


def _ci_method_text(comps: pd.DataFrame) -> str:
    """How the stats stage computed the CIs ("BCa bootstrap", with fallbacks named)."""
    if "ci_method" not in comps:
        return "BCa bootstrap"
    methods = set(comps["ci_method"].dropna().astype(str)) - {"none", "degenerate"}
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
def fig_paired_differences(ctx: StudyContext) -> Iterator[Output]:
    """Per site: per-seed paired differences, their mean with 95% bootstrap CI, zero line, ±δ band."""
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
        diffs = ctx.table("differences")
        dsub = None if diffs is None else diffs[diffs["site"].astype(str) == site]
        other = SITE_COLUMN[OTHER_SITE[site]]
        key_cols = [c for c in ctx.conditions if c in sub] + ([other] if other in sub else [])
        varying = ctx.varying(key_cols, sub)
        facet = "dataset" if "dataset" in varying else None
        row_cols = [c for c in varying if c != facet]
        split_cols: list[str] = []
        candidates = ([other] if other in row_cols else []) + [c for c in reversed(row_cols) if c != other]
        while len(_ordered_keys(ctx, sub, row_cols)) > MAX_ROWS and len(row_cols) > 1 and candidates:
            col = candidates.pop(0)
            row_cols.remove(col)
            split_cols.append(col)
        for split_key in _ordered_keys(ctx, sub, split_cols):
            suffix = "".join(f"_{_slug(c)}-{_slug(v)}" for c, v in zip(split_cols, split_key, strict=True))
            name = base + suffix
            part = _select(sub, split_cols, split_key)
            dpart = None if dsub is None else _select(dsub, split_cols, split_key)
            shown = ", ".join(
                f"{st.factor_label(c).lower()} {st.level_label(c, v)}"
                for c, v in zip(split_cols, split_key, strict=True)
            )
            title = f"{site.capitalize()} site" + (f" · {shown}" if shown else "")
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
        f"{st.VERDICT_LEGEND}    shaded: ±δ = {delta:g}{st.diff_unit(metric)}",
        ha="center",
        va="top",
        fontsize=st.FONT_SMALL,
    )
    rows_text = ", ".join(st.factor_label(c).lower() for c in row_cols) or "the single condition"
    comps_text = ", ".join(f"{a} − {b}" for _c, _r, a, b in order)
    caption = (
        f"Paired differences in {st.metric_name(metric)} at the {site} site ({comps_text}; "
        f"difference a − b within each seed, in {'percentage points' if st.is_percent(metric) else 'units'})."
        f" Points: one per seed ({_n_text(n_pairs, 'pairs per condition')}); filled circle: mean; "
        f"bar: 95% {_ci_method_text(comps)} CI of the mean; dashed line: no difference; grey band: "
        f"equivalence margin ±δ = {delta:g}{st.diff_unit(metric)}. Rows: {rows_text}"
        + (f"; panels: {st.factor_label(facet).lower()} × comparison." if facet else ".")
        + f" {_verdict_note(ctx)}"
        + ctx.fixed_note(comps, key_cols)
    )
    if diffs is None:
        caption += " Per-seed points omitted: stats/differences.csv not found."
    return fig, caption


# --- 2. effect heatmap -----------------------------------------------------------------------------
def fig_effect_heatmap(ctx: StudyContext) -> Iterator[Output]:
    """Per site: mean difference of the primary comparison over normalization × precision (× leakage)."""
    comps = ctx.table("comparisons")
    for site in SITES:
        base = f"effect_heatmap_{site}"
        if comps is None:
            yield Skip(base, f"stats/comparisons.csv not found: {STATS_HINT}")
            continue
        sub = comps[(comps["site"].astype(str) == site) & (comps["role"].astype(str) == "primary")]
        if sub.empty:
            yield Skip(base, f"no primary comparison at the {site} site")
            continue
        norms = ctx.varying([c for c in ctx.conditions if (c.endswith("_norm") or c == "norm")], sub)
        norm_col = f"{site}_norm" if f"{site}_norm" in norms else (norms[0] if norms else None)
        if norm_col is None:
            yield Skip(base, "the study lacks a varying normalization factor (weight_norm / signal_norm)")
            continue
        if "precision" not in ctx.varying(["precision"], sub):
            yield Skip(base, "the study lacks a varying precision factor")
            continue
        order = _comparison_order(sub)
        for comp, _role, a, b in order:
            name = base if len(order) == 1 else f"{base}_{_slug(a)}-{_slug(b)}"
            part = sub[sub["comparison"] == comp]
            yield Made(name, *_draw_heatmap(ctx, site, part, norm_col, a, b))


def _draw_heatmap(
    ctx: StudyContext, site: str, comps: pd.DataFrame, norm_col: str, a: str, b: str
) -> tuple[Figure, str]:
    metric = str(comps["metric"].iloc[0]) if "metric" in comps else ctx.metric
    other = SITE_COLUMN[OTHER_SITE[site]]
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
        f"{'percentage points' if st.is_percent(metric) else 'metric units'}) for each "
        f"{st.factor_label(norm_col).lower()} × precision condition ({n}); red: {a} better, blue: {b} "
        f"better, symmetric colour scale; grey '–': condition not run. Each cell shows the mean and the "
        f"verdict symbol. {_verdict_note(ctx)}"
        + (f" Facets: {'; '.join(facets_text)}." if facets_text else "")
        + ctx.fixed_note(comps, key_cols)
    )
    return fig, caption


# --- 3. policy-interaction grid --------------------------------------------------------------------
def fig_policy_interaction(ctx: StudyContext) -> Iterator[Output]:
    """Weight policy × signal policy grid of mean accuracy with 95% bootstrap CI, per dataset."""
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
        f"in {', '.join(st.factor_label(c).lower() for c in pooled)} ({min(counts)}–{max(counts)} "
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
        f"signal-site policy combination (first line) and the 95% percentile bootstrap CI of the mean over "
        f"seeds (second line; {_n_text(summary['n'], 'seeds per cell')}); cell colour: the mean (cividis, "
        f"dark = low, bright = high).{pooled_text}{split_text}"
        + ("" if panel_cols else ctx.fixed_note(runs, ["dataset"]))
    )
    yield Made(name, fig, caption)


# --- 4. learning curves ----------------------------------------------------------------------------
def fig_learning_curves(ctx: StudyContext) -> Iterator[Output]:
    """Validation and test accuracy against epoch per policy: mean and 95% bootstrap CI band over seeds."""
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
    pooled = [c for c in ctx.conditions if c != "dataset" and c in data and data[c].nunique(dropna=False) > 1]
    pooled_text = (
        f" Each seed's curve is first averaged over {', '.join(st.factor_label(c).lower() for c in pooled)}."
        if pooled
        else ""
    )
    caption = (
        f"Learning curves: {' and '.join(st.metric_name(m) for m in metrics)} against epoch for "
        f"each policy combination. Line: mean over seeds; band: 95% percentile bootstrap CI of the mean "
        f"({_n_text(summary['n'], 'seeds per point')}; fewer at late epochs when trials diverged). "
        f"{legend_note}{pooled_text}{note}"
    )
    return fig, caption


# --- 5. gradient mismatch --------------------------------------------------------------------------
MISMATCH_METRICS = ("grad_cosine", "sat_weight", "sat_signal_in", "sat_signal_out")


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
        f"band: 95% percentile bootstrap CI ({_n_text(summary['n'], 'seeds per point')}); "
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


# --- 6. critical-difference diagram ----------------------------------------------------------------
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
    else:
        yield Made(name, *_draw_rank_heatmap(ctx, omni, cond_cols))


def _preset_combos(sel: pd.DataFrame) -> set[str]:
    """Combinations flagged as the `analogvnn` preset cell of their condition in stats/omnibus.csv."""
    if "analogvnn" not in sel:
        return set()
    return set(sel.loc[sel["analogvnn"].astype(str).str.lower() == "true", "combo"].astype(str))


PRESET_NOTE = (
    "AnalogVNN 1.0.8's own choice in each condition (the `analogvnn` preset: weights ste; signals exact "
    "for clamps, ste for Lp norms)"
)


def _combo_text(combo: str) -> str:
    w, _, s = str(combo).partition("/")
    return st.combo_label(w, s) if s else str(combo)


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
            signal = combo.partition("/")[2]
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
    if cond_cols:
        conds_text = " · ".join(st.factor_label(c).lower() for c in cond_cols)
        caption += f" One diagram per condition ({conds_text})."
    return fig, caption


def _draw_rank_heatmap(ctx: StudyContext, omni: pd.DataFrame, cond_cols: list[str]) -> tuple[Figure, str]:
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
    )
    return fig, caption


# --- 7. accuracy against precision and leakage -----------------------------------------------------
def fig_accuracy_vs_precision(ctx: StudyContext) -> Iterator[Output]:
    """Accuracy against precision per policy (AnalogVNN's axis)."""
    yield _sweep(ctx, "precision")


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
            f" Other factors fixed at {fixed}, the setting run at the most {st.factor_label(factor).lower()} "
            "levels; conditions that differ in anything else are not averaged in."
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
    caption = (
        f"Final {st.metric_name(metric)} against {st.factor_label(factor).lower()} ({axis_note}) "
        f"for each policy combination, as in AnalogVNN's figures. Marker: mean over seeds; bar: 95% "
        f"percentile bootstrap CI of the mean ({_n_text(summary['n'], 'seeds per point')}); markers slightly "
        f"offset horizontally so that they do not overlap. {st.combo_legend_note(weights, signals)}"
        f"{pooled_text}{slice_note}"
        + (" One panel per dataset." if len(datasets) > 1 else ctx.fixed_note(runs, ["dataset"]))
    )
    return Made(name, fig, caption)


# --- driver ----------------------------------------------------------------------------------------
FigureFunction = Callable[[StudyContext], Iterable[Output]]
REGISTRY: list[tuple[str, FigureFunction]] = [
    ("paired_differences", fig_paired_differences),
    ("effect_heatmap", fig_effect_heatmap),
    ("policy_interaction", fig_policy_interaction),
    ("learning_curves", fig_learning_curves),
    ("gradient_mismatch", fig_gradient_mismatch),
    ("critical_difference", fig_critical_difference),
    ("accuracy_vs_precision", fig_accuracy_vs_precision),
    ("accuracy_vs_leakage", fig_accuracy_vs_leakage),
]


def make_figures(study_dir: Path, verbose: bool = True) -> list[FigureResult]:
    """Draw every figure of the study into `study_dir/figures/` and write `index.md`; one line per figure."""
    study_dir = Path(study_dir)
    ctx = StudyContext.load(study_dir)
    out_dir = study_dir / "figures"
    out_dir.mkdir(parents=True, exist_ok=True)
    results: list[FigureResult] = []
    with st.style():
        for base, function in REGISTRY:
            items = function(ctx) if len(ctx.runs) else [Skip(base, "runs.csv has no successful trial")]
            for item in items:
                if isinstance(item, Skip):
                    result = FigureResult(item.name, "skipped", reason=item.reason)
                    line = f"skipped {item.name}: {item.reason}"
                else:
                    files = st.save_figure(item.figure, out_dir, item.name)
                    item.figure.clear()
                    result = FigureResult(item.name, "made", caption=item.caption, files=tuple(files))
                    line = f"made    {item.name}"
                results.append(result)
                if verbose:
                    print(line, flush=True)
    _remove_stale(out_dir, results)
    write_text_atomic(out_dir / "index.md", render_index(ctx.name, results))
    return results


def _remove_stale(out_dir: Path, results: list[FigureResult]) -> None:
    """Delete figure files of earlier runs that this run did not produce (only names the registry owns)."""
    made = {r.name for r in results if r.status == "made"}
    prefixes = tuple(base for base, _ in REGISTRY)
    for path in sorted(out_dir.glob("*")):
        if path.suffix in (".pdf", ".png") and path.stem.startswith(prefixes) and path.stem not in made:
            path.unlink()


def render_index(study: str, results: list[FigureResult]) -> str:
    """`figures/index.md`: each made figure with its caption, then the skipped ones with reasons."""
    lines = [
        f"# Figures — {study}",
        "",
        "Written by `python -m study figures` from `runs.csv`, `curves.csv.gz` and `stats/`; "
        "each figure as PDF (TrueType fonts) and 300-dpi PNG.",
        "",
    ]
    for r in results:
        if r.status == "made":
            lines += [
                f"## {r.name}",
                "",
                f"![{r.name}]({r.name}.png)",
                "",
                f"[PDF]({r.name}.pdf) · [PNG]({r.name}.png)",
                "",
                r.caption,
                "",
            ]
    skipped = [r for r in results if r.status == "skipped"]
    if skipped:
        lines += ["## Skipped", ""] + [f"- `{r.name}`: {r.reason}" for r in skipped] + [""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: `python -m study.figures DIR` (the same as `python -m study figures DIR`)."""
    parser = argparse.ArgumentParser(prog="python -m study figures", description=__doc__.splitlines()[0])
    parser.add_argument("study_dir", type=Path, help="study folder with runs.csv, curves.csv.gz and stats/")
    args = parser.parse_args(argv)
    make_figures(args.study_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
