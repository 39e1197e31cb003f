"""Convolutional analog layers (AnalogConv1d/2d), the CNN builder and CNN trials.

* Parity with AnalogVNN 1.0.8: AnalogVNN has no convolution of its own; its models put ``torch.nn``
  layers (here Conv1d/Conv2d) between its normalization, precision and noise modules in a
  ``FullSequential`` and parametrize their weights with a weight model (``PseudoParameter``), exactly as
  its sample code does for ``Linear``. The same CNN built both ways, with identical weights: forward
  bit-identical, parameter gradients equal (graph-based backward vs autograd: accumulation order), noise
  off and, with keyed draws (as in test_parity_analogvnn.py), with every noise kind and rounding.
* Gradient policies (``torch.autograd.gradcheck``, float64, noise and reduced precision off: their
  straight-through backward is not the derivative of a piecewise-constant forward): for every built-in
  policy at every site (weights, signal in, signal out) the layer's backward must equal the finite-
  difference Jacobian of a reference written out by hand (F.conv on explicitly normalized inputs) whose
  true derivative is what the policy prescribes at that site - ``exact``: the normalization itself;
  ``ste``: v -> v + c with c = norm(v0) - v0 frozen at the point (identity Jacobian, same value);
  ``zero``: v -> norm(v0) (zero Jacobian). Other sites keep ``exact``. Points are kept away from the clamp's
  kinks so finite differences see one branch.
* Sequential and bundled (vmap) CNN trials train alike; diagnostics cover conv layers.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import TINY
from torch import nn

import analog
from analog import AnalogConfig, AnalogConv1d, AnalogConv2d, AnalogLinear, build_cnn
from analog.policies import POLICY_ORDER
from study.training.config import ConfigError, TrialConfig
from study.training.data import dataset_input_shape, load_split, register_dataset

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # AnalogVNN's x.T on >2-D tensors

CONVS = {1: AnalogConv1d, 2: AnalogConv2d}


def _quiet(weight_norm: str = "clamp", signal_norm: str = "clamp", **kw) -> AnalogConfig:
    return AnalogConfig(
        weight_norm=weight_norm, signal_norm=signal_norm, precision=None, noise="none", leakage=None, **kw
    )


# ------------------------------------------------------------------------------ gradcheck per policy

SITES = ("weight", "signal_in", "signal_out")


def _reference(layer, x, w, b, policies: dict[str, str], frozen: dict[str, torch.Tensor]):
    """The layer's forward written out, each site's normalization replaced by the function whose true
    derivative the site's policy prescribes (see the module docstring); `frozen` holds the site values
    at the gradcheck point (no grad)."""
    c = layer.config
    wn, sn = analog.normalization_fn(c.weight_norm), analog.normalization_fn(c.signal_norm)

    def site(name: str, v: torch.Tensor, fn) -> torch.Tensor:
        p, v0 = policies[name], frozen[name]
        if p == "exact":
            return fn(v)
        if p == "ste":
            return v + (fn(v0) - v0)
        return fn(v0) + 0 * v  # zero: constant at the point

    xin = site("signal_in", x, sn)
    wq, bq = site("weight", w, wn), site("bias", b, wn)
    return site("signal_out", layer._operation(xin, wq, bq), sn)


class _LayerBackward(torch.autograd.Function):
    """Forward: the reference; backward: the analog layer's own autograd backward at the same inputs."""

    @staticmethod
    def forward(ctx, x, w, b, layer, policies, frozen):  # noqa: ANN001, ANN205
        ctx.save_for_backward(x, w, b)
        ctx.layer = layer
        return _reference(layer, x, w, b, policies, frozen)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        x, w, b = (t.detach().requires_grad_(True) for t in ctx.saved_tensors)
        with torch.enable_grad():
            out = torch.func.functional_call(ctx.layer, {"weight": w, "bias": b}, (x,))
            gx, gw, gb = torch.autograd.grad(out, (x, w, b), grad)
        return gx, gw, gb, None, None, None


def _away_from_kinks(v: torch.Tensor, margin: float = 0.02) -> torch.Tensor:
    """Move values within `margin` of the clamp's kinks (+-1) out of that band (outwards)."""
    near = (v.abs() - 1).abs() < margin
    moved = torch.where(v.abs() < 1, 1 - 2 * margin, 1 + 2 * margin) * v.sign()
    return torch.where(near, moved, v)


@pytest.mark.parametrize("norm", ["clamp", "l2norm"])
@pytest.mark.parametrize("policy", POLICY_ORDER)
@pytest.mark.parametrize("site", SITES)
@pytest.mark.parametrize("dims", [1, 2])
def test_every_policy_at_every_site_passes_gradcheck(dims, site, policy, norm):
    g = torch.Generator().manual_seed(10 * dims + SITES.index(site))
    layer = CONVS[dims](2, 3, 3, padding=1, config=_quiet(norm, norm)).double()
    spatial = (5,) if dims == 1 else (4, 4)
    x = torch.randn(2, 2, *spatial, generator=g, dtype=torch.float64) * 1.5
    w = torch.randn(3, 2, *(3,) * dims, generator=g, dtype=torch.float64) * 0.8
    b = torch.randn(3, generator=g, dtype=torch.float64) * 1.5
    if norm == "clamp":  # saturated elements at every site, none within 0.02 of a kink
        x, w, b = _away_from_kinks(x), _away_from_kinks(w), _away_from_kinks(b)
    policies = {s: "exact" for s in (*SITES, "bias")}
    policies[site] = policy
    if site == "weight":
        policies["bias"] = policy
    layer.weight_policy = policies["weight"]
    layer.signal_policy_input, layer.signal_policy_output = policies["signal_in"], policies["signal_out"]
    with torch.no_grad():
        y0 = layer._operation(analog.normalization_fn(norm)(x), *map(analog.normalization_fn(norm), (w, b)))
    if norm == "clamp":
        assert float(((y0.abs() - 1).abs()).min()) > 1e-4, "a kink at the output: pick another seed"
        assert bool((y0.abs() > 1).any()) and bool((x.abs() > 1).any()) and bool((w.abs() > 1).any())
    frozen = {"signal_in": x, "weight": w, "bias": b, "signal_out": y0}
    with torch.no_grad():  # the reference has the layer's forward value at the point
        torch.testing.assert_close(_reference(layer, x, w, b, policies, frozen), layer_out(layer, x, w, b))
    inputs = tuple(t.clone().requires_grad_(True) for t in (x, w, b))
    assert torch.autograd.gradcheck(
        lambda x_, w_, b_: _LayerBackward.apply(x_, w_, b_, layer, policies, frozen), inputs, eps=1e-6
    )


def layer_out(layer, x, w, b):
    return torch.func.functional_call(layer, {"weight": w, "bias": b}, (x,))


def test_gradcheck_reference_tells_policies_apart():
    """The check has teeth: the ste backward fails gradcheck against the exact reference of a saturated
    clamp (and vice versa), so passing above means the policy's own Jacobian."""
    g = torch.Generator().manual_seed(3)
    layer = AnalogConv1d(1, 2, 3, padding=1, config=_quiet()).double()
    x = _away_from_kinks(torch.randn(2, 1, 6, generator=g, dtype=torch.float64) * 2)
    w = _away_from_kinks(torch.randn(2, 1, 3, generator=g, dtype=torch.float64))
    b = torch.zeros(2, dtype=torch.float64)
    layer.signal_policy_input = "ste"  # the layer's backward: ste at the input
    exact_ref = dict.fromkeys((*SITES, "bias"), "exact")
    y0 = torch.zeros(1)
    frozen = {"signal_in": x, "weight": w, "bias": b, "signal_out": y0}
    inputs = tuple(t.clone().requires_grad_(True) for t in (x, w, b))
    assert not torch.autograd.gradcheck(
        lambda x_, w_, b_: _LayerBackward.apply(x_, w_, b_, layer, exact_ref, frozen),
        inputs,
        eps=1e-6,
        raise_exception=False,
    )


@pytest.mark.parametrize("policy", POLICY_ORDER)
def test_conv_with_a_one_wide_kernel_is_the_linear_layer(policy):
    """A 1x1 convolution over a length-1 signal is AnalogLinear: same values (noise and stochastic
    rounding on, same seed) and same gradients under every policy at both sites: one pipeline."""
    config = AnalogConfig(
        weight_policy=policy,
        signal_policy=policy,
        precision_class="stochastic",
        noise="laplacian",
        leakage=0.3,
        weight_norm="l2norm",
    )
    torch.manual_seed(0)
    lin = AnalogLinear(6, 4, config=config)
    conv = AnalogConv1d(6, 4, 1, config=config)
    with torch.no_grad():
        conv.weight.copy_(lin.weight[..., None])
        conv.bias.copy_(lin.bias)
        lin.weight.mul_(3)  # saturate: the policies differ
        conv.weight.mul_(3)
    x = torch.randn(5, 6) * 2
    outs = []
    for layer, inp in ((lin, x), (conv, x[..., None])):
        torch.manual_seed(7)
        out = layer(inp.clone().requires_grad_(True)).reshape(5, 4)
        out.pow(2).sum().backward()
        outs.append(out.detach())
    assert torch.equal(outs[0], outs[1])
    torch.testing.assert_close(conv.weight.grad[..., 0], lin.weight.grad)
    torch.testing.assert_close(conv.bias.grad, lin.bias.grad)


def test_conv_layer_validates_its_shape_arguments():
    for kwargs, field in (
        ({"kernel_size": 0}, "kernel_size"),
        ({"kernel_size": (3,)}, "kernel_size"),
        ({"stride": 0}, "stride"),
        ({"padding": -1}, "padding"),
        ({"in_channels": 0}, "in_channels"),
    ):
        args = {"in_channels": 1, "out_channels": 2, "kernel_size": 3, **kwargs}
        with pytest.raises(ValueError, match=field):
            AnalogConv2d(**args)
    with pytest.raises(ValueError, match="role"):
        AnalogConv1d(1, 2, 3, role="middle")


# ----------------------------------------------------------------------------------------- CNN builder


def test_build_cnn_layout_roles_and_shapes():
    config = AnalogConfig(signal_policy="exact,hidden_output=ste:exact:exact")
    net = build_cnn((1, 8, 8), 10, (4, 8), 3, (16,), "relu", config)
    kinds = [type(m).__name__ for m in net]
    assert kinds == [
        "Unflatten",
        *("AnalogConv2d", "ReLU", "MaxPool2d") * 2,
        "Flatten",
        "AnalogLinear",
        "ReLU",
        "AnalogLinear",
        "ReLU",
    ]
    layers = analog.analog_layers(net)
    roles = [(lay.role, lay.index) for lay in layers]
    assert roles == [("hidden", 0), ("hidden", 1), ("hidden", 2), ("readout", 0)]
    assert [lay.signal_policy_output for lay in layers] == ["ste", "exact", "exact", "exact"]
    assert layers[2].in_features == 8 * 2 * 2
    assert net(torch.rand(3, 64)).shape == (3, 10)
    net1 = build_cnn((1, 40), 10, (4, 8), 5)
    assert isinstance(net1[1], AnalogConv1d) and isinstance(net1[3], nn.MaxPool1d)
    assert analog.analog_layers(net1)[-1].in_features == 8 * 10
    digital = build_cnn((1, 8, 8), 10, (4,), 3, (), digital=True)
    assert not analog.analog_layers(digital) and isinstance(digital[1], nn.Conv2d)


def test_build_cnn_refuses_bad_shapes_naming_the_field():
    with pytest.raises(ValueError, match="channels: block 4 of 4"):
        build_cnn((1, 8, 8), 10, (2, 2, 2, 2))
    with pytest.raises(ValueError, match="input_shape"):
        build_cnn((64,), 10)
    with pytest.raises(ValueError, match="kernel_size"):
        build_cnn((1, 8, 8), 10, (2,), 0)
    with pytest.raises(ValueError, match="channels"):
        build_cnn((1, 8, 8), 10, ())
    with pytest.raises(ValueError, match="hidden layer"):
        build_cnn((1, 8, 8), 10, (2,), 3, (), config=AnalogConfig(signal_policy="exact,hidden=ste:exact"))


def test_cnn_kernels_are_initialised_for_the_activation():
    torch.manual_seed(4)
    net = build_cnn((1, 8, 8), 10, (4,), 3, (), "tanh")
    torch.manual_seed(4)
    ref = nn.Conv2d(1, 4, 3)  # the layer's own init draws first, then the activation's
    w = torch.empty_like(ref.weight)
    nn.init.xavier_uniform_(w, gain=nn.init.calculate_gain("tanh"))
    assert torch.equal(net[1].weight, w)
    assert torch.equal(net[1].bias, ref.bias)


def test_probe_and_saturation_cover_conv_layers():
    torch.manual_seed(0)
    net = build_cnn((1, 8, 8), 10, (3, 4), 3, (), "gelu", AnalogConfig(weight_policy="exact"))
    with torch.no_grad():
        net[1].weight.mul_(4)  # saturate the first kernel's clamp
    x, y = torch.rand(16, 64) * 2, torch.randint(0, 10, (16,))
    result = analog.probe(net, x, y, ("ste", "ste"))
    assert len(result.layers) == 3
    first = result.layers[0]
    assert first.sat_weight > 0 and first.sat_signal_out > 0
    assert first.cosine < 0.9999  # ste vs exact differ where the kernel saturates
    assert math.isnan(first.cosine_signal_in) and not math.isnan(result.layers[1].cosine_signal_in)
    sat = analog.diagnostics.weight_saturation(net)
    assert len(sat["layers"]) == 3 and sat["layers"][0] > 0


# ------------------------------------------------------------------------------ configs and datasets


def test_arch_fields_keep_old_run_ids_and_validate():
    mlp = TrialConfig.parse({})
    assert {"arch", "channels", "kernel_size"}.isdisjoint(mlp.canonical())
    assert TrialConfig.parse({"arch": "mlp"}).run_id == mlp.run_id
    cnn = TrialConfig.parse({"arch": "cnn"})
    assert cnn.canonical()["arch"] == "cnn" and cnn.run_id != mlp.run_id
    assert cnn.n_hidden_layers == 4
    assert TrialConfig.parse({"arch": "cnn", "channels": [4]}).canonical()["channels"] == [4]
    for bad, field in (
        ({"arch": "cnns"}, "arch"),
        ({"channels": [4]}, "channels: applies to arch 'cnn' only"),
        ({"kernel_size": 5}, "kernel_size: applies to arch 'cnn' only"),
        ({"arch": "cnn", "channels": []}, "channels"),
        ({"arch": "cnn", "channels": [0]}, "channels"),
        ({"arch": "cnn", "kernel_size": 0}, "kernel_size"),
        ({"arch": "cnn", "dataset": "digits", "channels": [2, 2, 2, 2]}, "channels: block 4"),
        ({"arch": "cnn", "signal_policy": "exact,hidden=ste:exact"}, "4 hidden layer"),
    ):
        with pytest.raises(ConfigError, match=field):
            TrialConfig.parse(bad)


def test_every_builtin_dataset_has_a_cnn_shape_matching_its_features():
    assert dataset_input_shape("mnist5k") == (1, 28, 28)
    assert dataset_input_shape("digits") == (1, 8, 8)
    assert dataset_input_shape("mnist1d") == (1, 40)
    assert dataset_input_shape("mnist") == dataset_input_shape("fashion_mnist") == (1, 28, 28)
    for name in ("digits", "mnist1d"):
        data = load_split(name, n_samples=200)
        assert math.prod(dataset_input_shape(name)) == data.n_features


def test_a_dataset_without_a_shape_trains_mlps_only():
    register_dataset("_flat_blobs", lambda split_seed: (torch.rand(100, 6).numpy(), torch.arange(100) % 10))
    try:
        assert dataset_input_shape("_flat_blobs") is None
        TrialConfig.parse({"dataset": "_flat_blobs"})
        with pytest.raises(ConfigError, match="needs an image shape"):
            TrialConfig.parse({"dataset": "_flat_blobs", "arch": "cnn"})
        with pytest.raises(ValueError, match="input_shape"):
            register_dataset("_flat_blobs", lambda split_seed: None, input_shape=(6,))
    finally:
        from study.training import data as data_mod

        data_mod._DATASETS.pop("_flat_blobs", None)
        data_mod._SHAPES.pop("_flat_blobs", None)


# --------------------------------------------------------------------- trials: sequential vs bundle

QUIET_CNN = {
    **TINY,
    "arch": "cnn",
    "channels": [3, 4],
    "hidden": [8],
    "epochs": 2,
    "noise": "none",
    "diagnostics": True,
}


@pytest.mark.parametrize("dataset", ["digits", "mnist1d"])
def test_cnn_bundle_trains_like_sequential(dataset):
    """Noise off, deterministic rounding: the vmapped bundle reproduces each sequential CNN trial (1-D and
    2-D), with the same diagnostics per conv layer."""
    from study.training.bundle import run_bundle
    from study.training.trial import run_trial

    base = {**QUIET_CNN, "dataset": dataset, "n_samples": 300 if dataset == "mnist1d" else None}
    configs = [TrialConfig.parse({**base, "seed": s}) for s in (3, 1)]
    seq = [run_trial(c) for c in configs]
    bun = run_bundle(configs)
    for a, b in zip(seq, bun, strict=True):
        assert a["run_id"] == b["run_id"] and a["config"]["arch"] == "cnn"
        for ha, hb in zip(a["history"], b["history"], strict=True):
            for k in ("train_loss", "val_loss", "test_loss"):
                assert ha[k] == pytest.approx(hb[k], rel=1e-4), k
            for k in ("train_acc", "val_acc", "test_acc"):
                assert abs(ha[k] - hb[k]) <= 0.6, k  # one example of 180 val / 360 test
        da, db = a["diagnostics"][-1]["layers"], b["diagnostics"][-1]["layers"]
        assert len(da) == len(db) == 4  # two convolutions, one hidden dense layer, the readout
        for la, lb in zip(da, db, strict=True):
            assert la["sat_signal_out"] == pytest.approx(lb["sat_signal_out"], abs=0.02)
    assert seq[0]["test_acc"] != seq[1]["test_acc"] or seq[0]["history"] != seq[1]["history"]
