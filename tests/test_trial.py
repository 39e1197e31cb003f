"""Training one analog network with Lightning: determinism, the digital baseline, gradient policies that
block training, divergence, configuration errors and the `train` command line."""

from __future__ import annotations

import copy
import csv
import json
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import study_env
from torch import nn

from study.cli import main
from study.training.bundle import member_model
from study.training.config import ConfigError, TrialConfig
from study.training.data import AnalogDataModule, load_split
from study.training.module import AnalogClassifier
from study.training.trial import make_trainer, quiet_lightning, run_trial, seed_all

RECORD_KEYS = {
    "run_id",
    "config",
    "test_acc",
    "test_loss",
    "val_acc",
    "val_loss",
    "train_acc",
    "train_loss",
    "best_val_acc",
    "best_epoch",
    "test_acc_at_best_val",
    "epochs_run",
    "diverged",
    "wall_time_s",
    "history",
    "diagnostics",
    "versions",
}
HISTORY_KEYS = {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc"}


def _metrics(rec: dict) -> list[dict]:
    return rec["history"]


# ------------------------------------------------------------------------------------------- determinism


def test_same_seed_same_record_different_seed_differs(tiny):
    cfg = {**tiny, "epochs": 2, "seed": 0}
    a, b = run_trial(cfg), run_trial(cfg)
    assert a["run_id"] == b["run_id"] == TrialConfig.parse(cfg).run_id
    assert a["epochs_run"] == 2 and not a["diverged"]
    assert _metrics(a) == _metrics(b)  # every per-epoch metric equal bit for bit (floats compared with ==)
    for k in ("test_acc", "test_loss", "val_acc", "val_loss", "train_acc", "train_loss"):
        assert a[k] == b[k] and math.isfinite(a[k])
    c = run_trial({**cfg, "seed": 1})
    assert c["run_id"] != a["run_id"]
    assert c["history"][0]["train_loss"] != a["history"][0]["train_loss"]
    assert [h["test_loss"] for h in c["history"]] != [h["test_loss"] for h in a["history"]]


def test_same_record_in_two_processes_and_cli_record(tmp_path):
    """`python -m study train ... --json` twice in separate processes: identical histories; the record has
    the documented keys; `--out DIR` writes Lightning's CSV log to DIR/<run_id>/metrics.csv."""
    args = [
        "--dataset",
        "digits",
        "--hidden",
        "16",
        "--epochs",
        "2",
        "--seed",
        "0",
        "--batch-size",
        "64",
        "--diagnostics",
        "false",
        "--probe-size",
        "32",
        "--json",
    ]
    procs = []
    for i in range(2):  # concurrently: each process pays several seconds of imports
        out = tmp_path / f"out{i}"
        procs.append(
            (
                out,
                subprocess.Popen(
                    [sys.executable, "-m", "study", "train", *args, "--out", str(out)],
                    cwd=tmp_path,
                    env=study_env(),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                ),
            )
        )
    recs = []
    for out, p in procs:
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr
        rec = json.loads(stdout)
        recs.append(rec)
        assert RECORD_KEYS <= set(rec), RECORD_KEYS - set(rec)
        assert all(set(h) == HISTORY_KEYS for h in rec["history"])
        assert rec["epochs_run"] == 2 and len(rec["history"]) == 2 and rec["diverged"] is False
        assert rec["config"]["hidden"] == [16] and rec["config"]["seed"] == 0
        assert rec["run_id"] == TrialConfig.parse(rec["config"]).run_id
        log = out / rec["run_id"] / "metrics.csv"
        assert log.is_file(), list(out.rglob("*"))
        rows = list(csv.DictReader(log.open()))
        epoch_rows = [r for r in rows if r.get("test_acc")]
        assert len(epoch_rows) == 2
        assert float(epoch_rows[-1]["test_acc"]) == pytest.approx(rec["test_acc"], abs=1e-3)
    assert recs[0]["history"] == recs[1]["history"]
    assert recs[0]["test_acc"] == recs[1]["test_acc"]


def test_train_help_lists_every_config_field(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for name in TrialConfig.model_fields:
        assert f"--{name.replace('_', '-')}" in text, name
    for option in ("--config", "--out", "--json"):
        assert option in text


def test_train_cli_reports_config_error(capsys):
    assert main(["train", "--dataset", "cifar", "--precision", "0"]) == 2
    err = capsys.readouterr().err
    assert "dataset" in err and "cifar" in err and "digits" in err
    assert "precision" in err


# --------------------------------------------------------------------------------- the digital baseline


def _plain_mlp_accuracy(config: TrialConfig) -> float:
    """Train the same MLP in a plain PyTorch loop: nn.Linear + GELU (also after the last layer), Adam(lr),
    cross-entropy, the same initial weights and the same per-epoch batch order as the Lightning trial."""
    data = load_split(config.dataset, config.split_seed)
    reference = member_model(config, data.n_features, data.n_classes)  # seeded as run_trial seeds it
    sizes = [data.n_features, *config.hidden, data.n_classes]
    layers: list[nn.Module] = [nn.Flatten()]
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(a, b), nn.GELU()]
    net = nn.Sequential(*layers)
    net.load_state_dict(reference.state_dict())
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    dm = AnalogDataModule(config.dataset, config.batch_size, config.seed, config.split_seed)
    dm.setup("fit")
    loader = dm.train_dataloader()
    for _ in range(config.epochs):
        for x, y in loader:
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()
    with torch.no_grad():
        return 100.0 * float((net(data.test_x).argmax(1) == data.test_y).float().mean())


def test_digital_module_matches_plain_pytorch_mlp():
    # Tolerance: the plain loop uses the same initial weights, the same batch order, the same optimizer and
    # loss, so the two runs differ only by Lightning's plumbing (metric accumulation, hooks). Any real
    # difference in the training step (a stray analog effect, a wrong loss, a skipped step) moves the test
    # accuracy of this 5-epoch run by several points; one test image is 0.28 pp, so 1 pp allows for
    # floating-point reordering flipping a few borderline images.
    config = TrialConfig(
        dataset="digits",
        hidden=(64,),
        epochs=5,
        batch_size=32,
        digital=True,
        diagnostics=False,
        probe_size=32,
        seed=0,
    )
    rec = run_trial(config)
    plain = _plain_mlp_accuracy(config)
    assert rec["test_acc"] >= 80 and plain >= 80, (rec["test_acc"], plain)
    assert abs(rec["test_acc"] - plain) <= 1.0, (rec["test_acc"], plain)


# ----------------------------------------------------------------------------- policies that block training


def _train_module(config: TrialConfig) -> tuple[dict, AnalogClassifier]:
    """Train as run_trial does, returning the initial parameters and the trained module."""
    quiet_lightning()
    dm = AnalogDataModule(config.dataset, config.batch_size, config.seed, config.split_seed)
    dm.setup("fit")
    seed_all(config.seed)
    module = AnalogClassifier(config, dm.n_features, dm.n_classes)
    before = copy.deepcopy(module.net.state_dict())
    make_trainer(config.epochs, logger=False).fit(
        module,
        train_dataloaders=dm.train_dataloader(),
        val_dataloaders=[dm.val_dataloader(), dm.test_dataloader()],
    )
    return before, module


def _changed(before: dict, module: AnalogClassifier) -> dict[str, bool]:
    return {k: not torch.equal(v, module.net.state_dict()[k]) for k, v in before.items()}


@pytest.mark.parametrize("site", ["weight", "signal"])
def test_zero_policy_blocks_training(tiny, site):
    """`zero` on the weight site stops every weight and bias at its initial value. `zero` on the signal site
    blocks everything too: the network's output passes the last layer's output signal site (normalization
    with the `zero` policy), so no gradient reaches any layer (the positive control of the study)."""
    config = TrialConfig.parse(
        {**tiny, "hidden": [16, 8], "epochs": 2, f"{site}_policy": "zero", "noise": "none"}
    )
    before, module = _train_module(config)
    assert len(module.history) == 2 and not module.diverged
    assert not any(_changed(before, module).values()), _changed(before, module)
    # untrained network: near chance (10 classes -> 10%); a trained one reaches > 40% here (see below)
    assert module.history[-1]["test_acc"] < 30
    assert module.history[-1]["train_loss"] == pytest.approx(module.history[0]["train_loss"], abs=0.05)


def test_ste_policies_train_every_layer(tiny):
    """The control for the test above: with gradients flowing, every parameter moves."""
    config = TrialConfig.parse({**tiny, "hidden": [16, 8], "epochs": 2, "noise": "none", "lr": 0.01})
    before, module = _train_module(config)
    assert all(_changed(before, module).values()), _changed(before, module)
    assert module.history[-1]["test_acc"] > 40


# ------------------------------------------------------------------------------------------- divergence


def test_nan_loss_ends_trial_as_diverged(tiny, monkeypatch):
    import study.training.trial as trial_mod

    class NaNAfterTwoSteps(AnalogClassifier):
        def forward(self, x):
            out = super().forward(x)
            if self.training and self.trainer.global_step >= 2:
                return out * math.nan
            return out

    monkeypatch.setattr(trial_mod, "AnalogClassifier", NaNAfterTwoSteps)
    rec = run_trial({**tiny, "epochs": 3})
    assert rec["diverged"] is True
    assert rec["epochs_run"] < 3
    assert len(rec["history"]) == rec["epochs_run"]


def test_inf_loss_is_divergence_too(tiny, monkeypatch):
    import study.training.trial as trial_mod

    class InfFromStart(AnalogClassifier):
        def forward(self, x):
            out = super().forward(x)
            return out + math.inf if self.training else out

    monkeypatch.setattr(trial_mod, "AnalogClassifier", InfFromStart)
    rec = run_trial({**tiny, "epochs": 2})
    assert rec["diverged"] is True and rec["epochs_run"] < 2


# ------------------------------------------------------------------------------------------- bad configs


@pytest.mark.parametrize(
    ("data", "field", "allowed"),
    [
        ({"bogus": 1}, "bogus", ["dataset", "weight_policy", "seed"]),
        ({"dataset": "cifar10"}, "dataset", ["mnist5k", "digits", "mnist1d", "fashion_mnist"]),
        ({"weight_norm": "l3norm"}, "weight_norm", ["clamp", "l2norm", "none"]),
        ({"signal_norm": "l3norm"}, "signal_norm", ["clamp", "l2norm", "none"]),
        ({"weight_policy": "magic"}, "weight_policy", ["exact", "ste", "zero"]),
        ({"signal_policy": "magic"}, "signal_policy", ["exact", "ste", "zero"]),
        ({"activation": "swish"}, "activation", ["relu", "gelu", "tanh"]),
        ({"precision": 0}, "precision", [">= 1"]),
        ({"noise": "pink"}, "noise", ["gaussian", "uniform", "none"]),
    ],
)
def test_bad_config_names_field_and_allowed_values(data, field, allowed):
    with pytest.raises(ConfigError) as exc:
        TrialConfig.parse(data)
    msg = str(exc.value)
    line = next((ln for ln in msg.splitlines() if ln.strip().startswith(f"{field}:")), None)
    assert line is not None, msg
    bad = next(iter(data.values())) if field != "bogus" else "unknown field"
    assert str(bad) in line
    for a in allowed:
        assert a in line, (a, line)


def test_bad_config_reports_every_error_at_once():
    with pytest.raises(ConfigError) as exc:
        TrialConfig.parse(
            {"dataset": "cifar10", "activation": "swish", "precision": 0, "bogus": 1, "epochs": 0}
        )
    lines = str(exc.value).splitlines()
    for field in ("dataset", "activation", "precision", "bogus", "epochs"):
        assert any(ln.strip().startswith(f"{field}:") for ln in lines), (field, lines)


def test_run_trial_rejects_bad_dict_before_training():
    with pytest.raises(ConfigError, match="dataset"):
        run_trial({"dataset": "cifar10", "epochs": 1})


def test_records_do_not_depend_on_filling_fresh_memory(monkeypatch) -> None:
    """make_trainer turns off deterministic mode's NaN fill of fresh allocations (a speed-up): with the
    fill on, the sequential and the bundled path (noise on, diagnostics on) give the same records."""
    import study.training.bundle as bundle_mod
    import study.training.trial as trial_mod
    from study.training.bundle import run_bundle

    cfg = {"dataset": "digits", "hidden": [16], "epochs": 2, "batch_size": 64, "leakage": 0.3}
    kept = ("history", "diagnostics", "test_acc_draws", "test_acc_noise_off", "weight_saturation")

    def records() -> list[dict]:
        out = [run_trial(cfg), *run_bundle([{**cfg, "seed": s} for s in (0, 1)])]
        return [{k: r[k] for k in kept} for r in out]

    fast = records()
    assert torch.utils.deterministic.fill_uninitialized_memory is False
    real = trial_mod.make_trainer

    def filling(*args, **kwargs):
        trainer = real(*args, **kwargs)
        torch.utils.deterministic.fill_uninitialized_memory = True
        return trainer

    monkeypatch.setattr(trial_mod, "make_trainer", filling)
    monkeypatch.setattr(bundle_mod, "make_trainer", filling)
    try:
        assert json.dumps(records()) == json.dumps(fast)
    finally:
        torch.utils.deterministic.fill_uninitialized_memory = False
