"""The trainability screen (a spec's `screen` block): which conditions can test the question at all.

A condition where even the reference arm does not learn compares two untrained networks: its policy
difference is ~0 whatever the policies do, and counting it dilutes every average and fills the tables
with `inconclusive` rows. The screen decides, before any evaluation trial is looked at, by a criterion
written in the spec:

* screen trials: per condition, the reference `arm` (e.g. weight/signal exact/exact) and its digital twin
  (`digital: true`, the same data and protocol), on `seeds` the evaluation never uses, never evaluating
  the test split;
* a condition passes when the reference arm's mean `metric` over those seeds is at least
  `chance + min_above_chance` percentage points (`chance` = 100 / classes, stated in the spec).

Every condition's evaluation trials still run, so the analysis that includes all conditions (the
sensitivity analysis, `stats_all/`) exists beside the primary one over the conditions that pass
(`stats/`); screened-out conditions are listed with their screen accuracy (`screen.csv`, the report).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from study.training.config import MAX_SEED, TrialConfig

SCREEN_TABLE = "screen.csv"
ALL_STATS = "stats_all"  # the sensitivity analysis over every condition, screened out or not
ARM_FIELDS = ("weight_policy", "signal_policy")


class Screen(BaseModel):
    """The pre-registered trainability criterion (module docstring)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    seeds: list[int] = Field(min_length=1)
    arm: dict[str, str] = Field(default_factory=lambda: {"weight_policy": "exact", "signal_policy": "exact"})
    metric: Literal["val_acc", "best_val_acc"] = "val_acc"
    chance: float = Field(ge=0, lt=100)
    min_above_chance: float = Field(gt=0, lt=100)
    digital_twin: bool = True

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError(f"screen seeds must be distinct; got {v}")
        bad = [s for s in v if not 0 <= s <= MAX_SEED]
        if bad:
            raise ValueError(f"seeds must lie in [0, {MAX_SEED}]; got {bad}")
        return v

    @field_validator("arm")
    @classmethod
    def _arm(cls, v: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(v) - set(ARM_FIELDS))
        if unknown or not v:
            raise ValueError(f"policy fields {', '.join(ARM_FIELDS)} expected; got {sorted(v)}")
        return v

    @property
    def threshold(self) -> float:
        return self.chance + self.min_above_chance


def check_screen(spec_dict: dict[str, Any], factors: dict[str, Any]) -> list[str]:
    """The screen's seeds are not evaluation seeds, and its arm is an arm of the study."""
    screen = spec_dict.get("screen")
    if not isinstance(screen, dict):
        return []
    errors = []
    seeds, evaluation = screen.get("seeds"), spec_dict.get("seeds", 10)
    if isinstance(seeds, list) and isinstance(evaluation, (int, list)) and not isinstance(evaluation, bool):
        used = range(evaluation) if isinstance(evaluation, int) else evaluation
        both = sorted({s for s in seeds if isinstance(s, int)} & set(used))
        if both:
            errors.append(
                f"screen.seeds: {both} are evaluation seeds too; the screen must use seeds the evaluation "
                "never uses (choose them outside `seeds:`)"
            )
    arm = screen.get("arm") if isinstance(screen.get("arm"), dict) else {}
    for name, value in arm.items():
        listed = factors.get(name) if isinstance(factors.get(name), list) else None
        if listed is not None and value not in listed:
            errors.append(f"screen.arm.{name}: {value!r} is not one of the factor's values {listed!r}")
    return errors


def _is_arm(spec: Any, cell: dict[str, Any], arm: dict[str, str]) -> bool:
    """Whether `cell` (as resolved with the spec's base, presets included) runs the reference arm."""
    from study.sweep.spec import resolve_config

    config = resolve_config(spec.base, cell, 0)
    return all(str(getattr(config, k)) == str(v) for k, v in arm.items())


def condition_of(cell: dict[str, Any]) -> dict[str, Any]:
    """A cell without its policy factors: the condition it belongs to."""
    return {k: v for k, v in cell.items() if k not in (*ARM_FIELDS, "policies")}


def screen_trials(spec: Any) -> list[Any]:
    """Per condition: the reference arm and (with `digital_twin`) its digital twin on the screen seeds,
    never evaluating the test split; in spec order, one entry per run_id."""
    from study.sweep.spec import Trial, cells, resolve_config

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


def screen_table(spec: Any, sdir: Path) -> list[dict[str, Any]]:
    """`screen.csv`: one row per condition - the reference arm's and the digital twin's mean metric over
    the screen seeds, the threshold and whether the condition passes (None until its trials are done)."""
    screen: Screen | None = spec.screen
    if screen is None:
        return []
    from study.sweep.records import RECORD, load_record, status, trial_dir
    from study.sweep.spec import cells

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


def _arm_trials(spec: Any, cell: dict[str, Any], digital: bool) -> list[TrialConfig]:
    from study.sweep.spec import resolve_config

    seeds = spec.screen.seeds
    if digital:
        return [digital_twin(spec.base, cell, s) for s in seeds]
    return [resolve_config(spec.base, {**cell, "eval_test": False}, s) for s in seeds]
