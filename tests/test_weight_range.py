"""How the weight site uses its range c = weight_clamp (issue #29, items 1-3): range-relative precision
levels and noise (`weight_levels`), initialisation inside the range (`weight_init`), projected clipping
(`weight_bound`); sequential and bundled alike, bad values named, earlier run_ids unchanged."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from conftest import TINY
from test_bundle import _assert_same_training
from torch import nn
from torch.autograd import gradcheck
from torch.func import functional_call

import study.training.bundle as bundle_mod
import study.training.trial as trial_mod
from analog.diagnostics import weight_saturation
from analog.layers import AnalogConfig, AnalogLinear, analog_layers, project_weights, set_noise, weight_bounds
from analog.models import build_classifier, build_cnn
from study.training.bundle import BundleClassifier, run_bundle
from study.training.config import ConfigError, TrialConfig
from study.training.module import AnalogClassifier
from study.training.trial import run_trial

C = 0.05
QUIET = {**TINY, "hidden": [16], "epochs": 2, "noise": "none", "precision": 16, "lr": 0.01, "weight_clamp": C}
PROJECT = {**QUIET, "weight_levels": "range", "weight_bound": "project"}


def _reduce16(x: torch.Tensor) -> torch.Tensor:
    """AnalogVNN's ReducePrecision at 16 levels, written out: sign(x) ceil(|16 x| - 1/2) / 16."""
    return (x * 16).abs().sub(0.5).ceil().mul(torch.sign(x)).mul(1 / 16)


def _inside(p: torch.Tensor, c: float = C) -> bool:
    """Every element within [-c, c], compared in the tensor's dtype as the clamp and the saturation
    mask compare (float32's c, 0.05000000075, is the edge)."""
    return bool((p.detach().abs() <= c).all())


def _quantised(c: float = C, **options: str) -> tuple[AnalogLinear, torch.Tensor]:
    """A noise-free 64x32 layer at 16 levels (seed 0) and its W', b' flattened together."""
    torch.manual_seed(0)
    layer = AnalogLinear(64, 32, config=AnalogConfig(noise="none", weight_clamp=c, **options))
    w, b = layer.transformed_parameters()
    return layer, torch.cat([w.detach().flatten(), b.detach().flatten()])


# ------------------------------------------------------------------------------------ weight_levels
def test_range_levels_are_16_steps_spanning_the_range() -> None:
    _, q = _quantised(weight_levels="range")
    steps = torch.unique(q).double() * 16 / C  # level index of each distinct value
    assert torch.allclose(steps, steps.round(), atol=1e-4)
    assert steps.round().tolist() == list(range(-16, 17))  # every level of [-c, c], nothing beyond
    assert float(q.min()) == pytest.approx(-C) and float(q.max()) == pytest.approx(C)


def test_absolute_levels_are_todays_values_bit_for_bit() -> None:
    layer, q = _quantised(weight_levels="absolute")
    _, default = _quantised()
    raw = torch.cat([layer.weight.detach().flatten(), layer.bias.detach().flatten()])
    assert torch.equal(q, default) and torch.equal(q, _reduce16(torch.clamp(raw, -C, C)))
    assert torch.unique(q).tolist() == [-1 / 16, 0.0, 1 / 16]  # steps of 1/16 whatever c
    _, wide = _quantised(c=1.0, weight_levels="range")
    assert torch.equal(wide, _quantised(c=1.0)[1])  # at c = 1 the two modes are one


def test_range_noise_leakage_is_defined_on_the_range_levels() -> None:
    torch.manual_seed(1)
    moved = {}
    for levels in ("range", "absolute"):
        layer = AnalogLinear(200, 200, config=AnalogConfig(weight_clamp=C, weight_levels=levels, leakage=0.5))
        with torch.no_grad():
            layer.weight.uniform_(-C, C)
            set_noise(layer, False)
            clean = layer.transformed_parameters()[0]
            set_noise(layer, True)
            noisy = layer.transformed_parameters()[0]
        moved[levels] = float(((noisy - clean).abs() > C / 32).float().mean())  # beyond half a level
    assert moved["range"] == pytest.approx(0.5, abs=0.02)  # the configured leakage, on the range's levels
    assert moved["absolute"] > 0.9  # noise of 1/16-wide levels swamps the range's levels


@pytest.mark.parametrize("bound", ["forward", "project"])
def test_gradcheck_of_the_range_relative_weight_pipeline(bound: str) -> None:
    """Full precision, no noise, exact policy (forward) or no weight clamp at all (project): true
    gradients in float64, with some weights and biases beyond c."""
    torch.manual_seed(2)
    policy = "exact" if bound == "forward" else "ste"
    cfg = AnalogConfig(
        weight_policy=policy, precision=None, noise="none", weight_clamp=C, weight_levels="range",
        weight_bound=bound,
    )  # fmt: skip
    layer = AnalogLinear(6, 4, config=cfg).double()
    w = (torch.rand(4, 6, dtype=torch.float64) * 4 * C - 2 * C).requires_grad_()
    b = (torch.rand(4, dtype=torch.float64) * 4 * C - 2 * C).requires_grad_()
    x = (torch.rand(3, 6, dtype=torch.float64) * 1.6 - 0.8).requires_grad_()

    def f(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return functional_call(layer, {"weight": w, "bias": b}, (x,))

    assert gradcheck(f, (x, w, b))
    f(x, w, b).sum().backward()
    beyond = w.detach().abs() > C
    assert beyond.any() and (w.grad[beyond] == 0).all() == (bound == "forward")


# -------------------------------------------------------------------------------------- weight_init
def test_in_range_init_rescales_each_tensor_into_the_range() -> None:
    c = 0.2  # below the first layer's Xavier bound (0.27), above its bias bound (0.125)
    nets, after = {}, {}
    for init in ("default", "in_range"):
        torch.manual_seed(4)
        nets[init] = build_classifier(64, 10, (16,), "gelu", AnalogConfig(weight_clamp=c, weight_init=init))
        after[init] = torch.rand(3)
    assert torch.equal(after["default"], after["in_range"])  # no random number drawn
    scaled = kept = 0
    for ld, li in zip(analog_layers(nets["default"]), analog_layers(nets["in_range"]), strict=True):
        for pd, pi in ((ld.weight, li.weight), (ld.bias, li.bias)):
            peak = float(pd.detach().abs().max())
            assert _inside(pi, c)
            if peak > c:
                scaled += 1
                assert torch.allclose(pi, pd * (c / peak))
                assert float(pi.detach().abs().max()) == pytest.approx(c)
            else:
                kept += 1
                assert torch.equal(pi, pd)
    assert scaled and kept
    assert weight_saturation(nets["default"])["all"] > 0
    assert weight_saturation(nets["in_range"]) == {"layers": [0.0, 0.0], "all": 0.0}
    cnn = build_cnn((1, 8, 8), 10, (4,), 3, (), "relu", AnalogConfig(weight_clamp=C, weight_init="in_range"))
    assert all(_inside(p) for p in cnn.parameters())


def test_trial_records_the_initial_saturation() -> None:
    def init(**extra: Any) -> AnalogClassifier:
        torch.manual_seed(0)
        return AnalogClassifier(TrialConfig.parse({**QUIET, **extra}), 64, 10)

    assert init().saturation_init["all"] > 0.5  # Xavier and bias bounds well above c = 0.05
    assert init(weight_init="in_range").saturation_init == {"layers": [0.0, 0.0], "all": 0.0}
    projected = init(weight_bound="project")  # measured before the initial projection
    assert projected.saturation_init == init().saturation_init
    assert all(_inside(p) for p in projected.parameters())
    assert init(digital=True).saturation_init is None


# ------------------------------------------------------------------------------------- weight_bound
@pytest.mark.parametrize(("norm", "low"), [("clamp", -C), ("clamp01", 0.0)])
def test_project_has_no_forward_clamp_and_clips_into_the_range(norm: str, low: float) -> None:
    torch.manual_seed(5)
    cfg = AnalogConfig(weight_norm=norm, precision=None, noise="none", weight_clamp=C, weight_bound="project")
    layer = AnalogLinear(20, 8, config=cfg)
    w, b = layer.transformed_parameters()
    assert torch.equal(w, layer.weight) and torch.equal(b, layer.bias) and not _inside(w)
    net = nn.Sequential(layer)
    assert weight_bounds(net) == {"0.weight": (low, C), "0.bias": (low, C)}
    before = [p.detach().clone() for p in net.parameters()]
    project_weights(net)
    for p, old in zip(net.parameters(), before, strict=True):
        assert torch.equal(p.detach(), old.clamp(low, C))
    forward = nn.Sequential(AnalogLinear(20, 8, config=AnalogConfig(weight_clamp=C)))
    state = {k: v.clone() for k, v in forward.state_dict().items()}
    project_weights(forward)
    assert weight_bounds(forward) == {}
    assert all(torch.equal(state[k], v) for k, v in forward.state_dict().items())


class _Checked(AnalogClassifier):
    """Asserts after every optimizer step that no weight-site parameter lies beyond c."""

    steps = 0

    def on_train_batch_end(self, *args: Any) -> None:
        super().on_train_batch_end(*args)
        assert all(_inside(p) for p in self.net.parameters())
        _Checked.steps += 1


class _BundleChecked(BundleClassifier):
    steps = 0

    def on_train_batch_end(self, *args: Any) -> None:
        super().on_train_batch_end(*args)
        assert all(_inside(p) for p in self.stacked)  # every member, every parameter
        _BundleChecked.steps += 1


@pytest.fixture(scope="module")
def project_runs() -> dict[str, Any]:
    configs = [TrialConfig.parse({**PROJECT, "seed": s}) for s in (3, 0)]
    _Checked.steps = _BundleChecked.steps = 0
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trial_mod, "AnalogClassifier", _Checked)
        mp.setattr(bundle_mod, "BundleClassifier", _BundleChecked)
        seq = [run_trial(c) for c in configs]
        bundle = run_bundle(configs)
    return {"configs": configs, "seq": seq, "bundle": bundle, "steps": (_Checked.steps, _BundleChecked.steps)}


def test_project_keeps_every_weight_in_range_after_every_step(project_runs: dict[str, Any]) -> None:
    seq_steps, bundle_steps = project_runs["steps"]
    assert seq_steps == 2 * bundle_steps > 0  # two sequential trials, one bundle, the same batches
    for rec in project_runs["seq"] + project_runs["bundle"]:
        assert [s["all"] for s in rec["weight_saturation"]] == [0.0, 0.0]
        assert rec["weight_saturation_init"]["all"] > 0.5  # the default init, clipped at the start
    forward = run_trial({**PROJECT, "weight_bound": "forward", "seed": 3, "epochs": 1})  # not projected
    assert forward["weight_saturation"][-1]["all"] > 0
    assert forward["history"][0] != project_runs["seq"][0]["history"][0]


def test_project_bundle_records_equal_sequential(project_runs: dict[str, Any]) -> None:
    runs = zip(project_runs["configs"], project_runs["seq"], project_runs["bundle"], strict=True)
    for cfg, seq, bun in runs:
        assert bun["run_id"] == seq["run_id"] == cfg.run_id and bun["config"] == seq["config"]
        assert seq["config"]["weight_bound"] == "project" and TrialConfig.parse(seq["config"]) == cfg
        assert bun["weight_saturation_init"] == seq["weight_saturation_init"]
        _assert_same_training(bun, seq)


# ------------------------------------------------------------------------------ identity and errors
def test_defaults_keep_earlier_run_ids_and_new_modes_get_their_own() -> None:
    explicit = TrialConfig(weight_levels="absolute", weight_init="default", weight_bound="forward")
    assert explicit.run_id == TrialConfig().run_id == "7a742e72d8056465"
    base = TrialConfig(weight_clamp=C)
    modes = [
        base.model_copy(update=u)
        for u in ({"weight_levels": "range"}, {"weight_init": "in_range"}, {"weight_bound": "project"})
    ]
    assert len({c.run_id for c in [base, *modes]}) == 4
    assert all(TrialConfig.parse(c.canonical()) == c for c in modes)  # what the runner ships reads back


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"weight_levels": "range", "weight_clamp": 0}, "weight_clamp: Input should be greater than 0"),
        ({"weight_bound": "project", "weight_clamp": -1}, "weight_clamp: Input should be greater than 0"),
        ({"weight_init": "in_range", "weight_clamp": float("inf")}, "weight_clamp: Input should be a finite"),
        ({"weight_levels": "range", "weight_clamp": float("nan")}, "weight_clamp: Input should be a finite"),
        ({"weight_levels": "rang"}, "weight_levels: Input should be 'absolute' or 'range'"),
        ({"weight_levels": 16}, "weight_levels: Input should be 'absolute' or 'range'"),
        ({"weight_init": "inrange"}, "weight_init: Input should be 'default' or 'in_range'"),
        ({"weight_init": None}, "weight_init: Input should be 'default' or 'in_range'"),
        ({"weight_bound": "projected"}, "weight_bound: Input should be 'forward' or 'project'"),
        ({"weight_bound": True}, "weight_bound: Input should be 'forward' or 'project'"),
        ({"weight_bound": "project", "weight_policy": "exact"}, "weight_policy: moot with weight_bound"),
        ({"weight_bound": "project", "weight_norm": "l2norm"}, "weight_bound: 'project' needs a weight"),
        ({"weight_levels": "range", "weight_norm": "none"}, "weight_levels: 'range' needs a weight range"),
        ({"weight_init": "in_range", "weight_norm": "clamp01"}, "weight_init: 'in_range' needs a weight"),
        ({"weight_bound": "project", "digital": True}, "weight_bound: applies to analog networks only"),
    ],
)
def test_bad_values_are_one_line_naming_the_field(data: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle) as err:
        TrialConfig.parse(data)
    assert len(str(err.value).splitlines()) == 2  # the heading and one line


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"weight_levels": "Range"}, "weight_levels: unknown 'Range'; allowed: absolute, range"),
        ({"weight_init": 1}, "weight_init: unknown 1; allowed: default, in_range"),
        ({"weight_bound": None}, "weight_bound: unknown None; allowed: forward, project"),
        ({"weight_bound": "project", "weight_policy": "zero"}, "weight_policy: moot with weight_bound"),
    ],
)
def test_analog_config_refuses_bad_options(options: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValueError, match=needle) as err:
        AnalogConfig(**options)
    assert "\n" not in str(err.value)
