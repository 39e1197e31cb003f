"""The registry of normalization-gradient policies, and every straight-through function in one place.

A policy decides what the backward pass of a normalization is. It is a callable
``(forward_fn, x) -> y`` whose forward value is always ``forward_fn(x)``; only the gradient differs:

* ``exact`` — the true derivative (autograd through ``forward_fn``);
* ``ste``   — straight-through: the upstream gradient is passed to ``x`` unchanged;
* ``zero``  — no gradient reaches ``x``.

Users add their own with :func:`register_policy`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

ForwardFn = Callable[[Tensor], Tensor]
Policy = Callable[[ForwardFn, Tensor], Tensor]

_POLICIES: dict[str, Policy] = {}


def field_label(field: str) -> str:
    """ "FIELD: " for error messages, or nothing when the caller adds the field itself."""
    return f"{field}: " if field else ""


def register_policy(name: str) -> Callable[[Policy], Policy]:
    """Decorator registering ``fn(forward_fn, x) -> y`` as the gradient policy called `name`."""
    if not isinstance(name, str) or not name:
        raise ValueError("policy name must be a non-empty string")

    def decorator(fn: Policy) -> Policy:
        _POLICIES[name] = fn
        return fn

    return decorator


def available_policies() -> list[str]:
    """Names of the registered gradient policies, in registration order."""
    return list(_POLICIES)


def get_policy(name: str) -> Policy:
    """The policy registered as `name`; `ValueError` naming the registered ones otherwise."""
    try:
        return _POLICIES[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown gradient policy {name!r}; registered policies: {', '.join(available_policies())}"
        ) from None


def check_policy(name: str, field: str = "policy") -> str:
    """Validate a policy name for the field `field` (used in error messages)."""
    if name not in _POLICIES:
        raise ValueError(
            field_label(field)
            + f"unknown gradient policy {name!r}; allowed: {', '.join(available_policies())}"
        )
    return name


class _StraightThrough(torch.autograd.Function):
    """y = fn(x) forward; dL/dx = dL/dy backward. Works under torch.func.vmap (generated rule)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, fn: ForwardFn) -> Tensor:
        return fn(x)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # noqa: ANN001 - autograd signature
        pass

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: ANN001
        return grad, None


class _Blocked(_StraightThrough):
    """y = fn(x) forward; dL/dx = 0 backward."""

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: ANN001
        return torch.zeros_like(grad), None


try:  # see _fast_apply
    from torch._C import _are_functorch_transforms_active
    from torch._functorch.utils import unwrap_dead_wrappers
except ImportError:  # pragma: no cover - a torch without these: always take the public path
    _are_functorch_transforms_active = None


def functorch_active() -> bool:
    """Whether a torch.func transform (vmap, grad) is active: the seed bundles train under vmap."""
    return _are_functorch_transforms_active is None or bool(_are_functorch_transforms_active())


def _fast_apply(function: type[torch.autograd.Function], x: Tensor, fn: ForwardFn) -> Tensor:
    """``function.apply(x, fn)`` without its per-call ``inspect.signature`` binding of default arguments.

    ``Function.apply`` binds defaults (there are none here) with ``inspect.signature`` on every call,
    ~50 us; outside torch.func transforms it then calls the C++ apply, which is what this does
    directly. Under vmap/grad the public path runs (it needs the generated vmap rule).
    """
    if functorch_active():
        return function.apply(x, fn)
    return super(torch.autograd.Function, function).apply(*unwrap_dead_wrappers((x, fn)))


class _StraightThroughElementwise(_StraightThrough):
    """`_StraightThrough` for an element-wise `fn` inside a seed bundle's vmap: `fn` runs once on the
    stacked (physical) tensor instead of through the generated vmap rule (a bundle 4-7 % faster).
    The same values: an element-wise function of the stacked tensor is the stack of its values, and
    vmap's "different" randomness draws exactly what a random op draws on the stacked tensor (when the
    batch dimension is first and the tensor contiguous; otherwise the generic rule runs)."""

    generate_vmap_rule = False  # the rule below

    @staticmethod
    def vmap(info, in_dims, x: Tensor, fn: ForwardFn):  # noqa: ANN001, ANN205
        if in_dims[0] == 0 and x.is_contiguous() and info.randomness == "different":
            return _StraightThroughElementwise.apply(x, fn), 0
        generic = torch.vmap(
            lambda t: _StraightThrough.apply(t, fn), in_dims=in_dims[0], randomness=info.randomness
        )
        return generic(x), 0


def _batched_here(x: Tensor) -> bool:
    """Whether `x` is batched by the innermost active vmap (a seed bundle's stacked member tensor)."""
    from torch._C import _functorch

    level = _functorch.current_level()
    return bool(_functorch.is_batchedtensor(x)) and _functorch.maybe_get_level(x) == level


def straight_through(fn: ForwardFn, x: Tensor, elementwise: bool = False) -> Tensor:
    """Apply `fn` forward and pass the gradient straight through (used by precision and noise too).

    `elementwise=True` promises that `fn` acts element by element (and draws its random numbers, if
    any, one per element as torch's random ops do); inside a seed bundle's vmap it then runs once on the
    stacked tensor."""
    if elementwise and functorch_active() and _batched_here(x):
        return _StraightThroughElementwise.apply(x, fn)
    return _fast_apply(_StraightThrough, x, fn)


@register_policy("exact")
def exact(forward_fn: ForwardFn, x: Tensor) -> Tensor:
    """The true derivative of the normalization, by autograd through its forward."""
    return forward_fn(x)


@register_policy("ste")
def ste(forward_fn: ForwardFn, x: Tensor) -> Tensor:
    """Straight-through estimator: the upstream gradient reaches `x` unchanged (bit for bit)."""
    return straight_through(forward_fn, x)


@register_policy("zero")
def zero(forward_fn: ForwardFn, x: Tensor) -> Tensor:
    """No gradient flows to `x` (the positive control: training must suffer)."""
    return _fast_apply(_Blocked, x, forward_fn)


# --- presets: named (weight policy, signal policy) choices -----------------------------------------

_CLAMP_NORMS = ("clamp", "clamp01", "none")


def _analogvnn_preset(weight_norm: str, signal_norm: str) -> tuple[str, str]:
    """AnalogVNN 1.0.8: weights straight-through (PseudoParameter); signal clamps exact, Lp norms identity."""
    return "ste", ("exact" if signal_norm in _CLAMP_NORMS else "ste")


ANALOGVNN = "analogvnn"  # the preset of AnalogVNN 1.0.8's own choice
PRESETS: dict[str, Callable[[str, str], tuple[str, str]]] = {ANALOGVNN: _analogvnn_preset}


def resolve_preset(name: str, weight_norm: str, signal_norm: str) -> tuple[str, str]:
    """(weight_policy, signal_policy) of preset `name` for the given normalizations.

    Besides named presets, ``"<weight>/<signal>"`` (e.g. ``"ste/exact"``) names the pair directly.
    """
    if name in PRESETS:
        return PRESETS[name](weight_norm, signal_norm)
    if isinstance(name, str) and name.count("/") == 1:
        w, s = name.split("/")
        return check_policy(w, "policies (weight part)"), check_policy(s, "policies (signal part)")
    raise ValueError(
        f"policies: unknown preset {name!r}; allowed: {', '.join(PRESETS)} or '<weight>/<signal>' with "
        f"policies from {', '.join(available_policies())}"
    )


# --- facts every stage shares ---------------------------------------------------------------------

POLICY_ORDER = ("exact", "ste", "zero")  # the built-in policies in the order tables and figures list them
OTHER_SITE = {"weight": "signal", "signal": "weight"}  # the two normalization sites, each naming the other


def analogvnn_cell(weight_norm: str, signal_norm: str) -> dict[str, str]:
    """The `analogvnn` preset's policies for these normalizations, as {"weight_policy", "signal_policy"}."""
    weight, signal = resolve_preset(ANALOGVNN, weight_norm, signal_norm)
    return {"weight_policy": weight, "signal_policy": signal}
