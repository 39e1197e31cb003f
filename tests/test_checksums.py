"""Identical means bit-identical: every record holds sha256 checksums of the final parameters and of every
final test logit, and the verdict `identical` needs equal checksums; studies recorded before them say
"equal in every recorded metric"."""

from __future__ import annotations

from pathlib import Path

import torch

from study.analysis.publish import stats_stage
from study.training.module import build_network, params_checksum
from study.training.trial import run_trial
from tests.test_stats import make_runs, make_spec, read, write_study


def test_records_hold_checksums_equal_for_equal_runs_and_differing_otherwise(tiny):
    a = run_trial({**tiny, "leakage": 0.5})
    b = run_trial({**tiny, "leakage": 0.5})
    c = run_trial({**tiny, "leakage": 0.5, "seed": 1})
    for rec in (a, b, c):
        assert len(rec["params_sha256"]) == 64 and len(rec["logits_sha256"]) == 64
    assert (a["params_sha256"], a["logits_sha256"]) == (b["params_sha256"], b["logits_sha256"])
    assert a["params_sha256"] != c["params_sha256"] and a["logits_sha256"] != c["logits_sha256"]
    selection = run_trial({**tiny, "leakage": 0.5, "eval_test": False})  # never sees the test split
    assert selection["params_sha256"] == a["params_sha256"] and "logits_sha256" not in selection


def test_params_checksum_sees_a_single_bit():
    from study.training.config import TrialConfig

    net = build_network(TrialConfig.parse({"dataset": "digits", "hidden": [8]}), 64, 10)
    before = params_checksum(net)
    with torch.no_grad():
        w = next(net.parameters())
        w.view(-1)[0] = torch.nextafter(w.view(-1)[0], torch.tensor(float("inf")))
    assert params_checksum(net) != before


def _equal_metric_runs() -> tuple:
    """Weight `ste` runs whose every metric equals the weight `exact` runs of the same cell and seed."""
    runs = make_runs()
    metrics = [c for c in ("test_acc", "test_loss", "val_acc", "val_loss") if c in runs]
    key = ["dataset", "signal_policy", "seed"]
    exact = runs[runs["weight_policy"] == "exact"].set_index(key)[metrics]
    ste = runs["weight_policy"] == "ste"
    runs.loc[ste, metrics] = exact.loc[list(zip(*(runs.loc[ste, k] for k in key), strict=True))].to_numpy()
    runs["params_sha256"] = [f"{i:064x}" for i in range(len(runs))]
    runs["logits_sha256"] = runs["params_sha256"]
    return runs, ste, key


def _weight_rows(out: Path):
    comp = read(out, "comparisons.csv")
    return comp[(comp["comparison"] == "weight: exact vs ste") & (comp["signal_policy"] == "exact")]


def test_equal_metrics_with_different_checksums_are_tested_not_identical(tmp_path: Path):
    runs, _, _ = _equal_metric_runs()
    rows = _weight_rows(stats_stage(write_study(tmp_path / "core", runs, make_spec())))
    assert len(rows) and (rows["verdict"] != "identical").all()


def test_equal_checksums_are_identical_and_say_so(tmp_path: Path):
    runs, ste, key = _equal_metric_runs()
    exact = runs[runs["weight_policy"] == "exact"].set_index(key)["params_sha256"]
    keys = list(zip(*(runs.loc[ste, k] for k in key), strict=True))
    runs.loc[ste, "params_sha256"] = exact.loc[keys].to_numpy()
    runs["logits_sha256"] = runs["params_sha256"]
    out = stats_stage(write_study(tmp_path / "core", runs, make_spec()))
    rows = _weight_rows(out)
    assert (rows["verdict"] == "identical").all() and (rows["ci_method"] == "identical (checksums)").all()
    report = (out.parent / "report.md").read_text() if (out.parent / "report.md").exists() else ""
    assert "recorded metric" not in report


def test_without_checksums_identical_rests_on_the_recorded_metrics(tmp_path: Path):
    runs, _, _ = _equal_metric_runs()
    runs = runs.drop(columns=["params_sha256", "logits_sha256"])
    rows = _weight_rows(stats_stage(write_study(tmp_path / "core", runs, make_spec())))
    assert (rows["verdict"] == "identical").all()
    assert (rows["ci_method"] == "identical (recorded metrics)").all()
