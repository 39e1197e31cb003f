"""The trial configuration: one typed, validated object whose defaults are AnalogVNN's protocol."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from analog.layers import AnalogConfig
from analog.locations import canonical_signal_policy, check_hidden_count, is_uniform
from analog.models import ACTIVATIONS, READOUTS, logit_bounds
from analog.noise import NOISE_CLASSES
from analog.normalize import check_normalization
from analog.policies import check_policy
from analog.precision import PRECISION_CLASSES, check_precision

MAX_SEED = 2**32 - 1  # numpy's and Lightning's seed range
DATASETS: tuple[str, ...] = ("mnist5k", "digits", "mnist1d", "mnist", "fashion_mnist")


CHOICES: dict[str, tuple[str, ...]] = {
    "dataset": DATASETS,
    "activation": ACTIVATIONS,
    "precision_class": PRECISION_CLASSES,
    "noise": NOISE_CLASSES,
    "readout": READOUTS,
}

OMIT_AT_DEFAULT: tuple[str, ...] = ("readout",)
"""Fields added after the canonical studies ran: left out of `canonical()` (and so of `run_id`) at their
default, so every configuration that does not use them keeps the run_id it always had."""


class ConfigError(ValueError):
    """Invalid configuration; the message names each bad field and its allowed values."""


class TrialConfig(BaseModel):
    """One trial: one network, one configuration, one seed.

    Defaults follow AnalogVNN's sample experiment: 784-256-128-10 GeLU network, clamp on weights and
    signals, ReducePrecision with 2**4 levels, Gaussian noise of leakage 0.5, Adam (lr 1e-3), batch
    128, 10 epochs, and AnalogVNN 1.0.8's gradient policies (weights `ste`, signals `exact`).
    ``precision: null`` is full precision; ``leakage: null`` (or ``noise: none``) turns the noise off.
    `signal_policy` may set policies by location (``{default: exact, readout_output: ste}`` or
    ``"exact,readout_output=ste"``, :mod:`analog.locations`); it is kept in its canonical string form.
    `readout` (``analog``, ``digital``, ``scaled``; :data:`analog.models.READOUTS`) says how the last
    layer is read out; ``digital`` has no final activation, so it sets ``final_activation: false``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    # data
    dataset: str = "mnist5k"
    data_dir: str | None = None
    n_samples: int | None = Field(None, ge=100)
    split_seed: int = Field(0, ge=0, le=MAX_SEED)
    # network
    hidden: tuple[int, ...] = (256, 128)
    activation: str = "gelu"
    final_activation: bool = True
    digital: bool = False
    readout: str = "analog"
    # analog effects and gradient policies
    weight_norm: str = "clamp"
    weight_policy: str = "ste"
    signal_norm: str = "clamp"
    signal_policy: str = "exact"
    precision_class: str = "reduce"
    precision: int | None = 16
    divide: float = 0.5
    noise: str = "gaussian"
    leakage: float | None = 0.5
    noise_precision: int | None = None
    noise_at_eval: bool = True
    # protocol
    optimizer: Literal["adam"] = "adam"
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(128, ge=1)
    epochs: int = Field(10, ge=1)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    diagnostics: bool = True
    probe_size: int = Field(256, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _digital_readout(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("readout") == "digital":
            if data.get("final_activation", False) is not False:
                raise ValueError(
                    "final_activation: readout 'digital' has no final activation (unbounded logits); "
                    "leave final_activation out or set it to false"
                )
            data = {**data, "final_activation": False}
        return data

    @field_validator("dataset", "activation", "precision_class", "noise", "readout")
    @classmethod
    def _choice(cls, v: str, info: ValidationInfo) -> str:
        allowed = CHOICES[info.field_name]
        if v not in allowed:
            raise ValueError(f"unknown {info.field_name} {v!r}; allowed: {', '.join(allowed)}")
        return v

    @field_validator("weight_norm", "signal_norm")
    @classmethod
    def _norm(cls, v: str) -> str:
        return check_normalization(v, "")

    @field_validator("weight_policy")
    @classmethod
    def _policy(cls, v: str) -> str:
        return check_policy(v, "")

    @field_validator("signal_policy", mode="before")
    @classmethod
    def _signal_policy(cls, v: Any) -> str:
        return canonical_signal_policy(v, "")

    @field_validator("precision", "noise_precision")
    @classmethod
    def _precision(cls, v: int | None) -> int | None:
        return None if v is None else check_precision(v, "")

    @field_validator("hidden")
    @classmethod
    def _hidden(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(h < 1 for h in v):
            raise ValueError(f"hidden sizes must be >= 1, got {list(v)}")
        return v

    @model_validator(mode="after")
    def _analog(self) -> TrialConfig:
        if not self.digital:
            self.analog_config()  # raises ValueError naming the field
            check_hidden_count(self.signal_policy, len(self.hidden), "signal_policy")
            if self.readout == "scaled":
                logit_bounds(self.signal_norm, self.activation, self.final_activation)  # bounded?
        elif self.readout != "analog":
            raise ValueError(f"readout: {self.readout!r} needs an analog network (digital: false)")
        elif not is_uniform(self.signal_policy):
            raise ValueError(
                "signal_policy: a digital network has no signal normalization to set by location"
            )
        return self

    def analog_config(self) -> AnalogConfig:
        """The analog library's configuration for this trial."""
        return AnalogConfig(
            weight_norm=self.weight_norm,
            weight_policy=self.weight_policy,
            signal_norm=self.signal_norm,
            signal_policy=self.signal_policy,
            precision_class=self.precision_class,
            precision=self.precision,
            divide=self.divide,
            noise=self.noise if self.leakage is not None else "none",
            leakage=self.leakage,
            noise_precision=self.noise_precision,
        )

    def canonical(self) -> dict[str, Any]:
        """JSON-ready dict of every field (the trial's identity), less the `OMIT_AT_DEFAULT` fields at
        their default."""
        data = json.loads(self.model_dump_json())
        for name in OMIT_AT_DEFAULT:
            if data[name] == type(self).model_fields[name].default:
                del data[name]
        return data

    @property
    def run_id(self) -> str:
        """16-hex hash of the canonical configuration (seed included)."""
        blob = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @classmethod
    def parse(cls, data: dict[str, Any]) -> TrialConfig:
        """Validate `data`, reporting every bad field at once as a `ConfigError`."""
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            raise ConfigError(format_validation_error(err, cls)) from None


def format_validation_error(err: ValidationError, model: type[BaseModel], prefix: str = "") -> str:
    """One line per error: the field, the bad value and what is allowed."""
    lines = []
    for e in err.errors():
        field = prefix + ".".join(str(p) for p in e["loc"]) if e["loc"] else prefix.rstrip(".") or "config"
        if e["type"] == "extra_forbidden":
            allowed = ", ".join(model.model_fields)
            lines.append(f"{field}: unknown field; allowed fields: {allowed}")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"{field}: {msg} (got {e.get('input')!r})")
    return "invalid configuration:\n  " + "\n  ".join(lines)
