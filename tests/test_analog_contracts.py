"""Contracts of `analog/` that mutation testing (benchmarks/mutation.py) found unguarded: error messages that
name the field, boundary values of the validators, saturation masks at the clamp boundaries, user-registered
normalizations, the gradient diagnostics on deeper networks and zero gradients, and initialisation bounds.
Expected values are written out by hand or from the documented formula."""

from __future__ import annotations

import dataclasses
import importlib
import math
import re

import pytest
import torch
import torch.nn.functional as F

import analog
from analog.models import _digital_linear, init_weight_for
from analog.noise import uniform_leakage
from analog.policies import field_label
from analog.precision import bit_precision

norm_mod = importlib.import_module("analog.normalize")  # the module (analog.normalize is the function)

# --- noise constructors: which parameter is wrong, and the boundaries -------------------------------


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: analog.GaussianNoise(std=0.1),
            "GaussianNoise: give exactly two of (std, leakage, precision); ",
        ),
        (
            lambda: analog.PoissonNoise(scale=1.0),
            "PoissonNoise: give exactly two of (scale, max_leakage, precision)",
        ),
        (
            lambda: analog.LaplacianNoise(scale=1.0),
            "LaplacianNoise: give exactly two of (scale, leakage, precision)",
        ),
        (
            lambda: analog.UniformNoise(leakage=0.5),
            "UniformNoise: give exactly two of (bounds, leakage, precision)",
        ),
    ],
)
def test_noise_parameter_count_error_names_the_class_and_parameters(make, message):
    with pytest.raises(ValueError) as err:
        make()
    assert str(err.value).startswith(message)


def test_parameter_count_error_lists_what_was_given():
    with pytest.raises(ValueError, match=re.escape("got {'std': 0.1}")):
        analog.GaussianNoise(std=0.1)
    with pytest.raises(ValueError, match="got none$"):
        analog.GaussianNoise()
    with pytest.raises(ValueError, match=re.escape("got {'std': 0.1, 'leakage': 0.5, 'precision': 4}")):
        analog.GaussianNoise(std=0.1, leakage=0.5, precision=4)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: analog.GaussianNoise(std=0.0, leakage=0.5), "std: must be > 0, got 0.0"),
        (lambda: analog.GaussianNoise(leakage=0.5, precision=0), "precision: must be > 0, got 0"),
        (lambda: analog.PoissonNoise(scale=-1.0, precision=4), "scale: must be > 0, got -1.0"),
        (lambda: analog.PoissonNoise(max_leakage=0.5, precision=0), "precision: must be > 0, got 0"),
        (
            lambda: analog.PoissonNoise(max_leakage=1.0, precision=4),
            "max_leakage: must be in the open interval",
        ),
        (lambda: analog.LaplacianNoise(scale=0.0, leakage=0.5), "scale: must be > 0, got 0.0"),
        (lambda: analog.LaplacianNoise(leakage=0.5, precision=-2), "precision: must be > 0, got -2"),
        (lambda: analog.UniformNoise(leakage=0.5, precision=0), "precision: must be > 0, got 0"),
        (
            lambda: analog.GaussianNoise(leakage=0.0, precision=4),
            "leakage: must be in the open interval (0, 1)",
        ),
    ],
)
def test_noise_validation_errors_name_the_field(make, message):
    with pytest.raises(ValueError) as err:
        make()
    assert str(err.value).startswith(message)


def test_poisson_rate_factor_must_be_at_least_one():
    assert analog.PoissonNoise(scale=1 / 16, precision=16).rate_factor == 1.0  # the boundary is allowed
    with pytest.raises(ValueError, match=r"^PoissonNoise: scale \* precision must be >= 1, got 0.5$"):
        analog.PoissonNoise(scale=1 / 32, precision=16)


def test_uniform_noise_bounds():
    with pytest.raises(ValueError, match=r"^UniformNoise: high must exceed low, got low=0.1, high=0.1$"):
        analog.UniformNoise(low=0.1, high=0.1, precision=16)
    with pytest.raises(ValueError, match=r"^UniformNoise: high must exceed low, got low=0.2, high=0.1$"):
        analog.UniformNoise(low=0.2, high=0.1, leakage=0.5)
    # (1/p) / (high - low) > 1: every value stays at its level, leakage 0 (not negative)
    assert uniform_leakage(-0.01, 0.01, 16) == 0.0
    assert analog.UniformNoise(low=-0.01, high=0.01, precision=16).leakage == 0.0


def test_make_noise_error_lists_the_classes():
    with pytest.raises(ValueError, match=re.escape("allowed: none, gaussian, poisson, laplacian, uniform")):
        analog.make_noise("pink", 0.5, 16)


# --- precision ----------------------------------------------------------------------------------------


def test_bit_precision_is_log2_of_levels_plus_one():
    assert bit_precision(1) == 1.0
    assert bit_precision(3) == 2.0
    assert bit_precision(255) == 8.0
    assert bit_precision(16) == pytest.approx(math.log2(17))


# --- normalizations -----------------------------------------------------------------------------------


def test_saturation_masks_at_the_clamp_boundaries():
    x = torch.tensor([-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5])
    assert analog.saturation_mask(x, "clamp").tolist() == [True, False, False, False, False, False, True]
    assert analog.saturation_mask(x, "clamp01").tolist() == [True, True, True, False, False, False, True]
    none = analog.saturation_mask(x, "none")
    assert none.dtype == torch.bool and not none.any() and none.shape == x.shape
    rows = torch.tensor([[0.6, 0.8], [3.0, 4.0]])  # the first row has L2 norm 1: unchanged
    assert analog.saturation_mask(rows, "l2norm").tolist() == [[False, False], [True, True]]


def test_none_normalization_passes_gradients_whatever_the_policy():
    x = torch.randn(4, 3, requires_grad=True)
    for policy in ("exact", "ste", "zero"):
        y = analog.normalize(x, "none", policy)
        assert y is x
    analog.normalize(x, "none", "zero").sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


@pytest.fixture
def halving_norm():
    """A user normalization (x / 2) with its own saturation mask (|x| > 3), registered for the test only."""

    @analog.register_normalization("halve", saturation=lambda x: x.abs() > 3)
    def halve(x):
        return x / 2

    yield "halve"
    norm_mod._FORWARD.pop("halve", None)
    norm_mod._SATURATION.pop("halve", None)


def test_registered_normalization_is_used_with_its_saturation_mask(halving_norm):
    assert halving_norm in analog.available_normalizations()
    x = torch.tensor([-4.0, 1.0, 6.0], requires_grad=True)
    y = analog.normalize(x, halving_norm, "exact")
    assert y.tolist() == [-2.0, 0.5, 3.0]
    y.sum().backward()
    assert x.grad.tolist() == [0.5, 0.5, 0.5]
    assert analog.saturation_mask(x.detach(), halving_norm).tolist() == [True, False, True]
    layer = analog.AnalogLinear(3, 2, config=analog.AnalogConfig(weight_norm=halving_norm, noise="none"))
    w, _ = layer.transformed_parameters()
    assert torch.equal(w, analog.reduce_precision(layer.weight.detach() / 2, 16))


def test_registered_normalization_without_mask_marks_changed_elements():
    @analog.register_normalization("cap2")
    def cap2(x):
        return torch.clamp(x, max=2)

    try:
        x = torch.tensor([1.0, 2.0, 3.0])
        assert analog.saturation_mask(x, "cap2").tolist() == [False, False, True]
    finally:
        norm_mod._FORWARD.pop("cap2", None)


@pytest.mark.parametrize("register", [analog.register_normalization, analog.register_policy])
@pytest.mark.parametrize("bad", ["", None, 3])
def test_registries_reject_names_that_are_not_non_empty_strings(register, bad):
    with pytest.raises(ValueError, match="name must be a non-empty string$"):
        register(bad)


# --- policies -----------------------------------------------------------------------------------------


def test_field_label():
    assert field_label("weight_norm") == "weight_norm: "
    assert field_label("") == ""


def test_policy_errors_list_the_registered_policies_and_name_the_part():
    with pytest.raises(ValueError, match=re.escape("registered policies: exact, ste, zero")):
        analog.get_policy("half")
    with pytest.raises(ValueError, match=re.escape("policies (weight part): unknown gradient policy 'x'")):
        analog.resolve_preset("x/ste", "clamp", "clamp")
    with pytest.raises(ValueError, match=re.escape("policies (signal part): unknown gradient policy 'y'")):
        analog.resolve_preset("ste/y", "clamp", "clamp")
    with pytest.raises(ValueError) as err:
        analog.resolve_preset("fancy", "clamp", "clamp")
    assert "allowed: analogvnn or '<weight>/<signal>' with policies from exact, ste, zero" in str(err.value)


# --- initialisation -----------------------------------------------------------------------------------


def _init_bound(activation: str, fan_in: int, fan_out: int) -> float:
    """The uniform bound of each activation's initialisation, from the formulas (Glorot; He et al.)."""
    xavier = math.sqrt(6 / (fan_in + fan_out))
    return {
        "relu": math.sqrt(2) * math.sqrt(3 / fan_in),
        "leakyrelu": math.sqrt(2 / (1 + 5)) * math.sqrt(3 / fan_in),  # leaky_relu gain with a = sqrt(5)
        "tanh": 5 / 3 * xavier,
        "elu": 3 / 4 * xavier,  # SELU's gain
        "silu": xavier,
        "gelu": xavier,
    }[activation]


@pytest.mark.parametrize("activation", ["relu", "leakyrelu", "tanh", "elu", "silu", "gelu"])
def test_initialisation_bound_per_activation(activation):
    torch.manual_seed(0)
    w = torch.empty(300, 200)
    init_weight_for(w, activation)
    bound = _init_bound(activation, fan_in=200, fan_out=300)
    assert float(w.abs().max()) <= bound
    assert float(w.abs().max()) > 0.99 * bound  # 60,000 uniform draws reach the bound
    assert float(w.min()) < -0.99 * bound


def test_digital_linear_bias_is_uniform_within_one_over_sqrt_fan_in():
    torch.manual_seed(0)
    layer = _digital_linear(64, 4000).requires_grad_(False)
    bound = 1 / 8
    assert float(layer.bias.max()) <= bound and float(layer.bias.max()) > 0.99 * bound
    assert float(layer.bias.min()) >= -bound and float(layer.bias.min()) < -0.99 * bound


# --- gradient diagnostics -------------------------------------------------------------------------------


def _deep_model(weight_norm: str = "clamp") -> torch.nn.Module:
    torch.manual_seed(0)
    config = analog.AnalogConfig(weight_norm=weight_norm, precision=16, leakage=0.5)
    model = analog.build_classifier(12, 4, (10, 8), "tanh", config)
    with torch.no_grad():
        for layer in analog.analog_layers(model):
            layer.weight.mul_(4)
    return model


def _batch():
    return torch.rand(16, 12, generator=torch.Generator().manual_seed(1)) * 3, torch.arange(16) % 4


def test_gradient_mismatch_on_three_layers_matches_each_layers_own_gradients():
    model = _deep_model()
    x, y = _batch()

    def grads(policy: str) -> list[torch.Tensor]:
        analog.set_policies(model, policy, policy)
        model.zero_grad()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            F.cross_entropy(model(x), y).backward()
        return [
            torch.cat([lay.weight.grad.reshape(-1), lay.bias.grad]) for lay in analog.analog_layers(model)
        ]

    g_ste, g_exact = grads("ste"), grads("exact")
    got = analog.gradient_mismatch(model, x, y, ("ste", "ste"))  # default reference exact/exact, seed 0
    assert [m.layer for m in got] == [0, 1, 2]
    for m, a, b in zip(got, g_ste, g_exact, strict=True):
        assert m.norm_ratio == pytest.approx(float(a.norm() / b.norm()), rel=1e-5)
        assert m.cosine == pytest.approx(float(a @ b / (a.norm() * b.norm())), rel=1e-5)
        assert 0 <= m.sat_weight <= 1 and 0 <= m.sat_signal_in <= 1 and 0 <= m.sat_signal_out <= 1
    assert got[0].sat_weight > 0  # the weights were scaled beyond the clamp


def test_gradient_mismatch_with_a_zero_gradient_and_without_weight_normalization():
    model = _deep_model(weight_norm="none")
    x, y = _batch()
    blocked = analog.gradient_mismatch(model, x, y, ("zero", "zero"))
    for m in blocked:
        assert math.isnan(m.cosine)  # no direction to compare
        assert m.norm_ratio == 0.0
        assert math.isnan(m.sat_weight)  # no weight normalization: nothing to saturate
    reverse = analog.gradient_mismatch(model, x, y, ("ste", "ste"), ("zero", "zero"))
    assert all(math.isnan(m.norm_ratio) and math.isnan(m.cosine) for m in reverse)


# --- layers and models ------------------------------------------------------------------------------------


def test_config_dict_and_layer_repr():
    config = analog.AnalogConfig(weight_norm="l2norm", precision=4, leakage=0.2)
    d = config.to_dict()
    assert d["weight_norm"] == "l2norm" and d["precision"] == 4 and d["leakage"] == 0.2
    assert set(d) == {f.name for f in dataclasses.fields(config)}
    layer = analog.AnalogLinear(3, 2, config=config)
    assert layer.extra_repr() == (
        "in_features=3, out_features=2, weight=l2norm/ste, signal=clamp/exact, "
        "precision=reduce:4, noise=gaussian:0.2"
    )


@pytest.mark.parametrize("site", ["weight", "signal"])
def test_no_normalization_means_no_stage_so_its_policy_does_not_apply(site):
    config = analog.AnalogConfig(**{f"{site}_norm": "none", f"{site}_policy": "zero"}, noise="none")
    layer = analog.AnalogLinear(5, 3, config=config)
    x = torch.randn(4, 5, requires_grad=True)
    layer(x).sum().backward()
    grad = layer.weight.grad if site == "weight" else x.grad
    assert float(grad.abs().sum()) > 0


def test_set_policies_errors_name_the_field():
    model = analog.build_classifier(4, 2, (3,), "tanh", analog.AnalogConfig(noise="none"))
    with pytest.raises(ValueError, match=r"^weight_policy: unknown gradient policy 'w'"):
        analog.set_policies(model, weight_policy="w")
    with pytest.raises(ValueError, match=r"^signal_policy: unknown gradient policy 's'"):
        analog.set_policies(model, signal_policy="s")


def test_make_activation_modules_and_parameters():
    assert isinstance(analog.make_activation("none"), torch.nn.Identity)
    assert isinstance(analog.make_activation("silu"), torch.nn.SiLU)
    assert analog.make_activation("leakyrelu").negative_slope == 0.01
    assert analog.make_activation("elu").alpha == 1.0507
    x = torch.tensor([-2.0, 0.5])
    assert torch.allclose(analog.make_activation("elu")(x), torch.tensor([1.0507 * math.expm1(-2.0), 0.5]))
    with pytest.raises(ValueError, match=re.escape("allowed: none, relu, leakyrelu, tanh, elu, silu, gelu")):
        analog.make_activation("swish")


def test_build_classifier_defaults_and_per_activation_init():
    model = analog.build_classifier()
    sizes = [(lay.in_features, lay.out_features) for lay in analog.analog_layers(model)]
    assert sizes == [(784, 256), (256, 128), (128, 10)]
    torch.manual_seed(0)
    relu = analog.build_classifier(200, 10, (50,), "relu")
    w = analog.analog_layers(relu)[0].weight.detach()
    # He-uniform bound sqrt(6 / fan_in) = 0.173, above the Xavier bound sqrt(6 / 250) = 0.155 of the default
    assert float(w.abs().max()) > 0.99 * math.sqrt(6 / 200)


def test_poisson_relations_invert_each_other_near_the_ends_of_their_ranges():
    """The solvers' brackets reach scales below 1 and precisions below 2 (both valid: rate factor >= 1)."""
    from analog.noise import poisson_max_leakage, poisson_precision, poisson_scale

    scale = poisson_scale(0.9, 4)
    assert scale < 1 and scale * 4 >= 1
    assert poisson_max_leakage(scale, 4) == pytest.approx(0.9, rel=1e-9)
    leakage = poisson_max_leakage(1.0, 1.5)
    assert poisson_precision(1.0, leakage) == pytest.approx(1.5, rel=1e-9)


def test_uniform_noise_bounds_come_in_pairs():
    with pytest.raises(
        ValueError, match=r"^UniformNoise: give low and high together, got low=-0.1, high=None$"
    ):
        analog.UniformNoise(low=-0.1, leakage=0.5, precision=16)
    with pytest.raises(ValueError, match="give low and high together"):
        analog.UniformNoise(high=0.1, leakage=0.5, precision=16)


def test_reduce_precision_default_threshold_is_one_half():
    x = torch.tensor([0.1, 0.13, 0.2, -0.13])  # x * 4 = 0.4, 0.52, 0.8, -0.52
    expected = [0.0, 0.25, 0.25, -0.25]
    assert analog.ReducePrecision(4).divide == 0.5
    assert analog.ReducePrecision(4)(x).tolist() == expected
    assert analog.precision.precision_fn("reduce", 4)(x).tolist() == expected
    assert analog.reduce_precision(x, 4).tolist() == expected


def test_layer_without_bias_and_at_full_precision():
    layer = analog.AnalogLinear(3, 2, bias=False, config=analog.AnalogConfig(precision=None, noise="none"))
    assert layer.bias is None and layer.transformed_parameters()[1] is None
    x = torch.tensor([[0.3, -0.2, 0.1]])
    w = layer.weight.detach().clamp(-1, 1)
    assert torch.allclose(layer(x), (x @ w.T).clamp(-1, 1))  # no quantisation at full precision


def test_layer_passes_its_rounding_threshold_to_the_precision_stage():
    config = analog.AnalogConfig(precision=4, divide=0.3, noise="none")
    layer = analog.AnalogLinear(6, 5, config=config)
    w, b = layer.transformed_parameters()
    assert torch.equal(w, analog.reduce_precision(layer.weight.detach().clamp(-1, 1), 4, 0.3))
    assert torch.equal(b, analog.reduce_precision(layer.bias.detach().clamp(-1, 1), 4, 0.3))


def test_layer_bias_initialisation_bound():
    torch.manual_seed(0)
    bias = analog.AnalogLinear(4, 3000).bias.detach()  # U(-1/2, 1/2)
    assert 0.49 < float(bias.max()) <= 0.5 and -0.5 <= float(bias.min()) < -0.49
    assert float(analog.AnalogLinear(1, 3000).bias.detach().abs().max()) > 0.99  # U(-1, 1)
    assert torch.equal(analog.AnalogLinear(0, 3).bias.detach(), torch.zeros(3))  # as nn.Linear


def test_saturation_is_recorded_per_site_and_nan_without_a_signal_normalization():
    layer = analog.AnalogLinear(4, 3, config=analog.AnalogConfig(noise="none"))
    layer.saturation = {}
    layer(torch.randn(2, 4))
    assert set(layer.saturation) == {"weight", "bias", "signal_in", "signal_out"}
    model = analog.build_classifier(4, 3, (5,), "tanh", analog.AnalogConfig(signal_norm="none", noise="none"))
    got = analog.gradient_mismatch(model, torch.randn(6, 4), torch.arange(6) % 3, ("ste", "ste"))
    assert all(math.isnan(m.sat_signal_in) and math.isnan(m.sat_signal_out) for m in got)
    assert all(0 <= m.sat_weight <= 1 for m in got)


def test_set_noise_turns_noise_back_on():
    model = analog.build_classifier(4, 3, (5,), "tanh", analog.AnalogConfig(leakage=0.9))
    x = torch.rand(8, 4)
    analog.set_noise(model, False)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
        analog.set_noise(model, True)
        assert all(layer.noise_enabled is True for layer in analog.analog_layers(model))
        assert not torch.equal(model(x), model(x))
