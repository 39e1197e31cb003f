"""Analog neural-network layers whose normalization backward is a registered gradient policy.

Pure PyTorch. The forward of every effect reproduces AnalogVNN 1.0.8; the backward of each
normalization is chosen by name (``exact``, ``ste``, ``zero`` or one you register), separately for
the weight site and the signal site.
"""

from analog.diagnostics import LayerMismatch, gradient_mismatch
from analog.layers import AnalogConfig, AnalogLinear, analog_layers, set_noise, set_policies
from analog.models import ACTIVATIONS, PAPER_HIDDEN, SAMPLE_HIDDEN, build_classifier, make_activation
from analog.noise import NOISE_CLASSES, GaussianNoise, LaplacianNoise, PoissonNoise, UniformNoise, make_noise
from analog.normalize import (
    NORMALIZATIONS,
    available_normalizations,
    normalization_fn,
    normalize,
    register_normalization,
    saturation_mask,
)
from analog.policies import (
    PRESETS,
    available_policies,
    get_policy,
    register_policy,
    resolve_preset,
    straight_through,
)
from analog.precision import (
    PRECISION_CLASSES,
    ReducePrecision,
    StochasticReducePrecision,
    reduce_precision,
    stochastic_reduce_precision,
)

__all__ = [
    "ACTIVATIONS",
    "NOISE_CLASSES",
    "NORMALIZATIONS",
    "PAPER_HIDDEN",
    "PRECISION_CLASSES",
    "PRESETS",
    "SAMPLE_HIDDEN",
    "AnalogConfig",
    "AnalogLinear",
    "GaussianNoise",
    "LaplacianNoise",
    "LayerMismatch",
    "PoissonNoise",
    "ReducePrecision",
    "StochasticReducePrecision",
    "UniformNoise",
    "analog_layers",
    "available_normalizations",
    "available_policies",
    "register_normalization",
    "build_classifier",
    "get_policy",
    "gradient_mismatch",
    "make_activation",
    "make_noise",
    "normalization_fn",
    "normalize",
    "reduce_precision",
    "register_policy",
    "resolve_preset",
    "saturation_mask",
    "set_noise",
    "set_policies",
    "stochastic_reduce_precision",
    "straight_through",
]
