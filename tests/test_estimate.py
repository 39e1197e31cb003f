"""The cost model behind `run --dry-run` (study.sweep.estimate, #16.4)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from study.sweep import estimate as E
from study.training.config import TrialConfig

ROOT = Path(__file__).resolve().parents[1]
MLP = {"dataset": "digits", "hidden": [16], "epochs": 2, "batch_size": 64}


def _config(**change) -> TrialConfig:
    return TrialConfig.parse({**MLP, **change})


def test_work_counts_follow_the_configuration() -> None:
    base = E.trial_features(_config(), 1)
    names = dict(zip(E.FEATURES, range(len(E.FEATURES)), strict=True))
    assert base[names["train_macs"]] == pytest.approx(
        2 * 1257 * (64 * 16 + 16 * 10) * 1e-9
    )  # digits: 1,257 train
    assert base[names["conv_macs"]] == 0
    twice = E.trial_features(_config(epochs=4), 1)
    for f in ("train_macs", "train_values", "weight_values", "steps", "probe_work"):
        assert twice[names[f]] == pytest.approx(2 * base[names[f]])
    bundled = E.trial_features(_config(), 4)
    assert bundled[names["steps"]] == pytest.approx(base[names["steps"]])
    assert bundled[names["fixed"]] == pytest.approx(0.25)
    digital = E.trial_features(_config(digital=True), 1)
    assert digital[names["train_values"]] == 0 and digital[names["probe_work"]] == 0
    assert digital[names["train_macs"]] == base[names["train_macs"]]
    cnn = E.trial_features(_config(arch="cnn", channels=[2, 3], kernel_size=3), 1)
    assert cnn[names["conv_macs"]] > 0
    no_test = E.trial_features(_config(eval_test=False), 1)
    assert no_test[names["eval_work"]] < base[names["eval_work"]]
    assert E.trial_features(_config(dataset="mnist", data_dir="/nonexistent"), 1) is None  # sizes unknown


def test_fit_recovers_planted_coefficients_and_the_estimate_rescales_by_finished_trials() -> None:
    configs = [_config(epochs=e, hidden=[h]) for e in (1, 2, 3) for h in (8, 32, 64)]
    configs += [_config(epochs=2, arch="cnn", channels=[2, 3], kernel_size=3)]
    truth = np.array([50.0, 80.0, 20.0, 5.0, 2.0, 1.0, 3.0, 0.5])
    rows = [(c, b, float(truth @ E.trial_features(c, b))) for c in configs for b in (1, 4)]
    model = E.fit_cost_model({"a": rows[::2], "b": rows[1::2]})
    assert model is not None and model.trials == len(rows) and model.studies == ("a", "b")
    for c, b, wall in rows:
        assert model.seconds(c, b) == pytest.approx(wall, rel=0.02)
    # finished trials measured twice as slow as the model says: the rest is predicted twice as slow
    finished = [(c, b, 2 * model.seconds(c, b)) for c, b, _ in rows[:4]]
    todo = [(c, 1) for c in configs[4:6]]
    out = E.estimate_seconds(todo, model, finished)
    assert out["seconds"] == pytest.approx(2 * sum(model.seconds(c, 1) for c, _ in todo))
    assert "rescaled by 4 finished trials (x2.00)" in out["basis"]
    assert E.estimate_seconds([], model, finished)["basis"] == "nothing left to do"


def test_the_committed_studies_give_a_model_that_predicts_each_of_them_within_a_factor_of_two() -> None:
    model = E.committed_cost_model(ROOT / "results")
    assert model is not None and len(model.studies) >= 7
    for name in model.studies:
        rows = E.committed_rows(ROOT / "results" / name)
        ratio = sum(model.seconds(c, b) for c, b, _ in rows) / sum(w for _, _, w in rows)
        assert 0.4 < ratio < 1.5, name  # two studies ran beside other jobs (README of results/)


def test_auto_bundle_trains_large_networks_one_by_one_and_small_ones_in_bundles() -> None:
    small = _config(hidden=[64, 32])  # digits, 64-64-32-10, batch 64: ~17k values per step
    core = TrialConfig.parse({"dataset": "mnist5k", "hidden": [256, 128]})  # ~200k values per step
    cnn = TrialConfig.parse({"dataset": "mnist5k", "arch": "cnn", "channels": [4, 8], "hidden": [32]})
    assert E.auto_bundle(small) == E.LARGE_BUNDLE
    assert E.auto_bundle(core) == 1 and E.auto_bundle(cnn) == 1
    assert E.auto_bundle(core.model_copy(update={"batch_size": 32})) == E.LARGE_BUNDLE  # 50k per step
    assert E.auto_bundle(core.model_copy(update={"digital": True})) == E.LARGE_BUNDLE


def test_auto_bundles_are_chosen_per_condition(tmp_path) -> None:
    import study.sweep.runner as R
    from study.sweep.spec import expand, parse_spec

    spec = parse_spec(
        {
            "name": "mixed",
            "base": {"epochs": 1, "hidden": [256, 128]},  # digits ~108k values per step, mnist5k ~200k
            "factors": {"dataset": ["digits", "mnist5k"]},
            "seeds": 3,
            "hypotheses": {"metric": "test_acc", "margin": 0.5, "comparisons": []},
        }
    )
    units = R.make_units(spec, expand(spec), R.AUTO)
    sizes = sorted((u.trials[0][2]["dataset"], len(u.trials)) for u in units)
    assert sizes == [("digits", 3), ("mnist5k", 1), ("mnist5k", 1), ("mnist5k", 1)]
    assert R.resolve_bundle("auto", tmp_path) == "auto"
