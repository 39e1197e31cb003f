"""`analog.fixed_weights`: the weight pipeline's deterministic part once per evaluation pass (#16.2)."""

from __future__ import annotations

import pytest
import torch

import analog
from analog import AnalogConfig, fixed_weights
from analog.noise import NOISE_CLASSES


def _net(
    noise: str,
    weight_norm: str = "clamp",
    precision: int | None = 16,
    conv: bool = False,
    precision_class: str = "reduce",
):
    config = AnalogConfig(
        precision_class=precision_class,
        weight_norm=weight_norm,
        precision=precision,
        noise=noise,
        leakage=None if noise == "none" else 0.3,
        noise_precision=None if precision else 16,
    )
    torch.manual_seed(0)
    if conv:
        return analog.build_cnn((1, 8, 8), 3, (2, 3), 3, (5,), "gelu", config)
    return analog.build_classifier(12, 3, (7,), "gelu", config)


def _passes(net, x, n: int = 3) -> list[torch.Tensor]:
    torch.manual_seed(1)
    with torch.no_grad():
        return [net(x) for _ in range(n)]


@pytest.mark.parametrize("noise", NOISE_CLASSES)
@pytest.mark.parametrize(
    "weight_norm,precision,rounding",
    [
        ("clamp", 16, "reduce"),
        ("l2norm_m", 4, "reduce"),
        ("clamp", None, "reduce"),
        ("clamp", 4, "stochastic"),
    ],
)
def test_fixed_weights_give_the_same_outputs_and_random_stream(
    noise, weight_norm, precision, rounding
) -> None:
    if precision is None and noise == "none":
        precision = 16  # full precision without noise is the digital-like case, covered above
    for conv in (False, True):
        net = _net(noise, weight_norm, precision, conv, rounding)
        x = torch.rand(5, 64) if conv else torch.rand(5, 12)
        want = _passes(net, x)
        after_want = torch.rand(3)
        with fixed_weights(net):
            got = _passes(net, x)
            after_got = torch.rand(3)
            assert all(layer._fixed for layer in analog.analog_layers(net))  # the cache was used
        assert all(torch.equal(a, b) for a, b in zip(want, got, strict=True))
        assert torch.equal(after_want, after_got)  # the generator stands where it stood
        assert all(layer._fixed is None for layer in analog.analog_layers(net))
        if noise != "none" or rounding == "stochastic":
            assert not torch.equal(got[0], got[1])  # fresh random draws per call, as AnalogVNN


def test_fixed_weights_stay_out_of_autograd_and_transforms_and_nest() -> None:
    net = _net("gaussian")
    x = torch.rand(4, 12)
    layer = analog.analog_layers(net)[0]
    with fixed_weights(net):
        net(x).sum().backward()  # with autograd: the whole pipeline, gradients reach the weights
        assert layer._fixed == {} and layer.weight.grad is not None
        with torch.no_grad():
            net(x)
        cached = layer._fixed["weight"]
        with fixed_weights(net):  # an inner block shares the outer one's cache
            with torch.no_grad():
                net(x)
            assert layer._fixed["weight"] is cached
        assert layer._fixed["weight"] is cached
        with torch.no_grad():
            layer.weight.mul_(0)  # a change inside the block is not seen (documented)
            assert layer._fixed["weight"].abs().sum() > 0
    with torch.no_grad():
        net(x)
    assert layer._fixed is None


def test_fixed_weights_are_bypassed_under_vmap() -> None:
    from torch.func import functional_call, stack_module_state, vmap

    nets = [_net("gaussian") for _ in range(2)]
    params, buffers = stack_module_state(nets)
    x = torch.rand(4, 12)

    def call(p, b):
        return functional_call(nets[0], (p, b), (x,))

    torch.manual_seed(3)
    with torch.no_grad():
        want = vmap(call, randomness="different")(params, buffers)
    with fixed_weights(nets[0]), torch.no_grad():
        torch.manual_seed(3)
        got = vmap(call, randomness="different")(params, buffers)
        assert all(not layer._fixed for layer in analog.analog_layers(nets[0]))
    assert torch.equal(want, got)


@pytest.mark.parametrize("rounding,noise", [("reduce", "gaussian"), ("stochastic", "poisson")])
def test_trial_records_equal_those_of_the_reference_path_without_fixed_weights(monkeypatch, rounding, noise):
    """End to end: a trial (and a bundle) with fixed_weights in its evaluation gives the record the
    reference path (the whole weight pipeline at every call) gives."""
    import contextlib
    import json

    import study.training.module as module
    from study.training.bundle import run_bundle
    from study.training.trial import run_trial

    cfg = {"dataset": "digits", "hidden": [16], "epochs": 1, "batch_size": 64, "precision": 4}
    cfg |= {"precision_class": rounding, "noise": noise, "leakage": 0.3, "diagnostics": False}
    kept = ("history", "test_acc_draws", "test_acc_mean", "test_acc_noise_off")

    def records() -> str:
        out = [run_trial(cfg), *run_bundle([{**cfg, "seed": s} for s in (0, 1)])]
        return json.dumps([{k: r[k] for k in kept} for r in out])

    fast = records()
    monkeypatch.setattr(module, "fixed_weights", lambda net: contextlib.nullcontext(net))
    assert records() == fast


CHANGES = [  # (config change, whether an element-wise straight-through chain exists)
    ({"noise": "gaussian"}, True),
    ({"noise": "poisson", "precision_class": "stochastic", "precision": 4}, True),
    (
        {"noise": "laplacian", "weight_norm": "l2norm", "signal_norm": "l2norm_m", "signal_policy": "ste"},
        False,
    ),
    (
        {
            "noise": "uniform",
            "weight_policy": "exact",
            "signal_policy": "ste",
            "arch": "cnn",
            "channels": [2],
        },
        True,
    ),
    ({"noise": "none", "precision_class": "stochastic", "precision": 4, "weight_clamp": 0.3}, True),
]


@pytest.mark.parametrize("change,uses_rule", CHANGES)
def test_bundles_give_the_same_records_with_the_element_wise_straight_through_rule(
    monkeypatch, change, uses_rule
):
    """Inside a bundle's vmap, element-wise straight-through stages run once on the stacked tensor
    (analog.policies._StraightThroughElementwise; never a chain holding an Lp norm); records equal
    those of the generic vmap rule."""
    import json

    import analog.policies as policies
    from study.training.bundle import run_bundle

    cfg = {"dataset": "digits", "hidden": [16], "epochs": 1, "batch_size": 64, "leakage": 0.3, **change}
    kept = ("history", "diagnostics", "test_acc_draws", "test_acc_noise_off", "weight_saturation")

    def records() -> str:
        out = run_bundle([{**cfg, "seed": s} for s in (0, 1, 2)])
        return json.dumps([{k: r[k] for k in kept} for r in out])

    fast = records()
    used = []
    real = policies._StraightThroughElementwise.apply
    monkeypatch.setattr(policies._StraightThroughElementwise, "apply", lambda *a: used.append(1) or real(*a))
    assert records() == fast and bool(used) == uses_rule
    monkeypatch.setattr(policies, "_batched_here", lambda x: False)  # the generic rule everywhere
    assert records() == fast
