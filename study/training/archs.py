"""The architecture registry: the built-in ``mlp`` and ``cnn`` and the ones a user registers.

A user architecture is a builder ``builder(config, n_features, n_classes) -> nn.Module`` (`config` is the
trial's `TrialConfig`; inputs reach the network flat, (batch, n_features)). It returns a digital
``torch.nn`` network, which the trial converts with :func:`analog.convert` under the trial's analog
configuration and read-out (the last Linear / Conv is the read-out), or, when the trial is `digital`,
trains as it is. A builder that wants another conversion (some layers kept digital, another read-out
layer) calls :func:`analog.convert` itself and returns the analog network, which is then used as it is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

BUILTIN_ARCHS: tuple[str, ...] = ("mlp", "cnn")  # analog.models.build_classifier / build_cnn
ArchBuilder = Callable[[Any, int, int], nn.Module]
_ARCHS: dict[str, ArchBuilder] = {}


def register_architecture(name: str, builder: ArchBuilder) -> ArchBuilder:
    """Make `builder` the architecture `name`: valid as ``arch`` in `TrialConfig`, spec factors and
    ``--arch`` from then on. Registering the same builder again is a no-op; a name already taken (or a
    built-in one) raises `ValueError`."""
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        raise ValueError(
            f"arch: the name must be a non-empty string without surrounding spaces; got {name!r}"
        )
    if not callable(builder):
        raise TypeError(f"arch {name!r}: builder must be callable; got {type(builder).__name__}")
    if name in BUILTIN_ARCHS:
        raise ValueError(
            f"arch: {name!r} is built in; choose another name (taken: {', '.join(available_archs())})"
        )
    if name in _ARCHS and _same_builder(_ARCHS[name], builder):
        _ARCHS[name] = builder
        return builder
    if name in _ARCHS:
        raise ValueError(f"arch: {name!r} is already registered; choose another name")
    _ARCHS[name] = builder
    return builder


def _same_builder(a: ArchBuilder, b: ArchBuilder) -> bool:
    """The same function, or a named one of the same module and name (a plugin module imported again)."""

    def key(f: ArchBuilder) -> tuple[Any, Any]:
        return getattr(f, "__module__", None), getattr(f, "__qualname__", None)

    named = None not in key(a) and "<lambda>" not in str(key(a)[1])
    return a is b or (named and key(a) == key(b))


def unregister_architecture(name: str) -> None:
    """Remove the user architecture `name` (tests; a built-in one cannot be removed)."""
    if name not in _ARCHS:
        raise ValueError(
            f"arch: {name!r} is not a registered user architecture; registered: {', '.join(_ARCHS)}"
        )
    del _ARCHS[name]


def available_archs() -> list[str]:
    """The built-in architectures, then the registered ones in registration order."""
    return [*BUILTIN_ARCHS, *_ARCHS]


def check_arch(name: str) -> str:
    """`name` if it is a known architecture, else `ValueError` listing the allowed names."""
    if name not in BUILTIN_ARCHS and name not in _ARCHS:
        raise ValueError(f"unknown arch {name!r}; allowed: {', '.join(available_archs())}")
    return name


def arch_builder(name: str) -> ArchBuilder:
    """The builder of the user architecture `name`."""
    if name not in _ARCHS:
        raise ValueError(
            f"arch: {name!r} is not a user architecture; registered: {', '.join(_ARCHS) or 'none'}"
        )
    return _ARCHS[name]


def build_registered(config: Any, n_features: int, n_classes: int) -> nn.Module:
    """The network of the user architecture ``config.arch`` for a `TrialConfig`: the builder's network,
    converted by :func:`analog.convert` with the trial's analog configuration and read-out unless the
    trial is digital or the builder returned analog layers already."""
    from analog import analog_layers, convert

    name = config.arch
    net = arch_builder(name)(config, n_features, n_classes)
    if not isinstance(net, nn.Module):
        raise TypeError(f"arch {name!r}: the builder returned {type(net).__name__}, not a torch.nn.Module")
    if analog_layers(net):
        if config.digital:
            raise ValueError(f"arch {name!r}: the builder returned analog layers, but the trial is digital")
        return net
    if config.digital:
        return net
    try:
        return convert(net, config.analog_config(), readout=config.readout)
    except ValueError as err:
        raise ValueError(f"arch {name!r}: {err}") from None
