"""Analog neural-network layers whose normalization backward is a registered gradient policy.

Pure PyTorch. The forward of every effect reproduces AnalogVNN 1.0.8; the backward of each
normalization is chosen by name (``exact``, ``ste``, ``zero`` or one you register), separately for
the weight site and the signal site.
"""

from analog.advise import Rule, SiteAdvice, advise, gradient_disagreement
from analog.convert import CONVERTIBLE, DIGITAL_CONFIG, convert, convertible_layers
from analog.diagnostics import LayerMismatch, LogitStats, ProbeResult, gradient_mismatch, probe
from analog.layers import (
    AnalogConfig,
    AnalogConv1d,
    AnalogConv2d,
    AnalogLayer,
    AnalogLinear,
    analog_layers,
    fixed_weights,
    project_weights,
    set_noise,
    set_policies,
)
from analog.locations import SIGNAL_LOCATIONS, canonical_signal_policy, parse_signal_policy
from analog.models import (
    ACTIVATIONS,
    PAPER_HIDDEN,
    READOUTS,
    SAMPLE_HIDDEN,
    build_classifier,
    build_cnn,
    cross_entropy_floor,
    logit_bounds,
    make_activation,
    readout_scale,
)
from analog.noise import NOISE_CLASSES, GaussianNoise, LaplacianNoise, PoissonNoise, UniformNoise, make_noise
from analog.normalize import (
    NORMALIZATIONS,
    available_normalizations,
    learned_clamp,
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
    "CONVERTIBLE",
    "DIGITAL_CONFIG",
    "NOISE_CLASSES",
    "NORMALIZATIONS",
    "PAPER_HIDDEN",
    "PRECISION_CLASSES",
    "PRESETS",
    "READOUTS",
    "SAMPLE_HIDDEN",
    "SIGNAL_LOCATIONS",
    "AnalogConfig",
    "AnalogConv1d",
    "AnalogConv2d",
    "AnalogLayer",
    "AnalogLinear",
    "GaussianNoise",
    "LaplacianNoise",
    "LayerMismatch",
    "LogitStats",
    "PoissonNoise",
    "ProbeResult",
    "ReducePrecision",
    "Rule",
    "SiteAdvice",
    "StochasticReducePrecision",
    "UniformNoise",
    "advise",
    "analog_layers",
    "fixed_weights",
    "available_normalizations",
    "available_policies",
    "register_normalization",
    "build_classifier",
    "build_cnn",
    "canonical_signal_policy",
    "convert",
    "convertible_layers",
    "cross_entropy_floor",
    "get_policy",
    "gradient_disagreement",
    "gradient_mismatch",
    "learned_clamp",
    "logit_bounds",
    "make_activation",
    "make_noise",
    "normalization_fn",
    "normalize",
    "parse_signal_policy",
    "probe",
    "project_weights",
    "readout_scale",
    "reduce_precision",
    "register_policy",
    "resolve_preset",
    "saturation_mask",
    "set_noise",
    "set_policies",
    "stochastic_reduce_precision",
    "straight_through",
]
