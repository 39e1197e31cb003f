"""Analog noise with AnalogVNN 1.0.8's parameter relations (leakage <-> spread); backward straight-through.

`leakage` is the probability that a value quantised to `precision` levels ends up at another
level after the noise. Each noise is parameterised by exactly two of its three parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from scipy import optimize, special
from torch import Tensor, nn

from analog.policies import straight_through

NOISE_CLASSES: tuple[str, ...] = ("none", "gaussian", "poisson", "laplacian", "uniform")


def _exactly_two(cls: str, **given: float | None) -> None:
    if sum(v is not None for v in given.values()) != 2:
        names = ", ".join(given)
        got = {k: v for k, v in given.items() if v is not None}
        raise ValueError(f"{cls}: give exactly two of ({names}); got {got or 'none'}")


def _check_leakage(leakage: float | None, field: str = "leakage") -> None:
    if leakage is not None and not 0 < leakage < 1:
        raise ValueError(f"{field}: must be in the open interval (0, 1), got {leakage!r}")


def _check_positive(name: str, value: float | None) -> None:
    if value is not None and not value > 0:
        raise ValueError(f"{name}: must be > 0, got {value!r}")


# --- Gaussian --------------------------------------------------------------------------------------


def gaussian_std(leakage: float, precision: float) -> float:
    """std such that N(0, std) moves a value by more than half a level with probability `leakage`."""
    return 1 / (2 * precision * float(special.erfinv(1 - leakage)) * math.sqrt(2))


def gaussian_precision(std: float, leakage: float) -> float:
    return 1 / (2 * std * float(special.erfinv(1 - leakage)) * math.sqrt(2))


def gaussian_leakage(std: float, precision: float) -> float:
    return 2 * 0.5 * (1 + math.erf((-1 / (2 * precision)) / (std * math.sqrt(2))))


# --- Poisson ---------------------------------------------------------------------------------------


def _poisson_cdf(x: float, rate: float, scale_factor: float) -> float:
    if math.isclose(rate, 0.0):
        return 1.0
    return float(special.gammaincc(abs(x) * scale_factor + 1, abs(rate) * scale_factor))


def poisson_max_leakage(scale: float, precision: float) -> float:
    """Leakage of the value 1 (the largest) under Poisson noise of `scale` at `precision` levels."""
    rf = scale * precision
    return 1 - (
        _poisson_cdf(1 + 1 / (2 * precision), 1.0, rf) - _poisson_cdf(1 - 1 / (2 * precision), 1.0, rf)
    )


def poisson_scale(max_leakage: float, precision: float) -> float:
    return float(
        optimize.toms748(
            lambda s: poisson_max_leakage(s, precision) - max_leakage, a=0, b=10000, maxiter=10000
        )
    )


def poisson_precision(scale: float, max_leakage: float) -> float:
    return float(
        optimize.toms748(lambda p: poisson_max_leakage(scale, p) - max_leakage, a=1, b=2**16, maxiter=10000)
    )


# --- Laplacian and uniform -------------------------------------------------------------------------


def laplacian_scale(leakage: float, precision: float) -> float:
    return -1 / (2 * math.log(leakage) * precision)


def laplacian_precision(scale: float, leakage: float) -> float:
    return -1 / (2 * math.log(leakage) * scale)


def laplacian_leakage(scale: float, precision: float) -> float:
    x = -1 / (2 * precision)
    return 2 * (0.5 - 0.5 * math.copysign(1, x) * math.expm1(-abs(x) / scale))


def uniform_bounds(leakage: float, precision: float) -> tuple[float, float]:
    v = 1 / (1 - leakage) * (1 / precision)
    return -v / 2, v / 2


def uniform_leakage(low: float, high: float, precision: float) -> float:
    return 1 - min(1.0, (1 / precision) * (1 / (high - low)))


def uniform_precision(low: float, high: float, leakage: float) -> float:
    return 1 / (1 - leakage) * (1 / (high - low))


# --- modules ---------------------------------------------------------------------------------------


class _Noise(nn.Module):
    def sample(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return straight_through(self.sample, x)


class GaussianNoise(_Noise):
    """x + N(0, std); any two of (std, leakage, precision) determine the third."""

    def __init__(
        self, std: float | None = None, leakage: float | None = None, precision: float | None = None
    ):
        super().__init__()
        _exactly_two("GaussianNoise", std=std, leakage=leakage, precision=precision)
        _check_leakage(leakage)
        _check_positive("std", std)
        _check_positive("precision", precision)
        if std is None:
            std = gaussian_std(leakage, precision)
        elif precision is None:
            precision = gaussian_precision(std, leakage)
        else:
            leakage = gaussian_leakage(std, precision)
        self.std, self.leakage, self.precision = float(std), float(leakage), float(precision)

    def sample(self, x: Tensor) -> Tensor:
        # = x + std * randn_like(x) bit for bit (same draws, same roundings), one allocation fewer;
        # not torch.normal(x, std), whose gradient with respect to x is zero
        return torch.randn_like(x).mul_(self.std).add_(x)

    def extra_repr(self) -> str:
        return f"std={self.std:.4f}, leakage={self.leakage:.4f}, precision={self.precision:g}"


class PoissonNoise(_Noise):
    """sign(x) * Poisson(|x| * r) / r with r = scale * precision; two of (scale, max_leakage, precision)."""

    def __init__(
        self, scale: float | None = None, max_leakage: float | None = None, precision: float | None = None
    ):
        super().__init__()
        _exactly_two("PoissonNoise", scale=scale, max_leakage=max_leakage, precision=precision)
        _check_leakage(max_leakage, "max_leakage")
        _check_positive("scale", scale)
        _check_positive("precision", precision)
        if scale is None:
            scale = poisson_scale(max_leakage, precision)
        elif precision is None:
            precision = poisson_precision(scale, max_leakage)
        else:
            max_leakage = poisson_max_leakage(scale, precision)
        self.scale, self.max_leakage, self.precision = float(scale), float(max_leakage), float(precision)
        if self.rate_factor < 1:
            raise ValueError(f"PoissonNoise: scale * precision must be >= 1, got {self.rate_factor:g}")

    @property
    def rate_factor(self) -> float:
        return self.precision * self.scale

    def sample(self, x: Tensor) -> Tensor:
        return torch.sign(x) * torch.poisson(torch.abs(x * self.rate_factor)) / self.rate_factor


class LaplacianNoise(_Noise):
    """x + Laplace(0, scale); two of (scale, leakage, precision)."""

    def __init__(
        self, scale: float | None = None, leakage: float | None = None, precision: float | None = None
    ):
        super().__init__()
        _exactly_two("LaplacianNoise", scale=scale, leakage=leakage, precision=precision)
        _check_leakage(leakage)
        _check_positive("scale", scale)
        _check_positive("precision", precision)
        if scale is None:
            scale = laplacian_scale(leakage, precision)
        elif precision is None:
            precision = laplacian_precision(scale, leakage)
        else:
            leakage = laplacian_leakage(scale, precision)
        self.scale, self.leakage, self.precision = float(scale), float(leakage), float(precision)

    def sample(self, x: Tensor) -> Tensor:
        # torch.distributions.Laplace(x, scale).sample(), AnalogVNN's draw, op for op: u in [eps - 1, 1)
        # keeps log1p(-|u|) finite (u = 2 * rand - 1 reaches -1 when rand returns 0: an infinite draw)
        # Drawn out of place (an in-place uniform_ is refused under vmap with different randomness per
        # seed when x is shared by the bundle, e.g. the input batch) and scaled in float64, as uniform_'s
        # CPU kernel does: the same bits as uniform_(eps - 1, 1)
        low = torch.finfo(x.dtype).eps - 1
        u = torch.rand_like(x).double().mul_(1 - low).add_(low).to(x.dtype)
        return x - self.scale * u.sign() * torch.log1p(-u.abs())


class UniformNoise(_Noise):
    """x + U(low, high); (low, high) count as one parameter: two of ((low, high), leakage, precision)."""

    def __init__(
        self,
        low: float | None = None,
        high: float | None = None,
        leakage: float | None = None,
        precision: float | None = None,
    ):
        super().__init__()
        if (low is None) != (high is None):
            raise ValueError(f"UniformNoise: give low and high together, got low={low!r}, high={high!r}")
        bounds = None if low is None or high is None else (low, high)
        _exactly_two("UniformNoise", bounds=bounds, leakage=leakage, precision=precision)
        _check_leakage(leakage)
        _check_positive("precision", precision)
        if bounds is not None and not high > low:  # before deriving from high - low
            raise ValueError(f"UniformNoise: high must exceed low, got low={low!r}, high={high!r}")
        if bounds is None:
            low, high = uniform_bounds(leakage, precision)
        elif precision is None:
            precision = uniform_precision(low, high, leakage)
        else:
            leakage = uniform_leakage(low, high, precision)
        self.low, self.high = float(low), float(high)
        self.leakage, self.precision = float(leakage), float(precision)

    def sample(self, x: Tensor) -> Tensor:
        return x + self.low + (self.high - self.low) * torch.rand_like(x)


_BY_NAME: dict[str, Callable[..., _Noise]] = {
    "gaussian": lambda leakage, precision: GaussianNoise(leakage=leakage, precision=precision),
    "poisson": lambda leakage, precision: PoissonNoise(max_leakage=leakage, precision=precision),
    "laplacian": lambda leakage, precision: LaplacianNoise(leakage=leakage, precision=precision),
    "uniform": lambda leakage, precision: UniformNoise(leakage=leakage, precision=precision),
}


def make_noise(kind: str, leakage: float, precision: float) -> _Noise:
    """A noise module of class `kind` from (leakage, precision), as AnalogVNN's sample code builds them."""
    if kind not in _BY_NAME:
        raise ValueError(f"noise: unknown {kind!r}; allowed: {', '.join(NOISE_CLASSES)}")
    return _BY_NAME[kind](leakage, precision)
