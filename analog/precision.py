"""Reduced precision with AnalogVNN 1.0.8's formulas; backward is straight-through."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from analog.policies import field_label, straight_through

PRECISION_CLASSES: tuple[str, ...] = ("reduce", "stochastic")


def check_precision(precision: float, field: str = "precision") -> int:
    """`precision` (the number of levels p) must be an integer >= 1."""
    if (
        isinstance(precision, bool)
        or not isinstance(precision, int | float)
        or precision < 1
        or precision != int(precision)
    ):
        raise ValueError(
            field_label(field)
            + f"must be an integer number of levels >= 1 (e.g. 16 = 2**4), got {precision!r}"
        )
    return int(precision)


def check_divide(divide: float) -> float:
    if not 0 <= divide <= 1:
        raise ValueError(f"divide: must be between 0 and 1, got {divide!r}")
    return float(divide)


def _reduce(x: Tensor, precision: int, divide: float) -> Tensor:
    # sign(x) * ceil(|x * p| - divide) * (1 / p), AnalogVNN's formula; in place on the fresh product
    # (the same float operations in the same order, so bit-identical, with fewer allocations)
    return (x * precision).abs_().sub_(divide).ceil_().mul_(torch.sign(x)).mul_(1 / precision)


def _stochastic(x: Tensor, precision: int) -> Tensor:
    g = x * precision
    g_abs = torch.abs(g)
    g_floor = torch.floor(g_abs)
    g_ceil = torch.ceil(g_abs)
    do_floor = torch.rand_like(g) <= 1 - torch.abs(g_floor - g_abs)
    return torch.sign(g) * torch.where(do_floor, g_floor, g_ceil) * (1 / precision)


def reduce_precision(x: Tensor, precision: int, divide: float = 0.5) -> Tensor:
    """Round `x` to multiples of 1/precision (``divide`` = rounding threshold), straight-through backward."""
    precision, divide = check_precision(precision), check_divide(divide)
    return straight_through(lambda t: _reduce(t, precision, divide), x)


def stochastic_reduce_precision(x: Tensor, precision: int) -> Tensor:
    """Stochastically round `x` to the neighbouring multiples of 1/precision, straight-through backward."""
    precision = check_precision(precision)
    return straight_through(lambda t: _stochastic(t, precision), x)


def precision_fn(kind: str, precision: int, divide: float = 0.5):
    """The forward function (no autograd wrapper) of a precision stage, for fusing in layers."""
    precision = check_precision(precision)
    if kind == "reduce":
        divide = check_divide(divide)
        return lambda t: _reduce(t, precision, divide)
    if kind == "stochastic":
        return lambda t: _stochastic(t, precision)
    raise ValueError(f"precision_class: unknown {kind!r}; allowed: {', '.join(PRECISION_CLASSES)}")


def bit_precision(precision: int) -> float:
    """Bits needed for `precision` levels: log2(p + 1), as AnalogVNN defines it."""
    return float(torch.log2(torch.tensor(float(check_precision(precision)) + 1)))


class ReducePrecision(nn.Module):
    """Deterministic reduced precision (AnalogVNN's ``ReducePrecision``)."""

    def __init__(self, precision: int, divide: float = 0.5) -> None:
        super().__init__()
        self.precision = check_precision(precision)
        self.divide = check_divide(divide)

    def forward(self, x: Tensor) -> Tensor:
        return reduce_precision(x, self.precision, self.divide)

    def extra_repr(self) -> str:
        return f"precision={self.precision}, divide={self.divide}"


class StochasticReducePrecision(nn.Module):
    """Stochastic reduced precision (AnalogVNN's ``StochasticReducePrecision``)."""

    def __init__(self, precision: int) -> None:
        super().__init__()
        self.precision = check_precision(precision)

    def forward(self, x: Tensor) -> Tensor:
        return stochastic_reduce_precision(x, self.precision)

    def extra_repr(self) -> str:
        return f"precision={self.precision}"
