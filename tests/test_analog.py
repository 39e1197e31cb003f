"""Unit tests of `analog/`: gradient policies, validation, layers, models, diagnostics, vmap."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

import analog
from analog import AnalogConfig, AnalogLinear

REPO = Path(__file__).resolve().parents[1]
LP_NORMS = [k for k in analog.NORMALIZATIONS if k not in ("none", "clamp", "clamp01")]
EFFECTS = [k for k in analog.NORMALIZATIONS if k != "none"]

NOISE_OFF = dict(noise="none")


def _away_from_kinks(kind: str, shape=(4, 5), seed: int = 0) -> torch.Tensor:
    """float64 input on which `kind` is smooth: no value near a clamp edge, no zero, a unique max |x|."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(shape, generator=g, dtype=torch.float64) * 2 + 0.2) * torch.where(
        torch.rand(shape, generator=g, dtype=torch.float64) < 0.5, -1.0, 1.0
    )  # |x| in [0.2, 2.2]
    if kind == "clamp":
        x = torch.where((x.abs() - 1).abs() < 0.15, x * 1.5, x)  # keep |x| away from 1
    elif kind == "clamp01":
        x = torch.where((x - 1).abs() < 0.15, x * 1.5, x)  # away from 1 (|x| >= 0.2 keeps it away from 0)
    if kind.endswith("_m") or kind.endswith("_wm"):
        x.view(-1)[0] = 4.0  # unique max |x|
    return x


def _seeded(fn, seed: int = 0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return fn()


# --- gradient policies ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", analog.NORMALIZATIONS)
def test_exact_passes_gradcheck(kind):
    x = _away_from_kinks(kind).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: analog.normalize(t, kind, "exact"), (x,))
    x1 = _away_from_kinks(kind, shape=(7,), seed=1).requires_grad_(True)  # 1-D: one row / the whole tensor
    assert torch.autograd.gradcheck(lambda t: analog.normalize(t, kind, "exact"), (x1,))


@pytest.mark.parametrize("kind", LP_NORMS)
def test_exact_lp_gradient_is_not_the_identity(kind):
    """Guards the gradcheck above against a vacuous pass: the Lp norms' true Jacobian is not I."""
    x = _away_from_kinks(kind).requires_grad_(True)
    analog.normalize(x, kind, "exact").backward(torch.ones_like(x))
    assert not torch.allclose(x.grad, torch.ones_like(x))


@pytest.mark.parametrize("kind", EFFECTS)
def test_ste_returns_upstream_gradient_bit_for_bit(kind):
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(6, 5, generator=g) * 2).requires_grad_(True)
    upstream = torch.randn(6, 5, generator=g)
    y = analog.normalize(x, kind, "ste")
    assert torch.equal(y, analog.normalization_fn(kind)(x.detach()))
    y.backward(upstream)
    assert torch.equal(x.grad, upstream)


@pytest.mark.parametrize("kind", EFFECTS)
def test_zero_returns_zeros(kind):
    x = (torch.randn(6, 5) * 2).requires_grad_(True)
    y = analog.normalize(x, kind, "zero")
    assert torch.equal(y, analog.normalization_fn(kind)(x.detach()))
    y.backward(torch.randn(6, 5))
    assert torch.equal(x.grad, torch.zeros_like(x))


@pytest.mark.parametrize("policy", ["exact", "ste", "zero"])
def test_policies_do_not_change_forward_values(policy):
    torch.manual_seed(0)
    model = analog.build_classifier(20, 4, (16,), "tanh", AnalogConfig(weight_policy="exact"))
    x = torch.randn(8, 20) * 2
    reference = _seeded(lambda: model(x))
    analog.set_policies(model, weight_policy=policy, signal_policy=policy)
    assert torch.equal(_seeded(lambda: model(x)), reference)


def test_builtin_policies_registered():
    assert analog.available_policies()[:3] == ["exact", "ste", "zero"]


@pytest.fixture
def half_policy():
    """A user policy: forward unchanged, gradient scaled by 0.5 (registered for the test only)."""
    from analog import policies

    @analog.register_policy("half")
    def half(forward_fn, x):
        return x * 0.5 + (forward_fn(x) - x * 0.5).detach()

    yield "half"
    policies._POLICIES.pop("half", None)


def test_user_policy_is_listed_and_used(half_policy):
    assert half_policy in analog.available_policies()
    assert analog.get_policy(half_policy) is not None
    x = (torch.randn(5, 3) * 2).requires_grad_(True)
    y = analog.normalize(x, "clamp", half_policy)
    assert torch.equal(y, analog.normalize(x.detach(), "clamp"))
    up = torch.randn(5, 3)
    y.backward(up)
    assert torch.equal(x.grad, up * 0.5)
    assert analog.resolve_preset(f"{half_policy}/ste", "clamp", "clamp") == (half_policy, "ste")


def _layer_grads(layer: AnalogLinear, x: torch.Tensor, up: torch.Tensor):
    layer.zero_grad()
    xr = x.clone().requires_grad_(True)
    layer(xr).backward(up)
    return layer.weight.grad.clone(), layer.bias.grad.clone(), xr.grad.clone()


def test_user_policy_is_picked_up_by_analog_linear(half_policy):
    torch.manual_seed(0)
    config = AnalogConfig(weight_policy="ste", signal_policy="ste", **NOISE_OFF)
    layer = AnalogLinear(6, 4, config=config)
    x, up = torch.randn(10, 6) * 2, torch.randn(10, 4)
    gw, gb, gx = _layer_grads(layer, x, up)

    # from the config
    half_w = AnalogLinear(
        6, 4, config=AnalogConfig(weight_policy=half_policy, signal_policy="ste", **NOISE_OFF)
    )
    half_w.load_state_dict(layer.state_dict())
    hw, hb, hx = _layer_grads(half_w, x, up)
    assert torch.equal(hw, gw * 0.5) and torch.equal(hb, gb * 0.5) and torch.equal(hx, gx)

    # switched with set_policies: the output site halves dL/dy (so every gradient), the input site dL/dx
    analog.set_policies(layer, signal_policy=half_policy)
    assert (layer.weight_policy, layer.signal_policy) == ("ste", half_policy)
    sw, sb, sx = _layer_grads(layer, x, up)
    assert torch.equal(sw, gw * 0.5) and torch.equal(sb, gb * 0.5) and torch.equal(sx, gx * 0.25)


def test_set_policies_switches_every_layer():
    model = analog.build_classifier(12, 3, (8, 8), "relu", AnalogConfig(**NOISE_OFF))
    analog.set_policies(model, weight_policy="zero")
    assert {(lay.weight_policy, lay.signal_policy) for lay in analog.analog_layers(model)} == {
        ("zero", "exact")
    }
    analog.set_policies(model, signal_policy="ste")
    assert {(lay.weight_policy, lay.signal_policy) for lay in analog.analog_layers(model)} == {
        ("zero", "ste")
    }
    F.cross_entropy(model(torch.randn(5, 12)), torch.tensor([0, 1, 2, 0, 1])).backward()
    assert all(
        torch.equal(lay.weight.grad, torch.zeros_like(lay.weight)) for lay in analog.analog_layers(model)
    )


# --- validation -----------------------------------------------------------------------------------


def _raises_naming(fn, *allowed: str) -> str:
    with pytest.raises(ValueError) as info:
        fn()
    message = str(info.value)
    for name in allowed:
        assert name in message, (name, message)
    return message


POLICIES = ("exact", "ste", "zero")


@pytest.mark.parametrize(
    "make",
    [
        lambda: analog.get_policy("nope"),
        lambda: analog.normalize(torch.ones(2), "clamp", "nope"),
        lambda: AnalogConfig(weight_policy="nope"),
        lambda: AnalogConfig(signal_policy="nope"),
        lambda: analog.set_policies(analog.build_classifier(4, 2, (3,)), weight_policy="nope"),
        lambda: analog.resolve_preset("ste/nope", "clamp", "clamp"),
    ],
)
def test_unknown_policy_raises(make):
    _raises_naming(make, "nope", *POLICIES)


def test_unknown_preset_raises():
    _raises_naming(lambda: analog.resolve_preset("nope", "clamp", "clamp"), "analogvnn", *POLICIES)


@pytest.mark.parametrize(
    "make",
    [
        lambda: analog.normalize(torch.ones(2), "l3norm"),
        lambda: analog.normalization_fn("l3norm"),
        lambda: analog.saturation_mask(torch.ones(2), "l3norm"),
        lambda: AnalogConfig(weight_norm="l3norm"),
        lambda: AnalogConfig(signal_norm="l3norm"),
    ],
)
def test_unknown_normalization_raises(make):
    _raises_naming(make, "l3norm", *analog.NORMALIZATIONS)


@pytest.mark.parametrize("bad", [0, 2.5, -4, True])
def test_invalid_precision_raises(bad):
    for make in (
        lambda: AnalogConfig(precision=bad),
        lambda: analog.ReducePrecision(bad),
        lambda: analog.StochasticReducePrecision(bad),
        lambda: analog.reduce_precision(torch.ones(2), bad),
    ):
        assert "integer" in _raises_naming(make, ">= 1")


@pytest.mark.parametrize("bad", [1.5, -0.1])
def test_invalid_divide_raises(bad):
    for make in (lambda: AnalogConfig(divide=bad), lambda: analog.ReducePrecision(4, bad)):
        _raises_naming(make, "divide", "between 0 and 1")


@pytest.mark.parametrize("bad", [0, 1.2, 1, -0.5])
def test_invalid_leakage_raises(bad):
    for make in (
        lambda: AnalogConfig(leakage=bad),
        lambda: analog.GaussianNoise(leakage=bad, precision=4),
        lambda: analog.LaplacianNoise(leakage=bad, precision=4),
        lambda: analog.UniformNoise(leakage=bad, precision=4),
        lambda: analog.make_noise("gaussian", bad, 4),
    ):
        _raises_naming(make, "(0, 1)")
    _raises_naming(lambda: analog.PoissonNoise(max_leakage=bad, precision=4), "max_leakage", "(0, 1)")


@pytest.mark.parametrize(
    ("cls", "names", "one", "three"),
    [
        (
            analog.GaussianNoise,
            ("std", "leakage", "precision"),
            dict(std=0.1),
            dict(std=0.1, leakage=0.5, precision=4),
        ),
        (
            analog.PoissonNoise,
            ("scale", "max_leakage", "precision"),
            dict(precision=4),
            dict(scale=1.0, max_leakage=0.5, precision=4),
        ),
        (
            analog.LaplacianNoise,
            ("scale", "leakage", "precision"),
            dict(leakage=0.5),
            dict(scale=0.1, leakage=0.5, precision=4),
        ),
        (
            analog.UniformNoise,
            ("bounds", "leakage", "precision"),
            dict(low=-0.1, high=0.1),
            dict(low=-0.1, high=0.1, leakage=0.5, precision=4),
        ),
    ],
)
def test_noise_needs_exactly_two_parameters(cls, names, one, three):
    _raises_naming(lambda: cls(**one), "exactly two", *names)
    _raises_naming(lambda: cls(**three), "exactly two", *names)
    _raises_naming(lambda: cls(), "exactly two", *names)


def test_unknown_noise_class_raises():
    allowed = ("none", "gaussian", "poisson", "laplacian", "uniform")
    assert set(analog.NOISE_CLASSES) == set(allowed)
    _raises_naming(lambda: AnalogConfig(noise="pink"), "pink", *allowed)
    _raises_naming(lambda: analog.make_noise("pink", 0.5, 4), "pink", *allowed[1:])


def test_unknown_activation_raises():
    for make in (
        lambda: analog.make_activation("swish"),
        lambda: analog.build_classifier(4, 2, (3,), "swish"),
    ):
        _raises_naming(make, "swish", *analog.ACTIVATIONS)


def test_unknown_precision_class_raises():
    _raises_naming(lambda: AnalogConfig(precision_class="fuzzy"), "fuzzy", *analog.PRECISION_CLASSES)


def test_noise_without_precision_needs_noise_precision():
    _raises_naming(lambda: AnalogConfig(precision=None), "noise_precision")
    assert AnalogConfig(precision=None, noise_precision=16).effective_noise_precision == 16
    assert AnalogConfig(precision=None, noise="none").precision is None


# --- import hygiene -------------------------------------------------------------------------------


def test_import_does_not_pull_heavy_or_reference_packages():
    code = (
        "import analog, sys; "
        "heavy = ('lightning', 'pytorch_lightning', 'lightning_fabric', 'pandas', 'seaborn', 'analogvnn'); "
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


# --- precision and noise are straight-through -----------------------------------------------------


@pytest.mark.parametrize(
    "effect",
    [
        lambda t: analog.reduce_precision(t, 4),
        lambda t: analog.reduce_precision(t, 3, divide=0.2),
        analog.ReducePrecision(16),
        lambda t: analog.stochastic_reduce_precision(t, 8),
        analog.StochasticReducePrecision(2),
    ],
)
def test_precision_backward_is_identity(effect):
    x = (torch.randn(7, 3) * 2).requires_grad_(True)
    up = torch.randn(7, 3)
    y = effect(x)
    assert not torch.equal(y, x.detach())
    y.backward(up)
    assert torch.equal(x.grad, up)


def test_straight_through_under_torch_func_grad():
    """Under torch.func transforms the public Function.apply path runs; gradients are still identity."""
    x = torch.randn(7, 3) * 2
    assert torch.equal(torch.func.grad(lambda t: analog.reduce_precision(t, 4).sum())(x), torch.ones_like(x))
    assert torch.equal(
        torch.func.grad(lambda t: analog.normalize(t, "l2norm", "zero").sum())(x), torch.zeros_like(x)
    )
    noise = analog.make_noise("gaussian", 0.5, 16)
    assert torch.equal(torch.func.grad(lambda t: (noise(t) * 3).sum())(x), torch.full_like(x, 3.0))


def test_reduce_precision_levels():
    x = torch.tensor([0.0, 0.1, 0.124, 0.126, -0.126, 0.9, 1.3])
    assert torch.equal(analog.reduce_precision(x, 4), torch.tensor([0.0, 0.0, 0.0, 0.25, -0.25, 1.0, 1.25]))
    y = analog.stochastic_reduce_precision(torch.rand(1000) * 2 - 1, 8)
    assert torch.equal(y * 8, torch.round(y * 8))


@pytest.mark.parametrize("kind", ["gaussian", "poisson", "laplacian", "uniform"])
def test_noise_backward_is_identity(kind):
    noise = analog.make_noise(kind, 0.5, 16)
    x = torch.rand(9, 4).requires_grad_(True)
    up = torch.randn(9, 4)
    y = noise(x)
    assert not torch.equal(y, x.detach())
    y.backward(up)
    assert torch.equal(x.grad, up)


def test_laplacian_draw_is_torch_laplace_bit_for_bit():
    """The out-of-place draw (vmap-safe) is torch.distributions.Laplace's sample, AnalogVNN's draw."""
    noise = analog.make_noise("laplacian", 0.5, 16)
    x = torch.rand(300, 200)
    torch.manual_seed(3)
    ours = noise(x)
    torch.manual_seed(3)
    theirs = torch.distributions.Laplace(x, torch.tensor(noise.scale)).sample()
    assert torch.equal(ours, theirs)


def test_noise_strength_matches_leakage():
    """Empirical check of the Gaussian relation: P(|noise| > half a level) = leakage."""
    noise = analog.GaussianNoise(leakage=0.3, precision=8)
    torch.manual_seed(0)
    d = noise(torch.zeros(200_000))
    assert float((d.abs() > 1 / 16).float().mean()) == pytest.approx(0.3, abs=0.01)


# --- layers and models ----------------------------------------------------------------------------


def test_analog_linear_applies_effects():
    torch.manual_seed(0)
    layer = AnalogLinear(5, 3, config=AnalogConfig(precision=4, **NOISE_OFF))
    with torch.no_grad():
        y = layer(torch.randn(8, 5) * 3)
        w, b = layer.transformed_parameters()
    assert y.abs().max() <= 1 and torch.equal(y * 4, torch.round(y * 4))
    assert w.abs().max() <= 1 and torch.equal(w * 4, torch.round(w * 4))
    # set_noise toggles the noise stages
    noisy = AnalogLinear(5, 3, config=AnalogConfig(precision=4, leakage=0.5))
    x = torch.randn(8, 5)
    assert not torch.equal(_seeded(lambda: noisy(x), 0), _seeded(lambda: noisy(x), 1))
    analog.set_noise(noisy, False)
    assert torch.equal(_seeded(lambda: noisy(x), 0), _seeded(lambda: noisy(x), 1))


def test_digital_classifier_has_no_analog_effect():
    torch.manual_seed(0)
    model = analog.build_classifier((1, 28, 28), 10, (32, 16), "gelu", AnalogConfig(), digital=True)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 3 and all(type(m) is nn.Linear for m in linears)
    assert analog.analog_layers(model) == []
    assert not any(isinstance(m, analog.noise._Noise) for m in model.modules())
    x = torch.rand(6, 1, 28, 28) * 4
    h = x.flatten(1)
    for lin in linears:
        h = F.gelu(F.linear(h, lin.weight, lin.bias))
    assert torch.equal(model(x), h)
    assert torch.equal(model(x), model(x))
    assert h.abs().max() > 1  # not clamped


def test_build_classifier_layout():
    model = analog.build_classifier(784, 10, analog.SAMPLE_HIDDEN, "gelu", AnalogConfig(**NOISE_OFF))
    assert [type(m).__name__ for m in model] == ["Flatten"] + ["AnalogLinear", "GELU"] * 3
    assert [(m.in_features, m.out_features) for m in analog.analog_layers(model)] == [
        (784, 256),
        (256, 128),
        (128, 10),
    ]
    short = analog.build_classifier(784, 10, analog.PAPER_HIDDEN, "relu", final_activation=False)
    assert [type(m).__name__ for m in short] == [
        "Flatten",
        "AnalogLinear",
        "ReLU",
        "AnalogLinear",
        "ReLU",
        "AnalogLinear",
    ]


# --- diagnostics ----------------------------------------------------------------------------------


@pytest.fixture
def small_model():
    torch.manual_seed(0)
    return analog.build_classifier(20, 4, (16, 8), "tanh", AnalogConfig(leakage=0.5))


def test_gradient_mismatch_identical_policies_is_one(small_model):
    x, y = torch.randn(32, 20), torch.randint(0, 4, (32,))
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    result = analog.gradient_mismatch(
        small_model, x, y, policies=("ste", "exact"), reference=("ste", "exact")
    )
    assert torch.equal(torch.rand(3), before)  # the caller's RNG stream is untouched
    assert len(result) == 3
    for r in result:
        assert r.cosine == pytest.approx(1.0, abs=1e-6)
        assert r.norm_ratio == pytest.approx(1.0, abs=1e-6)
    # policies are restored
    assert {(lay.weight_policy, lay.signal_policy) for lay in analog.analog_layers(small_model)} == {
        ("ste", "exact")
    }
    assert all(lay.saturation is None for lay in analog.analog_layers(small_model))


def test_gradient_mismatch_detects_saturation(small_model):
    x, y = torch.randn(32, 20) * 4, torch.randint(0, 4, (32,))
    result = analog.gradient_mismatch(
        small_model, x, y, policies=("ste", "ste"), reference=("exact", "exact")
    )
    for r in result:
        for sat in (r.sat_weight, r.sat_signal_in, r.sat_signal_out):
            assert 0.0 <= sat <= 1.0
    assert result[0].sat_signal_in > 0.3  # |N(0, 16)| > 1 for most inputs
    assert min(r.cosine for r in result) < 0.999
    assert all(r.cosine <= 1.0 + 1e-9 for r in result)


# --- vmap over stacked members --------------------------------------------------------------------


def _members(config: AnalogConfig, n: int = 3):
    models = []
    for i in range(n):
        torch.manual_seed(100 + i)
        models.append(analog.build_classifier(12, 3, (8,), "tanh", config))
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")

    def call(p, b, x):
        return functional_call(base, (p, b), (x,))

    return models, params, buffers, call


def test_vmap_forward_equals_unbatched_calls():
    models, params, buffers, call = _members(AnalogConfig(precision=16, **NOISE_OFF))
    x = torch.randn(10, 12) * 2
    out = vmap(call, in_dims=(0, 0, None), randomness="different")(params, buffers, x)
    assert out.shape == (3, 10, 3)
    for i, model in enumerate(models):
        # batched and unbatched matmuls may round differently in the last bit; quantised outputs agree
        torch.testing.assert_close(out[i], model(x), rtol=0, atol=1e-6)


def test_vmap_with_noise_draws_different_noise_per_member():
    torch.manual_seed(0)
    model = analog.build_classifier(12, 3, (8,), "tanh", AnalogConfig(precision=16, leakage=0.5))
    params, buffers = stack_module_state([model, copy.deepcopy(model), copy.deepcopy(model)])
    base = copy.deepcopy(model).to("meta")
    x = torch.randn(10, 12)
    out = vmap(lambda p, b: functional_call(base, (p, b), (x,)), randomness="different")(params, buffers)
    assert not torch.equal(out[0], out[1]) and not torch.equal(out[1], out[2])


@pytest.mark.parametrize(
    ("weight_policy", "signal_policy"),
    [("ste", "exact"), ("exact", "exact"), ("ste", "ste"), ("zero", "exact"), ("exact", "zero")],
)
def test_vmap_gradients_equal_per_member_gradients(weight_policy, signal_policy):
    config = AnalogConfig(weight_policy=weight_policy, signal_policy=signal_policy, precision=16, **NOISE_OFF)
    models, params, buffers, call = _members(config)
    x, y = torch.randn(10, 12) * 2, torch.randint(0, 3, (10,))

    def loss(p, b):
        return F.cross_entropy(call(p, b, x), y)

    grads = vmap(torch.func.grad(loss), randomness="different")(params, buffers)
    for i, model in enumerate(models):
        F.cross_entropy(model(x), y).backward()
        for name, param in model.named_parameters():
            torch.testing.assert_close(grads[name][i], param.grad, rtol=1e-5, atol=1e-6)
    peak = {name: float(g.detach().abs().max()) for name, g in grads.items()}
    if signal_policy == "zero":  # the last layer's output site blocks everything
        assert set(peak.values()) == {0.0}
    elif weight_policy == "zero":
        assert all(v == 0 for name, v in peak.items() if name.endswith("weight"))
    else:
        assert all(v > 0 for v in peak.values())
