"""User architectures in studies: register_architecture, `arch: my_resnet` in TrialConfig, specs and the
command line, built by build_network (converted with analog.convert) on the sequential and bundled paths.

* A registered name is valid in TrialConfig, as a spec factor with the spec's plugins, and on the
  command line (`--plugins`); the built-in names keep every run_id.
* The trial converts the builder's digital network with its analog configuration and read-out (the
  last layer reads out); digital trials train it as built; a builder's own analog network is kept.
* A residual network with BatchNorm trains one by one and in a seed bundle, alike (noise off; the
  bundle's vmapped BatchNorm differs by rounding only).
* Bad inputs: one-line errors naming the field and the allowed values.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY, write_spec
from torch import nn

import analog
from study.sweep.spec import expand, load_spec
from study.training.archs import available_archs, register_architecture, unregister_architecture
from study.training.config import ConfigError, TrialConfig, field_choices
from study.training.module import build_network

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

PLUGIN = """
import math
import re

import torch.nn.functional as F
from torch import nn

from study.training.archs import register_architecture


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


def my_resnet(config, n_features, n_classes):
    side, c = math.isqrt(n_features), config.channels[0]
    return nn.Sequential(
        nn.Unflatten(1, (1, side, side)),
        nn.Conv2d(1, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
        Block(c),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, n_classes),
    )


register_architecture("{name}", my_resnet)
"""


def _plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: str, arch: str) -> str:
    (tmp_path / f"{module}.py").write_text(PLUGIN.replace("{name}", arch))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    return module


class _MLP(nn.Module):
    def __init__(self, n_features: int, n_classes: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(n_features, 8), nn.Linear(8, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x)))


@pytest.fixture
def archs():
    """Register test architectures; remove them afterwards."""
    names: list[str] = []

    def register(name, builder):
        register_architecture(name, builder)
        names.append(name)
        return name

    yield register
    for name in names:
        unregister_architecture(name)


def test_a_registered_arch_is_valid_everywhere_and_built_ins_keep_their_run_ids(archs):
    assert TrialConfig().run_id == "7a742e72d8056465"  # the committed default
    assert TrialConfig.parse({"arch": "cnn"}).run_id == "ada62922c2e0f91d"
    assert "arch" not in TrialConfig().canonical()
    archs("tiny_mlp", lambda config, n_features, n_classes: _MLP(n_features, n_classes))
    assert field_choices("arch") == available_archs() == ["mlp", "cnn", "tiny_mlp"]
    cfg = TrialConfig.parse({**TINY, "arch": "tiny_mlp", "channels": [3]})  # the builder reads any field
    assert cfg.canonical()["arch"] == "tiny_mlp" and cfg.run_id != TrialConfig.parse(TINY).run_id
    with pytest.raises(ConfigError) as err:
        TrialConfig.parse({"arch": "nope"})
    assert "arch: unknown arch 'nope'; allowed: mlp, cnn, tiny_mlp (got 'nope')" in str(err.value)


def test_the_trial_converts_the_builder_network(archs):
    archs("tiny_mlp", lambda config, n_features, n_classes: _MLP(n_features, n_classes))
    spec = "exact,readout_output=ste"
    net = build_network(TrialConfig.parse({**TINY, "arch": "tiny_mlp", "signal_policy": spec}), 64, 10)
    layers = analog.analog_layers(net)
    assert [(m.role, type(m)) for m in layers] == [
        ("hidden", analog.AnalogLinear),
        ("readout", analog.AnalogLinear),
    ]
    assert layers[1].signal_policy == "input=exact,output=ste" and layers[0].config.noise == "gaussian"
    digital = build_network(TrialConfig.parse({**TINY, "arch": "tiny_mlp", "digital": True}), 64, 10)
    assert type(digital) is _MLP and not analog.analog_layers(digital)
    scaled = build_network(TrialConfig.parse({**TINY, "arch": "tiny_mlp", "readout": "scaled"}), 64, 10)
    assert scaled.fc2.logit_scale == analog.readout_scale("clamp", "none", 10, False)

    def own(config, n_features, n_classes):  # a builder that converts it itself, the first layer only
        return analog.convert(_MLP(n_features, n_classes), config.analog_config(), include=["fc1"])

    archs("half_analog", own)
    kept = build_network(TrialConfig.parse({**TINY, "arch": "half_analog"}), 64, 10)
    assert isinstance(kept.fc1, analog.AnalogLinear) and type(kept.fc2) is nn.Linear


@pytest.mark.parametrize(
    ("builder", "error", "message"),
    [
        (lambda c, f, n: nn.Sequential(nn.ReLU()), ValueError, "arch 'bad': model: has no layer to convert"),
        (lambda c, f, n: "net", TypeError, "arch 'bad': the builder returned str, not a torch.nn.Module"),
    ],
)
def test_a_bad_builder_is_named(archs, builder, error, message):
    archs("bad", builder)
    with pytest.raises(error, match=message):
        build_network(TrialConfig.parse({**TINY, "arch": "bad"}), 64, 10)


def test_bad_registrations_are_one_line_errors(archs):
    def builder(config, n_features, n_classes):
        return _MLP(n_features, n_classes)

    archs("taken", builder)
    register_architecture("taken", builder)  # the same builder again (a plugin imported twice): no-op
    cases = [
        ("taken", _MLP, ValueError, "arch: 'taken' is already registered; choose another name"),
        ("mlp", builder, ValueError, "arch: 'mlp' is built in; choose another name (taken: mlp, cnn, taken)"),
        ("new", 3, TypeError, "arch 'new': builder must be callable; got int"),
        ("", builder, ValueError, "arch: the name must be a non-empty string"),
    ]
    for name, b, error, message in cases:
        with pytest.raises(error) as err:
            register_architecture(name, b)
        assert message in str(err.value) and "\n" not in str(err.value)
    assert available_archs() == ["mlp", "cnn", "taken"]


def test_a_residual_network_trains_alone_and_bundled_from_a_spec(tmp_path, monkeypatch):
    from study.training.bundle import run_bundle
    from study.training.trial import run_trial

    module = _plugin(tmp_path, monkeypatch, "ng_arch_plugin", "ng_resnet")
    base = {**TINY, "noise": "none", "precision": None, "leakage": None, "diagnostics": True}
    spec = {
        "name": "resnets",
        "plugins": [module],
        "base": base,
        "factors": {"arch": ["ng_resnet"]},
        "seeds": 2,
    }
    try:
        trials = expand(load_spec(write_spec(tmp_path / "s.yaml", spec)))
        assert [t.config.arch for t in trials] == ["ng_resnet"] * 2
        alone = run_trial(trials[0].config)
        bundled = run_bundle([t.config for t in trials])
    finally:
        unregister_architecture("ng_resnet")
    assert len(alone["diagnostics"][0]["layers"]) == 4  # stem, two block convs, the linear read-out
    assert math.isclose(
        alone["history"][0]["train_loss"], bundled[0]["history"][0]["train_loss"], rel_tol=1e-4
    )
    assert math.isclose(alone["history"][0]["val_loss"], bundled[0]["history"][0]["val_loss"], rel_tol=1e-4)
    assert all(math.isfinite(r["test_acc"]) for r in (alone, *bundled))


def test_train_on_the_command_line_imports_plugins(tmp_path, monkeypatch, capsys):
    from study.cli import main

    _plugin(tmp_path, monkeypatch, "ng_arch_cli", "cli_resnet")
    args = ["train", "--dataset", "digits", "--arch", "cli_resnet", "--epochs", "1", "--batch-size", "128"]
    assert main(["train", "--arch", "cli_resnet"]) == 2
    assert "arch: unknown arch 'cli_resnet'; allowed: mlp, cnn" in capsys.readouterr().err
    try:
        assert main([*args, "--plugins", "ng_arch_cli", "--diagnostics", "false"]) == 0
    finally:
        unregister_architecture("cli_resnet")
    assert capsys.readouterr().out.startswith("run_id ")


def test_the_readme_example_registers_a_residual_network_that_converts():
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = text.split("### Your own network", 1)[1].split("\n## ", 1)[0]
    code = re.findall(r"```python\n(.*?)```", section, re.S)[0]
    exec(compile(code, "README.md", "exec"), {"__name__": "ng_readme_arch"})  # noqa: S102
    try:
        config = TrialConfig.parse({**TINY, "arch": "my_resnet", "channels": [4]})
        net = build_network(config, 64, 10)
    finally:
        unregister_architecture("my_resnet")
    layers = analog.analog_layers(net)
    assert len(layers) == 6 and layers[-1].role == "readout"
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == 5
    assert net(torch.rand(3, 64)).shape == (3, 10)
