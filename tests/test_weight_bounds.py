"""Weight bounds as a hardware parameter, their saturation diagnostics, SGD with momentum and the
cosine schedule: sequential and bundled paths alike, with unchanged run_ids for earlier configurations."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from conftest import TINY

from analog.diagnostics import weight_saturation
from analog.layers import AnalogConfig, AnalogLinear
from analog.normalize import normalization_fn, saturation_mask
from study.training.bundle import run_bundle
from study.training.config import ConfigError, TrialConfig
from study.training.module import make_optimizer
from study.training.trial import run_trial

QUIET = {**TINY, "hidden": [16], "epochs": 2, "noise": "none", "precision": None}


# ------------------------------------------------------------------------------------- clamp range
def test_clamp_range_forward_and_gradients() -> None:
    x = torch.tensor([-0.5, -0.05, 0.0, 0.07, 0.3], requires_grad=True)
    y = normalization_fn("clamp", 0.1)(x)
    assert y.tolist() == pytest.approx([-0.1, -0.05, 0.0, 0.07, 0.1])
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]  # exact: no gradient beyond the bound
    assert normalization_fn("clamp01", 0.1)(x.detach()).tolist() == pytest.approx([0, 0, 0, 0.07, 0.1])
    assert saturation_mask(x.detach(), "clamp", 0.1).tolist() == [True, False, False, False, True]
    assert saturation_mask(x.detach(), "clamp01", 0.1).tolist() == [True, True, False, False, True]
    assert normalization_fn("clamp") is normalization_fn("clamp", 1.0)  # AnalogVNN's own function


def test_layer_clamps_weights_and_bias_to_the_range() -> None:
    torch.manual_seed(0)
    cfg = AnalogConfig(precision=None, noise="none", weight_clamp=0.05)
    layer = AnalogLinear(20, 8, config=cfg)
    w, b = (t.detach() for t in layer.transformed_parameters())
    assert float(w.abs().max()) == pytest.approx(0.05) and float(b.abs().max()) <= 0.05 + 1e-7
    assert float(layer.weight.detach().abs().max()) > 0.05  # Xavier init: some weights are clipped
    sat = weight_saturation(torch.nn.Sequential(layer))
    expect = (layer.weight.abs() > 0.05).sum() + (layer.bias.abs() > 0.05).sum()
    assert sat["layers"] == [pytest.approx(float(expect) / (20 * 8 + 8))] and sat["all"] == sat["layers"][0]
    wide = weight_saturation(torch.nn.Sequential(AnalogLinear(20, 8, config=AnalogConfig())))
    assert wide == {"layers": [0.0], "all": 0.0}  # Xavier weights of a 20x8 layer lie inside [-1, 1]


def test_ste_and_exact_differ_only_when_weights_saturate() -> None:
    torch.manual_seed(1)
    x = torch.rand(16, 20)
    grads = {}
    for clamp in (1.0, 0.05):
        for policy in ("ste", "exact"):
            torch.manual_seed(2)
            cfg = AnalogConfig(precision=None, noise="none", weight_clamp=clamp, weight_policy=policy)
            layer = AnalogLinear(20, 8, config=cfg)
            layer(x).square().sum().backward()
            grads[clamp, policy] = layer.weight.grad
    assert torch.equal(grads[1.0, "ste"], grads[1.0, "exact"])
    clipped = layer.weight.detach().abs() > 0.05
    assert clipped.any()
    assert torch.equal(grads[0.05, "exact"][clipped], torch.zeros(int(clipped.sum())))
    assert not torch.equal(grads[0.05, "ste"], grads[0.05, "exact"])


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"weight_clamp": 0}, "weight_clamp: Input should be greater than 0"),
        ({"weight_clamp": -0.1}, "weight_clamp: Input should be greater than 0"),
        ({"weight_clamp": float("inf")}, "weight_clamp: Input should be a finite number"),
        ({"weight_clamp": float("nan")}, "weight_clamp: Input should be a finite number"),
        ({"weight_clamp": "wide"}, "weight_clamp: Input should be a valid number"),
        ({"weight_clamp": 0.5, "weight_norm": "l2norm"}, "weight_clamp: sets a clamp range, but the"),
        ({"optimizer": "rmsprop"}, "optimizer: Input should be 'adam' or 'sgd'"),
        ({"momentum": 0.9}, "momentum: applies to optimizer 'sgd' only"),
        ({"optimizer": "sgd", "momentum": 1.0}, "momentum: Input should be less than 1"),
        ({"optimizer": "sgd", "momentum": -0.1}, "momentum: Input should be greater than or equal to 0"),
        ({"schedule": "step"}, "schedule: Input should be 'constant' or 'cosine'"),
    ],
)
def test_bad_values_name_the_field(data: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        TrialConfig.parse(data)
    with pytest.raises(ValueError, match="weight_clamp"):
        AnalogConfig(weight_norm="l1norm", weight_clamp=2.0)


def test_new_fields_keep_earlier_run_ids() -> None:
    base = TrialConfig()
    same = TrialConfig(weight_clamp=1, momentum=0, schedule="constant", eval_test=True, optimizer="adam")
    assert same.run_id == base.run_id == "7a742e72d8056465"  # the default config's committed run_id
    assert set(base.canonical()) == set(TrialConfig.model_fields) - {
        "weight_clamp",
        "momentum",
        "schedule",
        "eval_test",
        "readout",
        "arch",
        "channels",
        "kernel_size",
        "test_draws",
        "weight_levels",
        "weight_init",
        "weight_bound",
        "signal_range_init",
        "signal_range_per",
    }
    changed = [
        TrialConfig(weight_clamp=0.1),
        TrialConfig(optimizer="sgd"),
        TrialConfig(optimizer="sgd", momentum=0.9),
        TrialConfig(schedule="cosine"),
        TrialConfig(eval_test=False),
    ]
    assert len({c.run_id for c in [base, *changed]}) == 6
    assert TrialConfig.parse(changed[2].canonical()) == changed[2]  # the stored config reads back


# ------------------------------------------------------------------------------- optimizer, schedule
def test_make_optimizer() -> None:
    p = [torch.nn.Parameter(torch.zeros(3))]
    opt = make_optimizer(TrialConfig(optimizer="sgd", momentum=0.9, lr=0.1), p)
    assert isinstance(opt["optimizer"], torch.optim.SGD) and "lr_scheduler" not in opt
    assert opt["optimizer"].defaults["momentum"] == 0.9 and opt["optimizer"].defaults["lr"] == 0.1
    opt = make_optimizer(TrialConfig(schedule="cosine", epochs=4, lr=0.1), p)
    assert isinstance(opt["optimizer"], torch.optim.Adam)
    sched = opt["lr_scheduler"]
    lrs = []
    for _ in range(4):
        lrs.append(opt["optimizer"].param_groups[0]["lr"])
        opt["optimizer"].step()
        sched.step()
    assert lrs == pytest.approx([0.1, 0.0853553, 0.05, 0.0146447], rel=1e-5)


def _same_training(a: dict[str, Any], b: dict[str, Any]) -> None:
    """As tests/test_bundle.py: losses within 1e-4 relative, accuracies within 0.2 pp."""
    assert a["run_id"] == b["run_id"] and len(a["history"]) == len(b["history"])
    for ha, hb in zip(a["history"], b["history"], strict=True):
        for k in ("train_loss", "val_loss", "test_loss"):
            assert ha[k] == pytest.approx(hb[k], rel=1e-4), k
        for k in ("train_acc", "val_acc", "test_acc"):
            assert abs(ha[k] - hb[k]) <= 0.2, k
    for sa, sb in zip(a["weight_saturation"], b["weight_saturation"], strict=True):
        assert sa["epoch"] == sb["epoch"] and sa["layers"] == pytest.approx(sb["layers"], abs=2e-3)


@pytest.mark.parametrize(
    "extra",
    [
        {"optimizer": "sgd", "momentum": 0.9, "lr": 0.1, "schedule": "cosine", "weight_clamp": 0.1},
        {"lr": 0.01, "weight_clamp": 0.05, "weight_policy": "exact"},
    ],
)
def test_bundle_trains_like_sequential(extra: dict[str, Any]) -> None:
    configs = [TrialConfig.parse({**QUIET, **extra, "seed": s}) for s in (3, 0)]
    seq = [run_trial(c) for c in configs]
    bun = run_bundle(configs)
    for a, b in zip(seq, bun, strict=True):
        _same_training(a, b)
        assert len(a["weight_saturation"]) == 2
        assert a["weight_saturation"][-1]["all"] > 0  # these settings push weights into their bounds
    assert seq[0]["history"] != seq[1]["history"]


def test_sgd_and_schedule_change_training_and_saturation_is_recorded() -> None:
    runs = {
        name: run_trial(TrialConfig.parse({**QUIET, **extra}))
        for name, extra in {
            "adam": {},
            "sgd": {"optimizer": "sgd", "lr": 0.05},
            "sgd_momentum": {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9},
            "cosine": {"schedule": "cosine"},
        }.items()
    }
    losses = {k: r["history"][-1]["train_loss"] for k, r in runs.items()}
    assert len(set(losses.values())) == 4, losses
    assert runs["adam"]["history"][0] == runs["cosine"]["history"][0]  # epoch 1 runs at the full lr
    sat = runs["adam"]["weight_saturation"]
    assert [s["epoch"] for s in sat] == [1, 2] and len(sat[0]["layers"]) == 2
    digital = run_trial(TrialConfig.parse({**QUIET, "digital": True}))
    assert digital["weight_saturation"] == []


def test_eval_test_off_never_evaluates_the_test_split(monkeypatch: pytest.MonkeyPatch) -> None:
    from study.training import data as D

    cls = D.AnalogDataModule

    def refuse(self: Any) -> Any:
        raise AssertionError("the test split was read")

    monkeypatch.setattr(cls, "test_dataloader", refuse)
    for runner in (lambda c: run_trial(c[0]), run_bundle):
        configs = [TrialConfig.parse({**QUIET, "eval_test": False, "seed": s}) for s in (0, 1)]
        rec = runner(configs)
        rec = rec if isinstance(rec, dict) else rec[0]
        assert rec["val_acc"] > 0 and rec["test_acc"] != rec["test_acc"]  # NaN: never measured
