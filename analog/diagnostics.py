"""Gradient diagnostics: how far one policy's gradients are from another's, and normalization saturation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from analog.layers import analog_layers
from analog.locations import canonical_signal_policy
from analog.models import cross_entropy_floor


@dataclass(frozen=True)
class LayerMismatch:
    """Per analog layer: gradient agreement between two policy settings, and saturation fractions.

    `cosine_signal_in` / `cosine_signal_out`: cosine between the two settings' gradients of the loss
    with respect to the signal entering the layer's input / output normalization (nan where there is
    no normalization, where no gradient reaches it, e.g. the first layer's input, or where either is 0).
    """

    layer: int
    cosine: float  # cos(g_a, g_b) over the layer's weight and bias gradients; nan if either is zero
    norm_ratio: float  # ||g_a|| / ||g_b||; nan if ||g_b|| is zero
    sat_weight: float
    sat_signal_in: float
    sat_signal_out: float
    cosine_signal_in: float = float("nan")
    cosine_signal_out: float = float("nan")


@dataclass(frozen=True)
class LogitStats:
    """The network's outputs on the probe: their range and the cross-entropy floor that range implies."""

    logit_min: float
    logit_max: float
    ce_floor: float  # log(1 + (C-1) exp(-(max - min))): no example's loss can be lower within this range
    probe_loss: float  # the loss on the probe (forward values do not depend on the policies)


@dataclass(frozen=True)
class ProbeResult:
    """Everything one probe measures: per-layer mismatch and saturation, and the logits' range."""

    layers: list[LayerMismatch]
    logits: LogitStats


_SIGNAL_SITES = ("signal_in", "signal_out")


def _layer_grads(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    policies: tuple[str, str],
    seed: int,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
) -> tuple[list[Tensor], list[dict[str, Tensor]], list[dict], Tensor, Tensor]:
    """(per-layer flat parameter gradients, per-layer signal gradients by site, saturation, logits, loss)."""
    layers = analog_layers(model)
    saved = [(layer.weight_policy, layer.signal_policy_input, layer.signal_policy_output) for layer in layers]
    params = [[p for p in (layer.weight, layer.bias) if p is not None] for layer in layers]
    try:
        for layer in layers:
            layer.weight_policy, layer.signal_policy = policies
            layer.saturation, layer.signal_tensors = {}, {}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            logits = model(x)
            loss = loss_fn(logits, y)
        flat = [p for ps in params for p in ps]
        signals = [
            (i, site, t)
            for i, layer in enumerate(layers)
            for site, t in (layer.signal_tensors or {}).items()
            if t.requires_grad
        ]
        grads = torch.autograd.grad(loss, flat + [t for _, _, t in signals], allow_unused=True)
        sats = [dict(layer.saturation or {}) for layer in layers]
    finally:
        for layer, (w, s_in, s_out) in zip(layers, saved, strict=True):
            layer.weight_policy, layer.signal_policy_input, layer.signal_policy_output = w, s_in, s_out
            layer.saturation, layer.signal_tensors = None, None
    out, k = [], 0
    for ps in params:
        gs = [
            torch.zeros_like(p) if g is None else g for p, g in zip(ps, grads[k : k + len(ps)], strict=True)
        ]
        out.append(torch.cat([g.reshape(-1) for g in gs]))
        k += len(ps)
    signal_grads: list[dict[str, Tensor]] = [{} for _ in layers]
    for (i, site, t), g in zip(signals, grads[k:], strict=True):
        signal_grads[i][site] = torch.zeros_like(t) if g is None else g
    return out, signal_grads, sats, logits.detach(), loss.detach()


def _cosine(a: Tensor | None, b: Tensor | None) -> float:
    if a is None or b is None:
        return float("nan")
    a, b = a.reshape(-1), b.reshape(-1)
    na, nb = float(a.norm()), float(b.norm())  # as the records have always computed it
    return float(torch.dot(a.double(), b.double()) / (na * nb)) if na > 0 and nb > 0 else float("nan")


def _same_policies(a: tuple[str, str], b: tuple[str, str]) -> bool:
    try:
        return a[0] == b[0] and canonical_signal_policy(a[1]) == canonical_signal_policy(b[1])
    except (ValueError, TypeError):
        return False


def probe(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    policies: tuple[str, str],
    reference: tuple[str, str] = ("exact", "exact"),
    seed: int = 0,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
) -> ProbeResult:
    """Compare gradients under `policies` with those under `reference` ((weight, signal) pairs; the
    signal part may be a location spec, :mod:`analog.locations`), per layer and signal position, and
    measure saturation and the logits' range on the `policies` pass.

    Both passes draw identical noise (the RNG is re-seeded with `seed` in a forked state, so the
    caller's RNG stream is untouched).
    """
    g_a, s_a, sats, logits, loss = _layer_grads(model, x, y, policies, seed, loss_fn)
    if _same_policies(policies, reference):  # the second pass would repeat the first bit for bit
        g_b, s_b = g_a, s_a
    else:
        g_b, s_b, _, _, _ = _layer_grads(model, x, y, reference, seed, loss_fn)
    nan = float("nan")
    result = []
    for i, (a, b, sat) in enumerate(zip(g_a, g_b, sats, strict=True)):
        na, nb = float(a.norm()), float(b.norm())
        sat_w = sat.get("weight")
        result.append(
            LayerMismatch(
                layer=i,
                cosine=_cosine(a, b),
                norm_ratio=na / nb if nb > 0 else nan,
                sat_weight=nan if sat_w is None else float(sat_w),
                sat_signal_in=float(sat.get("signal_in", nan)),
                sat_signal_out=float(sat.get("signal_out", nan)),
                cosine_signal_in=_cosine(s_a[i].get("signal_in"), s_b[i].get("signal_in")),
                cosine_signal_out=_cosine(s_a[i].get("signal_out"), s_b[i].get("signal_out")),
            )
        )
    lo, hi = float(logits.min()), float(logits.max())
    stats = LogitStats(lo, hi, cross_entropy_floor(hi - lo, logits.shape[-1]), float(loss))
    return ProbeResult(result, stats)


def gradient_mismatch(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    policies: tuple[str, str],
    reference: tuple[str, str] = ("exact", "exact"),
    seed: int = 0,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
) -> list[LayerMismatch]:
    """Per-layer part of :func:`probe`: parameter-gradient agreement of `policies` with `reference`."""
    return probe(model, x, y, policies, reference, seed, loss_fn).layers


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
