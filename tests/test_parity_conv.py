"""Parity of the convolutional analog layers and `build_cnn` with AnalogVNN 1.0.8.

AnalogVNN has no convolution layer of its own: its models put ``torch.nn.Conv1d/Conv2d`` between its
normalization, precision and noise modules in a ``FullSequential`` (signal pipeline before and after the
layer, activation, then pooling) and parametrize their weights with a weight model (``PseudoParameter``),
as its sample code does for its ``Linear``. We build that model with the same weights as ``build_cnn``'s
and compare, as tests/test_parity_analogvnn.py does for the MLP (whose helpers this file reuses):
forward values bit-identical; parameter gradients under the ``analogvnn`` preset equal to AnalogVNN's
graph-based backward within the accumulation-order tolerance; noise on with keyed draws (every stochastic
stage re-seeded by (layer, site, stage) in both models) for every noise kind and both roundings.
"""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

import analog
from analog import AnalogConfig

if not os.environ.get("CI"):  # in CI the test extra is installed: a missing analogvnn fails, not skips
    pytest.importorskip("analogvnn")

from analogvnn.nn.activation.Tanh import Tanh  # noqa: E402
from analogvnn.nn.Linear import Linear  # noqa: E402
from analogvnn.nn.module.FullSequential import FullSequential  # noqa: E402
from analogvnn.nn.precision.ReducePrecision import ReducePrecision as AvReducePrecision  # noqa: E402
from analogvnn.parameter.PseudoParameter import PseudoParameter  # noqa: E402
from test_parity_analogvnn import (  # noqa: E402
    AVNN_NORMS,
    NOISE_CLASSES,
    NOISY,
    PRECISION_CLASSES,
    WeightModel,
    _avnn_step_grads,
    _no_noise,
    avnn_poisson_solver,  # noqa: F401 - a fixture
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # AnalogVNN's x.T on >2-D tensors

SHAPES = {1: (1, 12), 2: (1, 8, 8)}
CHANNELS = (3, 4)  # every weight, bias and feature-map shape distinct, so a shape names a site
N_CLASSES = 10
BATCH = 6


class ConvModel(FullSequential):
    """AnalogVNN's way to an analog CNN: per block norm, precision, noise, torch Conv, noise, norm,
    precision, activation, then max-pool 2; Flatten; AnalogVNN's Linear readout in the same pipeline."""

    def __init__(self, shape, norm_class, prec_class, precision, noise_class, leakage):
        super().__init__()
        dims = len(shape) - 1
        conv, pool = (nn.Conv1d, nn.MaxPool1d) if dims == 1 else (nn.Conv2d, nn.MaxPool2d)
        self.blocks = []  # per analog layer: (layer, in precision, in noise, out noise, out precision)
        layers = [nn.Unflatten(1, shape)]

        def wrap(layer):
            stages = [
                norm_class(),
                prec_class(precision=precision),
                noise_class(leakage=leakage, precision=precision),
                layer,
                noise_class(leakage=leakage, precision=precision),
                norm_class(),
                prec_class(precision=precision),
                Tanh(),
            ]
            self.blocks.append((layer, stages[1], stages[2], stages[4], stages[6]))
            Tanh.initialise_(layer.weight)
            return stages

        c, spatial = shape[0], shape[1:]
        for c_out in CHANNELS:
            layers += [*wrap(conv(c, c_out, 3, padding=1)), pool(2)]
            c, spatial = c_out, tuple(n // 2 for n in spatial)
        layers.append(nn.Flatten(start_dim=1))
        feats = c * int(torch.tensor(spatial).prod())
        layers += wrap(Linear(feats, N_CLASSES))
        self.all_layers = layers
        self.add_sequence(*layers)


def _conv_pair(dims, weight_norm, signal_norm, noise="none", precision_class="reduce", saturate=0.0):
    """(AnalogVNN model, its weight model, analog/ CNN) with identical weights, AnalogVNN's parametrized."""
    torch.manual_seed(0)
    noisy = noise != "none"
    noise_class = NOISE_CLASSES[noise] if noisy else _no_noise
    prec_class = PRECISION_CLASSES[precision_class] if noisy else AvReducePrecision
    leakage = 0.3 if noisy else None
    theirs = ConvModel(SHAPES[dims], AVNN_NORMS[signal_norm], prec_class, 16, noise_class, leakage)
    weight_model = WeightModel(AVNN_NORMS[weight_norm], prec_class, 16, noise_class, leakage)
    wp, sp = analog.resolve_preset("analogvnn", weight_norm, signal_norm)
    config = AnalogConfig(
        weight_norm=weight_norm,
        weight_policy=wp,
        signal_norm=signal_norm,
        signal_policy=sp,
        precision_class=precision_class,
        precision=16,
        noise=noise,
        leakage=leakage,
    )
    ours = analog.build_cnn(SHAPES[dims], N_CLASSES, CHANNELS, 3, (), "tanh", config)
    with torch.no_grad():
        for (a, *_), b in zip(theirs.blocks, analog.analog_layers(ours), strict=True):
            big = torch.rand(a.weight.shape) < saturate
            a.weight[big] = torch.sign(torch.randn(int(big.sum()))) * (1 + torch.rand(int(big.sum())))
            b.weight.copy_(a.weight)
            b.bias.copy_(a.bias)
    theirs.loss_function = nn.CrossEntropyLoss()
    theirs.compile(device=torch.device("cpu"))
    PseudoParameter.parametrize_module(theirs, transformation=weight_model)
    return theirs, weight_model, ours


def _batch(dims, scale=3.0, seed=1):
    g = torch.Generator().manual_seed(seed)
    n = int(torch.tensor(SHAPES[dims]).prod())
    return torch.rand(BATCH, n, generator=g) * scale, torch.randint(0, N_CLASSES, (BATCH,), generator=g)


def _grads(theirs, x, y):
    layers = [block[0] for block in theirs.blocks]
    out, grads = _avnn_step_grads(theirs, layers, x, y)
    return out, grads


@pytest.mark.parametrize("dims", [1, 2])
@pytest.mark.parametrize(
    ("weight_norm", "signal_norm"),
    [("clamp", "clamp"), ("clamp", "l2norm"), ("l2norm", "l1norm_wm"), ("clamp01", "l2norm_m")],
)
def test_cnn_forward_and_preset_gradients_equal_analogvnn(dims, weight_norm, signal_norm):
    """Noise off, 2**4 levels, saturated kernels and signals: the same CNN in both frameworks."""
    theirs, _, ours = _conv_pair(dims, weight_norm, signal_norm, saturate=0.05)
    x, y = _batch(dims)
    out, expected = _grads(theirs, x, y)
    got = ours(x)
    assert torch.equal(got, out.detach())
    nn.functional.cross_entropy(got, y).backward()
    conv_types = {1: analog.AnalogConv1d, 2: analog.AnalogConv2d}
    assert sum(isinstance(m, conv_types[dims]) for m in ours) == len(CHANNELS)
    for (gw, gb), layer in zip(expected, analog.analog_layers(ours), strict=True):
        assert float(gw.abs().max()) > 1e-5
        torch.testing.assert_close(layer.weight.grad, gw, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(layer.bias.grad, gb, rtol=1e-5, atol=1e-6)


def test_other_conv_policies_differ_from_analogvnn_when_clamps_saturate():
    """Sanity check of the comparison: all-exact breaks parity when the kernels' clamps saturate."""
    theirs, _, ours = _conv_pair(2, "clamp", "clamp", saturate=0.05)
    analog.set_policies(ours, weight_policy="exact", signal_policy="exact")
    x, y = _batch(2)
    _, expected = _grads(theirs, x, y)
    nn.functional.cross_entropy(ours(x), y).backward()
    diffs = [
        float((lay.weight.grad - gw).abs().max())
        for (gw, _), lay in zip(expected, analog.analog_layers(ours), strict=True)
    ]
    assert max(diffs) > 1e-6


SITES = ("in", "weight", "bias", "out")


def _key(layer: int, site: str, stage: str) -> int:
    return 1000 * (layer + 1) + 10 * SITES.index(site) + (stage == "noise")


def _key_draws(theirs, weight_model, ours, x) -> None:
    """Re-seed before every stochastic stage of both models by (layer, site, stage); see the MLP test."""
    shapes = []
    hooks = [
        lay.register_forward_hook(lambda m, i, o: shapes.append((tuple(i[0].shape), tuple(o.shape))))
        for lay in analog.analog_layers(ours)
    ]
    with torch.no_grad():
        ours(x)
    for h in hooks:
        h.remove()
    for i, (layer, (shape_in, shape_out)) in enumerate(zip(analog.analog_layers(ours), shapes, strict=True)):
        sites = {
            shape_in: "in",
            tuple(layer.weight.shape): "weight",
            tuple(layer.bias.shape): "bias",
            shape_out: "out",
        }
        assert len(sites) == 4

        def keyed(fn, stage, i=i, sites=sites):
            def draw(t):
                torch.manual_seed(_key(i, sites[tuple(t.shape)], stage))
                return fn(t)

            return draw

        layer._noise.sample = keyed(layer._noise.sample, "noise")
        layer._precision = keyed(layer._precision, "precision")

    def seed(key):
        def hook(module, args):
            torch.manual_seed(key)

        return hook

    by_shape = {}
    for i, (layer, in_prec, in_noise, out_noise, out_prec) in enumerate(theirs.blocks):
        in_prec.register_forward_pre_hook(seed(_key(i, "in", "precision")))
        in_noise.register_forward_pre_hook(seed(_key(i, "in", "noise")))
        out_noise.register_forward_pre_hook(seed(_key(i, "out", "noise")))
        out_prec.register_forward_pre_hook(seed(_key(i, "out", "precision")))
        by_shape[tuple(layer.parametrizations.weight.original.shape)] = (i, "weight")
        by_shape[tuple(layer.parametrizations.bias.original.shape)] = (i, "bias")

    def weight_hook(stage):
        def hook(module, args):
            torch.manual_seed(_key(*by_shape[tuple(args[0].shape)], stage))

        return hook

    weight_model.all_layers[1].register_forward_pre_hook(weight_hook("precision"))
    weight_model.all_layers[2].register_forward_pre_hook(weight_hook("noise"))


@pytest.mark.parametrize("dims", [1, 2])
@pytest.mark.parametrize(("noise", "precision_class"), NOISY)
def test_noisy_cnn_equals_analogvnn_with_keyed_draws(dims, noise, precision_class, avnn_poisson_solver):  # noqa: F811
    """Noise on, identical random numbers per stage: forward bit-identical, gradients equal."""
    theirs, weight_model, ours = _conv_pair(dims, "clamp", "clamp", noise, precision_class)
    x, y = _batch(dims, scale=2.0)
    _key_draws(theirs, weight_model, ours, x)
    out, expected = _grads(theirs, x, y)
    got = ours(x)
    assert torch.equal(got, out.detach())
    analog.set_noise(ours, False)
    with torch.no_grad():
        assert not torch.equal(ours(x), got)  # the noise is on (and not a no-op)
    analog.set_noise(ours, True)
    nn.functional.cross_entropy(got, y).backward()
    for (gw, gb), layer in zip(expected, analog.analog_layers(ours), strict=True):
        assert float(gw.abs().max()) > 1e-5
        torch.testing.assert_close(layer.weight.grad, gw, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(layer.bias.grad, gb, rtol=1e-5, atol=1e-6)
