"""analog.convert: any torch.nn network with its Linear / Conv layers made analog.

* With every analog effect off (DIGITAL_CONFIG) a converted residual network with BatchNorm computes
  exactly what the original does (outputs, gradients and BatchNorm statistics, torch.equal), in eval
  and in train mode, for 2-D and 1-D convolutions.
* The copy: each chosen layer becomes its analog twin with the same weights; every other module,
  the original model and the caller's random stream are untouched; a shared layer stays shared.
* Roles and read-out as in build_classifier: the last layer is the read-out (location specs apply to it),
  the others hidden in module order; readout digital / scaled; include / exclude / types choose layers.
* A converted model works with set_policies, fixed_weights, probe / weight_saturation, advise and
  torch.func stacking (vmap over members, as seed bundles run).
* Bad inputs: one-line ValueErrors naming the argument.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

import analog
from analog import DIGITAL_CONFIG, AnalogConfig, AnalogConv2d, AnalogLinear, convert
from analog.diagnostics import weight_saturation

QUIET = AnalogConfig(noise="none", precision=None)  # clamps only: deterministic


class Block(nn.Module):
    """A residual block: conv-BN-ReLU-conv-BN plus the input (a custom block convert must not touch)."""

    def __init__(self, c: int, conv: type[nn.Module], bn: type[nn.Module]) -> None:
        super().__init__()
        self.conv1, self.bn1 = conv(c, c, 3, padding=1, bias=False), bn(c)
        self.conv2, self.bn2 = conv(c, c, 3, padding="same"), bn(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class ResNet(nn.Module):
    """Stem conv, two residual blocks, global pooling, linear read-out."""

    def __init__(self, dims: int = 2, c: int = 4, n_classes: int = 3) -> None:
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv1d
        bn = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d
        pool = nn.AdaptiveAvgPool2d if dims == 2 else nn.AdaptiveAvgPool1d
        self.stem = nn.Sequential(conv(1, c, 3, padding=1), bn(c), nn.ReLU())
        self.layer1 = nn.Sequential(Block(c, conv, bn), Block(c, conv, bn))
        self.head = nn.Sequential(pool(1), nn.Flatten(), nn.Linear(c, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer1(self.stem(x)))


LAYERS = [
    "stem.0",
    "layer1.0.conv1",
    "layer1.0.conv2",
    "layer1.1.conv1",
    "layer1.1.conv2",
    "head.2",
]


def _resnet(dims: int = 2, seed: int = 0) -> ResNet:
    torch.manual_seed(seed)
    return ResNet(dims)


def _inputs(dims: int = 2, n: int = 8, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, *((6, 6) if dims == 2 else (10,)), generator=g)


@pytest.mark.parametrize("dims", [1, 2])
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_all_digital_conversion_computes_exactly_what_the_original_does(dims, mode):
    model = _resnet(dims)
    net = convert(model, DIGITAL_CONFIG)
    assert len(analog.analog_layers(net)) == len(LAYERS)
    for m in (model, net):
        m.train(mode == "train")
    x = _inputs(dims)
    for _ in range(2):  # train mode: the second pass sees the running statistics the first updated
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = model(xa), net(xb)
        assert torch.equal(ya, yb)
        ga = torch.autograd.grad(ya.square().sum(), [xa, *model.parameters()])
        gb = torch.autograd.grad(yb.square().sum(), [xb, *net.parameters()])
        assert all(torch.equal(a, b) for a, b in zip(ga, gb, strict=True))
    for (na, a), (nb, b) in zip(model.state_dict().items(), net.state_dict().items(), strict=True):
        assert na == nb and torch.equal(a, b)  # the same names: a state dict loads into either


def test_convert_copies_weights_leaves_the_rest_and_the_original_alone():
    model = _resnet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = torch.random.get_rng_state()
    net = convert(model, analog.AnalogConfig())
    assert torch.equal(torch.random.get_rng_state(), state)  # no random number drawn
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert all(type(m) in (nn.Conv2d, nn.Linear) for n, m in model.named_modules() if n in LAYERS)
    modules = dict(net.named_modules())
    assert [n for n, m in modules.items() if isinstance(m, analog.AnalogLayer)] == LAYERS
    assert type(modules["stem.0"]) is AnalogConv2d and type(modules["head.2"]) is AnalogLinear
    assert modules["layer1.0.conv1"].bias is None and modules["layer1.0.conv2"].padding == (1, 1)
    assert type(modules["layer1.0"]) is Block and type(modules["layer1.0.bn1"]) is nn.BatchNorm2d
    assert modules["stem.1"] is not model.stem[1]  # a deep copy
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())


def test_a_layer_shared_under_two_names_stays_shared():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    model.append(model[0])
    net = convert(model, QUIET)
    assert isinstance(net[0], AnalogLinear) and net[0] is net[2]
    assert len(list(net.parameters())) == 2


def test_roles_follow_build_classifier_last_layer_reads_out():
    spec = "exact,readout_output=ste,hidden_input=zero"
    net = convert(_resnet(), AnalogConfig(signal_policy=spec))
    layers = analog.analog_layers(net)
    assert [(m.role, m.index) for m in layers] == [("hidden", i) for i in range(5)] + [("readout", 0)]
    assert layers[-1].signal_policy == "input=exact,output=ste"
    assert layers[0].signal_policy == "input=zero,output=exact"
    per_layer = AnalogConfig(signal_policy="exact,hidden_output=ste:exact:ste:exact:ste")
    assert [m.signal_policy_output for m in analog.analog_layers(convert(_resnet(), per_layer))[:5]] == [
        "ste",
        "exact",
        "ste",
        "exact",
        "ste",
    ]
    with pytest.raises(ValueError, match="signal_policy: hidden_output lists 2 policies .* 5 hidden"):
        convert(_resnet(), AnalogConfig(signal_policy="exact,hidden_output=ste:exact"))
    named = analog.analog_layers(convert(_resnet(), QUIET, readout_layer="layer1.1.conv2"))
    assert named[4].role == "readout" and named[5].role == "hidden"


def test_readout_digital_and_scaled():
    x = _inputs()
    net = convert(_resnet(), QUIET).eval()
    digital = convert(_resnet(), QUIET, readout="digital").eval()
    assert not digital.head[2].normalize_output and net.head[2].normalize_output
    assert torch.equal(net(x), digital(x).clamp(-1, 1))  # the same but for the read-out's clamp
    scaled = convert(_resnet(), QUIET, readout="scaled").eval()
    scale = analog.readout_scale("clamp", "none", 3, False)
    assert scaled.head[2].logit_scale == scale and isinstance(scaled.head[2], AnalogLinear)
    assert torch.equal(scaled(x), net(x) * scale)


def test_include_exclude_and_types_choose_the_layers():
    def converted(**kw):
        net = convert(_resnet(), QUIET, **kw)
        return [n for n, m in net.named_modules() if isinstance(m, analog.AnalogLayer)]

    assert converted(include=["layer1"]) == LAYERS[1:5]
    assert converted(include=["layer1.0.conv1", "head"]) == ["layer1.0.conv1", "head.2"]
    assert converted(exclude=["stem", "layer1.1"]) == ["layer1.0.conv1", "layer1.0.conv2", "head.2"]
    assert converted(types=[nn.Linear]) == ["head.2"]
    net = convert(_resnet(), QUIET, exclude=["head.2"])
    assert type(net.head[2]) is nn.Linear and all(m.role == "hidden" for m in analog.analog_layers(net))
    assert isinstance(convert(nn.Linear(3, 2), QUIET), AnalogLinear)  # a model that is one layer


@pytest.mark.parametrize(
    ("model", "kw", "message"),
    [
        (nn.Sequential(nn.ReLU()), {}, "model: has no layer to convert"),
        (_resnet(), {"include": ["layer9"]}, "include: 'layer9' names no module of the model; convertible"),
        (_resnet(), {"exclude": ["layer1.0.bn1"]}, "exclude: 'layer1.0.bn1' names no convertible layer"),
        (_resnet(), {"exclude": [""]}, "include/exclude: leave no layer to convert"),
        (_resnet(), {"types": [nn.BatchNorm2d]}, "types: cannot convert BatchNorm2d; allowed: Linear"),
        (
            _resnet(),
            {"readout": "soft"},
            "readout: unknown 'soft'; allowed: analog, digital, scaled, digital_act",
        ),
        (_resnet(), {"readout": "digital", "exclude": ["head"]}, "readout: 'digital' needs the read-out"),
        (_resnet(), {"readout_layer": "stem.1"}, "readout_layer: 'stem.1' is not a Linear / Conv"),
        (nn.Sequential(nn.Conv2d(4, 4, 3, groups=2)), {}, "model: layer '0' .*groups=2.*exclude=\\['0'\\]"),
        (nn.Sequential(nn.Conv1d(1, 2, 3, dilation=2)), {}, "model: layer '0' .*dilation=\\(2,\\)"),
        (nn.Sequential(nn.Conv1d(1, 2, 4, padding="same")), {}, "model: layer '0' has padding='same' with"),
        (nn.Sequential(nn.Conv1d(1, 2, 3, padding_mode="circular")), {}, "padding_mode='circular'"),
    ],
)
def test_bad_inputs_are_one_line_errors_naming_the_argument(model, kw, message):
    with pytest.raises(ValueError, match=message) as err:
        convert(model, QUIET, **kw)
    assert "\n" not in str(err.value)
    with pytest.raises(TypeError, match="config: expected an analog.AnalogConfig"):
        convert(_resnet(), {"weight_norm": "clamp"})


def test_a_converted_model_works_with_the_analog_tools():
    x, y = _inputs(n=16), torch.randint(0, 3, (16,), generator=torch.Generator().manual_seed(2))
    net = convert(_resnet(), AnalogConfig())  # noise and rounding on
    analog.set_policies(net, "exact", "ste,readout=exact")
    assert {m.weight_policy for m in analog.analog_layers(net)} == {"exact"}
    assert analog.analog_layers(net)[0].signal_policy == "ste"
    assert analog.analog_layers(net)[-1].signal_policy == "exact"
    net.eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        plain = net(x)
    with analog.fixed_weights(net), torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        assert torch.equal(net(x), plain)
    result = analog.probe(net.train(), x, y, ("ste", "exact"))
    assert len(result.layers) == len(LAYERS)
    assert all(-1 <= m.cosine <= 1 + 1e-6 for m in result.layers)
    assert len(weight_saturation(net)["layers"]) == len(LAYERS)


def test_converted_models_stack_and_vmap_like_seed_bundles():
    members = [convert(_resnet(seed=s), QUIET) for s in (0, 1)]
    params, buffers = stack_module_state(members)
    base = convert(_resnet(), QUIET)
    x = _inputs(n=4)

    def call(p, b, xx):
        return functional_call(base, (p, b), (xx,))

    out = vmap(call, in_dims=(0, 0, None), randomness="different")(params, buffers, x)
    for k, m in enumerate(members):
        assert torch.allclose(out[k], m(x), atol=1e-6)
        assert torch.allclose(buffers["stem.1.running_mean"][k], m.stem[1].running_mean, atol=1e-6)


def test_advise_probes_a_converted_model():
    g = torch.Generator().manual_seed(4)
    batches = [(_inputs(n=8, seed=s), torch.randint(0, 3, (8,), generator=g)) for s in range(3)]
    rule = analog.Rule(intercept=0.0, slope=1.0, signal=0.0, delta=1.0, band=0.2)
    advice = analog.advise(convert(_resnet(), QUIET), batches, rule, seeds=(0,))
    assert [a.site for a in advice] == ["weight", "signal"]
    assert all(len(a.layer_cosines) == len(LAYERS) for a in advice)
