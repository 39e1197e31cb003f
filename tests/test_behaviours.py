"""Behaviours that decide the study's numbers, each checked against a value computed independently here:
the best-validation epoch of a record, evaluation without noise, the run summary over resumed runs, the
gradient-norm ratio of the diagnostics, and the statistics stage's duplicate trials, multiplicity
corrections and families, and seeds absent from every run."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import TINY

import analog
import study.training.bundle as bundle_mod
import study.training.trial as trial_mod
from study.analysis import stats as S
from study.analysis.publish import stats_stage
from study.sweep.runner import write_run_summary
from study.sweep.spec import stored_spec_hash
from study.training.bundle import BundleClassifier, run_bundle
from study.training.config import TrialConfig
from study.training.data import load_split
from study.training.module import AnalogClassifier
from study.training.trial import run_trial, summarize

# ------------------------------------------------------------------------------ record: best epoch


def _row(epoch: int, val_acc: float, test_acc: float) -> dict[str, Any]:
    return {
        "epoch": epoch,
        "val_acc": val_acc,
        "test_acc": test_acc,
        "val_loss": 1.0 / epoch,
        "test_loss": 2.0 / epoch,
        "train_acc": 50.0 + epoch,
        "train_loss": 3.0 / epoch,
    }


def test_summary_best_epoch_is_the_first_highest_validation_accuracy():
    # validation peaks at epoch 2 and again (tied) at epoch 4; the last epoch is not the best
    history = [
        _row(1, 50.0, 40.0),
        _row(2, 70.0, 65.0),
        _row(3, 60.0, 66.0),
        _row(4, 70.0, 67.0),
        _row(5, 55, 68),
    ]
    rec = summarize(TrialConfig.parse(TINY), history, [], None, 1.5)
    assert (rec["best_val_acc"], rec["best_epoch"], rec["test_acc_at_best_val"]) == (70.0, 2, 65.0)
    assert (rec["test_acc"], rec["val_acc"], rec["train_loss"]) == (68, 55, 3.0 / 5)
    assert rec["epochs_run"] == 5 and rec["wall_time_s"] == 1.5 and rec["diverged"] is False


def test_summary_best_epoch_when_the_first_epoch_is_best_and_without_history():
    history = [_row(1, 90.0, 88.0), _row(2, 80.0, 89.0)]
    rec = summarize(TrialConfig.parse(TINY), history, [], {"epoch": 2, "step": 7}, 0.0)
    assert (rec["best_val_acc"], rec["best_epoch"], rec["test_acc_at_best_val"]) == (90.0, 1, 88.0)
    assert rec["diverged"] is True
    empty = summarize(TrialConfig.parse(TINY), [], [], {"epoch": 1, "step": 0}, 0.0)
    assert empty["best_epoch"] is None and math.isnan(empty["best_val_acc"]) and empty["epochs_run"] == 0


# ------------------------------------------------------------------------------ run summary


def test_run_summary_sums_wall_time_over_every_resumed_run(tmp_path: Path):
    runs = [
        {"study": "s", "done": 3, "failed": 1, "todo": 5, "wall_time_s": 10.25},
        {"study": "s", "done": 7, "failed": 0, "todo": 1, "wall_time_s": 20.5},
        {"study": "s", "done": 8, "failed": 0, "todo": 0, "wall_time_s": 5.0},
    ]
    lines = [json.dumps(r) for r in runs]
    (tmp_path / "run_log.jsonl").write_text(lines[0] + "\n\n" + "\n".join(lines[1:]) + "\n")
    path = write_run_summary(tmp_path)
    summary = json.loads(path.read_text())
    assert summary["wall_time_s_all_runs"] == 35.8  # 10.25 + 20.5 + 5.0, to 0.1 s
    assert summary["runs"] == 3
    assert (summary["done"], summary["todo"], summary["wall_time_s"]) == (8, 0, 5.0)  # the latest run


# ------------------------------------------------------------------------------ diagnostics


def test_gradient_mismatch_norm_ratio_and_cosine_against_hand_computed_gradients():
    torch.manual_seed(0)
    config = analog.AnalogConfig(precision=16, leakage=0.5)
    model = analog.build_classifier(12, 4, (10,), "tanh", config)
    with torch.no_grad():  # saturate the weight clamp so that the policies' gradients differ
        for layer in analog.analog_layers(model):
            layer.weight.mul_(4)
    x = torch.rand(16, 12, generator=torch.Generator().manual_seed(1)) * 3
    y = torch.arange(16) % 4

    def grads(weight_policy: str, signal_policy: str) -> list[torch.Tensor]:
        analog.set_policies(model, weight_policy, signal_policy)
        model.zero_grad()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(7)
            F.cross_entropy(model(x), y).backward()
        return [
            torch.cat([lay.weight.grad.reshape(-1), lay.bias.grad]) for lay in analog.analog_layers(model)
        ]

    g_ste, g_exact = grads("ste", "ste"), grads("exact", "exact")
    analog.set_policies(model, "ste", "exact")
    got = analog.gradient_mismatch(model, x, y, ("ste", "ste"), ("exact", "exact"), seed=7)
    for m, a, b in zip(got, g_ste, g_exact, strict=True):
        na, nb = float(a.norm()), float(b.norm())
        assert abs(na / nb - 1) > 0.05  # the two policies really differ here
        assert m.norm_ratio == pytest.approx(na / nb, rel=1e-5)
        assert m.cosine == pytest.approx(float(a @ b) / (na * nb), rel=1e-5)
    reverse = analog.gradient_mismatch(model, x, y, ("exact", "exact"), ("ste", "ste"), seed=7)
    for m, r in zip(got, reverse, strict=True):
        assert m.norm_ratio * r.norm_ratio == pytest.approx(1.0, rel=1e-5)


# ------------------------------------------------------------------------------ evaluation noise

NOISY_EVAL = {**TINY, "leakage": 0.9, "seed": 3}


def _val_losses(net: torch.nn.Module, config: TrialConfig) -> tuple[float, float]:
    """(validation loss without noise, with noise) of `net`, computed here over the whole split."""
    data = load_split(config.dataset, config.split_seed, data_dir=config.data_dir, n_samples=config.n_samples)
    with torch.no_grad():
        analog.set_noise(net, False)
        quiet = float(F.cross_entropy(net(data.val_x), data.val_y))
        analog.set_noise(net, True)
        torch.manual_seed(0)
        noisy = float(F.cross_entropy(net(data.val_x), data.val_y))
    return quiet, noisy


class _Keep(AnalogClassifier):
    last: AnalogClassifier | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _Keep.last = self


class _KeepBundle(BundleClassifier):
    last: BundleClassifier | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _KeepBundle.last = self


def test_noise_at_eval_false_evaluates_without_noise_and_training_keeps_it(monkeypatch):
    monkeypatch.setattr(trial_mod, "AnalogClassifier", _Keep)
    config = TrialConfig.parse({**NOISY_EVAL, "noise_at_eval": False})
    rec = run_trial(config)
    net = _Keep.last.net
    assert all(layer.noise_enabled for layer in analog.analog_layers(net))  # back on after validation
    quiet, noisy = _val_losses(net, config)
    assert abs(noisy - quiet) > 1e-3  # the noise matters for this network
    assert rec["history"][-1]["val_loss"] == pytest.approx(quiet, rel=1e-5)


def test_noise_at_eval_true_evaluates_with_noise(monkeypatch):
    monkeypatch.setattr(trial_mod, "AnalogClassifier", _Keep)
    config = TrialConfig.parse({**NOISY_EVAL, "noise_at_eval": True})
    rec = run_trial(config)
    quiet, _ = _val_losses(_Keep.last.net, config)
    assert abs(rec["history"][-1]["val_loss"] - quiet) > 1e-3


def test_bundle_noise_at_eval_false_evaluates_without_noise(monkeypatch):
    monkeypatch.setattr(bundle_mod, "BundleClassifier", _KeepBundle)
    configs = [TrialConfig.parse({**NOISY_EVAL, "noise_at_eval": False, "seed": s}) for s in (3, 4)]
    records = run_bundle(configs)
    module = _KeepBundle.last
    assert all(layer.noise_enabled for layer in analog.analog_layers(module.base))
    for k, (config, rec) in enumerate(zip(configs, records, strict=True)):
        net = analog.build_classifier(
            64, 10, config.hidden, config.activation, config.analog_config(), False, config.final_activation
        )
        net.load_state_dict(module.member_state(k))
        quiet, noisy = _val_losses(net, config)
        assert abs(noisy - quiet) > 1e-3
        assert rec["history"][-1]["val_loss"] == pytest.approx(quiet, rel=1e-5)


# ------------------------------------------------------------------------------ statistics stage

POLICIES = ("exact", "ste", "zero")


def _runs(seeds: list[int], datasets: tuple[str, ...] = ("A", "B"), rng_seed: int = 2) -> pd.DataFrame:
    rng = np.random.default_rng(rng_seed)
    rows = []
    for dataset, wp, sp, seed in itertools.product(datasets, POLICIES, POLICIES, seeds):
        acc = 80 + (1.0 if sp == "exact" else 0.0) - (8.0 if "zero" in (wp, sp) else 0.0) + rng.normal(0, 1)
        rows.append(
            {
                "run_id": f"r{len(rows):05d}",
                "dataset": dataset,
                "weight_policy": wp,
                "signal_policy": sp,
                "seed": seed,
                "test_acc": acc,
                "diverged": False,
                "failed": False,
            }
        )
    return pd.DataFrame(rows)


def _spec(seeds: list[int], **hypotheses: Any) -> dict[str, Any]:
    return {
        "name": "syn",
        "factors": {"dataset": ["A", "B"], "weight_policy": list(POLICIES), "signal_policy": list(POLICIES)},
        "seeds": seeds,
        "hypotheses": {"margin": 0.5, "bootstrap_resamples": 200} | hypotheses,
    }


def _write(path: Path, runs: pd.DataFrame, spec: dict[str, Any]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    runs.assign(spec_hash=stored_spec_hash(spec)).to_csv(path / "runs.csv", index=False)  # run under it
    return stats_stage(path)


def _read(out: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(out / name, keep_default_na=False, na_values=[""])


def test_duplicate_trials_keep_the_first_usable_one_by_run_id(tmp_path: Path):
    seeds = list(range(4))
    runs = _runs(seeds)
    cell = (runs["dataset"] == "A") & (runs["weight_policy"] == "ste") & (runs["seed"] == 1)
    exact, ste = cell & (runs["signal_policy"] == "exact"), cell & (runs["signal_policy"] == "ste")
    first_exact, first_ste = (
        float(runs.loc[exact, "test_acc"].item()),
        float(runs.loc[ste, "test_acc"].item()),
    )
    # one trial listed twice (one run_id, e.g. two preset names of one policy pair); a failed copy is listed
    # first but must not displace the usable one. (Two *different* run_ids on one row are refused.)
    dup_ste_failed = runs[ste].assign(test_acc=np.nan, failed=True)
    with pytest.raises(ValueError, match="different configurations"):
        S.trial_table(
            pd.concat([runs, runs[exact].assign(run_id="zz-other")]), _spec(seeds), S.load_hypotheses({})
        )
    runs = pd.concat([dup_ste_failed, runs, runs[exact]], ignore_index=True)

    hyp = S.load_hypotheses(_spec(seeds))
    table = S.trial_table(runs, _spec(seeds), hyp)
    key = (table["dataset"] == "A") & (table["weight_policy"] == "ste") & (table["seed"] == 1)
    kept = table[key].set_index("signal_policy")
    assert len(table) == 2 * 9 * len(seeds)
    assert kept.at["exact", "value"] == first_exact
    assert kept.at["ste", "value"] == first_ste  # a failed duplicate does not displace a usable one

    diffs = _read(_write(tmp_path / "dup", runs, _spec(seeds)), "differences.csv")
    row = diffs[
        (diffs["comparison"] == "signal: exact vs ste")
        & (diffs["dataset"] == "A")
        & (diffs["weight_policy"] == "ste")
        & (diffs["seed"] == 1)
    ]
    assert row["value_a"].item() == pytest.approx(first_exact, rel=1e-6)
    assert row["value_b"].item() == pytest.approx(first_ste, rel=1e-6)


def _hand_adjust(p: np.ndarray, method: str) -> np.ndarray:
    """Textbook step-down Holm, Bonferroni, Benjamini-Hochberg step-up, or none (no library)."""
    m = len(p)
    order = np.argsort(p, kind="stable")
    out = np.empty(m)
    if method == "none":
        return p.copy()
    if method == "bonferroni":
        return np.minimum(1.0, p * m)
    if method == "holm":
        running = 0.0
        for rank, i in enumerate(order):
            running = max(running, min(1.0, (m - rank) * p[i]))
            out[i] = running
        return out
    if method == "fdr_bh":
        running = 1.0
        for rank in range(m - 1, -1, -1):
            i = order[rank]
            running = min(running, p[i] * m / (rank + 1))
            out[i] = running
        return out
    raise ValueError(method)


@pytest.fixture(scope="module")
def family_study() -> dict[tuple[str, str], pd.DataFrame]:
    """The comparison rows the statistics stage computes (`compare`, what compute_stats writes to
    comparisons.csv) for one synthetic study under each family x correction of interest, read from a spec."""
    seeds = list(range(6))
    runs = _runs(seeds)
    out = {}
    for family, correction in [
        ("role", "holm"),
        ("per_comparison", "bonferroni"),
        ("all", "fdr_bh"),
        ("all", "none"),
    ]:
        spec = yaml.safe_load(yaml.safe_dump(_spec(seeds, family=family, correction=correction)))
        hyp = S.load_hypotheses(spec)
        out[family, correction] = S.compare(S.trial_table(runs, spec, hyp), spec, hyp)[0]
    return out


@pytest.mark.parametrize(
    ("family", "correction"),
    [("role", "holm"), ("per_comparison", "bonferroni"), ("all", "fdr_bh"), ("all", "none")],
)
def test_spec_family_and_correction_adjust_p_values_as_textbook(family_study, family, correction):
    comp = family_study[family, correction]
    group = {"role": "role", "per_comparison": "comparison", "all": None}[family]
    expected_families = {"role": set(comp["role"]), "per_comparison": set(comp["comparison"]), "all": {"all"}}
    assert set(comp["family"]) == expected_families[family]
    groups = [comp] if group is None else [g for _, g in comp.groupby(group)]
    assert len(groups) == {"role": 2, "per_comparison": 4, "all": 1}[family]
    for g in groups:
        p = g["p_primary"].to_numpy(float)
        assert g["p_adjusted"].to_numpy(float) == pytest.approx(_hand_adjust(p, correction), rel=1e-9)
    adjusted = comp.set_index(["comparison", "dataset", "weight_policy", "signal_policy"])["p_adjusted"]
    none = family_study["all", "none"].set_index(adjusted.index.names)["p_adjusted"]
    if correction != "none":
        assert (adjusted >= none.loc[adjusted.index] - 1e-12).all() and (
            adjusted > none.loc[adjusted.index]
        ).any()


def test_seed_listed_in_the_spec_but_absent_from_every_run_is_reported_missing(tmp_path: Path):
    ran, listed = list(range(5)), list(range(5)) + [9]
    never = _runs([9]).assign(status="missing", test_acc=np.nan)  # collect's rows for trials that never ran
    out = _write(tmp_path / "gap", pd.concat([_runs(ran), never], ignore_index=True), _spec(listed))
    comp, missing = _read(out, "comparisons.csv"), _read(out, "missing.csv")
    assert set(comp["n_pairs"]) == {5}  # the absent seed is not paired with anything
    # every comparison row (4 comparisons x 2 datasets x 3 other-site policies) misses seed 9, both absent
    assert len(missing) == len(comp) == 24
    assert set(missing["seed"]) == {9}
    assert set(missing["policy_a_status"]) == set(missing["policy_b_status"]) == {"absent"}
    assert set(_read(out, "differences.csv")["seed"]) == set(ran)
