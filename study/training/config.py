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
from analog.models import ACTIVATIONS, READOUTS, cnn_feature_shape, logit_bounds
from analog.noise import NOISE_CLASSES
from analog.normalize import check_normalization
from analog.policies import check_policy
from analog.precision import PRECISION_CLASSES, check_precision
from study.training.archs import BUILTIN_ARCHS, available_archs
from study.training.data import available_datasets, dataset_input_shape

MAX_SEED = 2**32 - 1  # numpy's and Lightning's seed range


def check_seed_list(seeds: list[int], what: str) -> list[int]:
    """`seeds` if they are distinct and in [0, MAX_SEED]; else a ValueError naming `what` (a spec's
    selection or screen seeds)."""
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"{what} must be distinct; got {seeds}")
    bad = [s for s in seeds if not 0 <= s <= MAX_SEED]
    if bad:
        raise ValueError(f"seeds must lie in [0, {MAX_SEED}]; got {bad}")
    return seeds


ARCHS: tuple[str, ...] = BUILTIN_ARCHS  # mlp: build_classifier; cnn: build_cnn; more: register_architecture


CHOICES: dict[str, tuple[str, ...]] = {
    "activation": ACTIVATIONS,
    "precision_class": PRECISION_CLASSES,
    "noise": NOISE_CLASSES,
    "readout": READOUTS,
}


def field_choices(name: str) -> list[str]:
    """The allowed values of a `TrialConfig` field with a fixed set of names (empty for other fields)."""
    if name == "arch":
        return available_archs()
    return available_datasets() if name == "dataset" else list(CHOICES.get(name, ()))


class ConfigError(ValueError):
    """Invalid configuration; the message names each bad field and its allowed values."""


class TrialConfig(BaseModel):
    """One trial: one network, one configuration, one seed.

    Defaults follow AnalogVNN's sample experiment: 784-256-128-10 GeLU network, clamp on weights and
    signals, ReducePrecision with 2**4 levels, Gaussian noise of leakage 0.5, Adam (lr 1e-3), batch
    128, 10 epochs, and AnalogVNN 1.0.8's gradient policies (weights `ste`, signals `exact`).
    ``precision: null`` is full precision; ``leakage: null`` (or ``noise: none``) turns the noise off.
    ``weight_clamp`` is the hardware weight range of a weight clamp ([-c, c]; 1 = AnalogVNN's).
    Three options say how the weight site uses that range (defaults: AnalogVNN's behaviour, left out
    of the run_id): ``weight_levels: range`` puts the precision levels (and the noise defined on them)
    on w / c, so 16 levels span [-c, c] (``absolute``: steps of 1/16 whatever c); ``weight_init:
    in_range`` rescales each layer's initial weight and bias into [-c, c] (by c / max|p| where max|p|
    exceeds c; the record's ``weight_saturation_init`` gives the share beyond c at initialisation);
    ``weight_bound: project`` removes the clamp from the weight site's forward and clips the weights
    into the range after every optimizer step (and at initialisation) - the weight gradient is then
    the identity, so ``weight_policy`` is moot and must stay at its default ``ste`` (one trial, one
    run_id). All three need a weight clamp (``in_range``: ``clamp``) and an analog network.
    ``optimizer: sgd`` takes ``momentum``; ``schedule: cosine`` anneals the learning rate per epoch
    (``CosineAnnealingLR(T_max=epochs)``: epoch e trains at lr (1 + cos(pi e / epochs)) / 2).
    ``eval_test: false`` never evaluates the test split (learning-rate selection trials).
    ``signal_norm: learned_clamp`` learns the signal ranges (PACT-style, :func:`analog.normalize.
    learned_clamp`): ``signal_range_init`` (initial bound) and ``signal_range_per`` (layer or channel)
    apply to it only and are left out of the run_id at their defaults.
    `signal_policy` may set policies by location (``{default: exact, readout_output: ste}`` or
    ``"exact,readout_output=ste"``, :mod:`analog.locations`); it is kept in its canonical string form.
    `readout` (``analog``, ``digital``, ``scaled``; :data:`analog.models.READOUTS`) says how the last
    layer is read out; ``digital`` has no final activation, so it sets ``final_activation: false``.
    ``arch: cnn`` puts conv-activation-pool blocks (`channels`, `kernel_size`) before the `hidden` dense
    layers, on inputs reshaped to the dataset's registered shape (:func:`analog.models.build_cnn`); a
    location spec counts the convolutions as the first hidden layers.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    # data
    dataset: str = Field(
        "mnist5k",
        description="data set, by registered name (`study.training.data.register_dataset`); "
        "mnist and fashion_mnist read IDX files from data_dir",
    )
    data_dir: str | None = Field(None, description="folder holding the IDX files of mnist / fashion_mnist")
    n_samples: int | None = Field(
        None, ge=100, description="total samples generated for mnist1d (multiple of 10)"
    )
    split_seed: int = Field(
        0, ge=0, le=MAX_SEED, description="seed of the stratified train/val/test split (independent of seed)"
    )
    # network
    arch: str = Field(
        "mlp",
        description="architecture: mlp (AnalogVNN's linear model), cnn (conv-activation-pool blocks, "
        "then the hidden layers and the readout; 1-D convolutions on mnist1d), or a registered one "
        "(`study.training.archs.register_architecture`: a torch.nn network converted by analog.convert)",
    )
    channels: tuple[int, ...] = Field(
        (4, 8), description="cnn: output channels of each conv-activation-pool block (e.g. 8,16)"
    )
    kernel_size: int = Field(3, ge=1, description="cnn: kernel size of every convolution ('same' padding)")
    hidden: tuple[int, ...] = Field(
        (256, 128), description="hidden layer sizes, comma separated on the command line (e.g. 256,128)"
    )
    activation: str = Field(
        "gelu",
        description="activation after each layer (gelu_analogvnn: GeLU with AnalogVNN 1.0.8's GeLU backward)",
    )
    final_activation: bool = Field(
        True, description="apply the activation after the last layer too (AnalogVNN's sample code does)"
    )
    digital: bool = Field(False, description="turn every analog effect off (the digital baseline)")
    readout: str = Field(
        "analog",
        description="last layer's read-out: analog (clamp + activation), digital (unbounded logits), "
        "scaled (analog logits times a fixed scale that removes the cross-entropy floor) or digital_act "
        "(no clamp, the activation kept)",
    )
    # analog effects and gradient policies
    weight_norm: str = Field(
        "clamp",
        description="normalization of weights and biases (none, clamp, clamp01, l1norm, l2norm, "
        "..._m/_w/_wm, or a registered one)",
    )
    weight_clamp: float = Field(
        1.0,
        gt=0,
        description="hardware weight range c: clamp weights to [-c, c] (clamp01: [0, c]); 1 with Lp norms",
    )
    weight_levels: Literal["absolute", "range"] = Field(
        "absolute",
        description="weight precision levels and noise: absolute (steps of 1/precision, AnalogVNN's) or "
        "range (on w / weight_clamp: the levels span [-c, c])",
    )
    weight_init: Literal["default", "in_range"] = Field(
        "default",
        description="initial weights: default (the layer's) or in_range (each weight and bias tensor "
        "scaled by c / its largest magnitude where that exceeds c, so all lie in [-c, c]; weight_norm clamp)",
    )
    weight_bound: Literal["forward", "project"] = Field(
        "forward",
        description="how weights are bounded: forward (clamp in the forward pass, its backward the "
        "weight_policy) or project (no clamp; weights clipped into the range after every optimizer "
        "step; weight_policy must stay ste)",
    )
    weight_policy: str = Field(
        "ste",
        description="gradient policy of the weight normalization (exact, ste, zero, or a registered one)",
    )
    signal_norm: str = Field(
        "clamp", description="normalization of signals (the same choices as weight_norm)"
    )
    signal_policy: str = Field("exact", description="gradient policy of the signal normalization")
    signal_range_init: float = Field(
        1.0,
        gt=0,
        description="signal_norm learned_clamp: initial learned signal range a (signals clamped to "
        "[-a, a], a trained with the network; a finite number > 0)",
    )
    signal_range_per: Literal["layer", "channel"] = Field(
        "layer",
        description="signal_norm learned_clamp: one learned range per layer position (layer) or per "
        "feature/channel (channel)",
    )
    precision_class: str = Field(
        "reduce", description="reduced precision: reduce (deterministic) or stochastic"
    )
    precision: int | None = Field(
        16, description="number of precision levels p (16 = 2**4); none = full precision"
    )
    divide: float = Field(0.5, description="rounding threshold of deterministic reduced precision, in [0, 1]")
    noise: str = Field("gaussian", description="analog noise model (none turns it off)")
    leakage: float | None = Field(
        0.5,
        description="noise leakage in (0, 1) (probability a quantised value changes level); none = no noise",
    )
    noise_precision: int | None = Field(
        None, description="levels the leakage refers to (default: precision; needed at full precision)"
    )
    noise_at_eval: bool = Field(
        True, description="keep the analog noise on when evaluating (the hardware is noisy at inference)"
    )
    # protocol
    optimizer: Literal["adam", "sgd"] = Field("adam", description="optimizer: adam or sgd")
    momentum: float = Field(0.0, ge=0, lt=1, description="SGD momentum in [0, 1) (sgd only)")
    schedule: Literal["constant", "cosine"] = Field(
        "constant", description="learning-rate schedule: constant or cosine (annealed per epoch to 0)"
    )
    lr: float = Field(1e-3, gt=0, description="learning rate")
    batch_size: int = Field(128, ge=1, description="training batch size")
    epochs: int = Field(10, ge=1, description="training epochs")
    seed: int = Field(
        0, ge=0, le=MAX_SEED, description="trial seed: initial weights, data order and noise all follow it"
    )
    diagnostics: bool = Field(
        True, description="log gradient mismatch and saturation on a probe batch each epoch"
    )
    probe_size: int = Field(256, ge=1, description="probe batch size for the diagnostics")
    eval_test: bool = Field(
        True, description="evaluate the test split each epoch (off for learning-rate selection trials)"
    )
    test_draws: int = Field(
        5,
        ge=1,
        le=1000,
        description="independent noise draws averaged into the final test accuracy test_acc_mean "
        "(test_acc_noise_off beside it is the noise-off accuracy)",
    )

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
        if (
            isinstance(data, dict)
            and data.get("readout") == "digital_act"
            and data.get("final_activation") is False
        ):
            raise ValueError(
                "final_activation: readout 'digital_act' keeps the final activation (without it, use readout "
                "'digital'); leave final_activation out or set it to true"
            )
        return data

    @field_validator("dataset", "activation", "precision_class", "noise", "readout", "arch")
    @classmethod
    def _choice(cls, v: str, info: ValidationInfo) -> str:
        allowed = field_choices(info.field_name)
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

    @field_validator("channels")
    @classmethod
    def _channels(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or any(c < 1 for c in v):
            raise ValueError(f"channels must be one or more sizes >= 1 (one per block), got {list(v)}")
        return v

    @property
    def n_hidden_layers(self) -> int:
        """Layers a location spec calls hidden: the convolutions (cnn), then the `hidden` dense layers
        (a registered arch's count is known once it is built: :func:`analog.convert` checks it then)."""
        return len(self.hidden) + (len(self.channels) if self.arch == "cnn" else 0)

    def input_shape(self) -> tuple[int, ...]:
        """One example's shape as the CNN sees it (the dataset's registered shape)."""
        shape = dataset_input_shape(self.dataset)
        if shape is None:
            raise ValueError(
                f"arch: 'cnn' needs an image shape for dataset {self.dataset!r} (register_dataset(..., "
                "input_shape=...)); it has none, so it trains MLPs only"
            )
        return shape

    def _check_arch(self) -> None:
        if self.arch == "cnn":
            cnn_feature_shape(self.input_shape(), self.channels, self.kernel_size)  # names the field
            return
        if self.arch not in BUILTIN_ARCHS:
            return  # a registered arch's builder reads the fields it wants
        for name in ("channels", "kernel_size"):
            if getattr(self, name) != TrialConfig.model_fields[name].default:
                raise ValueError(f"{name}: applies to arch 'cnn' only (arch is 'mlp')")

    @model_validator(mode="after")
    def _analog(self) -> TrialConfig:
        if self.momentum and self.optimizer != "sgd":
            raise ValueError(f"momentum: applies to optimizer 'sgd' only (optimizer is {self.optimizer!r})")
        self._check_arch()
        if not self.digital:
            self.analog_config()  # raises ValueError naming the field
            if self.arch in BUILTIN_ARCHS:
                check_hidden_count(self.signal_policy, self.n_hidden_layers, "signal_policy")
            if self.readout == "scaled":
                logit_bounds(self.signal_norm, self.activation, self.final_activation)  # bounded?
        elif self.readout != "analog":
            raise ValueError(f"readout: {self.readout!r} needs an analog network (digital: false)")
        elif not is_uniform(self.signal_policy):
            raise ValueError(
                "signal_policy: a digital network has no signal normalization to set by location"
            )
        else:
            for name in ("weight_levels", "weight_init", "weight_bound", *LEARNED_RANGE_FIELDS):
                if getattr(self, name) != TrialConfig.model_fields[name].default:
                    raise ValueError(f"{name}: applies to analog networks only (digital is true)")
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
            weight_clamp=self.weight_clamp,
            weight_levels=self.weight_levels,
            weight_init=self.weight_init,
            weight_bound=self.weight_bound,
            signal_range_init=self.signal_range_init,
            signal_range_per=self.signal_range_per,
        )

    def canonical(self) -> dict[str, Any]:
        """JSON-ready dict of every field (the trial's identity); the fields added after studies were
        committed (`OMITTED_AT_DEFAULT`) are left out while at their defaults, so that every earlier
        configuration keeps its run_id."""
        data = json.loads(self.model_dump_json())
        for name in OMITTED_AT_DEFAULT:
            default = TrialConfig.model_fields[name].default
            if data[name] == (list(default) if isinstance(default, tuple) else default):  # JSON: lists
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


OMITTED_AT_DEFAULT: tuple[str, ...] = (
    "weight_clamp",
    "momentum",
    "schedule",
    "eval_test",
    "readout",
    "arch",
    "channels",
    "kernel_size",
    "test_draws",
    "weight_levels",
    "weight_init",
    "weight_bound",
    "signal_range_init",
    "signal_range_per",
)
LEARNED_RANGE_FIELDS: tuple[str, ...] = ("signal_range_init", "signal_range_per")


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
