"""Normalizations with AnalogVNN 1.0.8's forward (``analogvnn.nn.normalize``), and their saturation masks.

The backward is not defined here: :func:`normalize` applies a registered gradient policy
(:mod:`analog.policies`) around the forward.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from analog.policies import field_label, get_policy

_NORM_FLOOR = 1e-4  # AnalogVNN clamps Lp norms below at 1e-4


def _identity(x: Tensor) -> Tensor:
    return x


def _clamp(x: Tensor) -> Tensor:
    return torch.clamp(x, min=-1, max=1)


def _clamp01(x: Tensor) -> Tensor:
    return torch.clamp(x, min=0, max=1)


def _max_1(x: Tensor) -> Tensor:
    return torch.div(x, torch.max(torch.abs(x)))


def _rowwise(p: int, make_max_1: bool) -> Callable[[Tensor], Tensor]:
    """Row-wise Lp norm (rows = first dimension; a 1-D tensor is one row), as AnalogVNN's LPNorm."""

    def fn(x: Tensor) -> Tensor:
        flat = torch.flatten(x, start_dim=1) if x.dim() > 1 else x
        norm = torch.clamp(torch.norm(flat, p, -1), min=_NORM_FLOOR)
        y = torch.div(x, norm.reshape(norm.shape + (1,) * (x.dim() - norm.dim())))
        return _max_1(y) if make_max_1 else y

    return fn


def _whole(p: int, make_max_1: bool) -> Callable[[Tensor], Tensor]:
    """Whole-tensor Lp norm, as AnalogVNN's LPNormW."""

    def fn(x: Tensor) -> Tensor:
        y = torch.div(x, torch.clamp(torch.norm(x, p), min=_NORM_FLOOR))
        return _max_1(y) if make_max_1 else y

    return fn


_FORWARD: dict[str, Callable[[Tensor], Tensor]] = {
    "none": _identity,
    "clamp": _clamp,
    "clamp01": _clamp01,
    "l1norm": _rowwise(1, False),
    "l2norm": _rowwise(2, False),
    "l1norm_m": _rowwise(1, True),
    "l2norm_m": _rowwise(2, True),
    "l1norm_w": _whole(1, False),
    "l2norm_w": _whole(2, False),
    "l1norm_wm": _whole(1, True),
    "l2norm_wm": _whole(2, True),
}

NORMALIZATIONS: tuple[str, ...] = tuple(_FORWARD)
"""Names of the built-in normalizations, in AnalogVNN's order (``none`` is the identity)."""

_SATURATION: dict[str, Callable[[Tensor], Tensor]] = {}


def register_normalization(
    name: str, saturation: Callable[[Tensor], Tensor] | None = None
) -> Callable[[Callable[[Tensor], Tensor]], Callable[[Tensor], Tensor]]:
    """Decorator registering a normalization forward ``fn(x) -> y`` under `name`.

    `saturation(x) -> bool mask` marks where its true derivative is not the identity (for the
    diagnostics); by default, the elements the forward changes.
    """
    if not isinstance(name, str) or not name:
        raise ValueError("normalization name must be a non-empty string")

    def decorator(fn: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
        _FORWARD[name] = fn
        if saturation is not None:
            _SATURATION[name] = saturation
        return fn

    return decorator


def available_normalizations() -> list[str]:
    """Names of every normalization: the built-in ones, then the registered ones."""
    return list(_FORWARD)


CLAMPS: tuple[str, ...] = ("clamp", "clamp01")

_RANGES: dict[str, tuple[float, float]] = {"clamp01": (0.0, 1.0)}
_UNBOUNDED = ("none",)


def output_range(kind: str) -> tuple[float, float] | None:
    """The interval every output of normalization `kind` lies in, or None when it is unbounded.

    AnalogVNN's clamps and Lp norms all map into [-1, 1] (clamp01 into [0, 1]); `none` is unbounded.
    A registered normalization is assumed unbounded unless it is listed here.
    """
    check_normalization(kind)
    if kind in _RANGES:
        return _RANGES[kind]
    if kind in _UNBOUNDED or kind not in NORMALIZATIONS:
        return None
    return (-1.0, 1.0)


def check_normalization(kind: str, field: str = "normalization") -> str:
    """Validate a normalization name for the field `field` (used in error messages)."""
    if kind not in _FORWARD:
        raise ValueError(
            field_label(field)
            + f"unknown normalization {kind!r}; allowed: {', '.join(available_normalizations())}"
        )
    return kind


def check_bound(kind: str, bound: float, field: str = "weight_clamp") -> float:
    """Validate a clamp range `bound` (finite, > 0) for normalization `kind`.

    A clamp maps to [-bound, bound] (``clamp01``: [0, bound]); any other normalization has no range to
    set, so a bound other than 1 is refused there (an Lp norm's scale is fixed by the norm itself).
    """
    number = isinstance(bound, (int, float)) and not isinstance(bound, bool)
    if not number or not math.isfinite(bound) or bound <= 0:
        raise ValueError(field_label(field) + f"must be a finite number > 0, got {bound!r}")
    if bound != 1 and kind not in CLAMPS:
        raise ValueError(
            field_label(field)
            + f"sets a clamp range, but the normalization is {kind!r}; it applies to {', '.join(CLAMPS)} "
            "only (leave it at 1 for other normalizations)"
        )
    return float(bound)


def normalization_fn(kind: str, bound: float = 1.0) -> Callable[[Tensor], Tensor]:
    """The forward function of normalization `kind`; clamps clip to [-bound, bound] ([0, bound])."""
    check_normalization(kind)
    if check_bound(kind, bound) == 1:
        return _FORWARD[kind]  # AnalogVNN's own functions: bit-identical to it at the default range
    lo = 0.0 if kind == "clamp01" else -bound

    def clamp(x: Tensor) -> Tensor:
        return torch.clamp(x, min=lo, max=bound)

    return clamp


def normalize(x: Tensor, kind: str, policy: str = "exact") -> Tensor:
    """Normalize `x` with AnalogVNN's forward for `kind`; the backward follows gradient `policy`."""
    fn = normalization_fn(kind)
    if kind == "none":
        return x
    return get_policy(policy)(fn, x)


def saturation_mask(x: Tensor, kind: str, bound: float = 1.0) -> Tensor:
    """Elements whose normalization's true derivative is not the identity.

    For clamps these are the clipped elements (beyond the range set by `bound`); for Lp norms, every
    element the division changes (all of them unless the norm is exactly 1). Used by the diagnostics.
    """
    check_normalization(kind)
    check_bound(kind, bound)
    if kind == "none":
        return torch.zeros_like(x, dtype=torch.bool)
    if kind == "clamp":
        return (x < -bound) | (x > bound)
    if kind == "clamp01":
        return (x < 0) | (x > bound)
    if kind in _SATURATION:
        return _SATURATION[kind](x)
    with torch.no_grad():
        return _FORWARD[kind](x) != x


# --- learned signal ranges (PACT-style clamps whose bound is a parameter) -------------------------

LEARNED_CLAMP = "learned_clamp"
LEARNED: tuple[str, ...] = (LEARNED_CLAMP,)
"""Normalizations whose range is a parameter of the layer (signal site only): ``y = clamp(x, -a, a)``."""

RANGE_PER: tuple[str, ...] = ("layer", "channel")
"""How many learned bounds a layer position has: one (``layer``) or one per channel (``channel``)."""


def _needs_alpha(x: Tensor) -> Tensor:
    raise ValueError(
        f"{LEARNED_CLAMP}: its bound is a parameter of the layer; call "
        "analog.normalize.learned_clamp(x, alpha, policy) or use it as an AnalogConfig signal_norm"
    )


register_normalization(LEARNED_CLAMP, saturation=_needs_alpha)(_needs_alpha)


def learned_clamp(x: Tensor, alpha: Tensor, policy: str = "exact") -> Tensor:
    """``clamp(x, -alpha, alpha)`` with a learned bound `alpha` (PACT, Choi et al. 2018, made symmetric).

    Gradient to `x`: the registered gradient `policy` of the clamp at the current bound (``exact``: 1
    inside [-alpha, alpha], bounds included, 0 outside; ``ste``: 1 everywhere; ``zero``: none). Gradient
    to `alpha`: the true derivative, whatever the policy: dy/dalpha = sign(x) where |x| > alpha, 0
    inside, summed over the elements `alpha` broadcasts to (one bound per layer, or per channel).

    This is PACT's gradient, not aihwkit-lightning 2.1.0's (``InputRangeForward.backward``): that one
    keeps only the saturated gradients that push the range outwards, scales them by the range, and adds
    a decay towards smaller ranges when few inputs clip - an estimator, while normgrad compares
    estimators for `x` against the true derivative and so keeps the bound's own gradient exact. Its
    initialisation from data (a running mean of k * std(x) over the first training batches, written
    into the parameter inside the forward) is not adopted either: it mutates a parameter in the forward,
    which the seed bundles' vmap cannot do, and the initial bound is a fixed number instead
    (``signal_range_init``). The forward value is exactly ``torch.clamp(x, -alpha, alpha)``.
    """
    a = alpha.detach()
    y = get_policy(policy)(lambda t: torch.clamp(t, -a, a), x)
    if torch.is_grad_enabled():  # (not alpha.requires_grad: under a bundle's vmap it reads False)
        with torch.no_grad():
            side = (x > a).to(x.dtype) - (x < -a).to(x.dtype)  # sign(x) where saturated, else 0
        y = y + (alpha - a) * side  # adds exactly 0; carries d y / d alpha = side
    return y


def check_learned_range(signal_norm: str, init: float, per: str, weight_norm: str = "clamp") -> None:
    """ValueError naming the field: a learned range's initial bound (finite, > 0) and granularity
    (`RANGE_PER`), set away from their defaults only with a learned signal normalization; a learned
    normalization at the weight site (its bound lives with the signals)."""
    if weight_norm in LEARNED:
        raise ValueError(
            f"weight_norm: {weight_norm!r} is a signal normalization (a learned signal range); "
            f"at the weight site use a fixed one, e.g. clamp with weight_clamp"
        )
    number = isinstance(init, (int, float)) and not isinstance(init, bool)
    if not number or not math.isfinite(init) or init <= 0:
        raise ValueError(f"signal_range_init: must be a finite number > 0, got {init!r}")
    if not isinstance(per, str) or per not in RANGE_PER:
        raise ValueError(f"signal_range_per: unknown {per!r}; allowed: {', '.join(RANGE_PER)}")
    if signal_norm not in LEARNED:
        for name, value, default in (("signal_range_init", init, 1), ("signal_range_per", per, "layer")):
            if value != default:
                raise ValueError(
                    f"{name}: applies to a learned signal range, signal_norm {' or '.join(LEARNED)} "
                    f"(signal_norm is {signal_norm!r}); leave it at {default!r}"
                )
