"""Gradient diagnostics: how far one policy's gradients are from another's, and normalization saturation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from analog.layers import analog_layers


@dataclass(frozen=True)
class LayerMismatch:
    """Per analog layer: gradient agreement between two policy settings, and saturation fractions."""

    layer: int
    cosine: float  # cos(g_a, g_b) over the layer's weight and bias gradients; nan if either is zero
    norm_ratio: float  # ||g_a|| / ||g_b||; nan if ||g_b|| is zero
    sat_weight: float
    sat_signal_in: float
    sat_signal_out: float


def _layer_grads(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    policies: tuple[str, str],
    seed: int,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    record: bool,
) -> tuple[list[Tensor], list[dict]]:
    layers = analog_layers(model)
    saved = [(layer.weight_policy, layer.signal_policy) for layer in layers]
    params = [[p for p in (layer.weight, layer.bias) if p is not None] for layer in layers]
    try:
        for layer in layers:
            layer.weight_policy, layer.signal_policy = policies
            layer.saturation = {} if record else None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            loss = loss_fn(model(x), y)
        flat = [p for ps in params for p in ps]
        grads = torch.autograd.grad(loss, flat, allow_unused=True)
        sats = [dict(layer.saturation or {}) for layer in layers]
    finally:
        for layer, (w, s) in zip(layers, saved, strict=True):
            layer.weight_policy, layer.signal_policy = w, s
            layer.saturation = None
    out, k = [], 0
    for ps in params:
        gs = [
            torch.zeros_like(p) if g is None else g for p, g in zip(ps, grads[k : k + len(ps)], strict=True)
        ]
        out.append(torch.cat([g.reshape(-1) for g in gs]))
        k += len(ps)
    return out, sats


def gradient_mismatch(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    policies: tuple[str, str],
    reference: tuple[str, str] = ("exact", "exact"),
    seed: int = 0,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
) -> list[LayerMismatch]:
    """Compare parameter gradients under `policies` with those under `reference` ((weight, signal) pairs).

    Both passes draw identical noise (the RNG is re-seeded with `seed` in a forked state, so the
    caller's RNG stream is untouched). Saturation fractions are measured on the `policies` pass.
    """
    g_a, sats = _layer_grads(model, x, y, policies, seed, loss_fn, record=True)
    g_b, _ = _layer_grads(model, x, y, reference, seed, loss_fn, record=False)
    nan = float("nan")
    result = []
    for i, (a, b, sat) in enumerate(zip(g_a, g_b, sats, strict=True)):
        na, nb = float(a.norm()), float(b.norm())
        cosine = float(torch.dot(a.double(), b.double()) / (na * nb)) if na > 0 and nb > 0 else nan
        sat_w = sat.get("weight")
        result.append(
            LayerMismatch(
                layer=i,
                cosine=cosine,
                norm_ratio=na / nb if nb > 0 else nan,
                sat_weight=nan if sat_w is None else float(sat_w),
                sat_signal_in=float(sat.get("signal_in", nan)),
                sat_signal_out=float(sat.get("signal_out", nan)),
            )
        )
    return result


def weight_saturation(model: nn.Module) -> dict[str, list[float] | float]:
    """How many weight-site parameters sit beyond their layer's weight range (clamped to its bound).

    Per analog layer, the fraction of its weight and bias elements whose weight normalization's true
    derivative is not the identity (`saturation_mask` with the layer's `weight_clamp`): there ``exact``
    passes no gradient and ``ste`` passes it unchanged, so this is where the two weight policies differ.
    ``layers`` holds one fraction per layer; ``all`` pools the elements of every layer.
    """
    from analog.normalize import saturation_mask

    fractions, hit, total = [], 0, 0
    with torch.no_grad():
        for layer in analog_layers(model):
            c = layer.config
            params = [p for p in (layer.weight, layer.bias) if p is not None]
            n_hit = sum(int(saturation_mask(p, c.weight_norm, c.weight_clamp).sum()) for p in params)
            n = sum(p.numel() for p in params)
            fractions.append(n_hit / n if n else 0.0)
            hit, total = hit + n_hit, total + n
    return {"layers": fractions, "all": hit / total if total else 0.0}
