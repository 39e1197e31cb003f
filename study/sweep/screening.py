"""The trainability screen's trials and table (`study.sweep.screen` holds the spec block and says why)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from study.sweep.records import RECORD, load_record, status, trial_dir
from study.sweep.screen import ARM_FIELDS, Screen
from study.sweep.spec import StudySpec, Trial, cells, resolve_config
from study.training.config import TrialConfig


def _is_arm(spec: StudySpec, cell: dict[str, Any], arm: dict[str, str]) -> bool:
    """Whether `cell` (as resolved with the spec's base, presets included) runs the reference arm."""
    config = resolve_config(spec.base, cell, 0)
    return all(str(getattr(config, k)) == str(v) for k, v in arm.items())


def condition_of(cell: dict[str, Any]) -> dict[str, Any]:
    """A cell without its policy factors: the condition it belongs to."""
    return {k: v for k, v in cell.items() if k not in (*ARM_FIELDS, "policies")}


def screen_trials(spec: StudySpec) -> list[Any]:
    """Per condition: the reference arm and (with `digital_twin`) its digital twin on the screen seeds,
    never evaluating the test split; in spec order, one entry per run_id."""
    screen: Screen | None = spec.screen
    if screen is None:
        return []
    out, seen = [], set()
    for cell in cells(spec):
        if not _is_arm(spec, cell, screen.arm):
            continue
        kinds = [("reference", {})] + ([("digital", {"digital": True})] if screen.digital_twin else [])
        for kind, extra in kinds:
            for seed in screen.seeds:
                config = (
                    digital_twin(spec.base, cell, seed)
                    if extra
                    else resolve_config(spec.base, {**cell, "eval_test": False}, seed)
                )
                if config.run_id not in seen:
                    seen.add(config.run_id)
                    out.append(Trial(factors={**cell, "screen": kind}, config=config))
    return out


def digital_twin(base: dict[str, Any], cell: dict[str, Any], seed: int) -> TrialConfig:
    """The reference arm's configuration with every analog effect off (`digital: true`): the same data,
    network, optimizer, learning rate and epochs."""
    from study.sweep.spec import resolve_config

    config = resolve_config(base, {**cell, "eval_test": False}, seed)
    keep = (
        "dataset",
        "data_dir",
        "n_samples",
        "split_seed",
        "arch",
        "channels",
        "kernel_size",
        "hidden",
        "activation",
        "final_activation",
        "optimizer",
        "momentum",
        "schedule",
        "lr",
        "batch_size",
        "epochs",
        "seed",
        "diagnostics",
        "probe_size",
        "eval_test",
    )
    data = {k: v for k, v in config.model_dump().items() if k in keep}
    return TrialConfig.parse({**data, "digital": True})


def screen_table(spec: StudySpec, sdir: Path) -> list[dict[str, Any]]:
    """`screen.csv`: one row per condition - the reference arm's and the digital twin's mean metric over
    the screen seeds, the threshold and whether the condition passes (None until its trials are done)."""
    screen: Screen | None = spec.screen
    if screen is None:
        return []
    metric = screen.metric
    rows = []
    for cell in cells(spec):
        if not _is_arm(spec, cell, screen.arm):
            continue
        row: dict[str, Any] = dict(condition_of(cell))
        for kind, trials in (
            ("reference", _arm_trials(spec, cell, False)),
            ("digital", _arm_trials(spec, cell, True)),
        ):
            if kind == "digital" and not screen.digital_twin:
                continue
            values, done = [], True
            for config in trials:
                rec = load_record(trial_dir(sdir, config.run_id) / RECORD, config.run_id)
                done = done and status(sdir, config.run_id) == "done"
                value = (rec or {}).get(metric)
                values.append(
                    float(value) if isinstance(value, (int, float)) and math.isfinite(value) else math.nan
                )
            row[f"{kind}_{metric}"] = sum(values) / len(values) if done and values else None
        ref = row[f"reference_{metric}"]
        row["threshold"] = screen.threshold
        row["passed"] = None if ref is None else bool(ref >= screen.threshold)  # NaN (diverged) fails
        rows.append(row)
    return rows


def _arm_trials(spec: StudySpec, cell: dict[str, Any], digital: bool) -> list[TrialConfig]:
    seeds = spec.screen.seeds
    if digital:
        return [digital_twin(spec.base, cell, s) for s in seeds]
    return [resolve_config(spec.base, {**cell, "eval_test": False}, s) for s in seeds]
