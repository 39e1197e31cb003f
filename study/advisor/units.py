"""The advisor's data: one row per (study, condition, site) from the committed studies' files.

Outcome from ``stats/comparisons.csv`` (exact vs ste at the site, the other site exact); feature from
``curves.csv.gz`` (the epoch-`probe_epoch` diagnostics of the condition's trials trained with ste at the
site); the condition's resolved configuration from ``spec.yaml`` (for the held-out rule)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from analog.advise import gradient_disagreement, site_policies
from study.advisor.spec import AdvisorSpec, is_held_out
from study.sweep.spec import expand, load_spec
from study.tables import REDO_COLLECT, read_csv

POLICY_COLUMNS = ("weight_policy", "signal_policy", "policies")
CONFIG_COLUMNS = ("arch", "dataset", "weight_norm", "signal_norm", "noise", "optimizer")
UNIT_COLUMNS = (
    "study",
    "site",
    "condition",
    *CONFIG_COLUMNS,
    "metric",
    "n_pairs",
    "mean_diff",
    "ci_low",
    "ci_high",
    "verdict",
    "positive",
    "disagreement",
    "n_probe_runs",
    "held_out",
)


def _read(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; run the study's pipeline (collect, stats) first")
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def study_units(results: Path, study: str, spec: AdvisorSpec) -> pd.DataFrame:
    """The units of one committed study (empty when it has no exact-vs-ste comparison)."""
    sdir = results / study
    if not sdir.is_dir():
        raise FileNotFoundError(f"{sdir}: no such study folder (advisor sources: {', '.join(spec.sources)})")
    study_spec = load_spec(sdir / "spec.yaml")
    factors = [f for f in study_spec.factors if f not in POLICY_COLUMNS]
    comparisons = _read(sdir / "stats" / "comparisons.csv")
    runs = _read(sdir / "runs.csv")
    runs = runs[runs["status"] == "done"]
    curves = read_csv(
        sdir / "curves.csv.gz", REDO_COLLECT, usecols=["run_id", "epoch", "metric", "layer", "value"]
    )
    cos = curves[(curves["metric"] == "grad_cosine") & (curves["epoch"] == spec.probe_epoch)]
    per_run = cos.groupby("run_id")["value"].apply(lambda v: gradient_disagreement(v.tolist()))
    configs = {t.run_id: t.config.model_dump() for t in expand(study_spec)}
    rows = []
    for _, row in comparisons.iterrows():
        site = row["site"]
        other = "signal_policy" if site == "weight" else "weight_policy"
        if (row["policy_a"], row["policy_b"], row.get(other)) != ("exact", "ste", "exact"):
            continue
        weight, signal = site_policies(site)
        match = (runs["weight_policy"] == weight) & (runs["signal_policy"] == signal)
        for f in factors:
            match &= runs[f] == row[f]
        ids = [r for r in runs.loc[match, "run_id"] if r in per_run.index]
        values = [float(per_run[r]) for r in ids if not math.isnan(per_run[r])]
        if not ids:
            raise ValueError(
                f"{study}: no diagnostics at epoch {spec.probe_epoch} for {site} condition "
                f"{ {f: row[f] for f in factors} }"
            )
        config = configs[ids[0]]
        mean_diff = float(row["mean_diff"])
        rows.append(
            {
                "study": study,
                "site": site,
                "condition": json.dumps({f: row[f] for f in factors}, sort_keys=True),
                **{c: str(config.get(c)) for c in CONFIG_COLUMNS},
                "metric": row["metric"],
                "n_pairs": int(row["n_pairs"]),
                "mean_diff": mean_diff,
                "ci_low": float(row["ci_low"]) if row["ci_low"] else float("nan"),
                "ci_high": float(row["ci_high"]) if row["ci_high"] else float("nan"),
                "verdict": row["verdict"],
                "positive": mean_diff > spec.delta,
                "disagreement": sum(values) / len(values) if values else float("nan"),
                "n_probe_runs": len(values),
                "held_out": is_held_out(spec, config),
            }
        )
    return pd.DataFrame(rows, columns=list(UNIT_COLUMNS))


def build_units(results: Path, spec: AdvisorSpec) -> pd.DataFrame:
    """Every source study's units, in source order."""
    return pd.concat([study_units(results, s, spec) for s in spec.sources], ignore_index=True)
