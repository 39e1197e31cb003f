"""What every figure family shares: the study's inputs (`StudyContext`), what a figure function
yields (`Made`, `Skip`), the figure registry (`register_figure`) and layout helpers.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from scipy import stats as sst

from study.analysis.figures import style as st
from study.sweep.hypotheses import Hypotheses
from study.tables import (
    POLICY_COLUMNS,
    REDO_COLLECT,
    REDO_STATS,
    condition_columns,
    load_runs,
    load_spec_dict,
    read_csv,
    truthy,
)

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
                flag = truthy(runs, col)
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

    def compared_factor(self, comps: pd.DataFrame) -> pd.Series:
        """Per row of a comparisons table: the condition factor its comparison compares (`factor` in the
        spec), empty for a comparison of the site's policies."""
        factors = {c.label: c.factor or "" for c in self.hypotheses.comparisons}
        return comps["comparison"].astype(str).map(lambda label: factors.get(label, ""))

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


def mean_ci(values: Iterable[float]) -> tuple[float, float, float, int]:
    """Mean, 95% t interval of the mean (the interval the statistics tables report; a percentile
    bootstrap undercovers at the few seeds per point many figures have), and n."""
    x = np.asarray(list(values), dtype=float)
    x = x[np.isfinite(x)]
    n = len(x)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    mean = float(x.mean())
    if n < 2:
        return mean, math.nan, math.nan, n
    if np.all(x == x[0]):  # no spread: the interval is the value
        return mean, float(x[0]), float(x[0]), n
    half = float(sst.t.ppf(0.975, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return mean, mean - half, mean + half, n


def summarise(df: pd.DataFrame, by: list[str], value: str) -> pd.DataFrame:
    """Per group of `by`: mean, 95% t interval (`lo`, `hi`) and n of `value`."""
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
    ns = [int(n) for n in ns if n == n and n > 0]  # points without data are not drawn
    if not ns:
        return f"no {unit}"
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


# --- driver ----------------------------------------------------------------------------------------
FigureFunction = Callable[[StudyContext], Iterable[Output]]
# (name, function) of every figure, in the order `make_figures` draws them and `index.md` lists them
REGISTRY: list[tuple[str, FigureFunction]] = []


def register_figure(name: str) -> Callable[[FigureFunction], FigureFunction]:
    """Decorator adding a figure function (`fig(ctx)` yielding `Made`/`Skip`) to the registry as `name`;
    its files are `name*.pdf|png`. A name registered twice is an error (its files would collide)."""
    if (
        not isinstance(name, str)
        or not name
        or name != "".join(ch for ch in name if ch.isalnum() or ch in "_-")
    ):
        raise ValueError(f"figure name must be a non-empty string of letters, digits, _ and -; got {name!r}")

    def decorator(fn: FigureFunction) -> FigureFunction:
        if any(existing == name for existing, _ in REGISTRY):
            raise ValueError(f"figure {name!r} is already registered")
        REGISTRY.append((name, fn))
        return fn

    return decorator
