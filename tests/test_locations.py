"""Signal policies by location (analog.locations), readout variants and the per-position probe:
the location API must equal the single-policy API where the policies coincide, give each location its
own gradient where they differ, and be carried through TrialConfig, specs, records and curves."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY

import analog
from analog.locations import SIGNAL_LOCATIONS, canonical_signal_policy, layer_signal_policies
from analog.models import SCALED_READOUT_FLOOR, cross_entropy_floor, logit_bounds, readout_scale
from study.sweep.collect import _curves
from study.sweep.hypotheses import Comparison
from study.sweep.spec import parse_spec
from study.training.bundle import run_bundle
from study.training.config import ConfigError, TrialConfig
from study.training.trial import run_trial

POLICIES = ("exact", "ste", "zero")
QUIET = analog.AnalogConfig(noise="none", precision=None)  # analytic: clamps only


def _net(signal_policy: str = "exact", readout: str = "analog", seed: int = 0, config=QUIET, hidden=(6, 5)):
    torch.manual_seed(seed)
    cfg = analog.AnalogConfig(**{**config.to_dict(), "signal_policy": signal_policy})
    return analog.build_classifier(4, 3, hidden, "gelu", cfg, readout=readout)


def _data(seed: int = 1, n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return 3 * torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


def _grads(net, x, y, noise_seed: int = 0) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    x = x.clone().requires_grad_(True)
    torch.manual_seed(noise_seed)
    out = net(x)
    loss = F.cross_entropy(out, y)
    grads = torch.autograd.grad(loss, [*net.parameters(), x])
    return out.detach(), list(grads[:-1]), grads[-1]


def _scale_weights(net, factor: float = 4.0) -> None:
    with torch.no_grad():
        for layer in analog.analog_layers(net):
            layer.weight.mul_(factor)  # outputs saturate at every layer


# --- parsing and canonical form -------------------------------------------------------------------


@pytest.mark.parametrize("p", POLICIES)
def test_every_spelling_of_one_policy_everywhere_is_that_policy(p):
    spellings = [
        p,
        {"default": p},
        {"hidden": p, "readout": p},
        {"input": p, "output": p},
        dict.fromkeys(SIGNAL_LOCATIONS, p),
        f"{p},readout_output={p}",
        {"default": p, "hidden_output": [p, p]},
    ]
    assert {canonical_signal_policy(s) for s in spellings} == {p}
    ids = {TrialConfig(signal_policy=s).run_id for s in spellings}
    assert ids == {TrialConfig(signal_policy=p).run_id}


@pytest.mark.parametrize(
    ("spec", "canonical"),
    [
        ({"hidden": "ste", "readout": "exact"}, "exact,hidden=ste"),
        ({"default": "exact", "readout_output": "ste"}, "exact,readout_output=ste"),
        ("exact,readout_output=ste", "exact,readout_output=ste"),
        ({"input": "ste", "output": "exact"}, "exact,input=ste"),
        ({"input": "exact", "output": "ste"}, "ste,input=exact"),
        ({"default": "ste", "hidden_output": "exact"}, "ste,hidden_output=exact"),
        ({"default": "ste", "hidden_input": "exact", "readout_output": "zero"}, None),
        ({"default": "exact", "hidden_output": ["ste", "exact"]}, "exact,hidden_output=ste:exact"),
        ("zero,hidden=exact,readout_input=ste", None),
    ],
)
def test_canonical_form_is_a_fixed_point_with_the_same_meaning(spec, canonical):
    text = canonical_signal_policy(spec)
    if canonical is not None:
        assert text == canonical
    assert canonical_signal_policy(text) == text
    assert analog.parse_signal_policy(text) == analog.parse_signal_policy(spec)


def test_more_specific_keys_override_and_every_location_is_resolved():
    spec = {"default": "zero", "hidden": "ste", "readout_output": "exact"}
    assert layer_signal_policies(spec, "hidden", 0) == ("ste", "ste")
    assert layer_signal_policies(spec, "readout") == ("zero", "exact")
    per_index = {"default": "exact", "hidden_output": ["ste", "zero"]}
    assert layer_signal_policies(per_index, "hidden", 1) == ("exact", "zero")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("exakt", "unknown gradient policy 'exakt'"),
        ({"hidden": "ste"}, "no policy for readout_input, readout_output"),
        (
            {"hidden": "ste", "input": "exact", "default": "zero"},
            "'hidden' and 'input' both set hidden_input",
        ),
        ("exact,readout=ste,readout=zero", "'readout' given twice"),
        ("exact,,readout=ste", "empty item"),
        ("hidden=ste,exact", "only the first item may be a bare policy"),
        ({"hiden": "ste", "default": "exact"}, "unknown location 'hiden'"),
        ({"readout": ["ste"], "default": "exact"}, "only for hidden locations"),
        ({"hidden": [], "default": "exact"}, "empty list"),
        ({"default": "exact", "hidden": "magic"}, "hidden: unknown gradient policy 'magic'"),
        ({}, "empty mapping"),
        (3, "must be a policy name, a mapping"),
        (None, "must be a policy name, a mapping"),
    ],
)
def test_bad_location_specs_name_the_field_and_the_problem(spec, message):
    with pytest.raises(ValueError, match=f"^signal_policy: .*{message}"):
        canonical_signal_policy(spec)


def test_per_layer_lists_must_match_the_hidden_layers():
    with pytest.raises(ValueError, match="lists 3 policies .* 2 hidden layer"):
        analog.build_classifier(
            4, 3, (5, 5), config=analog.AnalogConfig(signal_policy="exact,hidden=ste:ste:zero")
        )
    with pytest.raises(ConfigError, match="hidden_output lists 3 policies"):
        TrialConfig.parse({"signal_policy": "exact,hidden_output=ste:exact:zero"})
    with pytest.raises(ValueError, match="needs its role"):
        analog.AnalogLinear(3, 2, config=analog.AnalogConfig(signal_policy="exact,readout=ste"))
    with pytest.raises(ValueError, match="role: unknown 'head'"):
        analog.AnalogLinear(3, 2, role="head")


# --- values and gradients -------------------------------------------------------------------------


@pytest.mark.parametrize("p", POLICIES)
def test_location_api_equals_single_policy_api_when_locations_agree(p):
    """Every layer and position set one by one to `p` equals the single policy `p`: same values and
    gradients (parameters and input), bit for bit, noise and precision on."""
    noisy = analog.AnalogConfig()
    x, y = _data()
    single = _net(p, config=noisy)
    by_location = _net("zero,hidden_output=ste:exact,readout_input=exact", config=noisy)  # same init
    for layer in analog.analog_layers(by_location):
        layer.signal_policy_input = layer.signal_policy_output = p
    _scale_weights(single), _scale_weights(by_location)
    out_a, g_a, gx_a = _grads(single, x, y)
    out_b, g_b, gx_b = _grads(by_location, x, y)
    assert torch.equal(out_a, out_b)
    assert all(torch.equal(a, b) for a, b in zip(g_a, g_b, strict=True))
    assert torch.equal(gx_a, gx_b)
    analog.set_policies(by_location, signal_policy={"hidden": p, "readout": p})
    assert all(la.signal_policy == p for la in analog.analog_layers(by_location))


def _reference(net, x, y, assign: dict[str, tuple[str, ...]]):
    """The classifier written out with analog.normalize at each location (no noise, no precision)."""
    layers = analog.analog_layers(net)
    x = x.clone().requires_grad_(True)
    h = x
    for i, layer in enumerate(layers):
        role = "readout" if i == len(layers) - 1 else "hidden"

        def pol(pos: str, role=role, i=i) -> str:
            ps = assign[f"{role}_{pos}"]
            return ps[i] if len(ps) > 1 else ps[0]

        w = analog.normalize(layer.weight, "clamp", layer.weight_policy)
        b = analog.normalize(layer.bias, "clamp", layer.weight_policy)
        h = analog.normalize(h, "clamp", pol("input"))
        h = analog.normalize(F.linear(h, w, b), "clamp", pol("output"))
        h = F.gelu(h)
    loss = F.cross_entropy(h, y)
    grads = torch.autograd.grad(loss, [*net.parameters(), x])
    return h.detach(), list(grads[:-1]), grads[-1]


MIXED = [
    ",".join(f"{loc}={p}" for loc, p in zip(SIGNAL_LOCATIONS, combo, strict=True))
    for combo in itertools.product(POLICIES, repeat=4)
] + ["exact,hidden_output=ste:exact", "ste,hidden=zero:exact,readout_output=exact"]


@pytest.mark.parametrize("spec", MIXED)
def test_each_location_gets_its_own_gradient(spec):
    """Every assignment of {exact, ste, zero} to the four locations (and per-layer lists) gives the
    gradients of the same network written out with each location's normalization and policy."""
    x, y = _data()
    net = _net(spec)
    _scale_weights(net)
    out, grads, gx = _grads(net, x, y)
    ref_out, ref_grads, ref_gx = _reference(net, x, y, analog.parse_signal_policy(spec))
    assert torch.equal(out, ref_out)
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(gx, ref_gx, rtol=1e-6, atol=1e-7)


def test_mixed_locations_change_exactly_the_gradients_they_should():
    """ste at the readout output alone: the readout's weight gradient differs from all-exact (its
    clamp saturates). ste at every input position: after GeLU (and for data in [0, 1]) the input clamps
    never saturate, so every parameter gradient is bit-identical to all-exact."""
    x, y = _data()
    x01 = x.abs().clamp(max=1)  # data in [0, 1], as every data set here
    net = _net("exact")
    _scale_weights(net)
    _, g_exact, _ = _grads(net, x, y)
    _, g_exact01, _ = _grads(net, x01, y)
    analog.set_policies(net, signal_policy="exact,readout_output=ste")
    _, g_ro, _ = _grads(net, x, y)
    assert not torch.equal(g_exact[-2], g_ro[-2])  # readout weight
    analog.set_policies(net, signal_policy="exact,input=ste")
    _, g_in, _ = _grads(net, x01, y)
    assert all(torch.equal(a, b) for a, b in zip(g_in, g_exact01, strict=True))


# --- readout variants -----------------------------------------------------------------------------


def test_readouts_share_the_network_and_differ_only_after_the_last_layer():
    x, _ = _data()
    nets = {r: _net("exact", readout=r) for r in analog.READOUTS}
    for net in nets.values():
        _scale_weights(net)
    with torch.no_grad():
        out = {r: net(x) for r, net in nets.items()}
    lo, hi = logit_bounds("clamp", "gelu")
    assert out["analog"].min() >= lo and out["analog"].max() <= hi
    assert out["digital"].abs().max() > 1  # unbounded logits: no clamp, no activation
    assert not any(isinstance(m, torch.nn.GELU) for m in list(nets["digital"])[-1:])
    assert analog.analog_layers(nets["digital"])[-1].normalize_output is False
    s = readout_scale("clamp", "gelu", 3)
    torch.testing.assert_close(out["scaled"], s * out["analog"])
    # digital_act: the digital readout's unbounded logits through the activation (no clamp before it)
    assert analog.analog_layers(nets["digital_act"])[-1].normalize_output is False
    assert isinstance(list(nets["digital_act"])[-1], torch.nn.GELU)
    torch.testing.assert_close(out["digital_act"], torch.nn.functional.gelu(out["digital"]))
    assert out["digital_act"].max() > hi  # above the analog readout's bound


def test_scaled_readout_scale_reaches_the_floor_it_promises():
    lo, hi = logit_bounds("clamp", "gelu")
    assert math.isclose(lo, -0.16997, abs_tol=1e-5) and math.isclose(hi, 0.841345, abs_tol=1e-6)
    assert math.isclose(cross_entropy_floor(hi - lo, 10), 1.4525, abs_tol=1e-4)  # the analog readout's floor
    for n, floor in ((10, SCALED_READOUT_FLOOR), (3, 0.1), (100, 0.001)):
        s = readout_scale("clamp", "gelu", n, floor=floor)
        assert math.isclose(cross_entropy_floor(s * (hi - lo), n), floor, rel_tol=1e-9)
    assert math.isclose(
        readout_scale("clamp01", "none", 10, final_activation=False), math.log(9 / math.expm1(0.01))
    )
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="floor: must be a finite number > 0"):
            readout_scale("clamp", "gelu", 10, floor=bad)
    with pytest.raises(ValueError, match="signal_norm: 'none' has no bounded output range"):
        analog.build_classifier(4, 3, (5,), config=analog.AnalogConfig(signal_norm="none"), readout="scaled")
    with pytest.raises(ValueError, match="readout: unknown 'scald'"):
        analog.build_classifier(4, 3, (5,), readout="scald")
    with pytest.raises(ValueError, match="needs an analog network"):
        analog.build_classifier(4, 3, (5,), digital=True, readout="digital")


def test_trial_config_readout_keeps_old_run_ids_and_validates():
    assert "readout" not in TrialConfig().canonical()
    assert TrialConfig(readout="analog").run_id == TrialConfig().run_id
    assert TrialConfig(readout="scaled").canonical()["readout"] == "scaled"
    digital = TrialConfig(readout="digital")
    assert digital.final_activation is False and digital.run_id != TrialConfig().run_id
    assert TrialConfig(readout="digital", final_activation=False) == digital
    for bad, field in (
        ({"readout": "digitl"}, "readout: unknown readout 'digitl'"),
        ({"readout": "digital", "final_activation": True}, "final_activation: readout 'digital'"),
        ({"readout": "digital_act", "final_activation": False}, "final_activation: readout 'digital_act'"),
        ({"digital": True, "readout": "digital_act"}, "readout: 'digital_act' needs an analog network"),
        ({"readout": 3}, "readout"),
        ({"digital": True, "readout": "scaled"}, "readout: 'scaled' needs an analog network"),
        ({"digital": True, "signal_policy": "exact,readout=ste"}, "a digital network has no signal"),
        ({"signal_norm": "none", "readout": "scaled"}, "signal_norm: 'none' has no bounded"),
    ):
        with pytest.raises(ConfigError, match=field):
            TrialConfig.parse(bad)


# --- probe diagnostics ----------------------------------------------------------------------------


def test_probe_measures_each_position_and_the_logit_range():
    x, y = _data()
    net = _net("exact")
    _scale_weights(net)
    same = analog.probe(net, x, y, ("ste", "exact"), reference=("ste", "exact"))
    for m in same.layers:
        for c in (m.cosine, m.cosine_signal_out):
            assert math.isclose(c, 1.0, abs_tol=1e-6)
    assert math.isnan(same.layers[0].cosine_signal_in)  # the data need no gradient
    assert math.isclose(same.layers[1].cosine_signal_in, 1.0, abs_tol=1e-6)
    lo, hi = same.logits.logit_min, same.logits.logit_max
    assert same.logits.ce_floor == pytest.approx(math.log1p(2 * math.exp(-(hi - lo))))
    assert same.logits.probe_loss >= same.logits.ce_floor

    ro = analog.probe(net, x, y, ("ste", "exact,readout_output=ste"), reference=("ste", "exact"))
    # at the readout's output clamp: the ste gradient is dL/dy, the exact one dL/dy masked by the clamp
    layer = analog.analog_layers(net)[-1]
    layer.saturation, layer.signal_tensors, layer.signal_policy_output = {}, {}, "ste"
    logits = net(x)
    pre = layer.signal_tensors["signal_out"]
    g = torch.autograd.grad(F.cross_entropy(logits, y), pre)[0]  # ste: dL/dy itself
    layer.saturation, layer.signal_tensors, layer.signal_policy_output = None, None, "exact"
    mask = (pre.abs() <= 1).to(g.dtype)
    want = float(torch.dot((g * mask).reshape(-1).double(), g.reshape(-1).double())) / (
        float(g.norm()) * float((g * mask).norm())
    )
    assert ro.layers[-1].cosine_signal_out == pytest.approx(want, rel=1e-6)
    assert ro.layers[-1].cosine_signal_out < 0.999
    assert ro.layers[-1].sat_signal_out > 0
    assert repr(analog.gradient_mismatch(net, x, y, ("ste", "exact"), ("ste", "exact"))) == repr(same.layers)
    # the probe restores every layer's policies
    assert [la.signal_policy for la in analog.analog_layers(net)] == ["exact"] * 3

    digital = analog.probe(_net("exact", readout="digital"), x, y, ("ste", "exact"))
    assert math.isnan(digital.layers[-1].sat_signal_out) and math.isnan(digital.layers[-1].cosine_signal_out)


MECH = {
    **TINY,
    "hidden": [8, 6],
    "noise": "gaussian",
    "leakage": 0.5,
    "diagnostics": True,
    "readout": "digital",
    "signal_policy": "exact,hidden_output=ste",
}


def test_records_and_curves_carry_the_new_diagnostics_in_both_paths():
    """A location-wise policy with a digital readout trains alone and bundled; both records carry the
    per-position cosines and the logit range, and the bundled member's diagnostics equal the trial's."""
    cfgs = [TrialConfig.parse({**MECH, "seed": s}) for s in (0, 3)]
    seq = run_trial(cfgs[1])
    bun = run_bundle(cfgs)[1]
    for rec in (seq, bun):
        assert rec["config"]["signal_policy"] == "exact,hidden_output=ste"
        assert rec["config"]["readout"] == "digital" and rec["config"]["final_activation"] is False
        d = rec["diagnostics"][0]
        assert set(d["logits"]) == {"logit_min", "logit_max", "ce_floor", "probe_loss"}
        assert {"cosine_signal_in", "cosine_signal_out"} <= set(d["layers"][0])
    a, b = seq["diagnostics"][0], bun["diagnostics"][0]
    assert a["logits"]["probe_loss"] == pytest.approx(b["logits"]["probe_loss"], rel=0.05)
    rows = _curves("r", seq)
    metrics = {r[2] for r in rows}
    assert {"grad_cosine_signal_in", "grad_cosine_signal_out", "logit_min", "ce_floor"} <= metrics
    assert all(r[3] is None for r in rows if r[2] in ("logit_min", "logit_max", "ce_floor", "probe_loss"))
    old = {**seq, "diagnostics": [{"epoch": 1, "layers": [{"layer": 0, "cosine": 1.0}]}]}
    assert {r[2] for r in _curves("r", old)} == {r[2] for r in rows} - {
        "grad_cosine_signal_in",
        "grad_cosine_signal_out",
        "logit_min",
        "logit_max",
        "ce_floor",
        "probe_loss",
    }


# --- specs and hypotheses -------------------------------------------------------------------------


def test_specs_take_location_policies_in_canonical_form_only():
    spec = {
        "name": "loc",
        "base": dict(TINY),
        "factors": {"readout": ["analog", "scaled"], "signal_policy": ["exact", "exact,readout_output=ste"]},
        "hypotheses": {"comparisons": [{"site": "signal", "a": "exact", "b": "exact,readout_output=ste"}]},
    }
    parse_spec(spec)
    bad = {
        **spec,
        "factors": {"signal_policy": ["exact", "readout_output=ste,hidden=exact,readout_input=exact"]},
    }
    with pytest.raises(ConfigError, match="factors.signal_policy: write .* as 'exact,readout_output=ste'"):
        parse_spec(bad)
    with pytest.raises(ConfigError, match="factors.signal_policy: bad value"):
        parse_spec({**spec, "factors": {"signal_policy": ["exact", "exact,readot=ste"]}})
    with pytest.raises(ValueError, match="as 'exact,hidden=ste'"):
        Comparison(site="signal", a="exact", b="readout=exact,hidden=ste")
    assert Comparison(site="signal", a="exact", b="magic").b == "magic"  # unknown names stay (skipped later)


def test_probe_with_the_reference_policies_skips_the_second_pass_and_gives_the_same_result(monkeypatch):
    import analog.diagnostics as diagnostics

    x, y = _data()
    net = _net("exact")
    _scale_weights(net)
    for policies, reference in ((("ste", "exact"), ("ste", "exact")), (("exact", "ste"), ("exact", "ste"))):
        calls = []
        real = diagnostics._layer_grads
        monkeypatch.setattr(
            diagnostics, "_layer_grads", lambda *a, calls=calls, real=real: calls.append(a[3]) or real(*a)
        )
        shortcut = repr(analog.probe(net, x, y, policies, reference=reference))
        assert calls == [policies]  # one pass
        monkeypatch.setattr(diagnostics, "_same_policies", lambda a, b: False)
        assert repr(analog.probe(net, x, y, policies, reference=reference)) == shortcut  # two passes
        monkeypatch.undo()
    assert not diagnostics._same_policies(("ste", "exact"), ("exact", "exact"))
    assert diagnostics._same_policies(("ste", "exact,readout=exact"), ("ste", "exact"))
    assert not diagnostics._same_policies(("ste", "no-such"), ("ste", "no-such"))
