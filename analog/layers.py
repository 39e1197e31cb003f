"""AnalogLinear, AnalogConv1d, AnalogConv2d: AnalogVNN's analog layer order, with a gradient policy per site.

    signal in -> [norm, precision, noise] -> op(W', b') -> [noise, norm, precision] -> (activation)
    W', b'   = [norm, precision, noise](W, b)

The normalization's backward at the weight site and at the signal site follows its own policy; the
signal site's policy may differ by location (:mod:`analog.locations`: the layer's role, hidden or
readout, and the position, input or output). Precision and noise are straight-through everywhere.
Consecutive straight-through stages are fused into one autograd node (same values and gradients,
less overhead). `op` is a matmul (AnalogLinear) or a convolution (AnalogConv1d/2d); the pipelines are
one implementation (:class:`AnalogLayer`), so every layer kind treats both sites alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from analog.locations import ROLES, canonical_signal_policy, layer_signal_policies
from analog.noise import NOISE_CLASSES, make_noise
from analog.normalize import (
    CLAMPS,
    LEARNED,
    check_bound,
    check_learned_range,
    check_normalization,
    learned_clamp,
    normalization_fn,
    saturation_mask,
)
from analog.policies import check_policy, functorch_active, get_policy, straight_through
from analog.precision import PRECISION_CLASSES, check_divide, check_precision, precision_fn

Stage = tuple[str, Callable[[Tensor], Tensor], str]  # (kind: "norm"|"precision"|"noise", fn, policy)

WEIGHT_RANGE_OPTIONS: dict[str, tuple[str, ...]] = {
    "weight_levels": ("absolute", "range"),
    "weight_init": ("default", "in_range"),
    "weight_bound": ("forward", "project"),
}
"""How the weight site uses its range `weight_clamp`; each option's first value is its default
(AnalogVNN's behaviour): see :class:`AnalogConfig`."""


def check_weight_range_options(
    weight_norm: str, weight_policy: str, weight_levels: str, weight_init: str, weight_bound: str
) -> None:
    """ValueError naming the field for an unknown value of a weight-range option, or a non-default one
    that the weight normalization (a clamp needed) or the weight policy (``project``: ``ste``) rules out."""
    given = {"weight_levels": weight_levels, "weight_init": weight_init, "weight_bound": weight_bound}
    for name, value in given.items():
        allowed = WEIGHT_RANGE_OPTIONS[name]
        if not isinstance(value, str) or value not in allowed:
            raise ValueError(f"{name}: unknown {value!r}; allowed: {', '.join(allowed)}")
        needs = ("clamp",) if name == "weight_init" else CLAMPS
        if value != allowed[0] and weight_norm not in needs:
            raise ValueError(
                f"{name}: {value!r} needs a weight range, i.e. weight_norm {' or '.join(needs)} "
                f"(weight_norm is {weight_norm!r}); leave it at {allowed[0]!r}"
            )
    if weight_bound == "project" and weight_policy != "ste":
        raise ValueError(
            f"weight_policy: moot with weight_bound 'project' (no clamp in the weight site's forward, so "
            f"the gradient passes unchanged); leave it at its default 'ste' (got {weight_policy!r})"
        )


@dataclass(frozen=True)
class AnalogConfig:
    """Analog effects of a layer. ``precision=None`` is full precision; ``noise="none"`` is noise-free.

    Noise strength follows AnalogVNN: `leakage` at `noise_precision` levels (default: `precision`).
    `weight_clamp` is the hardware weight range: a weight clamp clips weights and biases to
    [-weight_clamp, weight_clamp] (``clamp01``: [0, weight_clamp]); 1 is AnalogVNN's range.
    `weight_levels` says what the weight site's precision levels and noise refer to: ``absolute``
    (AnalogVNN's: steps of 1/precision whatever the range) or ``range`` (they act on w / weight_clamp,
    so the levels span the range, as a DAC or a conductance range would, and the noise's leakage is
    defined on those levels). `weight_init` ``in_range`` rescales each weight-site tensor into the range
    at initialisation (:func:`analog.models.init_in_range_`). `weight_bound` ``project`` drops the clamp
    from the weight site's forward; the trainer clips the parameters into the range after every
    optimizer step instead (:func:`project_weights`), so the weight gradient policy has nothing to act
    on and must stay at its default ``ste``. The three need a clamp (``clamp``; ``in_range``: ``clamp``
    only, whose range is symmetric) and leave AnalogVNN's behaviour at their defaults.
    ``signal_norm="learned_clamp"`` learns the signal range: each layer owns a bound per position
    (parameters ``signal_range_in``, and ``signal_range_out`` when its output is normalized), one per
    layer or, with `signal_range_per` ``channel``, one per channel, all starting at
    `signal_range_init` (:func:`analog.normalize.learned_clamp`: the signal policy acts on the gradient
    to the signals, the bound gets its true derivative).
    `signal_policy` is a policy name or a location spec (:mod:`analog.locations`), kept in its
    canonical string form.
    """

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
    weight_clamp: float = 1.0
    weight_levels: str = "absolute"
    weight_init: str = "default"
    weight_bound: str = "forward"
    signal_range_init: float = 1.0
    signal_range_per: str = "layer"

    def __post_init__(self) -> None:
        check_normalization(self.weight_norm, "weight_norm")
        check_normalization(self.signal_norm, "signal_norm")
        check_learned_range(self.signal_norm, self.signal_range_init, self.signal_range_per, self.weight_norm)
        check_bound(self.weight_norm, self.weight_clamp, "weight_clamp")
        check_policy(self.weight_policy, "weight_policy")
        check_weight_range_options(self.weight_norm, self.weight_policy, **self.weight_range_options)
        canonical = canonical_signal_policy(self.signal_policy, "signal_policy")
        object.__setattr__(self, "signal_policy", canonical)
        if self.precision_class not in PRECISION_CLASSES:
            raise ValueError(
                f"precision_class: unknown {self.precision_class!r}; allowed: {', '.join(PRECISION_CLASSES)}"
            )
        if self.precision is not None:
            check_precision(self.precision, "precision")
        check_divide(self.divide)
        if self.noise not in NOISE_CLASSES:
            raise ValueError(f"noise: unknown {self.noise!r}; allowed: {', '.join(NOISE_CLASSES)}")
        if self.noise != "none":
            if self.leakage is None:
                raise ValueError("leakage: required when noise is not 'none' (a value in (0, 1))")
            if self.effective_noise_precision is None:
                raise ValueError(
                    "noise_precision: required when precision is None (full precision) and noise is on"
                )
            make_noise(self.noise, self.leakage, self.effective_noise_precision)  # validates leakage

    @property
    def effective_noise_precision(self) -> int | None:
        return self.noise_precision if self.noise_precision is not None else self.precision

    @property
    def weight_range_options(self) -> dict[str, str]:
        """`weight_levels`, `weight_init` and `weight_bound` by name."""
        return {n: getattr(self, n) for n in WEIGHT_RANGE_OPTIONS}

    def to_dict(self) -> dict:
        return asdict(self)


class AnalogLayer(nn.Module):
    """What every analog layer shares: the weight pipeline on its kernel and bias, the signal pipeline
    before and after its operation, and one gradient policy per site (the signal site's per position).

    A subclass creates ``weight`` (and ``bias`` or None), initialises them (``reset_parameters``) and
    implements :meth:`_operation` (the matmul or convolution of the normalized input with W' and b').
    `role` (``hidden`` or ``readout``) and `index` (among the hidden layers) place the layer in a
    classifier, so that a location spec of the signal policy picks the layer's input and output
    policies; `normalize_output=False` leaves its output unnormalized (a digital readout: noise and
    precision still apply, the clamp does not).
    """

    weight: nn.Parameter
    bias: nn.Parameter | None

    def __init__(
        self,
        config: AnalogConfig | None = None,
        role: str | None = None,
        index: int = 0,
        normalize_output: bool = True,
    ) -> None:
        super().__init__()
        if role is not None and role not in ROLES:
            raise ValueError(f"role: unknown {role!r}; allowed: {', '.join(ROLES)}")
        self.config = config or AnalogConfig()
        self.role, self.index, self.normalize_output = role, index, normalize_output
        self.weight_policy = self.config.weight_policy
        self.signal_policy = self.config.signal_policy
        self.signal_tensors: dict[str, Tensor] | None = None  # pre-normalization signals while recording
        self.noise_enabled = True
        self.saturation: dict[str, Tensor] | None = None  # set to {} to record saturation fractions
        self._fixed: dict[str, Tensor | None] | None = None  # W', b' before noise, inside fixed_weights()

    def _build_effects(self) -> None:
        """The precision, noise and normalization functions of the config (after the parameters exist,
        in AnalogLinear's original attribute order)."""
        c = self.config
        self._precision = (
            None if c.precision is None else precision_fn(c.precision_class, c.precision, c.divide)
        )
        self._noise = (
            None if c.noise == "none" else make_noise(c.noise, c.leakage, c.effective_noise_precision)
        )
        self._wnorm = normalization_fn(c.weight_norm, c.weight_clamp)
        self._snorm = normalization_fn(c.signal_norm)
        # range mode: the weight site's precision and noise act on w / c (at c = 1 nothing changes)
        self._wscale = c.weight_clamp if c.weight_levels == "range" and c.weight_clamp != 1 else None
        if c.signal_norm in LEARNED:  # the learned signal ranges, after weight and bias
            positions = ("in", "out") if self.normalize_output else ("in",)
            for position in positions:
                init = torch.full(self._range_shape(position), float(c.signal_range_init))
                setattr(self, f"signal_range_{position}", nn.Parameter(init))

    def _range_shape(self, position: str) -> tuple[int, ...]:
        """Shape of the learned bound at `position` (``in``/``out``): () per layer; per channel, one per
        input/output feature (linear) or channel (convolutions, broadcast over the spatial dims)."""
        if self.config.signal_range_per == "layer":
            return ()
        n = getattr(self, f"{position}_features", None) or getattr(self, f"{position}_channels")
        return (n,) + (1,) * getattr(self, "dims", 0)

    def _learned_norm(self, site: str, policy: str) -> Callable[[Tensor], Tensor]:
        """The learned clamp of signal `site` (``signal_in``/``signal_out``), its bound read at call
        time (a seed bundle's functional call swaps the parameters in)."""
        alpha = getattr(self, "signal_range_" + site.removeprefix("signal_"))

        def norm(x: Tensor) -> Tensor:
            return learned_clamp(x, alpha, policy)

        return norm

    @property
    def signal_policy(self) -> str:
        """The layer's signal policies: one name, or ``input=P,output=Q`` when its positions differ."""
        a, b = self.signal_policy_input, self.signal_policy_output
        return a if a == b else f"input={a},output={b}"

    @signal_policy.setter
    def signal_policy(self, value: str) -> None:
        """Set both positions from a policy name or a location spec (resolved at this layer's location)."""
        self.signal_policy_input, self.signal_policy_output = layer_signal_policies(
            value, self.role, self.index
        )

    def reset_parameters(self) -> None:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def _operation(self, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    # -- pipelines -----------------------------------------------------------------------------------

    def _stages(
        self,
        order: tuple[str, ...],
        norm: Callable[[Tensor], Tensor],
        norm_kind: str,
        policy: str,
        weight_site: bool = False,
    ) -> list[Stage]:
        stages: list[Stage] = []
        precision = self._precision
        noise = None if self._noise is None else self._noise.sample
        if weight_site and self._wscale is not None:
            precision = None if precision is None else _relative(precision, self._wscale)
            noise = None if noise is None else _relative(noise, self._wscale)
        for step in order:
            if step == "norm" and norm_kind != "none":
                stages.append(("norm", norm, policy))
            elif step == "precision" and precision is not None:
                stages.append(("precision", precision, "ste"))
            elif step == "noise" and noise is not None and self.noise_enabled:
                stages.append(("noise", noise, "ste"))
        return stages

    def _run_stages(self, stages: list[Stage], x: Tensor, site: str, norm_kind: str) -> Tensor:
        tracking = self.saturation is not None
        i = 0
        while i < len(stages):
            kind, fn, policy = stages[i]
            if tracking and kind == "norm":
                bound = self.config.weight_clamp if site in ("weight", "bias") else 1.0
                if norm_kind in LEARNED:
                    alpha = getattr(self, "signal_range_" + site.removeprefix("signal_")).detach()
                    mask = x.detach().abs() > alpha
                else:
                    mask = saturation_mask(x.detach(), norm_kind, bound)
                self.saturation[site] = mask.float().mean()
                if self.signal_tensors is not None and site.startswith("signal"):
                    self.signal_tensors[site] = x
            if policy == "ste" and not tracking:
                fns, elementwise = [fn], self._elementwise(kind, norm_kind)
                while i + 1 < len(stages) and stages[i + 1][2] == "ste":
                    i += 1
                    fns.append(stages[i][1])
                    elementwise = elementwise and self._elementwise(stages[i][0], norm_kind)
                x = straight_through(_compose(fns), x, elementwise)
            else:
                x = get_policy(policy)(fn, x)
            i += 1
        return x

    @staticmethod
    def _elementwise(kind: str, norm_kind: str) -> bool:
        """Whether a stage acts element by element: precision, noise, and the clamps (not Lp norms)."""
        return kind != "norm" or norm_kind in CLAMPS

    def _draws(self, kind: str) -> bool:
        """Whether the stage `kind` draws random numbers (noise; stochastic rounding)."""
        return kind == "noise" or (kind == "precision" and self.config.precision_class == "stochastic")

    def transformed_parameters(self) -> tuple[Tensor, Tensor | None]:
        """W' and b' as the hardware sees them (normalized, quantised, noisy).

        Inside :func:`fixed_weights` (no autograd, no torch.func transform), the stages before the first
        random one (normalization, and deterministic rounding) are computed once; the random ones
        (stochastic rounding, noise) run again at each call, at the same point of the random stream:
        the same values as computing it all again.
        """
        c = self.config
        kind = "none" if c.weight_bound == "project" else c.weight_norm  # project: no clamp in the forward
        stages = self._stages(("norm", "precision", "noise"), self._wnorm, kind, self.weight_policy, True)
        if self._fixed is not None and not torch.is_grad_enabled() and not functorch_active():
            # the stages before the first one that draws random numbers (noise, stochastic rounding)
            n = next((i for i, s in enumerate(stages) if self._draws(s[0])), len(stages))
            if not self._fixed:
                fixed = stages[:n]
                self._fixed["weight"] = self._run_stages(fixed, self.weight, "weight", kind)
                self._fixed["bias"] = (
                    None if self.bias is None else self._run_stages(fixed, self.bias, "bias", kind)
                )
            stages = stages[n:]
            w0, b0 = self._fixed["weight"], self._fixed["bias"]
        else:
            w0, b0 = self.weight, self.bias
        w = self._run_stages(stages, w0, "weight", kind)
        b = None if b0 is None else self._run_stages(stages, b0, "bias", kind)
        return w, b

    def forward(self, x: Tensor) -> Tensor:
        c = self.config
        order = ("norm", "precision", "noise")
        snorm_in, policy_in = self._snorm, self.signal_policy_input
        snorm_out, policy_out = self._snorm, self.signal_policy_output
        if c.signal_norm in LEARNED:  # the policy acts inside learned_clamp; autograd through it
            snorm_in, policy_in = self._learned_norm("signal_in", policy_in), "exact"
            if self.normalize_output:
                snorm_out, policy_out = self._learned_norm("signal_out", policy_out), "exact"
        in_stages = self._stages(order, snorm_in, c.signal_norm, policy_in)
        x = self._run_stages(
            in_stages,
            x,
            "signal_in",
            c.signal_norm,
        )
        w, b = self.transformed_parameters()
        y = self._operation(x, w, b)
        out_norm = c.signal_norm if self.normalize_output else "none"
        return self._run_stages(
            self._stages(("noise", "norm", "precision"), snorm_out, out_norm, policy_out),
            y,
            "signal_out",
            out_norm,
        )

    def _shape_repr(self) -> str:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def extra_repr(self) -> str:
        c = self.config
        where = "" if self.role is None else f"role={self.role}, "
        out = "" if self.normalize_output else ", output not normalized"
        return (
            f"{self._shape_repr()}, {where}"
            f"weight={c.weight_norm}/{self.weight_policy}, signal={c.signal_norm}/{self.signal_policy}{out}, "
            f"precision={c.precision_class}:{c.precision}, noise={c.noise}:{c.leakage}"
        )


class AnalogLinear(AnalogLayer):
    """A fully connected layer with AnalogVNN's analog signal and weight pipelines (:class:`AnalogLayer`)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        config: AnalogConfig | None = None,
        role: str | None = None,
        index: int = 0,
        normalize_output: bool = True,
    ) -> None:
        super().__init__(config, role, index, normalize_output)
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self._build_effects()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """AnalogVNN's Linear init: Xavier-uniform weight, bias U(±1/sqrt(fan_in))."""
        nn.init.xavier_uniform_(self.weight)
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features) if self.in_features > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)

    def _operation(self, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        return F.linear(x, w, b)

    def _shape_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


def _size(value: int | tuple[int, ...], dims: int, name: str, minimum: int) -> tuple[int, ...]:
    """An int or a tuple of `dims` ints, each >= `minimum`, as a tuple (ValueError naming `name`)."""
    values = (value,) * dims if isinstance(value, int) and not isinstance(value, bool) else tuple(value)
    if len(values) != dims or any(
        not isinstance(v, int) or isinstance(v, bool) or v < minimum for v in values
    ):
        raise ValueError(f"{name}: expected an int >= {minimum} or {dims} of them, got {value!r}")
    return values


class _AnalogConvNd(AnalogLayer):
    """A convolution with AnalogVNN's pipelines: the weight pipeline on the kernel and bias, the signal
    pipeline on the input feature map (before the convolution) and on the output feature map (after it).

    Row-wise Lp norms treat each output channel's kernel (weights) and each example's feature map
    (signals) as one row, as AnalogVNN's ``LPNorm`` does for any tensor with more than one dimension.
    Initialisation is ``torch.nn.ConvNd``'s (Kaiming-uniform with a = sqrt 5, bias U(±1/sqrt(fan_in)));
    :func:`analog.models.build_cnn` then re-initialises the kernel for its activation, as AnalogVNN does.
    """

    dims: int
    _conv: Callable[..., Tensor]

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, ...],
        stride: int | tuple[int, ...] = 1,
        padding: int | tuple[int, ...] = 0,
        bias: bool = True,
        config: AnalogConfig | None = None,
        role: str | None = None,
        index: int = 0,
        normalize_output: bool = True,
    ) -> None:
        super().__init__(config, role, index, normalize_output)
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {v!r}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = _size(kernel_size, self.dims, "kernel_size", 1)
        self.stride = _size(stride, self.dims, "stride", 1)
        self.padding = _size(padding, self.dims, "padding", 0)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self._build_effects()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torch.nn.ConvNd's init: Kaiming-uniform (a = sqrt 5) kernel, bias U(±1/sqrt(fan_in))."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.in_channels * math.prod(self.kernel_size)
            bound = 1 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)

    def _operation(self, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        return type(self)._conv(x, w, b, self.stride, self.padding)

    def output_size(self, size: tuple[int, ...]) -> tuple[int, ...]:
        """Spatial size of the output for an input of spatial size `size` (torch's formula)."""
        return tuple(
            (n + 2 * p - k) // s + 1
            for n, k, s, p in zip(size, self.kernel_size, self.stride, self.padding, strict=True)
        )

    def _shape_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}"
        )


class AnalogConv1d(_AnalogConvNd):
    """1-D convolution over (batch, channels, length) with AnalogVNN's pipelines (:class:`AnalogLayer`)."""

    dims = 1
    _conv = staticmethod(F.conv1d)


class AnalogConv2d(_AnalogConvNd):
    """2-D convolution over (batch, channels, height, width) with AnalogVNN's pipelines."""

    dims = 2
    _conv = staticmethod(F.conv2d)


def _relative(fn: Callable[[Tensor], Tensor], scale: float) -> Callable[[Tensor], Tensor]:
    """`fn` acting on x / scale, its result scaled back: scale * fn(x / scale) (range-relative levels)."""

    def relative(x: Tensor) -> Tensor:
        return fn(x / scale) * scale

    return relative


def _compose(fns: list[Callable[[Tensor], Tensor]]) -> Callable[[Tensor], Tensor]:
    if len(fns) == 1:
        return fns[0]

    def composed(x: Tensor) -> Tensor:
        for fn in fns:
            x = fn(x)
        return x

    return composed


def analog_layers(model: nn.Module) -> list[AnalogLayer]:
    """The analog layers (linear and convolutional) of `model`, in order."""
    return [m for m in model.modules() if isinstance(m, AnalogLayer)]


def set_policies(
    model: nn.Module, weight_policy: str | None = None, signal_policy: str | None = None
) -> None:
    """Switch the gradient policies of every analog layer in `model` (forward values are unchanged).

    `signal_policy` may be a location spec (:mod:`analog.locations`): each layer takes the policies of
    its own role and position.
    """
    if signal_policy is not None:
        signal_policy = canonical_signal_policy(signal_policy, "signal_policy")
    for layer in analog_layers(model):
        if weight_policy is not None:
            layer.weight_policy = check_policy(weight_policy, "weight_policy")
        if signal_policy is not None:
            layer.signal_policy = signal_policy


@contextmanager
def fixed_weights(model: nn.Module) -> Iterator[nn.Module]:
    """Within this block the parameters of `model` do not change (evaluation over many batches): each
    analog layer runs its weight pipeline's deterministic stages (normalization, and rounding unless it
    is stochastic) once, at its first forward call without autograd, and the random ones again per
    call (as AnalogVNN draws them: the values and the random stream are those of running the whole
    pipeline each time). Parameters changed inside the block are not seen; leaving it drops the cached
    weights. Nested blocks share the outer one.
    """
    layers = [layer for layer in analog_layers(model) if layer._fixed is None]
    for layer in layers:
        layer._fixed = {}
    try:
        yield model
    finally:
        for layer in layers:
            layer._fixed = None


def weight_bounds(model: nn.Module) -> dict[str, tuple[float, float]]:
    """The interval each weight-site parameter of `model` is projected into, by its name in
    ``model.named_parameters()``: the range of every analog layer whose `weight_bound` is ``project``
    ([-c, c]; ``clamp01``: [0, c])."""
    names = {id(p): n for n, p in model.named_parameters()}
    out: dict[str, tuple[float, float]] = {}
    for layer in analog_layers(model):
        c = layer.config
        if c.weight_bound == "project":
            lo = 0.0 if c.weight_norm == "clamp01" else -c.weight_clamp
            for p in (layer.weight, layer.bias):
                if p is not None and id(p) in names:
                    out[names[id(p)]] = (lo, c.weight_clamp)
    return out


@torch.no_grad()
def project_weights(model: nn.Module) -> None:
    """Clip, in place, the weight-site parameters of every analog layer in ``project`` mode into its
    range (:func:`weight_bounds`); called after each optimizer step, and on the initial weights."""
    params = dict(model.named_parameters())
    for name, (lo, hi) in weight_bounds(model).items():
        params[name].clamp_(lo, hi)


def set_noise(model: nn.Module, enabled: bool) -> None:
    """Turn the analog noise of every analog layer in `model` on or off."""
    for layer in analog_layers(model):
        layer.noise_enabled = enabled
