"""Collect a study's per-trial records into tidy tables: runs.csv and curves.csv.gz."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from study.sweep.records import FAILED, RECORD, InvalidRecord, load_record, trial_dir
from study.sweep.screen import SCREEN_TABLE
from study.sweep.screening import screen_table
from study.sweep.spec import expand, parse_spec
from study.tables import (
    ALL_METRICS,
    CHECKSUM_COLUMNS,
    DRAW_METRICS,
    METRICS,
    RESTORE_SPEC,
    check_spec_hashes,
    read_yaml,
    write_table,
)

CURVE_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc")
DIAG_METRICS = {
    "cosine": "grad_cosine",
    "norm_ratio": "grad_norm_ratio",
    "sat_weight": "sat_weight",
    "sat_signal_in": "sat_signal_in",
    "sat_signal_out": "sat_signal_out",
}
# written only when a record has them (records from before they existed collect as they always did)
DIAG_METRICS_IF_PRESENT = {
    "cosine_signal_in": "grad_cosine_signal_in",
    "cosine_signal_out": "grad_cosine_signal_out",
}
LOGIT_METRICS = ("logit_min", "logit_max", "ce_floor", "probe_loss")  # per epoch, no layer


def _factor_value(v: Any) -> Any:
    return "none" if v is None else v


def _row(
    study: str,
    spec_hash: str,
    trial: Any,
    rec: dict[str, Any] | None,
    fail: dict[str, Any] | None,
    metrics: tuple[str, ...] = METRICS,
    checksums: bool = False,
) -> dict:
    cfg = trial.config
    row: dict[str, Any] = {"study": study, "run_id": trial.run_id, "spec_hash": spec_hash}
    row.update({k: _factor_value(v) for k, v in trial.factors.items()})
    row["weight_policy"], row["signal_policy"], row["seed"] = cfg.weight_policy, cfg.signal_policy, cfg.seed
    row["status"] = "done" if rec else "failed" if fail else "missing"
    for m in metrics:
        row[m] = rec.get(m) if rec else None
    versions = (rec or {}).get("versions", {})
    row.update(
        {
            "epochs_run": rec.get("epochs_run") if rec else None,
            "diverged": bool(rec.get("diverged")) if rec else False,
            "failed": fail is not None and rec is None,
            "error": (fail or {}).get("error", "") if rec is None else "",
            "wall_time_s": round(rec["wall_time_s"], 3) if rec else None,
            "bundle_size": rec.get("bundle_size", 1) if rec else None,
            "torch_version": versions.get("torch", ""),
            "lightning_version": versions.get("lightning", ""),
            "normgrad_version": versions.get("normgrad", ""),
            "git_commit": versions.get("git_commit", ""),
        }
    )
    row.update(_saturation_summary(rec))
    if checksums:
        row.update({c: (rec or {}).get(c, "") for c in CHECKSUM_COLUMNS})
    return row


SATURATION_METRIC = "weight_saturation"  # curves.csv.gz: per layer, and pooled (layer empty)


def _saturation_summary(rec: dict[str, Any] | None) -> dict[str, float | None]:
    """runs.csv columns: the pooled fraction of weight-site parameters beyond their range at the last
    epoch, and its maximum over epochs (empty for digital networks and records written before it)."""
    pooled = [s["all"] for s in (rec or {}).get(SATURATION_METRIC, [])]
    return {
        SATURATION_METRIC: pooled[-1] if pooled else None,
        f"{SATURATION_METRIC}_max": max(pooled) if pooled else None,
    }


def _curves(run_id: str, rec: dict[str, Any]) -> list[tuple]:
    rows = []
    for h in rec.get("history", []):
        for m in CURVE_METRICS:
            rows.append((run_id, h["epoch"], m, None, h.get(m)))
    for d in rec.get("diagnostics", []):
        for layer in d["layers"]:
            for key, name in DIAG_METRICS.items():
                rows.append((run_id, d["epoch"], name, layer["layer"], layer.get(key)))
            for key, name in DIAG_METRICS_IF_PRESENT.items():
                if key in layer:
                    rows.append((run_id, d["epoch"], name, layer["layer"], layer[key]))
        for name in LOGIT_METRICS:
            if name in d.get("logits", {}):
                rows.append((run_id, d["epoch"], name, None, d["logits"][name]))
    for sat in rec.get(SATURATION_METRIC, []):
        for i, frac in enumerate(sat["layers"]):
            rows.append((run_id, sat["epoch"], SATURATION_METRIC, i, frac))
        rows.append((run_id, sat["epoch"], SATURATION_METRIC, None, sat["all"]))
    return rows


def _read_failed(path: Path) -> dict[str, Any] | None:
    """failed.json (None if absent); an unreadable one still marks the trial failed, saying so."""
    try:
        fail = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        return {"error": f"unreadable {path.name} ({err})"}
    return fail if isinstance(fail, dict) else {"error": f"unreadable {path.name} (not a JSON object)"}


def recorded_metrics(records: Any) -> tuple[str, ...]:
    """METRICS, and the DRAW_METRICS when any record has them (records written before the final
    evaluation over noise draws existed collect as they always did)."""
    if any(rec and all(m in rec for m in DRAW_METRICS) for rec in records):
        return ALL_METRICS
    return METRICS


def has_checksums(records: Any) -> bool:
    """Whether any record has the final checksums (records written before them collect as they did)."""
    return any(rec and all(c in rec for c in CHECKSUM_COLUMNS) for rec in records)


def collect(sdir: str | Path) -> tuple[Path, Path]:
    """Write `runs.csv` (one row per expected trial: done, failed or missing) and `curves.csv.gz`.

    Refuses (a ValueError naming every bad file at once) when any record.json is invalid: a table that
    silently dropped or mislabelled those trials would be wrong; `python -m study run` sets them aside
    and runs those trials again."""
    sdir = Path(sdir)
    spec = parse_spec(read_yaml(sdir / "spec.yaml", RESTORE_SPEC))
    spec_hash = spec.hash()
    trials = expand(spec)
    from study.sweep.tuning import study_trials, write_tables

    shared = {t.run_id for t in trials}
    extra = [t for t in study_trials(spec, sdir) if t.run_id not in shared]  # tune_lr's trials
    records, bad = {}, []
    for trial in [*trials, *extra]:
        try:
            records[trial.run_id] = load_record(trial_dir(sdir, trial.run_id) / RECORD, trial.run_id)
        except InvalidRecord as err:
            bad.append(str(err))
    if bad:
        raise ValueError(
            f"{len(bad)} invalid record(s) in {sdir}; no table written. Run the study again "
            "(`python -m study run SPEC --out OUT`) to set them aside and re-run those trials:\n  "
            + "\n  ".join(bad)
        )
    check_spec_hashes(sdir, spec_hash, {rid: r.get("spec_hash", "") for rid, r in records.items() if r})
    rows, curves = [], []
    metrics = recorded_metrics(records.values())
    checksums = has_checksums(records.values())

    def row_of(trial: Any) -> dict[str, Any]:
        rec, fail = records[trial.run_id], _read_failed(trial_dir(sdir, trial.run_id) / FAILED)
        return _row(
            spec.name,
            rec.get("spec_hash", spec_hash) if rec else spec_hash,
            trial,
            rec,
            fail,
            metrics,
            checksums,
        )

    for trial in trials:
        rows.append(row_of(trial))
    for trial in [*trials, *extra]:
        if records[trial.run_id]:
            curves += _curves(trial.run_id, records[trial.run_id])
    runs = pd.DataFrame(rows)
    runs_path = sdir / "runs.csv"
    write_table(runs, runs_path, raw=True)
    cdf = pd.DataFrame(curves, columns=["run_id", "epoch", "metric", "layer", "value"])
    cdf["layer"] = cdf["layer"].astype("Int64")
    curves_path = sdir / "curves.csv.gz"
    write_table(cdf, curves_path, raw=True)
    n_failed = int(runs["failed"].sum())
    n_missing = int((runs["status"] == "missing").sum())
    print(
        f"{spec.name}: {len(runs)} trials -> {runs_path} ({n_failed} failed, {n_missing} missing, "
        f"{int(runs['diverged'].sum())} diverged); {len(cdf)} curve rows -> {curves_path}"
    )
    for _, r in runs[runs["status"] != "done"].iterrows():
        print(f"  {r['status']}: {r['run_id']} seed={r['seed']} {r['error']}")
    for path in write_tables(spec, sdir, row_of):
        print(f"  tune_lr -> {path}")
    if spec.screen is not None:
        screen = pd.DataFrame(
            [
                {k: _factor_value(v) if k in spec.factors else v for k, v in r.items()}
                for r in screen_table(spec, sdir)
            ]
        )
        write_table(screen, sdir / SCREEN_TABLE, raw=True)
        passed = screen["passed"]
        print(
            f"  screen -> {sdir / SCREEN_TABLE}: {int((passed == True).sum())} of {len(screen)} conditions "  # noqa: E712
            f"pass, {int((passed == False).sum())} screened out, {int(passed.isna().sum())} not yet screened"  # noqa: E712
        )
    return runs_path, curves_path
