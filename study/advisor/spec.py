"""The advisor's pre-registration: ``study/advisor/advisor.yaml``, validated."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from study.tables import read_yaml

ADVISOR_SPEC = Path(__file__).resolve().parent / "advisor.yaml"
# held_out keys: trial configuration fields, plus `norm` (the normalization at either site)
HELD_OUT_KEYS: tuple[str, ...] = (
    "arch",
    "dataset",
    "norm",
    "weight_norm",
    "signal_norm",
    "noise",
    "optimizer",
)


class AdvisorSpec(BaseModel):
    """What the rule is fitted on and validated against (see advisor.yaml's description)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    description: str = ""
    sources: list[str] = Field(
        min_length=1, description="committed studies (results/<name>) the units come from"
    )
    delta: float = Field(gt=0, description="pp: a unit is positive when exact - ste exceeds it")
    band: float = Field(ge=0, lt=0.5, description="uncertain when |p - 0.5| < band")
    probe_epoch: int = Field(ge=1, description="the epoch whose diagnostics are the feature")
    held_out: dict[str, list[Any]] = Field(min_length=1)

    @field_validator("sources")
    @classmethod
    def _sources(cls, v: list[str]) -> list[str]:
        bad = [s for s in v if not s or s in (".", "..") or "/" in s or "\\" in s]
        if bad:
            raise ValueError(f"sources: {bad} are not study names (a folder name under results/)")
        dup = sorted({s for s in v if v.count(s) > 1})
        if dup:
            raise ValueError(f"sources: {dup} listed twice")
        return v

    @field_validator("delta", "band")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError(f"must be finite, got {v}")
        return v

    @field_validator("held_out")
    @classmethod
    def _held_out(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in v.items():
            if key not in HELD_OUT_KEYS:
                raise ValueError(f"held_out: unknown key {key!r}; allowed: {', '.join(HELD_OUT_KEYS)}")
            if not isinstance(values, list) or not values:
                raise ValueError(f"held_out.{key}: give a non-empty list of values")
        return v


def load_advisor_spec(path: str | Path = ADVISOR_SPEC) -> AdvisorSpec:
    """The validated spec; a bad field is named with what is allowed (pydantic's message)."""
    from pydantic import ValidationError

    from study.training.config import format_validation_error

    data = read_yaml(Path(path), "fix the advisor spec")
    if not isinstance(data, dict):
        raise ValueError(f"{path}: an advisor spec is a mapping of fields")
    try:
        return AdvisorSpec.model_validate(data)
    except ValidationError as err:
        raise ValueError(f"{path}: " + format_validation_error(err, AdvisorSpec)) from None


def is_held_out(spec: AdvisorSpec, config: dict[str, Any]) -> bool:
    """Whether a unit with this resolved trial configuration matches any held-out entry."""
    for key, values in spec.held_out.items():
        fields = ("weight_norm", "signal_norm") if key == "norm" else (key,)
        if any(config.get(f) in values for f in fields):
            return True
    return False
