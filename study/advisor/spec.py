"""The advisor's pre-registration: ``study/advisor/advisor.yaml``, validated."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from study.tables import read_yaml

ADVISOR_SPEC = Path(__file__).resolve().parent / "advisor_v2.yaml"  # the pre-registration in force
ADVISOR_SPEC_V1 = Path(__file__).resolve().parent / "advisor.yaml"  # issue 20's, superseded
# the rule's terms (study/advisor/fit.py: design); v1 used the first two
FEATURES: tuple[str, ...] = ("log_disagreement", "signal_site", "site_saturation", "readout_saturation")
V1_FORMULA = "positive ~ log_disagreement + signal_site"
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


class Trainable(BaseModel):
    """A unit has a label only when the better of its two arms reaches chance + min_above_chance (%)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    chance: float = Field(ge=0, lt=100)
    min_above_chance: float = Field(gt=0, lt=100)

    @property
    def threshold(self) -> float:
        return self.chance + self.min_above_chance


class AdvisorSpec(BaseModel):
    """What the rule is fitted on and validated against (see advisor.yaml's description)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    version: int = Field(default=1, ge=1, le=2)
    description: str = ""
    sources: list[str] = Field(
        min_length=1, description="committed studies (results/<name>) the units come from"
    )
    delta: float = Field(gt=0, description="pp: a unit is positive when exact - ste exceeds it")
    band: float = Field(ge=0, lt=0.5, description="uncertain when |p - 0.5| < band")
    probe_epoch: int = Field(ge=1, description="the epoch whose diagnostics are the feature")
    held_out: dict[str, list[Any]] = Field(min_length=1)
    formula: str = Field(default=V1_FORMULA, description="the GLM: 'positive ~ ' + terms from FEATURES")
    trainable: Trainable | None = Field(default=None, description="label only units that train (v2)")
    drop_identical: bool = Field(default=False, description="no label for units whose arms are identical")

    @property
    def terms(self) -> list[str]:
        """The formula's terms, in order."""
        return [t.strip() for t in self.formula.split("~", 1)[1].split("+")]

    @field_validator("formula")
    @classmethod
    def _formula(cls, v: str) -> str:
        lhs, _, rhs = v.partition("~")
        terms = [t.strip() for t in rhs.split("+")]
        if lhs.strip() != "positive" or not all(terms):
            raise ValueError(f"formula: 'positive ~ term + term ...' expected, got {v!r}")
        unknown = [t for t in terms if t not in FEATURES]
        if unknown:
            raise ValueError(f"formula: unknown terms {unknown}; allowed: {', '.join(FEATURES)}")
        if len(set(terms)) < len(terms):
            raise ValueError(f"formula: a term is listed twice in {v!r}")
        return v

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
