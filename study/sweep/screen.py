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

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from study.training.config import check_seed_list

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
        return check_seed_list(v, "screen seeds")

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
