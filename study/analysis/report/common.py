"""What the report's markdown and LaTeX share: reading `stats/` tables, number formats, row selections."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from analog.policies import OTHER_SITE
from study.analysis.stats import (
    ROW_KEYS,
    VERDICTS,
    condition_norms,
    key_columns,
    load_hypotheses,
    norm_family,
)
from study.tables import (
    POLICY_COLUMNS,
    PRESET_FLAG,
    REDO_STATS,
    SITE_COLUMN,
    cell_text,
    condition_columns,
    other_site_informative,
    read_csv,
)

MAX_LISTED = 50


def read_stats_csv(study_dir: Path, name: str, spec: dict[str, Any], folder: str = "stats") -> pd.DataFrame:
    """A stats/ CSV (or one of another statistics folder of the study, e.g. TUNED_STATS) with key
    columns as strings ("" for empty) and the rest parsed as usual."""
    text_cols = (
        ROW_KEYS
        + key_columns(spec)
        + [
            "combo",
            "combo_a",
            "combo_b",
            "term",
            "ci_method",
            "family",
            "verdict",
            "verdict_permutation",
            "better",
            "metric",
            "same_data_as",
            PRESET_FLAG,
            "bayes_decision",
            "agrees",
            "scope",
            "absent_policy",
        ]
    )
    path = Path(study_dir) / folder / name
    frame = read_csv(
        path,
        REDO_STATS,
        dtype={c: str for c in text_cols},
        keep_default_na=False,
        na_values=[""],
    )
    for column in text_cols:
        if column in frame:
            frame[column] = frame[column].fillna("")
    return frame


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def fmt(x: Any, digits: int = 2, signed: bool = False) -> str:
    """Fixed-point number, `n/a` for NaN/None."""
    if x is None or not math.isfinite(float(x)):
        return "n/a"
    x = float(x) if round(float(x), digits) != 0 else 0.0  # no "-0.00"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def fmt_p(p: Any) -> str:
    """p-value with three decimals, `<0.001` below that."""
    if p is None or not math.isfinite(float(p)):
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def fmt_ci(low: float, high: float) -> str:
    """`[low, high]` with two decimals."""
    return f"[{fmt(low)}, {fmt(high)}]"


def varying(frame: pd.DataFrame, columns: list[str]) -> list[str]:
    """The columns of `columns` that take more than one value in `frame`."""
    return [c for c in columns if c in frame and frame[c].nunique() > 1]


def condition_label(row: pd.Series, columns: list[str]) -> str:
    """`dataset=A, weight_policy=ste` for the given columns (`all` when there are none)."""
    parts = [f"{c}={row[c]}" for c in columns if row[c] != ""]
    return ", ".join(parts) or "all"


def row_columns(frame: pd.DataFrame, spec: dict[str, Any], site: str) -> list[str]:
    """Condition columns worth printing for a site's rows: varying ones plus the other site's policy, and
    the site's own policy where a row holds one (a `factor` comparison's rows hold both policies; a
    policy comparison's own policy column is empty)."""
    other, own = SITE_COLUMN[OTHER_SITE[site]], SITE_COLUMN[site]
    cols = [c for c in varying(frame, condition_columns(spec)) if c != other] + [other]
    held = own in frame and (frame[own].fillna("").astype(str) != "").any()
    return cols + [own] if held else cols


def compared_columns(spec: dict[str, Any]) -> dict[str, str]:
    """The column each pre-registered comparison (by its label) compares: the site's policy column, or
    the condition factor of a `factor` comparison (whose column is empty in that comparison's rows)."""
    return {c.label: c.column for c in load_hypotheses(spec).comparisons}


def compared_column(columns: dict[str, str], row: pd.Series) -> str:
    """The column `row`'s comparison compares (`compared_columns`; the site's policy column for a label
    the spec no longer lists)."""
    return columns.get(str(row["comparison"]), SITE_COLUMN[str(row["site"])])


def side_cells(row: pd.Series, conds: list[str], column: str) -> list[dict[str, str]]:
    """The trial cells (condition columns and both policies) of side a and side b of a comparison row
    that compares `column`: the row's values, `column` set to `policy_a` or `policy_b`."""
    fixed = {c: str(row[c]) for c in [*conds, *POLICY_COLUMNS] if c != column and c in row}
    return [fixed | {column: str(row[side])} for side in ("policy_a", "policy_b")]


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def verdict_counts(frame: pd.DataFrame) -> dict[str, int]:
    """Number of rows per verdict (every verdict present, in `VERDICTS` order)."""
    return {v: int((frame["verdict"] == v).sum()) if len(frame) else 0 for v in VERDICTS}


def count_text(counts: dict[str, int]) -> str:
    """`2 identical, 0 equivalent, 1 different, 0 trivial, 0 inconclusive` (identical ones first)."""
    return ", ".join(f"{counts.get(v, 0)} {v}" for v in VERDICTS)


def distinct(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows whose paired data are not those of an earlier row (`same_data_as` empty): each counted once."""
    if frame.empty or "same_data_as" not in frame:
        return frame
    return frame[frame["same_data_as"].astype(str) == ""]


def merged_text(rows: pd.DataFrame) -> str:
    """`(2 rows; 1 has the same paired data as another row and is counted once)` or ``."""
    n_merged = len(rows) - len(distinct(rows))
    if not n_merged:
        return ""
    verb = "repeats" if n_merged == 1 else "repeat"
    return (
        f" ({len(rows)} rows, of which {n_merged} {verb} the paired runs of another row of the comparison, "
        "e.g. because the other site's policies give identical runs, and count once)"
    )


def plural(n: int, word: str) -> str:
    """`1 condition`, `2 conditions`."""
    return f"{n} {word}" + ("" if n == 1 else "s")


def row_family(spec: dict[str, Any], row: pd.Series) -> str:
    """The normalization family of a row's condition: `clamp`, `Lp`, ... (`W clamp / S Lp` when mixed)."""
    weight, signal = (norm_family(n) for n in condition_norms(spec, row))
    return weight if weight == signal else f"W {weight} / S {signal}"


def families(frame: pd.DataFrame, spec: dict[str, Any]) -> pd.Series:
    """`row_family` of every row."""
    return pd.Series([row_family(spec, r) for _, r in frame.iterrows()], index=frame.index, dtype=object)


def informative_rows(comp: pd.DataFrame, site: str) -> pd.DataFrame:
    """Primary rows of `site`, without those whose other site is `zero` (`other_site_informative`)."""
    return other_site_informative(comp[(comp["site"] == site) & (comp["role"] == "primary")], site)


def headline_rows(comp: pd.DataFrame, site: str) -> pd.DataFrame:
    """What the headline counts: informative primary rows of `site`, each distinct data set once."""
    return distinct(informative_rows(comp, site)) if len(comp) else comp


def largest_effects(rows: pd.DataFrame, count: int = 3) -> pd.DataFrame:
    """The `count` rows with the largest |mean_diff| (ties kept in file order)."""
    order = rows["mean_diff"].abs().sort_values(ascending=False, kind="mergesort").index
    return rows.loc[order[:count]]


def _cell_seeds(runs: pd.DataFrame, cell: dict[str, str], loose: str | None = None) -> pd.DataFrame:
    """The trials of `cell`; column `loose` (a compared factor) matched with numbers normalised as the
    statistics pair them (`cell_text`: 16, 16.0 and '16' alike)."""
    mask = pd.Series(True, index=runs.index)
    for column, value in cell.items():
        text = runs[column].fillna("").astype(str)
        mask &= text.map(cell_text) == cell_text(value) if column == loose else text == value
    return runs[mask]


def settle_cost(comp: pd.DataFrame, runs: pd.DataFrame, spec: dict[str, Any]) -> dict[str, float]:
    """Extra trials and their measured wall time to bring every inconclusive row to its
    `seeds_needed_equivalence`: each cell (condition and policy pair) once, at the largest need of the
    rows that use it, at the mean `wall_time_s` of its trials in runs.csv."""
    rows = distinct(comp)
    rows = rows[(rows["verdict"] == "inconclusive") & rows["seeds_needed_equivalence"].notna()]
    need: dict[tuple, int] = {}
    loose: dict[tuple, str | None] = {}
    conds = condition_columns(spec)
    columns = compared_columns(spec)
    for _, r in rows.iterrows():
        column = compared_column(columns, r)
        for side in side_cells(r, conds, column):
            cell = tuple(sorted(side.items()))
            need[cell] = max(need.get(cell, 0), int(r["seeds_needed_equivalence"]))
            loose[cell] = None if column in POLICY_COLUMNS else column
    trials = seconds = 0.0
    timed = "wall_time_s" in runs
    for cell, n in need.items():
        sel = _cell_seeds(runs, dict(cell), loose[cell])
        extra = max(n - sel["seed"].nunique(), 0)
        trials += extra
        if timed:
            seconds += extra * float(pd.to_numeric(sel["wall_time_s"], errors="coerce").mean())
    return {
        "rows": len(rows),
        "cells": len(need),
        "trials": trials,
        "seconds": seconds if timed else math.nan,
    }
