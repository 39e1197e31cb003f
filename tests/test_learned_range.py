"""Learned signal ranges (issue #30, item 1): ``signal_norm: learned_clamp`` clamps each signal to
[-a, a] with a bound a learned with the network (PACT). The gradient to the signal follows the signal
policy, the gradient to a is the true derivative; the forward equals the fixed clamp at a = 1; seed
bundles train it as the sequential trials do; bad values are named."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from conftest import TINY
from test_bundle import _assert_same_training
from torch.autograd import gradcheck

import study.training.bundle as bundle_mod
import study.training.trial as trial_mod
from analog.layers import AnalogConfig, AnalogConv2d, AnalogLinear
from analog.models import build_classifier, build_cnn
from analog.normalize import learned_clamp, normalize, saturation_mask
from study.training.bundle import BundleClassifier, run_bundle
from study.training.config import ConfigError, TrialConfig
from study.training.module import AnalogClassifier
from study.training.trial import run_trial

POLICIES = ("exact", "ste", "zero")
LEARNED = {**TINY, "hidden": [16], "noise": "none", "signal_norm": "learned_clamp", "lr": 0.01}


def _away_from_bounds(shape: tuple[int, ...], alpha: torch.Tensor) -> torch.Tensor:
    """float64 inputs in [-3, 3] none of which lies within 1e-3 of +-alpha (finite differences)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(shape, generator=g, dtype=torch.float64) * 6 - 3
    near = (x.abs() - alpha).abs() < 1e-3
    return torch.where(near, x + 0.01, x)


# ----------------------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("per_channel", [False, True])
def test_gradient_to_the_bound_is_the_true_derivative_under_every_policy(policy: str, per_channel: bool):
    alpha = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64) if per_channel else torch.tensor(0.8).double()
    x = _away_from_bounds((6, 3), alpha)
    a = alpha.clone().requires_grad_(True)
    assert gradcheck(lambda t: learned_clamp(x, t, policy), (a,))
    upstream = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    (grad,) = torch.autograd.grad(learned_clamp(x, a, policy), a, upstream)
    side = (x > alpha).double() - (x < -alpha).double()  # dy/da = sign(x) where |x| > a
    assert torch.allclose(grad, (upstream * side).sum_to_size(alpha.shape))


@pytest.mark.parametrize("policy", POLICIES)
def test_gradient_to_the_signal_follows_the_policy(policy: str):
    alpha = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    x = _away_from_bounds((5, 4), alpha.detach()).requires_grad_(True)
    if policy == "exact":  # the clamp's true derivative, x and a together
        assert gradcheck(lambda t, a: learned_clamp(t, a, "exact"), (x, alpha))
    upstream = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    y = learned_clamp(x, alpha, policy)
    assert torch.equal(y, torch.clamp(x, -0.8, 0.8))
    (grad,) = torch.autograd.grad(y, x, upstream, allow_unused=True)
    inside = (x.abs() <= 0.8).double()
    expected = {"exact": upstream * inside, "ste": upstream, "zero": torch.zeros_like(upstream)}[policy]
    assert torch.equal(grad if grad is not None else torch.zeros_like(upstream), expected)


# ------------------------------------------------------------------------------------------- parity
@pytest.mark.parametrize("policy", POLICIES)
def test_frozen_at_one_it_is_the_fixed_clamp(policy: str):
    """Bound frozen at 1: the same outputs (noise on) and weight gradients as signal_norm clamp."""
    nets = []
    for norm in ("clamp", "learned_clamp"):
        torch.manual_seed(3)
        cfg = AnalogConfig(signal_norm=norm, signal_policy=policy)
        nets.append(build_classifier(64, 10, (16,), config=cfg))
    for name, p in nets[1].named_parameters():
        if "signal_range" in name:
            p.requires_grad_(False)
    x = torch.rand(32, 64) * 2
    grads = []
    for net in nets:
        torch.manual_seed(4)
        out = net(x)
        out.square().sum().backward()
        grads.append((out, [p.grad for n, p in net.named_parameters() if "signal_range" not in n]))
    assert torch.equal(grads[0][0], grads[1][0])
    assert all(torch.equal(a, b) for a, b in zip(grads[0][1], grads[1][1], strict=True))


def test_bounds_are_parameters_per_layer_or_per_channel_and_train():
    cfg = AnalogConfig(signal_norm="learned_clamp", signal_range_per="channel", signal_range_init=0.5)
    conv = AnalogConv2d(2, 3, 3, padding=1, config=cfg)
    assert conv.signal_range_in.shape == (2, 1, 1) and conv.signal_range_out.shape == (3, 1, 1)
    lin = AnalogLinear(5, 4, config=cfg, normalize_output=False)
    assert lin.signal_range_in.shape == (5,) and not hasattr(lin, "signal_range_out")
    assert float(lin.signal_range_in[0].detach()) == 0.5
    one = AnalogLinear(5, 4, config=AnalogConfig(signal_norm="learned_clamp"))
    assert one.signal_range_in.shape == () == one.signal_range_out.shape
    net = build_cnn((1, 8, 8), channels=(2, 3), config=cfg)
    before = {n: p.detach().clone() for n, p in net.named_parameters() if "signal_range" in n}
    assert len(before) == 6
    opt = torch.optim.Adam(net.parameters(), lr=0.1)
    net(torch.rand(16, 64) * 3).square().sum().backward()
    opt.step()
    after = dict(net.named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in before)
    one.saturation = {}
    one(torch.full((2, 5), 2.0))
    assert float(one.saturation["signal_in"]) == 1.0  # every input beyond a = 1


# ----------------------------------------------------------------------------------------- bundles
class _Final(AnalogClassifier):
    final: list[dict[str, torch.Tensor]] = []

    def on_fit_end(self) -> None:
        _Final.final.append(copy.deepcopy(self.net.state_dict()))


class _BundleFinal(BundleClassifier):
    final: list[list[dict[str, torch.Tensor]]] = []

    def on_fit_end(self) -> None:
        _BundleFinal.final.append([self.member_state(k) for k in range(self.k)])


def test_bundle_trains_learned_ranges_like_the_sequential_trials():
    configs = [
        TrialConfig.parse({**LEARNED, "signal_range_per": "channel", "signal_policy": "ste", "seed": s})
        for s in (1, 0)
    ]
    _Final.final, _BundleFinal.final = [], []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trial_mod, "AnalogClassifier", _Final)
        mp.setattr(bundle_mod, "BundleClassifier", _BundleFinal)
        seq = [run_trial(c) for c in configs]
        bun = run_bundle(configs)
    for k, (a, b) in enumerate(zip(bun, seq, strict=True)):
        assert a["run_id"] == b["run_id"] == configs[k].run_id
        _assert_same_training(a, b)
        s, m = _Final.final[k], _BundleFinal.final[0][k]
        for name in ("1.signal_range_in", "1.signal_range_out", "3.signal_range_in", "3.signal_range_out"):
            assert torch.allclose(s[name], m[name], rtol=1e-4, atol=1e-5), name
        for name in ("1.signal_range_out", "3.signal_range_out"):  # inputs in [0, 1] never clip
            assert not torch.equal(s[name], torch.ones_like(s[name])), name  # it learned


# ------------------------------------------------------------------------------- identity and errors
def test_defaults_keep_earlier_run_ids():
    explicit = TrialConfig(signal_range_init=1.0, signal_range_per="layer")
    assert explicit.run_id == TrialConfig().run_id == "7a742e72d8056465"
    learned = TrialConfig(signal_norm="learned_clamp")
    others = [
        learned.model_copy(update=u) for u in ({"signal_range_init": 2.0}, {"signal_range_per": "channel"})
    ]
    assert len({c.run_id for c in [learned, *others]}) == 3
    assert all(TrialConfig.parse(c.canonical()) == c for c in others)


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"signal_range_init": 0}, "signal_range_init: Input should be greater than 0"),
        ({"signal_range_init": -1.0}, "signal_range_init: Input should be greater than 0"),
        ({"signal_range_init": float("inf")}, "signal_range_init: Input should be a finite"),
        ({"signal_range_init": float("nan")}, "signal_range_init: Input should be a finite"),
        ({"signal_range_per": "row"}, "signal_range_per: Input should be 'layer' or 'channel'"),
        ({"signal_norm": "clamp", "signal_range_init": 2.0}, "signal_range_init: applies to a learned"),
        ({"signal_norm": "clamp", "signal_range_per": "channel"}, "signal_range_per: applies to a learned"),
        ({"weight_norm": "learned_clamp"}, "weight_norm: 'learned_clamp' is a signal normalization"),
        (
            {"digital": True, "signal_norm": "clamp", "signal_range_init": 2.0},
            "signal_range_init: applies to",
        ),
        ({"signal_norm": "learned_clap"}, "signal_norm: unknown normalization 'learned_clap'; allowed:"),
    ],
)
def test_bad_values_are_named_on_one_line(data: dict[str, Any], needle: str):
    with pytest.raises(ConfigError) as info:
        TrialConfig.parse({"signal_norm": "learned_clamp", **data})
    lines = str(info.value).splitlines()[1:]
    assert len(lines) == 1 and needle in lines[0], lines


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"signal_range_init": 0.0}, "signal_range_init: must be a finite number > 0, got 0.0"),
        ({"signal_range_init": float("nan")}, "signal_range_init: must be a finite number > 0"),
        ({"signal_range_init": True}, "signal_range_init: must be a finite number > 0"),
        ({"signal_range_per": "row"}, "signal_range_per: unknown 'row'; allowed: layer, channel"),
    ],
)
def test_analog_config_names_the_field(kwargs: dict[str, Any], needle: str):
    with pytest.raises(ValueError, match=needle):
        AnalogConfig(signal_norm="learned_clamp", **kwargs)


def test_the_plain_normalization_calls_ask_for_the_bound():
    x = torch.zeros(3)
    for call in (lambda: normalize(x, "learned_clamp"), lambda: saturation_mask(x, "learned_clamp")):
        with pytest.raises(ValueError, match="learned_clamp: its bound is a parameter of the layer"):
            call()
