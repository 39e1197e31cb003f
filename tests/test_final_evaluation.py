"""The final evaluation over noise draws: K independent draws averaged into test_acc_mean, the
noise-off accuracy beside it, no effect on training, the same in bundles, and collected into runs.csv
only where records have it."""

from __future__ import annotations

import math

import pytest
import torch

from study.sweep.hypotheses import Hypotheses
from study.sweep.verify import compare
from study.training.bundle import run_bundle
from study.training.config import ConfigError, TrialConfig
from study.training.data import load_split
from study.training.module import build_network, final_evaluation
from study.training.trial import run_trial


def _cfg(tiny: dict, **kw) -> dict:
    return {**tiny, "epochs": 1, "diagnostics": False, **kw}


def test_record_holds_k_draws_their_mean_and_the_noise_off_accuracy(tiny):
    rec = run_trial(_cfg(tiny, test_draws=4, leakage=0.5))
    draws = rec["test_acc_draws"]
    assert len(draws) == 4 and len(set(draws)) > 1  # independent draws of a noisy network differ
    assert rec["test_acc_mean"] == pytest.approx(sum(draws) / 4, abs=1e-4)
    assert 0 <= rec["test_acc_noise_off"] <= 100
    # the draws leave training alone: the history does not depend on K
    one = run_trial(_cfg(tiny, test_draws=1, leakage=0.5))
    assert one["history"] == rec["history"]
    assert one["test_acc_draws"] == draws[:1]  # draw k is the same whatever K is


def test_draws_are_equal_without_noise_and_equal_the_noise_off_accuracy(tiny):
    rec = run_trial(_cfg(tiny, test_draws=3, noise="none", leakage=None))
    assert rec["test_acc_draws"] == [rec["test_acc_noise_off"]] * 3 == [rec["test_acc"]] * 3


def test_noise_off_accuracy_is_the_accuracy_with_the_noise_switched_off(tiny):
    config = TrialConfig.parse(_cfg(tiny, leakage=0.5))
    data = load_split(config.dataset, config.split_seed)
    torch.manual_seed(0)
    net = build_network(config, data.n_features, data.n_classes)
    quiet = build_network(TrialConfig.parse(_cfg(tiny, noise="none", leakage=None)), data.n_features, 10)
    quiet.load_state_dict(net.state_dict())
    out = final_evaluation(net, config, data.test_x, data.test_y)
    with torch.no_grad():
        expected = float((quiet(data.test_x).argmax(-1) == data.test_y).double().mean()) * 100
    assert out["test_acc_noise_off"] == pytest.approx(expected, abs=1e-3)
    assert final_evaluation(net, config, data.test_x, data.test_y) == out  # seeded: repeatable
    state = torch.random.get_rng_state()
    final_evaluation(net, config, data.test_x, data.test_y)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's stream is untouched


def test_final_evaluation_draws_as_the_committed_records_did_with_stochastic_rounding(tiny):
    """The K draws come from the seeded evaluation stream; the noise-off pass (which still rounds
    stochastically) from the caller's stream as it stands: the committed records were made this way."""
    from analog import set_noise
    from study.training.module import EVAL_SEED_OFFSET, _accuracy

    config = TrialConfig.parse(_cfg(tiny, leakage=0.5, precision_class="stochastic", precision=4, seed=3))
    data = load_split(config.dataset, config.split_seed)
    torch.manual_seed(0)
    net = build_network(config, data.n_features, data.n_classes)
    x, y = data.test_x, data.test_y
    torch.manual_seed(42)
    out = final_evaluation(net, config, x, y)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed + EVAL_SEED_OFFSET)
        draws = [_accuracy(net, x, y) for _ in range(config.test_draws)]
    torch.manual_seed(42)
    set_noise(net, False)
    noise_off = _accuracy(net, x, y)
    set_noise(net, True)
    assert out["test_acc_draws"] == draws and out["test_acc_noise_off"] == noise_off


def test_no_test_evaluation_no_draws(tiny):
    rec = run_trial(_cfg(tiny, eval_test=False))
    assert "test_acc_mean" not in rec and "test_acc_draws" not in rec and math.isnan(rec["test_acc"])


def test_bundle_members_evaluated_as_the_sequential_path_would(tiny):
    configs = [TrialConfig.parse(_cfg(tiny, seed=s, test_draws=2, leakage=0.5)) for s in (3, 4)]
    recs = run_bundle(configs)
    for rec in recs:
        assert len(rec["test_acc_draws"]) == 2
        assert rec["test_acc_mean"] == pytest.approx(sum(rec["test_acc_draws"]) / 2, abs=1e-4)


def test_default_draws_leave_run_ids_of_committed_configurations_unchanged(tiny):
    base = TrialConfig.parse(_cfg(tiny))
    assert base.test_draws == 5 and "test_draws" not in base.canonical()
    other = TrialConfig.parse(_cfg(tiny, test_draws=7))
    assert other.canonical()["test_draws"] == 7 and other.run_id != base.run_id


@pytest.mark.parametrize("bad", [0, -1, 1001, 2.5, "five", float("nan"), None])
def test_bad_test_draws_named(tiny, bad):
    with pytest.raises(ConfigError, match="test_draws"):
        TrialConfig.parse(_cfg(tiny, test_draws=bad))


def test_hypotheses_may_name_the_draw_metrics_and_nothing_unknown():
    ok = {"metric": "test_acc_mean", "comparisons": [{"site": "weight", "a": "exact", "b": "ste"}]}
    assert Hypotheses.model_validate(ok).metric == "test_acc_mean"
    with pytest.raises(ValueError, match="test_acc_mean, test_acc_noise_off"):
        Hypotheses.model_validate({**ok, "metric": "test_acc_men"})


def test_verify_compares_the_draws_only_where_the_old_record_has_them():
    old = {"test_acc": 50.0, "epochs_run": 1, "diverged": False, "history": []}
    new = {**old, "test_acc_mean": 51.0, "test_acc_noise_off": 52.0, "test_acc_draws": [51.0]}
    assert compare(old, new) == []
    assert compare({**new, "test_acc_mean": 50.5}, new) == ["test_acc_mean"]


def test_collect_writes_draw_columns_only_when_records_have_them():
    from study.sweep.collect import recorded_metrics
    from study.tables import ALL_METRICS, METRICS

    old = {"test_acc": 50.0}
    assert recorded_metrics([old, None]) == METRICS  # committed studies collect as they did
    assert recorded_metrics([old, {"test_acc_mean": 1.0, "test_acc_noise_off": 2.0}]) == ALL_METRICS
