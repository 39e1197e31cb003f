"""AnalogVNN's linear classifiers, small CNNs (and their digital twins) from `analog` layers."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
from torch import nn

from analog.layers import AnalogConfig, AnalogConv1d, AnalogConv2d, AnalogLinear
from analog.locations import check_hidden_count
from analog.normalize import output_range

ACTIVATIONS: tuple[str, ...] = ("none", "relu", "leakyrelu", "tanh", "elu", "silu", "gelu", "gelu_analogvnn")
SAMPLE_HIDDEN: tuple[int, ...] = (256, 128)  # AnalogVNN's sample code: 784-256-128-10
PAPER_HIDDEN: tuple[int, ...] = (128, 64)  # AnalogVNN paper: 784-128-64-10
READOUTS: tuple[str, ...] = ("analog", "digital", "scaled", "digital_act")
"""How the last layer is read out: ``analog`` (AnalogVNN's sample: its output is normalized like every
signal, then the activation), ``digital`` (no normalization and no activation after the last layer:
unbounded logits, as when an ADC feeds a digital softmax), ``scaled`` (the analog readout times a
fixed scale chosen by :func:`readout_scale`, which lowers the cross-entropy floor of bounded logits) or
``digital_act`` (no normalization after the last layer, the activation kept: separates the clamp's
part of the analog readout from the activation's)."""
UNNORMALIZED_READOUTS: tuple[str, ...] = ("digital", "digital_act")
"""Read-outs whose last layer's output is not normalized (no output clamp at the readout)."""
SCALED_READOUT_FLOOR = 0.01
"""Cross-entropy floor (nats) the ``scaled`` readout's scale brings the bounded logits down to."""


class _AnalogVNNGeLUFunction(torch.autograd.Function):
    """GeLU forward; AnalogVNN 1.0.8's GeLU backward, which multiplies the Gaussian term by sqrt(2 pi)
    where the true derivative divides by it: (1 + erf(x / sqrt 2)) / 2 + x sqrt(2 pi) e^(-x^2/2) / 2."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.gelu(x)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # noqa: ANN001 - autograd signature
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        (x,) = ctx.saved_tensors
        slope = 0.5 * (
            (1 + torch.erf(x / math.sqrt(2))) + x * (math.sqrt(2 * math.pi) * torch.exp(-x.pow(2) / 2))
        )
        return grad * slope


class AnalogVNNGeLU(nn.Module):
    """`gelu_analogvnn`: the GeLU value with AnalogVNN 1.0.8's (incorrect) GeLU backward, so that a study
    can reproduce training exactly as AnalogVNN's sample code back-propagates it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _AnalogVNNGeLUFunction.apply(x)


def make_activation(name: str) -> nn.Module:
    """The activation `name` with AnalogVNN's forward (its ELU uses alpha = 1.0507)."""
    table = {
        "none": nn.Identity,
        "relu": nn.ReLU,
        "leakyrelu": lambda: nn.LeakyReLU(0.01),
        "tanh": nn.Tanh,
        "elu": lambda: nn.ELU(alpha=1.0507),
        "silu": nn.SiLU,
        "gelu": nn.GELU,
        "gelu_analogvnn": AnalogVNNGeLU,
    }
    if name not in table:
        raise ValueError(f"activation: unknown {name!r}; allowed: {', '.join(ACTIVATIONS)}")
    return table[name]()


def init_weight_for(weight: torch.Tensor, activation: str) -> None:
    """AnalogVNN re-initialises each layer's weight with its activation's ``initialise_``."""
    if activation in ("relu", "leakyrelu"):
        nonlinearity = "relu" if activation == "relu" else "leaky_relu"
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5), nonlinearity=nonlinearity)
    elif activation == "tanh":
        nn.init.xavier_uniform_(weight, gain=nn.init.calculate_gain("tanh"))
    elif activation == "elu":
        nn.init.xavier_uniform_(weight, gain=nn.init.calculate_gain("selu"))
    else:
        nn.init.xavier_uniform_(weight)


def init_in_range_(layer: nn.Module) -> None:
    """``weight_init: in_range``: rescale an analog layer's initial weight and bias, each tensor on its
    own, by c / max|p| where its largest magnitude exceeds the range c (`weight_clamp`), so that every
    initial weight-site parameter lies in [-c, c] (the distribution's shape is kept; the largest lands
    on the edge, where the clamp's derivative is still 1). Other layers, and the ``default`` init, are
    left as they are; no random number is drawn. Idempotent (compared in the tensor's dtype)."""
    config = getattr(layer, "config", None)
    if not isinstance(config, AnalogConfig) or config.weight_init != "in_range":
        return
    c = config.weight_clamp
    with torch.no_grad():
        for p in (layer.weight, layer.bias):
            if p is not None and bool((p.abs() > c).any()):
                p.mul_(c / float(p.abs().max())).clamp_(-c, c)  # the clamp only undoes a last-bit rounding


@functools.lru_cache(maxsize=256)
def logit_bounds(signal_norm: str, activation: str, final_activation: bool = True) -> tuple[float, float]:
    """(lowest, highest) logit an analog readout can emit: the activation over the normalization's range.

    With a clamp and GeLU, [-0.17, 0.84]. Computed on a fine grid (the activation is continuous).
    Raises `ValueError` for an unbounded normalization. Cached: every trial config of a study checks it
    (a normalization registered again under the same name keeps its first bounds).
    """
    bounds = output_range(signal_norm)
    if bounds is None:
        raise ValueError(
            f"signal_norm: {signal_norm!r} has no bounded output range, so the readout's logits are not "
            "bounded (the scaled readout needs a bounded normalization such as clamp)"
        )
    grid = torch.linspace(*bounds, 200_001, dtype=torch.float64)
    act = make_activation(activation if final_activation else "none")
    with torch.no_grad():
        values = act(grid)
    return float(values.min()), float(values.max())


def cross_entropy_floor(logit_range: float, n_classes: int) -> float:
    """Lowest cross-entropy any example can reach when its logits span at most `logit_range`:
    the true class at the top, the other n-1 at the bottom: log(1 + (n-1) exp(-range))."""
    return math.log1p((n_classes - 1) * math.exp(-logit_range))


def readout_scale(
    signal_norm: str,
    activation: str,
    n_classes: int,
    final_activation: bool = True,
    floor: float = SCALED_READOUT_FLOOR,
) -> float:
    """The fixed logit scale s of the ``scaled`` readout: the smallest s for which the bounded logits
    times s have a cross-entropy floor of `floor` nats, s = log((n-1) / (e^floor - 1)) / range.

    With a clamp, GeLU and 10 classes the analog readout's floor is 1.45 nats; s = 6.72 brings it to
    0.01. A fixed scale (not a learned one) keeps the forward's argmax, hence accuracy at any given
    weights, identical to the analog readout's, and adds no parameter the gradient policies could act on.
    """
    if not (math.isfinite(floor) and floor > 0):
        raise ValueError(f"floor: must be a finite number > 0 (nats), got {floor!r}")
    if n_classes < 2:
        raise ValueError(f"n_classes: the scaled readout needs at least 2 classes, got {n_classes}")
    lo, hi = logit_bounds(signal_norm, activation, final_activation)
    return math.log((n_classes - 1) / math.expm1(floor)) / (hi - lo)


class LogitScale(nn.Module):
    """Multiply by a fixed scale (no parameter: the same under any gradient policy)."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale: must be a finite number > 0, got {scale!r}")
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale

    def extra_repr(self) -> str:
        return f"scale={self.scale:.6g}"


def _digital_linear(n_in: int, n_out: int) -> nn.Linear:
    layer = nn.Linear(n_in, n_out)
    with torch.no_grad():
        nn.init.xavier_uniform_(layer.weight)
        bound = 1 / math.sqrt(n_in)
        nn.init.uniform_(layer.bias, -bound, bound)
    return layer


def _check_head(activation: str, config: AnalogConfig | None, digital: bool, readout: str) -> AnalogConfig:
    make_activation(activation)  # validate early
    if readout not in READOUTS:
        raise ValueError(f"readout: unknown {readout!r}; allowed: {', '.join(READOUTS)}")
    if digital and readout != "analog":
        raise ValueError(f"readout: {readout!r} needs an analog network (digital=True has no readout clamp)")
    return config or AnalogConfig()


def _dense_layers(
    sizes: Sequence[int],
    activation: str,
    config: AnalogConfig,
    digital: bool,
    final_activation: bool,
    readout: str,
    first_index: int = 0,
) -> list[nn.Module]:
    """(linear -> activation) per consecutive pair of `sizes`, the last one the readout; the hidden ones
    numbered from `first_index` (their position among all hidden layers, for location specs)."""
    layers: list[nn.Module] = []
    n_layers = len(sizes) - 1
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        last = i == n_layers - 1
        if digital:
            layer: nn.Module = _digital_linear(a, b)
        else:
            layer = AnalogLinear(
                a,
                b,
                config=config,
                role="readout" if last else "hidden",
                index=0 if last else first_index + i,
                normalize_output=not (last and readout in UNNORMALIZED_READOUTS),
            )
        with torch.no_grad():
            init_weight_for(layer.weight, activation)
        init_in_range_(layer)
        layers.append(layer)
        if not last or (final_activation and readout != "digital"):
            layers.append(make_activation(activation))
    return layers


def _readout_tail(
    readout: str, config: AnalogConfig, activation: str, n_classes: int, final_activation: bool, floor: float
) -> list[nn.Module]:
    """What follows the last layer's activation: the fixed logit scale of the ``scaled`` readout, else
    nothing (computed before any layer is built, so a readout that cannot be scaled fails first)."""
    if readout != "scaled":
        return []
    return [LogitScale(readout_scale(config.signal_norm, activation, n_classes, final_activation, floor))]


def build_classifier(
    in_features: int | Sequence[int] = 784,
    n_classes: int = 10,
    hidden: Sequence[int] = SAMPLE_HIDDEN,
    activation: str = "gelu",
    config: AnalogConfig | None = None,
    digital: bool = False,
    final_activation: bool = True,
    readout: str = "analog",
    readout_floor: float = SCALED_READOUT_FLOOR,
) -> nn.Sequential:
    """Flatten -> (AnalogLinear -> activation) per layer, as AnalogVNN's ``LinearModel``.

    `in_features` may be an input shape (it is flattened). `digital=True` builds the same network
    with plain ``nn.Linear`` layers and no analog effect (the baseline). AnalogVNN's sample code
    applies the activation after the last layer too (`final_activation=True`). `readout` (one of
    `READOUTS`) says how the last layer is read out; ``digital`` has no final activation whatever
    `final_activation` says. The layers get their roles (hidden, readout) so that a location spec of
    the signal policy (:mod:`analog.locations`) applies by location.
    """
    config = _check_head(activation, config, digital, readout)
    n_in = in_features if isinstance(in_features, int) else math.prod(in_features)
    sizes = [n_in, *hidden, n_classes]
    layers: list[nn.Module] = [nn.Flatten(start_dim=1)]
    if not digital:
        check_hidden_count(config.signal_policy, len(hidden))
    tail = _readout_tail(readout, config, activation, n_classes, final_activation, readout_floor)
    layers += _dense_layers(sizes, activation, config, digital, final_activation, readout)
    return nn.Sequential(*layers, *tail)


CNN_POOL = 2
"""Each convolution block ends in a max-pool of this size and stride (halving every spatial size)."""


def conv_padding(kernel_size: int) -> int:
    """The zero padding of every convolution of :func:`build_cnn`: ``kernel_size // 2`` ("same" for odd
    kernels: the block keeps the spatial size, and the pool halves it)."""
    return kernel_size // 2


def cnn_feature_shape(
    input_shape: Sequence[int], channels: Sequence[int], kernel_size: int
) -> tuple[int, ...]:
    """(channels, *spatial) after the convolution blocks of :func:`build_cnn` for inputs of `input_shape`
    ((C, L) or (C, H, W)); `ValueError` naming the field when a block would leave no spatial extent."""
    shape = tuple(int(n) for n in input_shape)
    if len(shape) not in (2, 3) or any(n < 1 for n in shape):
        raise ValueError(
            "input_shape: a CNN needs (channels, length) or (channels, height, width), "
            f"got {tuple(input_shape)}"
        )
    if not channels or any(not isinstance(c, int) or isinstance(c, bool) or c < 1 for c in channels):
        raise ValueError(f"channels: expected one or more ints >= 1 (one per block), got {list(channels)}")
    if not isinstance(kernel_size, int) or isinstance(kernel_size, bool) or kernel_size < 1:
        raise ValueError(f"kernel_size: expected an int >= 1, got {kernel_size!r}")
    spatial = shape[1:]
    pad = conv_padding(kernel_size)
    for i in range(len(channels)):
        conv = tuple(n + 2 * pad - kernel_size + 1 for n in spatial)
        if min(conv) < CNN_POOL:
            raise ValueError(
                f"channels: block {i + 1} of {len(channels)} gets a feature map of size {spatial} with "
                f"kernel_size {kernel_size}, too small for its {CNN_POOL}-wide pool; use fewer blocks "
                f"(input shape {shape})"
            )
        spatial = tuple(n // CNN_POOL for n in conv)
    return (channels[-1], *spatial)


def build_cnn(
    input_shape: Sequence[int],
    n_classes: int = 10,
    channels: Sequence[int] = (4, 8),
    kernel_size: int = 3,
    hidden: Sequence[int] = (),
    activation: str = "gelu",
    config: AnalogConfig | None = None,
    digital: bool = False,
    final_activation: bool = True,
    readout: str = "analog",
    readout_floor: float = SCALED_READOUT_FLOOR,
) -> nn.Sequential:
    """A small convolutional classifier: flat inputs reshaped to `input_shape` ((C, L): 1-D convolutions;
    (C, H, W): 2-D), then per entry of `channels` a block (analog convolution with `kernel_size` and
    "same" padding -> activation -> max-pool 2), then Flatten and an analog linear head
    (`hidden` layers, then the readout) as in :func:`build_classifier`.

    The convolutions are the hidden layers 0 .. len(channels)-1 of a location spec, the head's hidden
    layers follow. Each kernel is re-initialised for the activation (AnalogVNN's ``initialise_``).
    `digital=True` builds the same network from ``torch.nn`` layers with no analog effect.
    """
    config = _check_head(activation, config, digital, readout)
    feature_shape = cnn_feature_shape(input_shape, channels, kernel_size)
    dims = len(input_shape) - 1
    n_hidden = len(channels) + len(hidden)
    if not digital:
        check_hidden_count(config.signal_policy, n_hidden)
    tail = _readout_tail(readout, config, activation, n_classes, final_activation, readout_floor)
    layers: list[nn.Module] = [nn.Unflatten(1, tuple(int(n) for n in input_shape))]
    pool = nn.MaxPool1d if dims == 1 else nn.MaxPool2d
    digital_conv = nn.Conv1d if dims == 1 else nn.Conv2d
    analog_conv = AnalogConv1d if dims == 1 else AnalogConv2d
    c_in = int(input_shape[0])
    for i, c_out in enumerate(channels):
        pad = conv_padding(kernel_size)
        if digital:
            conv: nn.Module = digital_conv(c_in, c_out, kernel_size, padding=pad)
        else:
            conv = analog_conv(c_in, c_out, kernel_size, padding=pad, config=config, role="hidden", index=i)
        with torch.no_grad():
            init_weight_for(conv.weight, activation)
        init_in_range_(conv)
        layers += [conv, make_activation(activation), pool(CNN_POOL)]
        c_in = c_out
    layers.append(nn.Flatten(start_dim=1))
    sizes = [math.prod(feature_shape), *hidden, n_classes]
    layers += _dense_layers(sizes, activation, config, digital, final_activation, readout, len(channels))
    return nn.Sequential(*layers, *tail)
