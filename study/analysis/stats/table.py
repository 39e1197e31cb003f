"""The trial table the statistics work on: one row per trial, its status, the order of values.

Read from `DIR/spec.yaml` and `DIR/runs.csv` (the collect stage); shared by every kind of statistic.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analog.policies import POLICY_ORDER
from analog.policies import analogvnn_cell as preset_cell
from study.sweep.hypotheses import Hypotheses
from study.sweep.spec import StudySpec, cells
from study.tables import (
    ALL_METRICS,
    CHECKSUM_COLUMNS,
    POLICY_COLUMNS,
    REDO_COLLECT,
    cell_text,
    condition_columns,
    truthy,
)
from study.training.config import TrialConfig

ROW_KEYS = ["comparison", "role", "site", "policy_a", "policy_b"]


MISSING_STATUS = ["policy_a_status", "policy_b_status"]


def load_hypotheses(spec: dict[str, Any]) -> Hypotheses:
    """The spec's `hypotheses:` block, validated (defaults when absent)."""
    return Hypotheses.model_validate(spec.get("hypotheses") or {})


def higher_is_better(metric: str) -> bool:
    """Accuracies: higher is better; metrics whose name ends with `loss`: lower is better."""
    return not metric.endswith("loss")


def key_columns(spec: dict[str, Any]) -> list[str]:
    """Condition columns followed by both policy columns (the layout of every per-row output)."""
    return condition_columns(spec) + list(POLICY_COLUMNS)


def condition_norms(spec: dict[str, Any], row: Any) -> tuple[str, str]:
    """(weight_norm, signal_norm) of a condition: the trial defaults, the spec's `base`, then the row's
    `norm` (both sites), `weight_norm` and `signal_norm` factor values, as `resolve_config` applies them."""
    base = spec.get("base") or {}
    fields = TrialConfig.model_fields
    norms = {site: str(base.get(site, fields[site].default)) for site in ("weight_norm", "signal_norm")}

    def value(name: str) -> str | None:
        text = str(row[name]) if name in row and row[name] is not None else ""
        return text if text not in ("", "nan") else None

    both = value("norm")
    if both is not None:
        norms = dict.fromkeys(norms, both)
    for site in norms:
        own = value(site)
        if own is not None:
            norms[site] = own
    return norms["weight_norm"], norms["signal_norm"]


def analogvnn_cell(spec: dict[str, Any], row: Any) -> dict[str, str]:
    """The `analogvnn` preset's (weight_policy, signal_policy) in the condition of `row`.

    Derived from `analog.policies.analogvnn_cell`, i.e. from what AnalogVNN 1.0.8 does for the
    condition's normalizations: weights straight-through; signals exact for clamps, ste for Lp norms.
    """
    return preset_cell(*condition_norms(spec, row))


def norm_family(name: str) -> str:
    """`clamp` (clamp, clamp01), `Lp` (AnalogVNN's l1/l2 norms), `none` (identity), else the name."""
    if name in ("clamp", "clamp01"):
        return "clamp"
    if re.fullmatch(r"l\d+norm(_[a-z]+)?", name):
        return "Lp"
    return name


def trial_status(runs: pd.DataFrame, hyp: Hypotheses) -> pd.Series:
    """Per trial: `absent` (never ran: collect's `missing`), `failed` (raised or no metric), `diverged`
    (only when the spec excludes them) or `ok`."""
    never = (
        runs["status"].astype(str).eq("missing") if "status" in runs else pd.Series(False, index=runs.index)
    )
    failed = truthy(runs, "failed") | pd.to_numeric(runs[hyp.metric], errors="coerce").isna()
    diverged = truthy(runs, "diverged") & (hyp.diverged == "exclude")
    status = np.where(never, "absent", np.where(failed, "failed", np.where(diverged, "diverged", "ok")))
    return pd.Series(status, index=runs.index, name="status")


def has_checksums(runs: pd.DataFrame) -> bool:
    """Whether runs.csv holds the final checksums (studies committed before them do not): then `identical`
    means bit-identical parameters and test logits, else equal in every recorded metric."""
    return all(c in runs for c in CHECKSUM_COLUMNS)


def trial_table(runs: pd.DataFrame, spec: dict[str, Any], hyp: Hypotheses) -> pd.DataFrame:
    """One row per (condition, weight_policy, signal_policy, seed): `value`, `status`, `diverged`.

    A trial listed twice (one `run_id`, e.g. two preset names of one policy pair) keeps its first usable
    row (ordered by `run_id`), so the pairing never shifts. Two *different* trials on one row differ in
    something that is not a factor, and pairing either would compare more than the policy: refused.
    """
    keys = key_columns(spec)
    missing = [c for c in keys + ["seed", hyp.metric] if c not in runs]
    if missing:
        raise ValueError(f"runs.csv lacks columns {missing}")
    table = runs[keys].astype(object).where(runs[keys].notna(), "").astype(str)
    table["seed"] = pd.to_numeric(runs["seed"]).astype(int)
    table["value"] = pd.to_numeric(runs[hyp.metric], errors="coerce")
    table["status"] = trial_status(runs, hyp)
    table["diverged"] = truthy(runs, "diverged")
    # two trials with equal fingerprints are identical runs: equal checksums of the final parameters and
    # test logits where runs.csv has them (bit for bit), else every recorded metric as written
    recorded = [m for m in ALL_METRICS if m in runs]
    values = runs[recorded].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    prints = ["|".join(repr(float(v)) for v in row) for row in values]
    if has_checksums(runs):
        sums = runs[list(CHECKSUM_COLUMNS)].astype(object).where(runs[list(CHECKSUM_COLUMNS)].notna(), "")
        # a trial without its checksums can be identical to no other
        prints = [
            p + "|" + "|".join(map(str, c)) if all(c) else f"{p}|unchecked {i}"
            for i, (p, c) in enumerate(zip(prints, sums.itertuples(index=False), strict=True))
        ]
    table["fingerprint"] = prints
    table["_order"] = runs["run_id"].astype(str) if "run_id" in runs else ""
    clash = table.groupby(keys + ["seed"], sort=False)["_order"].nunique()
    clash = clash[clash > 1]
    if len(clash):
        first = dict(zip(keys + ["seed"], clash.index[0], strict=True))
        ids = sorted(table.loc[(table[keys + ["seed"]] == pd.Series(first)).all(axis=1), "_order"])
        raise ValueError(
            f"runs.csv: {len(clash)} row(s) of factors and seed hold trials with different configurations, "
            f"e.g. {first}: run_ids {', '.join(ids)}. They differ in a field that is not a factor, so "
            "pairing them would compare more than the gradient policy; fix the spec's cells "
            "(every field that varies must be a factor) and collect again"
        )
    table["_bad"] = table["status"] != "ok"
    table = table.sort_values(keys + ["seed", "_bad", "_order"], kind="mergesort")
    table = table.drop_duplicates(keys + ["seed"], keep="first")
    out = table.drop(columns=["_order", "_bad"]).reset_index(drop=True)
    out.attrs["checksums"] = has_checksums(runs)  # what `identical` rests on (stats.families.compare)
    return out


def check_coverage(runs: pd.DataFrame, spec: dict[str, Any], study_dir: Path | str = "runs.csv") -> None:
    """runs.csv must hold exactly one row per cell x seed of the spec (done, failed or missing alike).

    A table truncated by a crash, or collected from another spec, would otherwise be analysed as if
    complete; the message says which cells and seeds are absent or extra.
    """
    spec_model = StudySpec.model_validate(spec)
    names = list(spec_model.factors)
    absent = [n for n in [*names, "seed"] if n not in runs]
    if absent:
        raise ValueError(f"{study_dir}: runs.csv lacks the factor columns {absent}; {REDO_COLLECT}")
    want = {
        (*(cell_text(cell.get(n)) for n in names), str(seed))
        for cell in cells(spec_model)
        for seed in spec_model.seed_list
    }
    rows = runs[names].astype(object).where(runs[names].notna(), None).map(cell_text)
    have = list(zip(*(rows[n] for n in names), runs["seed"].astype(int).astype(str), strict=True))
    missing, extra = sorted(want - set(have)), sorted(set(have) - want)
    if missing or extra:

        def show(keys: list[tuple]) -> str:
            return "; ".join(
                ", ".join(f"{n}={v}" for n, v in zip([*names, "seed"], k, strict=True)) for k in keys[:5]
            )

        parts = []
        if missing:
            parts.append(f"{len(missing)} cell x seed row(s) of the spec missing (e.g. {show(missing)})")
        if extra:
            parts.append(f"{len(extra)} row(s) not in the spec (e.g. {show(extra)})")
        raise ValueError(f"{study_dir}: runs.csv does not cover the spec: {'; '.join(parts)}; {REDO_COLLECT}")


def expected_seeds(spec: dict[str, Any], table: pd.DataFrame) -> list[int]:
    """Seeds listed in the spec (when a list) together with every seed seen in the runs."""
    seeds = set(table["seed"].tolist())
    listed = spec.get("seeds")
    if isinstance(listed, list):
        seeds |= {int(s) for s in listed}
    return sorted(seeds)


def value_orders(spec: dict[str, Any], table: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Rank of every value of every key column: spec order first, then known policies, then sorted."""
    factors = spec.get("factors") or {}
    orders: dict[str, dict[str, int]] = {}
    for column in key_columns(spec):
        listed: list[str] = []
        for value in factors.get(column) or []:
            for text in ("none" if value is None else str(value), str(value).lower()):
                if text not in listed:
                    listed.append(text)
        if column in POLICY_COLUMNS:
            listed += [p for p in POLICY_ORDER if p not in listed]
        seen = sorted(set(table[column]) - set(listed)) if column in table else []
        orders[column] = {"": -1, **{v: i for i, v in enumerate(listed + seen)}}
    return orders


def sort_rows(frame: pd.DataFrame, by: list[str], orders: dict[str, dict[str, int]]) -> pd.DataFrame:
    """Stable sort of `frame` by `by`, using `orders` for the key columns and natural order otherwise."""

    def key(series: pd.Series) -> pd.Series:
        if series.name in orders:
            ranks = orders[series.name]
            return series.map(lambda v: ranks.get(v, len(ranks)))
        return series

    return frame.sort_values(by, key=key, kind="mergesort").reset_index(drop=True)
