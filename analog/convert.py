"""Convert any ``torch.nn`` network to an analog one: each Linear / Conv1d / Conv2d becomes its analog layer.

:func:`convert` deep-copies the model and replaces every chosen ``nn.Linear``, ``nn.Conv1d`` and
``nn.Conv2d`` (exact types; subclasses keep their own forward and are left alone) by
:class:`~analog.layers.AnalogLinear`, :class:`~analog.layers.AnalogConv1d` or
:class:`~analog.layers.AnalogConv2d` with the same weights and biases (same device, dtype and
``requires_grad``). Each converted layer carries AnalogVNN's pipelines around its operation (signal
in -> [norm, precision, noise] -> op(W', b') -> [noise, norm, precision]); everything else (BatchNorm,
residual additions, pooling, activations, custom blocks) is untouched. With every effect off
(:data:`DIGITAL_CONFIG`) the converted model computes exactly what the original does.

As in :func:`analog.models.build_classifier`, one layer is the read-out (role ``readout``; by default the
last Linear / Conv of the model in module order) and the others are hidden layers numbered in module
order, so a location spec of the signal policy (:mod:`analog.locations`) applies by location. `readout`
(one of :data:`analog.models.READOUTS`) says how the read-out layer's output is read: ``analog``
(normalized like every signal), ``digital`` and ``digital_act`` (not normalized; the same here: the
activation after the read-out is the model's own) or ``scaled`` (the analog
read-out times the fixed scale of :func:`analog.models.readout_scale`). Unlike the built-in classifiers,
the activation after the read-out is the model's own: ``scaled`` assumes none follows (the read-out
layer's output is the model's output).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from analog.layers import AnalogConfig, AnalogConv1d, AnalogConv2d, AnalogLayer, AnalogLinear
from analog.locations import check_hidden_count
from analog.models import READOUTS, SCALED_READOUT_FLOOR, UNNORMALIZED_READOUTS, readout_scale

CONVERTIBLE: dict[type[nn.Module], type[AnalogLayer]] = {
    nn.Linear: AnalogLinear,
    nn.Conv1d: AnalogConv1d,
    nn.Conv2d: AnalogConv2d,
}
"""The ``torch.nn`` layer types :func:`convert` replaces, and their analog equivalents."""

DIGITAL_CONFIG = AnalogConfig(
    weight_norm="none", signal_norm="none", precision=None, noise="none", leakage=None, signal_policy="exact"
)
"""Every analog effect off: a model converted with it computes exactly what the original computes."""


class _ScaledOutput:
    """Mixin of the ``scaled`` read-out: the analog layer's output times a fixed scale (no parameter)."""

    logit_scale: float

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x) * self.logit_scale  # type: ignore[misc]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, logit_scale={self.logit_scale:.6g}"  # type: ignore[misc]


class ScaledAnalogLinear(_ScaledOutput, AnalogLinear):
    """AnalogLinear read-out whose output is multiplied by a fixed logit scale (``readout="scaled"``)."""


class ScaledAnalogConv1d(_ScaledOutput, AnalogConv1d):
    """AnalogConv1d read-out whose output is multiplied by a fixed logit scale."""


class ScaledAnalogConv2d(_ScaledOutput, AnalogConv2d):
    """AnalogConv2d read-out whose output is multiplied by a fixed logit scale."""


_SCALED: dict[type[AnalogLayer], type[AnalogLayer]] = {
    AnalogLinear: ScaledAnalogLinear,
    AnalogConv1d: ScaledAnalogConv1d,
    AnalogConv2d: ScaledAnalogConv2d,
}


def convertible_layers(model: nn.Module, types: Iterable[type[nn.Module]] | None = None) -> list[str]:
    """Qualified names of the layers of `model` that :func:`convert` can replace, in module order."""
    allowed = _check_types(types)
    return [name for name, m in model.named_modules() if type(m) in allowed]


def _check_types(types: Iterable[type[nn.Module]] | None) -> tuple[type[nn.Module], ...]:
    if types is None:
        return tuple(CONVERTIBLE)
    out = tuple(types)
    bad = [t for t in out if t not in CONVERTIBLE]
    if bad or not out:
        shown = getattr(bad[0], "__name__", repr(bad[0])) if bad else "nothing"
        raise ValueError(
            f"types: cannot convert {shown}; allowed: {', '.join(t.__name__ for t in CONVERTIBLE)}"
        )
    return out


def _covers(pattern: str, name: str) -> bool:
    """Whether the qualified module name `pattern` is `name` or a module that contains it."""
    return pattern == "" or name == pattern or name.startswith(pattern + ".")


def _check_names(field: str, names: Iterable[str], model: nn.Module, candidates: list[str]) -> list[str]:
    names = [names] if isinstance(names, str) else list(names)
    modules = dict(model.named_modules())
    for n in names:
        if not isinstance(n, str) or n not in modules or not any(_covers(n, c) for c in candidates):
            what = "no module of the model" if n not in modules else "no convertible layer in it"
            raise ValueError(
                f"{field}: {n!r} names {what}; convertible layers: {', '.join(candidates) or 'none'}"
            )
    return names


def _padding(layer: nn.Conv1d | nn.Conv2d, name: str) -> tuple[int, ...]:
    """The conv's padding as ints ('valid': 0, 'same': (k - 1) / 2 for odd kernels); ValueError else."""
    if not isinstance(layer.padding, str):
        return tuple(layer.padding)
    if layer.padding == "valid":
        return (0,) * len(layer.kernel_size)
    if all(k % 2 == 1 for k in layer.kernel_size):
        return tuple((k - 1) // 2 for k in layer.kernel_size)
    raise ValueError(
        f"model: layer {name!r} has padding='same' with an even kernel {layer.kernel_size}, which the analog "
        f"convolution cannot express; exclude it (exclude=[{name!r}]) or give explicit padding"
    )


def _analog_twin(
    layer: nn.Module,
    name: str,
    cls: type[AnalogLayer],
    config: AnalogConfig,
    role: str,
    index: int,
    out_norm: bool,
) -> AnalogLayer:
    """An analog layer with `layer`'s shape, weights and bias (built without touching the RNG stream)."""
    bias = layer.bias is not None
    kw = {"config": config, "role": role, "index": index, "normalize_output": out_norm}
    if isinstance(layer, nn.Linear):
        with torch.random.fork_rng(devices=[]):
            new = cls(layer.in_features, layer.out_features, bias=bias, **kw)
    else:
        unsupported = [
            f"{attr}={value!r}"
            for attr, value, plain in (
                ("groups", layer.groups, 1),
                ("dilation", tuple(layer.dilation), (1,) * len(layer.kernel_size)),
                ("padding_mode", layer.padding_mode, "zeros"),
            )
            if value != plain
        ]
        if unsupported:
            raise ValueError(
                f"model: layer {name!r} ({type(layer).__name__}) has {', '.join(unsupported)}, which the "
                f"analog convolution does not support; exclude it (exclude=[{name!r}])"
            )
        with torch.random.fork_rng(devices=[]):
            new = cls(
                layer.in_channels,
                layer.out_channels,
                tuple(layer.kernel_size),
                stride=tuple(layer.stride),
                padding=_padding(layer, name),
                bias=bias,
                **kw,
            )
    w = layer.weight
    new = new.to(device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        new.weight.requires_grad_(w.requires_grad)
        if bias:
            new.bias.copy_(layer.bias)
            new.bias.requires_grad_(layer.bias.requires_grad)
    new.train(layer.training)
    return new


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name), attr, module)


def convert(
    model: nn.Module,
    config: AnalogConfig | None = None,
    *,
    include: Iterable[str] | None = None,
    exclude: Iterable[str] = (),
    types: Iterable[type[nn.Module]] | None = None,
    readout: str = "analog",
    readout_layer: str | None = None,
    readout_floor: float = SCALED_READOUT_FLOOR,
) -> nn.Module:
    """A deep copy of `model` whose Linear / Conv1d / Conv2d layers are analog layers (weights copied).

    `config` (default ``AnalogConfig()``, AnalogVNN's) applies to every converted layer;
    :data:`DIGITAL_CONFIG` turns every effect off. Which layers convert: those of `types` (default all
    three), within the modules named in `include` (qualified names such as ``"layer1"`` or
    ``"layer1.0.conv1"``; default the whole model), minus those within `exclude`. `readout_layer` names
    the read-out (default: the last Linear / Conv of the model in module order; when it is not
    converted, no converted layer is the read-out); `readout` is how it is read out
    (:data:`analog.models.READOUTS`; ``digital`` and ``scaled`` need a converted read-out; ``scaled``
    assumes the read-out's output is the model's output and takes the class count from its size).

    Raises `ValueError` naming the argument for a model with no layer to convert, an unknown name, or a
    layer the analog layers cannot express (grouped or dilated convolutions, padding modes other than
    zeros, parametrized weights). Forward hooks of a converted layer are not carried over. The caller's
    random stream is untouched.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    config = config or AnalogConfig()
    if not isinstance(config, AnalogConfig):
        raise TypeError(f"config: expected an analog.AnalogConfig, got {type(config).__name__}")
    if readout not in READOUTS:
        raise ValueError(f"readout: unknown {readout!r}; allowed: {', '.join(READOUTS)}")
    candidates = convertible_layers(model, types)
    if not candidates:
        allowed = ", ".join(t.__name__ for t in _check_types(types))
        raise ValueError(f"model: has no layer to convert (no {allowed}; exact types, not subclasses)")
    chosen = candidates
    if include is not None:
        inc = _check_names("include", include, model, candidates)
        chosen = [c for c in chosen if any(_covers(n, c) for n in inc)]
    exc = _check_names("exclude", exclude, model, candidates)
    chosen = [c for c in chosen if not any(_covers(n, c) for n in exc)]
    if not chosen:
        raise ValueError(
            f"include/exclude: leave no layer to convert; convertible layers: {', '.join(candidates)}"
        )
    if readout_layer is None:
        readout_layer = convertible_layers(model)[-1]
    elif readout_layer not in convertible_layers(model):
        raise ValueError(
            f"readout_layer: {readout_layer!r} is not a Linear / Conv of the model; "
            f"allowed: {', '.join(convertible_layers(model))}"
        )
    has_readout = readout_layer in chosen
    if readout != "analog" and not has_readout:
        raise ValueError(
            f"readout: {readout!r} needs the read-out layer {readout_layer!r} converted (it is not)"
        )
    hidden = [c for c in chosen if c != readout_layer]
    check_hidden_count(config.signal_policy, len(hidden))
    scale = None
    if readout == "scaled":
        n_classes = model.get_submodule(readout_layer).weight.shape[0]
        scale = readout_scale(config.signal_norm, "none", n_classes, False, readout_floor)

    out = copy.deepcopy(model)
    done: dict[int, AnalogLayer] = {}  # by the copied layer's id: a layer shared under two names stays shared
    for name in chosen:
        layer = out.get_submodule(name)
        if parametrize.is_parametrized(layer):
            raise ValueError(
                f"model: layer {name!r} is parametrized (torch.nn.utils.parametrize), which convert "
                f"cannot carry over; remove the parametrization or exclude it (exclude=[{name!r}])"
            )
        cls = CONVERTIBLE[type(layer)]
        is_readout = name == readout_layer
        if is_readout and scale is not None:
            cls = _SCALED[cls]
        role, index = ("readout", 0) if is_readout else ("hidden", hidden.index(name))
        new = _analog_twin(
            layer, name, cls, config, role, index, not (is_readout and readout in UNNORMALIZED_READOUTS)
        )
        if is_readout and scale is not None:
            new.logit_scale = scale
        done[id(layer)] = new
    if "" in chosen:  # the model is itself one layer
        return done[id(out)]
    for name, module in list(out.named_modules(remove_duplicate=False)):
        if id(module) in done:
            _set_module(out, name, done[id(module)])
    return out
