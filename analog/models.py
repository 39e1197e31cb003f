"""AnalogVNN's linear classifiers (and their digital twins) from `analog` layers."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from analog.layers import AnalogConfig, AnalogLinear

ACTIVATIONS: tuple[str, ...] = ("none", "relu", "leakyrelu", "tanh", "elu", "silu", "gelu")
SAMPLE_HIDDEN: tuple[int, ...] = (256, 128)  # AnalogVNN's sample code: 784-256-128-10
PAPER_HIDDEN: tuple[int, ...] = (128, 64)  # AnalogVNN paper: 784-128-64-10


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


def _digital_linear(n_in: int, n_out: int) -> nn.Linear:
    layer = nn.Linear(n_in, n_out)
    with torch.no_grad():
        nn.init.xavier_uniform_(layer.weight)
        bound = 1 / math.sqrt(n_in)
        nn.init.uniform_(layer.bias, -bound, bound)
    return layer


def build_classifier(
    in_features: int | Sequence[int] = 784,
    n_classes: int = 10,
    hidden: Sequence[int] = SAMPLE_HIDDEN,
    activation: str = "gelu",
    config: AnalogConfig | None = None,
    digital: bool = False,
    final_activation: bool = True,
) -> nn.Sequential:
    """Flatten -> (AnalogLinear -> activation) per layer, as AnalogVNN's ``LinearModel``.

    `in_features` may be an input shape (it is flattened). `digital=True` builds the same network
    with plain ``nn.Linear`` layers and no analog effect (the baseline). AnalogVNN's sample code
    applies the activation after the last layer too (`final_activation=True`).
    """
    make_activation(activation)  # validate early
    n_in = in_features if isinstance(in_features, int) else math.prod(in_features)
    sizes = [n_in, *hidden, n_classes]
    layers: list[nn.Module] = [nn.Flatten(start_dim=1)]
    config = config or AnalogConfig()
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layer = _digital_linear(a, b) if digital else AnalogLinear(a, b, config=config)
        with torch.no_grad():
            init_weight_for(layer.weight, activation)
        layers.append(layer)
        if final_activation or i < len(sizes) - 2:
            layers.append(make_activation(activation))
    return nn.Sequential(*layers)
