"""Distinct runs: policy combinations of a condition whose trials are bit-identical, collapsed to one.

Two policy combinations (cells) of one condition are *duplicates* when, for every seed, their trials
recorded identical values of every metric runs.csv holds (`trial_table`'s `fingerprint`), e.g. weight
`exact` and `ste` under a clamp that no weight reaches. Such trials are one training run recorded
twice; the omnibus test, the rankings and the mixed model count each run once (`distinct_trials`),
and `stats/duplicates.csv` lists every collapsed cell (`duplicate_table`).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from study.tables import condition_columns

DUPLICATE_COLUMNS = ["combo", "same_runs_as", "group", "n_seeds"]
GROUP_JOIN = " = "  # how a group of identical combinations is named: `ste/exact = exact/exact`


def combo_name(frame: pd.DataFrame) -> pd.Series:
    """`weight_policy/signal_policy` of every row."""
    return frame["weight_policy"].astype(str) + "/" + frame["signal_policy"].astype(str)


def _groups(table: pd.DataFrame, conds: list[str]) -> list[tuple[dict[str, Any], pd.DataFrame]]:
    if not conds:
        return [({}, table)]
    out = []
    for values, group in table.groupby(conds, dropna=False, sort=False):
        values = values if isinstance(values, tuple) else (values,)
        out.append((dict(zip(conds, values, strict=True)), group))
    return out


def combo_groups(table: pd.DataFrame, spec: dict[str, Any]) -> pd.DataFrame:
    """One row per (condition, combination): `same_runs_as` (the first combination, in table order, whose
    trials equal this one's seed by seed; empty for that first one), `group` (every combination of the
    group joined by ` = `) and `n_seeds`.

    Only usable trials count (`status` ok); a combination is a duplicate only when both have the same
    usable seeds and every one of them has the same fingerprint.
    """
    conds = condition_columns(spec)
    ok = table[table["status"] == "ok"].assign(combo=lambda t: combo_name(t))
    if "fingerprint" not in ok:  # a table without recorded metrics: nothing can be shown identical
        ok = ok.assign(fingerprint=[f"trial {i}" for i in range(len(ok))])
    rows = []
    for cond, group in _groups(ok, conds):
        prints = {
            combo: tuple(zip(g["seed"], g["fingerprint"], strict=True))
            for combo, g in group.sort_values("seed", kind="mergesort").groupby("combo", sort=False)
        }
        first: dict[tuple, str] = {}
        members: dict[str, list[str]] = {}
        source = {}
        for combo, signature in prints.items():
            head = first.setdefault(signature, combo)
            source[combo] = head
            members.setdefault(head, []).append(combo)
        for combo, signature in prints.items():
            head = source[combo]
            rows.append(
                cond
                | {
                    "combo": combo,
                    "same_runs_as": "" if head == combo else head,
                    "group": GROUP_JOIN.join(members[head]),
                    "n_seeds": len(signature),
                }
            )
    return pd.DataFrame(rows, columns=conds + DUPLICATE_COLUMNS)


def duplicate_table(groups: pd.DataFrame) -> pd.DataFrame:
    """`stats/duplicates.csv`: the collapsed combinations only (those with `same_runs_as`)."""
    return groups[groups["same_runs_as"].astype(str) != ""].reset_index(drop=True)


def distinct_trials(
    table: pd.DataFrame, spec: dict[str, Any], groups: pd.DataFrame | None = None
) -> pd.DataFrame:
    """The trial table without the trials of collapsed combinations; `combo` names each kept trial's
    group (`ste/exact = exact/exact`). Trials that are not usable are kept (they carry no duplicate)."""
    groups = combo_groups(table, spec) if groups is None else groups
    conds = condition_columns(spec)
    out = table.assign(combo=combo_name(table))
    keys = conds + ["combo"]
    look = groups[keys + ["same_runs_as", "group"]]
    out = out.merge(look, on=keys, how="left", sort=False)
    out["same_runs_as"] = out["same_runs_as"].fillna("")
    out["group"] = out["group"].where(out["group"].notna(), out["combo"])
    out = out[out["same_runs_as"] == ""].drop(columns=["same_runs_as"])
    return out.assign(combo=out.pop("group")).reset_index(drop=True)


def distinct_run_count(table: pd.DataFrame, spec: dict[str, Any]) -> tuple[int, int]:
    """(trials, distinct runs): every trial of the table, and those left once duplicates are collapsed."""
    return len(table), len(distinct_trials(table, spec))


__all__ = [
    "DUPLICATE_COLUMNS",
    "GROUP_JOIN",
    "combo_groups",
    "combo_name",
    "distinct_run_count",
    "distinct_trials",
    "duplicate_table",
]
