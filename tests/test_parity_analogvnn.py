"""Parity of `analog/` with AnalogVNN 1.0.8 (forward values, and gradients under the ``analogvnn`` preset).

Comparisons use ``torch.equal`` wherever `analog/` replicates AnalogVNN's formula op for op. Where a
tolerance is used the reason is stated next to it; in short: AnalogVNN stores and computes noise
parameters as float32 tensors while `analog/` computes them in float64, and gradients are accumulated
in a different order by AnalogVNN's graph-based backward than by autograd.

Two AnalogVNN 1.0.8 defects are worked around (and pinned by tests, so a fixed release shows up):

* ``Sequential.compile()`` only builds the forward graph, then compiles the (empty) backward graph and
  raises ``OUTPUT doesn't exist``; the sample code's ``WeightModel(Sequential)`` therefore cannot run.
  Our ``WeightModel`` subclasses ``FullSequential`` (same forward; it only adds the reversed graph,
  which a weight transformation never uses).
* ``PoissonNoise.calc_scale`` / ``calc_precision`` unpack ``toms748(...)`` as a pair, but ``toms748``
  returns a single float unless ``full_output=True``; we patch that in to reach AnalogVNN's own solver.
"""

from __future__ import annotations

import functools
import importlib
import math
import os

import numpy as np
import pytest
import torch
from scipy import stats as sst
from torch import nn

import analog
from analog import AnalogConfig

if not os.environ.get("CI"):  # in CI the test extra is installed: a missing analogvnn fails, not skips
    pytest.importorskip("analogvnn")

import analogvnn.nn.noise.PoissonNoise as avnn_poisson_module  # noqa: E402
from analogvnn.nn.activation.ELU import ELU  # noqa: E402
from analogvnn.nn.activation.Gaussian import GeLU  # noqa: E402
from analogvnn.nn.activation.Identity import Identity  # noqa: E402
from analogvnn.nn.activation.ReLU import LeakyReLU, ReLU  # noqa: E402
from analogvnn.nn.activation.SiLU import SiLU  # noqa: E402
from analogvnn.nn.activation.Tanh import Tanh  # noqa: E402
from analogvnn.nn.Linear import Linear  # noqa: E402
from analogvnn.nn.module.FullSequential import FullSequential  # noqa: E402
from analogvnn.nn.module.Sequential import Sequential  # noqa: E402
from analogvnn.nn.noise.GaussianNoise import GaussianNoise as AvGaussian  # noqa: E402
from analogvnn.nn.noise.LaplacianNoise import LaplacianNoise as AvLaplacian  # noqa: E402
from analogvnn.nn.noise.PoissonNoise import PoissonNoise as AvPoisson  # noqa: E402
from analogvnn.nn.noise.UniformNoise import UniformNoise as AvUniform  # noqa: E402
from analogvnn.nn.normalize import Clamp as avnn_clamp  # noqa: E402
from analogvnn.nn.normalize import LPNorm as avnn_lp  # noqa: E402
from analogvnn.nn.precision.ReducePrecision import ReducePrecision as AvReducePrecision  # noqa: E402
from analogvnn.nn.precision.StochasticReducePrecision import (  # noqa: E402
    StochasticReducePrecision as AvStochasticReducePrecision,
)
from analogvnn.parameter.PseudoParameter import PseudoParameter  # noqa: E402

AVNN_NORMS = {
    "clamp": avnn_clamp.Clamp,
    "clamp01": avnn_clamp.Clamp01,
    "l1norm": avnn_lp.L1Norm,
    "l2norm": avnn_lp.L2Norm,
    "l1norm_m": avnn_lp.L1NormM,
    "l2norm_m": avnn_lp.L2NormM,
    "l1norm_w": avnn_lp.L1NormW,
    "l2norm_w": avnn_lp.L2NormW,
    "l1norm_wm": avnn_lp.L1NormWM,
    "l2norm_wm": avnn_lp.L2NormWM,
}

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # AnalogVNN's x.T on >2-D tensors


def test_every_normalization_has_an_analogvnn_counterpart():
    assert set(analog.NORMALIZATIONS) == set(AVNN_NORMS) | {"none"}


# --- normalizations --------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(7,), (6, 5), (4, 3, 5)])
@pytest.mark.parametrize("kind", list(AVNN_NORMS))
def test_normalization_forward_equals_analogvnn(kind, shape):
    g = torch.Generator().manual_seed(17 * len(kind) + len(shape))
    x = torch.randn(*shape, generator=g) * 2
    x.view(-1)[:4] = torch.tensor([1.0, -1.0, 0.0, 3.0])  # clamp boundaries and a saturated value
    if len(shape) > 1:
        x[1] = 1e-6  # a row whose Lp norm hits AnalogVNN's 1e-4 floor
    expected = AVNN_NORMS[kind]()(x)
    assert torch.equal(analog.normalize(x, kind), expected)
    assert torch.equal(analog.normalization_fn(kind)(x), expected)


FRESH_NORMS = {  # built anew from the factories (the table in analog.normalize is built once, at import)
    "l1norm": (1, False, "rowwise"),
    "l2norm": (2, False, "rowwise"),
    "l1norm_m": (1, True, "rowwise"),
    "l2norm_m": (2, True, "rowwise"),
    "l1norm_w": (1, False, "whole"),
    "l2norm_w": (2, False, "whole"),
    "l1norm_wm": (1, True, "whole"),
    "l2norm_wm": (2, True, "whole"),
}


@pytest.mark.parametrize("kind", list(FRESH_NORMS))
def test_lp_norm_factories_equal_analogvnn(kind):
    norm_module = importlib.import_module("analog.normalize")  # (analog.normalize is the function)
    p, make_max_1, layout = FRESH_NORMS[kind]
    fn = (norm_module._rowwise if layout == "rowwise" else norm_module._whole)(p, make_max_1)
    g = torch.Generator().manual_seed(5)
    for shape in [(7,), (6, 5), (4, 3, 5)]:
        x = torch.randn(*shape, generator=g) * 3
        if len(shape) > 1:
            x[1] = 1e-6  # a row at AnalogVNN's 1e-4 norm floor
        assert torch.equal(fn(x), AVNN_NORMS[kind]()(x)), shape


def test_none_normalization_is_identity():
    x = torch.randn(5, 3)
    assert analog.normalize(x, "none") is x


@pytest.mark.parametrize("kind", list(AVNN_NORMS))
def test_analogvnn_preset_signal_backward_equals_analogvnn_backward(kind):
    """Signal site: AnalogVNN's clamps use their masked derivative, its Lp norms are BackwardIdentity."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(6, 5, generator=g) * 2
    x[0, :3] = torch.tensor([1.0, -1.0, 0.0])  # AnalogVNN's mask includes the boundaries; so does clamp's
    upstream = torch.randn(6, 5, generator=g)
    layer = AVNN_NORMS[kind]()
    layer.train()
    layer(x)  # stores the input that its backward reads
    expected = layer.backward(upstream)
    _, signal_policy = analog.resolve_preset("analogvnn", "clamp", kind)
    xr = x.clone().requires_grad_(True)
    analog.normalize(xr, kind, signal_policy).backward(upstream)
    assert torch.equal(xr.grad, expected)


# --- precision -------------------------------------------------------------------------------------


@pytest.mark.parametrize("precision", [1, 2, 3, 4, 7, 10, 16, 100, 255, 256])
def test_reduce_precision_equals_analogvnn(precision):
    g = torch.Generator().manual_seed(precision)
    k = torch.arange(-3 * precision, 3 * precision + 1, dtype=torch.float32)
    for divide in (0.0, 0.25, 0.3, 0.5, 0.7, 1.0):
        # random values, every level, and values exactly at the rounding thresholds (|x p| - divide integer)
        x = torch.cat(
            [
                torch.randn(500, generator=g) * 2,
                k / precision,
                (k + divide) / precision,
                (k - divide) / precision,
                (k + 0.5) / precision,
            ]
        )
        expected = AvReducePrecision(precision=precision, divide=divide)(x)
        assert torch.equal(analog.reduce_precision(x, precision, divide), expected), divide
        assert torch.equal(analog.ReducePrecision(precision, divide)(x), expected), divide


@pytest.mark.parametrize("precision", [1, 4, 16, 255])
def test_stochastic_reduce_precision_equals_analogvnn_under_same_seed(precision):
    x = torch.randn(3000, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(3)
    expected = AvStochasticReducePrecision(precision=precision)(x)
    torch.manual_seed(3)
    assert torch.equal(analog.stochastic_reduce_precision(x, precision), expected)
    torch.manual_seed(3)
    assert torch.equal(analog.StochasticReducePrecision(precision)(x), expected)


# --- noise parameter relations ---------------------------------------------------------------------
# Two checks per relation. (1) AnalogVNN's static relation (`calc_*`) fed the same Python floats as
# analog/: the same formula in float64, so equal up to a few ulps (REL_FORMULA; scipy's root finder
# for Poisson stops at its own tolerance, hence REL_ROOT). (2) The constructed modules: AnalogVNN
# first rounds every parameter to a float32 tensor and derives the third one from those, so they agree
# to float32 rounding times the relation's sensitivity (REL_MODULE).

REL_FORMULA = 1e-12
REL_ROOT = 1e-9
REL_MODULE = 1e-5
LEAK_PREC = [(0.5, 16), (0.2, 16), (0.01, 4), (0.9, 255)]


def _seeded_pair(theirs, ours, x, seed):
    torch.manual_seed(seed)
    expected = theirs(x)
    torch.manual_seed(seed)
    return ours(x), expected


@pytest.mark.parametrize(("leakage", "precision"), LEAK_PREC)
def test_gaussian_relations_equal_analogvnn(leakage, precision):
    std = analog.noise.gaussian_std(leakage, precision)
    assert std == pytest.approx(AvGaussian.calc_std(leakage, precision), rel=REL_FORMULA)
    assert analog.noise.gaussian_precision(std, leakage) == pytest.approx(
        AvGaussian.calc_precision(std, leakage), rel=REL_FORMULA
    )
    assert analog.noise.gaussian_leakage(std, precision) == pytest.approx(
        AvGaussian.calc_leakage(std, precision), rel=REL_FORMULA
    )
    ours, theirs = (
        analog.GaussianNoise(leakage=leakage, precision=precision),
        AvGaussian(leakage=leakage, precision=precision),
    )
    assert (ours.std, ours.leakage, ours.precision) == (std, leakage, precision)
    assert ours.std == pytest.approx(float(theirs.std), rel=REL_MODULE)
    assert analog.make_noise("gaussian", leakage, precision).std == std
    assert analog.GaussianNoise(std=std, leakage=leakage).precision == pytest.approx(
        float(AvGaussian(std=std, leakage=leakage).precision), rel=REL_MODULE
    )
    assert analog.GaussianNoise(std=std, precision=precision).leakage == pytest.approx(
        float(AvGaussian(std=std, precision=precision).leakage), rel=REL_MODULE
    )
    # same samples under the same seed (up to the float32 rounding of std)
    got, expected = _seeded_pair(theirs, ours, torch.randn(2000), seed=1)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


@pytest.fixture
def avnn_poisson_solver(monkeypatch):
    """Let AnalogVNN's `r, _ = toms748(...)` unpack (see module docstring)."""
    import scipy.optimize

    monkeypatch.setattr(
        avnn_poisson_module, "toms748", functools.partial(scipy.optimize.toms748, full_output=True)
    )


def test_analogvnn_poisson_solver_is_broken_without_patch():
    with pytest.raises(TypeError):
        AvPoisson(max_leakage=0.5, precision=16)


def test_analogvnn_weight_model_as_plain_sequential_cannot_compile():
    """Why our WeightModel subclasses FullSequential (see module docstring)."""
    model = Sequential()
    model.add_sequence(avnn_clamp.Clamp())
    with pytest.raises(ValueError, match="OUTPUT"):
        model.compile()


@pytest.mark.parametrize(("leakage", "precision"), LEAK_PREC)
def test_poisson_relations_equal_analogvnn(leakage, precision, avnn_poisson_solver):
    scale = analog.noise.poisson_scale(leakage, precision)
    assert scale == pytest.approx(AvPoisson.calc_scale(leakage, precision), rel=REL_ROOT)
    assert analog.noise.poisson_max_leakage(scale, precision) == pytest.approx(
        float(AvPoisson.calc_max_leakage(scale, precision)), rel=REL_FORMULA
    )
    assert float(AvPoisson.calc_max_leakage(scale, precision)) == pytest.approx(leakage, rel=REL_ROOT)
    assert analog.noise.poisson_precision(scale, leakage) == pytest.approx(
        AvPoisson.calc_precision(scale, leakage), rel=REL_ROOT
    )
    ours, theirs = (
        analog.PoissonNoise(max_leakage=leakage, precision=precision),
        AvPoisson(max_leakage=leakage, precision=precision),
    )
    assert ours.scale == scale
    assert ours.scale == pytest.approx(float(theirs.scale), rel=REL_MODULE)
    assert ours.rate_factor == pytest.approx(float(theirs.rate_factor), rel=REL_MODULE)
    assert analog.make_noise("poisson", leakage, precision).scale == scale
    assert analog.PoissonNoise(scale=scale, precision=precision).max_leakage == pytest.approx(
        float(AvPoisson(scale=scale, precision=precision).max_leakage), rel=REL_MODULE
    )
    assert analog.PoissonNoise(scale=scale, max_leakage=leakage).precision == pytest.approx(
        float(AvPoisson(scale=scale, max_leakage=leakage).precision), rel=REL_MODULE
    )


@pytest.mark.parametrize(("x", "rate"), [(0.3, 0.0), (1.03, 1.0), (0.97, 1.0), (-1.03, -1.0)])
def test_poisson_cdf_equals_analogvnn_static_cdf(x, rate):
    """Including rate 0, where AnalogVNN returns 1 (all mass at zero)."""
    expected = float(AvPoisson.static_cdf(x=x, rate=rate, scale_factor=16.0))
    assert analog.noise._poisson_cdf(x, rate, 16.0) == pytest.approx(expected, rel=REL_FORMULA)


def test_poisson_samples_equal_analogvnn_under_same_seed():
    ours, theirs = analog.PoissonNoise(scale=1.0, precision=16), AvPoisson(scale=1.0, precision=16)
    got, expected = _seeded_pair(theirs, ours, torch.randn(2000), seed=5)
    assert torch.equal(got, expected)  # rate factor 16 is exact in float32 and float64


@pytest.mark.parametrize(("leakage", "precision"), LEAK_PREC)
def test_laplacian_relations_equal_analogvnn(leakage, precision):
    scale = analog.noise.laplacian_scale(leakage, precision)
    assert scale == pytest.approx(AvLaplacian.calc_scale(leakage, precision), rel=REL_FORMULA)
    assert analog.noise.laplacian_precision(scale, leakage) == pytest.approx(
        AvLaplacian.calc_precision(scale, leakage), rel=REL_FORMULA
    )
    assert analog.noise.laplacian_leakage(scale, precision) == pytest.approx(
        float(AvLaplacian.calc_leakage(scale, precision)), rel=REL_FORMULA
    )
    ours, theirs = (
        analog.LaplacianNoise(leakage=leakage, precision=precision),
        AvLaplacian(leakage=leakage, precision=precision),
    )
    assert ours.scale == scale
    assert ours.scale == pytest.approx(float(theirs.scale), rel=REL_MODULE)
    assert analog.make_noise("laplacian", leakage, precision).scale == scale
    assert analog.LaplacianNoise(scale=scale, leakage=leakage).precision == pytest.approx(
        float(AvLaplacian(scale=scale, leakage=leakage).precision), rel=REL_MODULE
    )
    assert analog.LaplacianNoise(scale=scale, precision=precision).leakage == pytest.approx(
        float(AvLaplacian(scale=scale, precision=precision).leakage), rel=REL_MODULE
    )


def test_laplacian_samples_equal_analogvnn_under_same_seed():
    """Both draw torch.distributions.Laplace's way (u in [eps - 1, 1)); AnalogVNN's scale is float32."""
    theirs = AvLaplacian(leakage=0.3, precision=8)
    ours = analog.LaplacianNoise(scale=float(theirs.scale), leakage=0.3)
    got, expected = _seeded_pair(theirs, ours, torch.randn(2000), seed=4)
    assert torch.equal(got, expected)


def test_laplacian_draw_is_finite_at_the_lowest_uniform_value(monkeypatch):
    """The lowest value the uniform source returns must not give an infinite draw."""
    ours = analog.LaplacianNoise(leakage=0.3, precision=8)
    lowest = {"rand_like": torch.zeros_like, "uniform_": lambda t, a=0.0, b=1.0: t.fill_(a)}
    monkeypatch.setattr(torch, "rand_like", lowest["rand_like"])
    monkeypatch.setattr(torch.Tensor, "uniform_", lowest["uniform_"])
    assert torch.isfinite(ours(torch.zeros(5))).all()


def test_laplacian_sample_spread_matches_analogvnn_scale():
    """The distribution: mean |X| is the scale and P(|X| > 1/(2p)) the leakage."""
    ours = analog.LaplacianNoise(leakage=0.3, precision=8)
    torch.manual_seed(0)
    d = ours(torch.zeros(200_000))
    # mean |X| of Laplace(0, b) is b; leakage = P(|X| > 1/(2p))
    assert float(d.abs().mean()) == pytest.approx(
        float(AvLaplacian(leakage=0.3, precision=8).scale), rel=0.02
    )
    assert float((d.abs() > 1 / 16).float().mean()) == pytest.approx(0.3, abs=0.01)


@pytest.mark.parametrize(("leakage", "precision"), LEAK_PREC)
def test_uniform_relations_equal_analogvnn(leakage, precision):
    lo, hi = analog.noise.uniform_bounds(leakage, precision)
    assert (lo, hi) == AvUniform.calc_high_low(leakage, precision)
    assert analog.noise.uniform_leakage(lo, hi, precision) == pytest.approx(
        AvUniform.calc_leakage(lo, hi, precision), rel=REL_FORMULA
    )
    assert analog.noise.uniform_precision(lo, hi, leakage) == pytest.approx(
        AvUniform.calc_precision(lo, hi, leakage), rel=REL_FORMULA
    )
    ours, theirs = (
        analog.UniformNoise(leakage=leakage, precision=precision),
        AvUniform(leakage=leakage, precision=precision),
    )
    assert (ours.low, ours.high) == (lo, hi)
    assert ours.low == pytest.approx(float(theirs.low), rel=REL_MODULE)
    assert ours.high == pytest.approx(float(theirs.high), rel=REL_MODULE)
    assert analog.make_noise("uniform", leakage, precision).high == hi
    assert analog.UniformNoise(low=lo, high=hi, precision=precision).leakage == pytest.approx(
        float(AvUniform(low=lo, high=hi, precision=precision).leakage), rel=REL_MODULE
    )
    assert analog.UniformNoise(low=lo, high=hi, leakage=leakage).precision == pytest.approx(
        float(AvUniform(low=lo, high=hi, leakage=leakage).precision), rel=REL_MODULE
    )
    # same samples under the same seed (up to float32 rounding of the bounds and of the op order)
    got, expected = _seeded_pair(theirs, ours, torch.randn(2000), seed=2)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("activation", "theirs"),
    [("relu", ReLU), ("leakyrelu", LeakyReLU), ("tanh", Tanh), ("elu", ELU), ("silu", SiLU), ("gelu", GeLU)],
)
def test_weight_initialisation_equals_analogvnn_initialise(activation, theirs):
    """Each activation re-initialises its layer's weight as AnalogVNN's ``initialise_`` does."""
    torch.manual_seed(11)
    expected = theirs.initialise_(torch.empty(40, 30))
    torch.manual_seed(11)
    got = torch.empty(40, 30)
    analog.models.init_weight_for(got, activation)
    assert torch.equal(got, expected)


# --- the sample-code model -------------------------------------------------------------------------


def _no_noise(leakage=None, precision=None):
    """Noise off: AnalogVNN's own Identity layer (identity forward, identity backward)."""
    return Identity()


class LinearModel(FullSequential):
    """AnalogVNN's sample-code model (784-256-128-10 by default)."""

    def __init__(
        self,
        activation_class,
        norm_class,
        precision_class,
        precision,
        noise_class,
        leakage,
        sizes=(784, 256, 128, 10),
    ):
        super().__init__()
        self.activation_class, self.norm_class = activation_class, norm_class
        self.precision_class, self.precision = precision_class, precision
        self.noise_class, self.leakage = noise_class, leakage
        self.all_layers = [nn.Flatten(start_dim=1)]
        for a, b in zip(sizes[:-1], sizes[1:], strict=True):
            self.add_layer(Linear(in_features=a, out_features=b))
        self.add_sequence(*self.all_layers)

    def add_layer(self, layer):
        self.all_layers.append(self.norm_class())
        self.all_layers.append(self.precision_class(precision=self.precision))
        self.all_layers.append(self.noise_class(leakage=self.leakage, precision=self.precision))
        self.all_layers.append(layer)
        self.all_layers.append(self.noise_class(leakage=self.leakage, precision=self.precision))
        self.all_layers.append(self.norm_class())
        self.all_layers.append(self.precision_class(precision=self.precision))
        self.all_layers.append(self.activation_class())
        self.activation_class.initialise_(layer.weight)


class WeightModel(FullSequential):  # the sample code says Sequential; see the module docstring
    def __init__(self, norm_class, precision_class, precision, noise_class, leakage):
        super().__init__()
        self.all_layers = [
            norm_class(),
            precision_class(precision=precision),
            noise_class(leakage=leakage, precision=precision),
        ]
        self.eval()
        self.add_sequence(*self.all_layers)


def _pair(activation: str, weight_norm: str, signal_norm: str, saturate: float = 0.0, seed: int = 0):
    """(AnalogVNN model, analog/ model) with identical weights and noise off, AnalogVNN's parametrized.

    A fraction `saturate` of the weights is set to +-(1..2), outside every weight normalization's range.
    """
    torch.manual_seed(seed)
    act = {"gelu": GeLU, "tanh": Tanh}[activation]
    theirs = LinearModel(act, AVNN_NORMS[signal_norm], AvReducePrecision, 16, _no_noise, None)
    weight_model = WeightModel(AVNN_NORMS[weight_norm], AvReducePrecision, 16, _no_noise, None)
    wp, sp = analog.resolve_preset("analogvnn", weight_norm, signal_norm)
    config = AnalogConfig(
        weight_norm=weight_norm,
        weight_policy=wp,
        signal_norm=signal_norm,
        signal_policy=sp,
        precision=16,
        noise="none",
    )
    ours = analog.build_classifier(784, 10, (256, 128), activation, config)
    their_linears = [m for m in theirs.modules() if isinstance(m, Linear)]
    with torch.no_grad():
        for a, b in zip(their_linears, analog.analog_layers(ours), strict=True):
            big = torch.rand(a.weight.shape) < saturate
            a.weight[big] = torch.sign(torch.randn(int(big.sum()))) * (1 + torch.rand(int(big.sum())))
            b.weight.copy_(a.weight)
            b.bias.copy_(a.bias)
    theirs.loss_function = nn.CrossEntropyLoss()
    theirs.compile(device=torch.device("cpu"))
    PseudoParameter.parametrize_module(theirs, transformation=weight_model)
    return theirs, their_linears, ours


def _batch(n: int = 64, scale: float = 1.0, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 28, 28, generator=g) * scale
    return x, torch.randint(0, 10, (n,), generator=g)


def test_sample_model_forward_equals_analogvnn():
    """The sample code's model (GeLU, Clamp, ReducePrecision 2**4), noise off, same weights."""
    theirs, _, ours = _pair("gelu", "clamp", "clamp")
    assert [type(m).__name__ for m in ours] == ["Flatten"] + ["AnalogLinear", "GELU"] * 3
    x, _ = _batch()
    with torch.no_grad():
        expected_eval = theirs.eval()(x.clone())
        theirs.train()
        expected_train = theirs(x.clone())
        got = ours(x)
    assert torch.equal(expected_eval, expected_train)
    # AnalogVNN's GeLU is the formula 0.5 x (1 + erf(x / sqrt 2)); nn.GELU's kernel rounds differently
    # in the last bit, and the final ReducePrecision sits before it: outputs agree to float32 rounding.
    torch.testing.assert_close(got, expected_train, rtol=1e-6, atol=1e-6)
    # everything before the final activation is bit-identical (a Layer keeps its last training input)
    last_gelu = [m for m in theirs.modules() if isinstance(m, GeLU)][-1]
    with torch.no_grad():
        assert torch.equal(ours[:-1](x), last_gelu.inputs)


def _avnn_step_grads(theirs, linears, x, y):
    """One forward + backward through AnalogVNN's own machinery (what `train_on` does per batch)."""
    theirs.train()
    theirs.zero_grad()
    for p in theirs.parameters():
        p.grad = None
    out = theirs(x.clone())
    theirs.loss(out, y)
    theirs.backward()
    return out, [
        (lin.parametrizations.weight.original.grad, lin.parametrizations.bias.original.grad)
        for lin in linears
    ]


@pytest.mark.parametrize(
    ("weight_norm", "signal_norm"),
    [
        ("clamp", "clamp"),
        ("clamp", "clamp01"),
        ("clamp", "l2norm"),
        ("l2norm", "l1norm_wm"),
        ("clamp01", "l2norm_m"),
    ],
)
def test_analogvnn_preset_gradients_equal_analogvnn(weight_norm, signal_norm):
    """Under the analogvnn preset every parameter gradient equals AnalogVNN's graph-based backward (Tanh)."""
    # 2% of the weights beyond +-1 (the weight clamp saturates); inputs x3 (the signal clamp saturates)
    theirs, linears, ours = _pair("tanh", weight_norm, signal_norm, saturate=0.02)
    x, y = _batch(scale=3.0)
    out, expected = _avnn_step_grads(theirs, linears, x, y)
    got_out = ours(x)
    assert torch.equal(got_out, out.detach())
    nn.functional.cross_entropy(got_out, y).backward()
    if weight_norm == "clamp":
        assert any(bool((lay.weight.abs() > 1).any()) for lay in analog.analog_layers(ours))
    for (gw, gb), layer in zip(expected, analog.analog_layers(ours), strict=True):
        assert gw is not None and gb is not None
        assert float(gw.abs().max()) > 1e-4
        torch.testing.assert_close(layer.weight.grad, gw, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(layer.bias.grad, gb, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("weight_policy", "signal_policy"), [("exact", "exact"), ("ste", "ste")])
def test_other_policies_differ_from_analogvnn_when_clamps_saturate(weight_policy, signal_policy):
    """Sanity check of the comparison: with saturated clamps, swapping either site's policy breaks parity."""
    theirs, linears, ours = _pair("tanh", "clamp", "clamp", saturate=0.02)
    analog.set_policies(ours, weight_policy=weight_policy, signal_policy=signal_policy)
    x, y = _batch(scale=3.0)
    _, expected = _avnn_step_grads(theirs, linears, x, y)
    nn.functional.cross_entropy(ours(x), y).backward()
    diffs = [
        float((lay.weight.grad - gw).abs().max())
        for (gw, _), lay in zip(expected, analog.analog_layers(ours), strict=True)
    ]
    assert max(diffs) > 1e-4


def test_analogvnn_gelu_backward_is_not_the_gelu_derivative():
    """AnalogVNN 1.0.8's GeLU backward uses x*sqrt(2*pi)*exp(-x^2/2)/2 for the second term instead of
    x*exp(-x^2/2)/sqrt(2*pi). analog/ uses nn.GELU (the true derivative), so gradients through a GeLU
    model cannot match AnalogVNN's; the gradient parity tests above use Tanh."""
    x = torch.linspace(-4, 4, 801, dtype=torch.float64)
    layer = GeLU()
    layer.train()
    layer(x)
    theirs = layer.backward(torch.ones_like(x))
    xr = x.clone().requires_grad_(True)
    nn.functional.gelu(xr).sum().backward()
    true = xr.grad
    phi = torch.exp(-(x**2) / 2)
    cdf = 0.5 * (1 + torch.erf(x / math.sqrt(2)))
    torch.testing.assert_close(true, cdf + x * phi / math.sqrt(2 * math.pi))
    torch.testing.assert_close(theirs, cdf + 0.5 * x * math.sqrt(2 * math.pi) * phi)
    assert float((theirs - true).abs().max()) > 0.5
    # the forward is right
    torch.testing.assert_close(GeLU.forward(x), nn.functional.gelu(x))


def test_gelu_analogvnn_reproduces_analogvnns_gelu_backward_bit_for_bit():
    """`gelu_analogvnn` (issue #21): nn.GELU's value, AnalogVNN 1.0.8's GeLU backward exactly."""
    x = torch.linspace(-4, 4, 801, dtype=torch.float64)
    layer = GeLU()
    layer.train()
    layer(x)
    g = torch.rand(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    theirs = layer.backward(g)
    xr = x.clone().requires_grad_(True)
    ours = analog.make_activation("gelu_analogvnn")(xr)
    ours.backward(g)
    assert torch.equal(xr.grad, theirs)
    assert torch.equal(ours.detach(), nn.functional.gelu(x))
    true = x.clone().requires_grad_(True)
    nn.functional.gelu(true).backward(g)
    assert float((xr.grad - true.grad).abs().max()) > 0.5  # not the true derivative


# --- noise on: the sample-code model with every noise class and both precision classes -------------
# AnalogVNN draws its weight noise more often than analog/ does (Linear.forward reads the bias twice and
# its backward reads the weight again, each read re-running the weight model), so the global RNG stream
# cannot line up draw for draw. Two checks instead:
# (1) keyed draws: every stochastic stage (noise, stochastic precision) of both models re-seeds the RNG
#     with a key of its (layer, site, stage) just before it draws. Both then see identical random numbers
#     at every stage however often they draw, so forward values must be bit-identical and gradients equal
#     (to the accumulation-order tolerance above). A stage moved to another place in the pipeline draws
#     under another key or acts on another value, and the outputs differ.
# (2) AnalogVNN's own RNG use, unmodified: many forward passes of both models on one batch; the pooled
#     outputs must have the same distribution (two-sample KS) and the same per-element means.

SIZES = (30, 17, 11, 6)  # every weight, bias and (batch, features) shape distinct, so a shape names a site
BATCH = 8
NOISE_CLASSES = {
    "gaussian": AvGaussian,
    "poisson": lambda leakage, precision: AvPoisson(max_leakage=leakage, precision=precision),
    "laplacian": AvLaplacian,
    "uniform": AvUniform,
}
PRECISION_CLASSES = {"reduce": AvReducePrecision, "stochastic": AvStochasticReducePrecision}
NOISY = [(n, p) for n in NOISE_CLASSES for p in PRECISION_CLASSES]
SITES = ("in", "weight", "bias", "out")


def _noisy_pair(noise: str, precision_class: str, leakage: float = 0.3, precision: int = 16, seed: int = 0):
    """(AnalogVNN model, its Linear layers, its weight model, analog/ model): noise on, same weights."""
    torch.manual_seed(seed)
    noise_class, prec_class = NOISE_CLASSES[noise], PRECISION_CLASSES[precision_class]
    theirs = LinearModel(Tanh, avnn_clamp.Clamp, prec_class, precision, noise_class, leakage, sizes=SIZES)
    weight_model = WeightModel(avnn_clamp.Clamp, prec_class, precision, noise_class, leakage)
    config = AnalogConfig(
        weight_norm="clamp",
        weight_policy="ste",
        signal_norm="clamp",
        signal_policy="exact",
        precision_class=precision_class,
        precision=precision,
        noise=noise,
        leakage=leakage,
    )
    ours = analog.build_classifier(SIZES[0], SIZES[-1], SIZES[1:-1], "tanh", config)
    their_linears = [m for m in theirs.modules() if isinstance(m, Linear)]
    with torch.no_grad():
        for a, b in zip(their_linears, analog.analog_layers(ours), strict=True):
            b.weight.copy_(a.weight)
            b.bias.copy_(a.bias)
    theirs.loss_function = nn.CrossEntropyLoss()
    theirs.compile(device=torch.device("cpu"))
    PseudoParameter.parametrize_module(theirs, transformation=weight_model)
    return theirs, their_linears, weight_model, ours


def _key(layer: int, site: str, stage: str) -> int:
    return 1000 * (layer + 1) + 10 * SITES.index(site) + (stage == "noise")


def _key_our_draws(ours: nn.Module) -> None:
    """Re-seed before every stochastic stage of analog/'s layers (the layer looks both up per call)."""
    for i, layer in enumerate(analog.analog_layers(ours)):
        sites = {
            (BATCH, layer.in_features): "in",
            tuple(layer.weight.shape): "weight",
            (layer.out_features,): "bias",
            (BATCH, layer.out_features): "out",
        }

        def keyed(fn, stage, i=i, sites=sites):
            def draw(t):
                torch.manual_seed(_key(i, sites[tuple(t.shape)], stage))
                return fn(t)

            return draw

        layer._noise.sample = keyed(layer._noise.sample, "noise")
        layer._precision = keyed(layer._precision, "precision")


def _key_their_draws(theirs, linears, weight_model) -> None:
    """The same keys for AnalogVNN's stages, by forward pre-hooks (its weight model is shared: by shape)."""

    def seed(key):
        def hook(module, args):
            torch.manual_seed(key)

        return hook

    for i in range(len(linears)):
        # all_layers: Flatten, then per layer norm, precision, noise, Linear, noise, norm, precision, act
        base = 1 + 8 * i
        for offset, site, stage in ((1, "in", "precision"), (2, "in", "noise"), (4, "out", "noise")):
            theirs.all_layers[base + offset].register_forward_pre_hook(seed(_key(i, site, stage)))
        theirs.all_layers[base + 6].register_forward_pre_hook(seed(_key(i, "out", "precision")))
    by_shape = {}
    for i, lin in enumerate(linears):
        by_shape[tuple(lin.parametrizations.weight.original.shape)] = (i, "weight")
        by_shape[tuple(lin.parametrizations.bias.original.shape)] = (i, "bias")

    def weight_hook(stage):
        def hook(module, args):
            torch.manual_seed(_key(*by_shape[tuple(args[0].shape)], stage))

        return hook

    weight_model.all_layers[1].register_forward_pre_hook(weight_hook("precision"))
    weight_model.all_layers[2].register_forward_pre_hook(weight_hook("noise"))


def _noisy_batch(n: int = BATCH, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, SIZES[0], generator=g) * 2, torch.randint(0, SIZES[-1], (n,), generator=g)


@pytest.mark.parametrize(("noise", "precision_class"), NOISY)
def test_noisy_model_equals_analogvnn_with_keyed_draws(noise, precision_class, avnn_poisson_solver):
    """Noise on, identical random numbers per stage: forward bit-identical, gradients equal (Tanh)."""
    theirs, linears, weight_model, ours = _noisy_pair(noise, precision_class)
    _key_our_draws(ours)
    _key_their_draws(theirs, linears, weight_model)
    x, y = _noisy_batch()
    out, expected = _avnn_step_grads(theirs, linears, x, y)
    got = ours(x)
    assert torch.equal(got, out.detach())
    with torch.no_grad():
        assert not torch.equal(ours(x), ours[:-1](x).clamp(-1, 1))  # the noise is on (and not a no-op)
    nn.functional.cross_entropy(got, y).backward()
    for (gw, gb), layer in zip(expected, analog.analog_layers(ours), strict=True):
        assert float(gw.abs().max()) > 1e-4
        torch.testing.assert_close(layer.weight.grad, gw, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(layer.bias.grad, gb, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("noise", "precision_class"), NOISY)
def test_noisy_model_output_distribution_equals_analogvnn(noise, precision_class, avnn_poisson_solver):
    """AnalogVNN's own draws, many forward passes: same output distribution and per-element means.

    KS on the pooled outputs (both sides pool the same elements equally often, so the iid null is
    conservative); per-element Welch z of the means, Bonferroni over elements (|z| < 5 ~ p < 6e-7 each).
    A stage moved within a pipeline (e.g. the output noise after the quantisation) gives KS p < 1e-40.
    """
    theirs, _, _, ours = _noisy_pair(noise, precision_class)
    x, _ = _noisy_batch(4)
    n = 200
    torch.manual_seed(5)
    theirs.train()
    with torch.no_grad():
        a = torch.stack([theirs(x.clone()) for _ in range(n)]).numpy().astype(np.float64)
        b = torch.stack([ours(x) for _ in range(n)]).numpy().astype(np.float64)
    assert (a.std(0) > 0).mean() > 0.5  # most outputs are random (the others saturate the clamp)
    assert sst.ks_2samp(a.ravel(), b.ravel()).pvalue > 1e-4
    se = np.sqrt((a.var(0, ddof=1) + b.var(0, ddof=1)) / n)
    random = se > 0
    assert np.array_equal(a.mean(0)[~random], b.mean(0)[~random])  # saturated on both sides alike
    assert float(np.max(np.abs(a.mean(0) - b.mean(0))[random] / se[random])) < 5
