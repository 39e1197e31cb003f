"""The advisor's data: one row per (study, condition, site) from the committed studies' files.

Outcome from ``stats/comparisons.csv`` (exact vs ste at the site, the other site exact); features from
``curves.csv.gz`` (the epoch-`probe_epoch` diagnostics of the condition's trials trained with ste at the
site); the condition's resolved configuration from ``spec.yaml`` (for the held-out rule); whether the
unit has a label (v2: it trains, its arms are not identical) from ``runs.csv`` and ``comparisons.csv``."""

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
    "site_saturation",
    "readout_saturation",
    "n_probe_runs",
    "best_arm",
    "trainable",
    "trivial",
    "labelled",
    "held_out",
)
SATURATION_KEY = {"weight": "sat_weight", "signal": "sat_signal_out"}  # a site's own saturation


def run_features(curves: pd.DataFrame, epoch: int) -> pd.DataFrame:
    """Per run, from its diagnostics at `epoch`: disagreement, the largest per-layer sat_weight and
    sat_signal_out (a layer without a value counts 0), and the last layer's sat_signal_out (read-out)."""
    at = curves[curves["epoch"] == epoch]
    cos = at[at["metric"] == "grad_cosine"]
    out = pd.DataFrame(
        {"disagreement": cos.groupby("run_id")["value"].apply(lambda v: gradient_disagreement(v.tolist()))}
    )
    for key in ("sat_weight", "sat_signal_out"):
        sat = at[at["metric"] == key]
        out[key] = sat.groupby("run_id")["value"].apply(lambda v: float(v.fillna(0.0).max()))
        if key == "sat_signal_out":
            last = sat.sort_values("layer", kind="stable").groupby("run_id")["value"].last()
            out["readout_saturation"] = last.fillna(0.0)
    return out


def arm_mean(runs: pd.DataFrame, match: pd.Series, weight: str, signal: str, metric: str) -> float:
    """The mean of `metric` over the matching finished runs of one arm (nan when there are none)."""
    arm = match & (runs["weight_policy"] == weight) & (runs["signal_policy"] == signal)
    values = pd.to_numeric(runs.loc[arm, metric], errors="coerce").dropna()
    return float(values.mean()) if len(values) else float("nan")


def _mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else float("nan")


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
    features = run_features(curves, spec.probe_epoch)
    per_run = features["disagreement"]
    configs = {t.run_id: t.config.model_dump() for t in expand(study_spec)}
    rows = []
    for _, row in comparisons.iterrows():
        site = row["site"]
        other = "signal_policy" if site == "weight" else "weight_policy"
        if (row["policy_a"], row["policy_b"], row.get(other)) != ("exact", "ste", "exact"):
            continue
        weight, signal = site_policies(site)
        condition = pd.Series(True, index=runs.index)
        for f in factors:
            condition &= runs[f] == row[f]
        match = condition & (runs["weight_policy"] == weight) & (runs["signal_policy"] == signal)
        ids = [r for r in runs.loc[match, "run_id"] if r in per_run.index]
        values = [float(per_run[r]) for r in ids if not math.isnan(per_run[r])]
        if not ids:
            raise ValueError(
                f"{study}: no diagnostics at epoch {spec.probe_epoch} for {site} condition "
                f"{ {f: row[f] for f in factors} }"
            )
        config = configs[ids[0]]
        mean_diff = float(row["mean_diff"])
        best_arm = max(
            arm_mean(runs, condition, "exact", "exact", row["metric"]),
            arm_mean(runs, condition, weight, signal, row["metric"]),
        )
        trainable = spec.trainable is None or best_arm >= spec.trainable.threshold
        n_identical = int(row["n_identical"]) if row.get("n_identical", "") not in ("", None) else 0
        trivial = int(row["n_pairs"]) > 0 and n_identical == int(row["n_pairs"])
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
                "site_saturation": _mean([float(features.at[r, SATURATION_KEY[site]]) for r in ids]),
                "readout_saturation": _mean([float(features.at[r, "readout_saturation"]) for r in ids]),
                "n_probe_runs": len(values),
                "best_arm": best_arm,
                "trainable": bool(trainable),
                "trivial": trivial,
                "labelled": bool(trainable and not (spec.drop_identical and trivial)),
                "held_out": is_held_out(spec, config),
            }
        )
    return pd.DataFrame(rows, columns=list(UNIT_COLUMNS))


def build_units(results: Path, spec: AdvisorSpec) -> pd.DataFrame:
    """Every source study's units, in source order."""
    return pd.concat([study_units(results, s, spec) for s in spec.sources], ignore_index=True)
