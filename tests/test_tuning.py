"""Per-cell learning-rate selection (spec `tune_lr`, study.tuning): validated spec, selection on
validation data of separate seeds only, evaluation at the shared and at each cell's own lr."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import TINY, write_spec

import study.sweep.runner as R
from study.cli import main
from study.sweep.collect import collect
from study.sweep.spec import expand, load_spec, parse_spec
from study.sweep.tuning import choose_lrs, selection_table, selection_trials, study_trials, tuned_trials
from study.training.config import ConfigError

GRID = [0.001, 0.05]


def _spec(**over: Any) -> dict[str, Any]:
    spec = {
        "name": "tuned",
        "base": {**TINY, "noise": "none"},
        "factors": {"weight_policy": ["ste", "exact"]},
        "seeds": [0, 1],
        "tune_lr": {"grid": GRID, "selection_seeds": [100, 101]},
    }
    spec.update(over)
    return spec


@pytest.mark.parametrize(
    ("over", "needle"),
    [
        ({"tune_lr": {"grid": GRID, "selection_seeds": [1, 100]}}, r"tune_lr.selection_seeds: \[1\] are"),
        ({"seeds": 3, "tune_lr": {"grid": GRID, "selection_seeds": [2]}}, r"\[2\] are evaluation seeds"),
        ({"tune_lr": {"grid": [0.001], "selection_seeds": [9]}}, "tune_lr.grid: List should have at least 2"),
        ({"tune_lr": {"grid": [0.001, 0.001], "selection_seeds": [9]}}, "must be distinct"),
        ({"tune_lr": {"grid": [0.001, -1], "selection_seeds": [9]}}, "finite and > 0"),
        ({"tune_lr": {"grid": [0.001, float("inf")], "selection_seeds": [9]}}, "tune_lr.grid"),
        ({"tune_lr": {"grid": GRID, "selection_seeds": []}}, "tune_lr.selection_seeds: List should have"),
        ({"tune_lr": {"grid": GRID, "selection_seeds": [9, 9]}}, "selection seeds must be distinct"),
        ({"tune_lr": {"grid": GRID, "selection_seeds": [9], "metric": "test_acc"}}, "tune_lr.metric"),
        ({"tune_lr": {"grid": GRID, "selection_seeds": [9], "seeds": [1]}}, "tune_lr.seeds: unknown field"),
        ({"factors": {"weight_policy": ["ste"], "lr": [0.1, 0.01]}}, "factors.lr: not a factor when tune_lr"),
        ({"base": {**TINY, "eval_test": True}}, "base.eval_test: set by tune_lr"),
    ],
)
def test_bad_tune_lr_is_refused(over: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        parse_spec(_spec(**over))


def test_spec_without_tune_lr_keeps_its_hash() -> None:
    core = load_spec("core")
    committed = pd.read_csv(Path(__file__).parent.parent / "results" / "core" / "runs.csv", nrows=1)
    assert core.hash() == committed["spec_hash"].iloc[0]
    assert "tune_lr" not in R.spec_to_yaml(core)
    assert parse_spec(_spec()).hash() != parse_spec({**_spec(), "tune_lr": None}).hash()


def test_selection_trials_never_evaluate_test_and_use_only_selection_seeds() -> None:
    spec = parse_spec(_spec())
    sel = selection_trials(spec)
    assert len(sel) == 2 * len(GRID) * 2
    assert all(t.config.eval_test is False for t in sel)
    assert {t.config.seed for t in sel} == {100, 101} and {t.config.lr for t in sel} == set(GRID)
    assert all(t.config.eval_test for t in expand(spec))
    assert not {t.run_id for t in sel} & {t.run_id for t in expand(spec)}


def _rows(spec: Any, val: dict[tuple[str, float], list[float]]) -> list[dict[str, Any]]:
    rows = []
    for t in selection_trials(spec):
        i = spec.tune_lr.selection_seeds.index(t.config.seed)
        v = val[t.factors["weight_policy"], t.config.lr][i]
        rows.append({**t.factors, "seed": t.config.seed, "status": "done", "val_acc": v, "best_val_acc": v})
    return rows


def test_choice_is_the_best_mean_validation_metric() -> None:
    spec = parse_spec(_spec())
    val = {
        ("ste", 0.001): [50, 60],
        ("ste", 0.05): [70, 80],
        ("exact", 0.001): [90, 90],
        ("exact", 0.05): [float("nan"), 99],  # a diverged selection trial counts as the worst
    }
    chosen = {c["cell"]["weight_policy"]: c["chosen"] for c in choose_lrs(spec, _rows(spec, val)).values()}
    assert chosen == {"ste": 0.05, "exact": 0.001}
    tie = {k: [50, 50] for k in val}
    assert {c["chosen"] for c in choose_lrs(spec, _rows(spec, tie)).values()} == {GRID[0]}  # grid order
    rows = _rows(spec, val)
    rows[0]["status"] = "failed"
    pending = choose_lrs(spec, rows)
    assert [c["chosen"] for c in pending.values()] == [None, 0.001]  # incomplete selection: no choice


@pytest.mark.slow
def test_tuned_study_end_to_end_and_selection_never_sees_test_data(tmp_path: Path) -> None:
    spec_path = write_spec(tmp_path / "tuned.yaml", _spec())
    out = tmp_path / "out"
    argv = ["run", str(spec_path), "--out", str(out), "--workers", "1", "--bundle", "2", "--quiet"]
    assert main(argv) == 0
    sdir = out / "tuned"
    spec = load_spec(spec_path)
    trials = study_trials(spec, sdir)
    assert all(R.status(sdir, t.run_id) == "done" for t in trials)  # the second pass ran the own-lr trials
    tuned = tuned_trials(spec, sdir)
    assert len(tuned) == 4
    for t in selection_trials(spec):
        rec = json.loads((R.trial_dir(sdir, t.run_id) / R.RECORD).read_text())
        assert math.isnan(rec["test_acc"]) and all(math.isnan(h["test_acc"]) for h in rec["history"])
    collect(sdir)
    runs = pd.read_csv(sdir / "runs.csv")
    assert len(runs) == 4 and set(runs["run_id"]) == {t.run_id for t in expand(spec)}
    assert {"weight_saturation", "weight_saturation_max"} <= set(runs.columns)
    sel = pd.read_csv(sdir / "lr_selection.csv")
    assert len(sel) == 8 and not [c for c in sel.columns if c.startswith("test")]
    choice = pd.read_csv(sdir / "lr_choice.csv")
    assert len(choice) == 4 and choice.groupby("weight_policy")["chosen"].sum().tolist() == [1, 1]
    own = pd.read_csv(sdir / "runs_tuned.csv")
    assert list(own.columns[:-1]) == list(runs.columns) and len(own) == 4
    picked = choice[choice["chosen"]].set_index("weight_policy")["lr"]
    assert all(own["lr"] == own["weight_policy"].map(picked))
    curves = pd.read_csv(sdir / "curves.csv.gz")
    assert "weight_saturation" in set(curves["metric"])
    # the statistics compare the cells at their own lrs too (stats_tuned/), in the report and macros
    from study.analysis.publish import stats_stage

    stats_stage(sdir)
    tuned_comp = pd.read_csv(sdir / "stats_tuned" / "comparisons.csv")
    assert set(tuned_comp["comparison"]) == {"weight: exact vs ste"} and tuned_comp["n_pairs"].iloc[0] == 2
    assert "## At each policy's own learning rate" in (sdir / "stats" / "report.md").read_text()
    assert r"\newcommand{\TunedTunedRowWeight" in (sdir / "stats" / "latex" / "macros.tex").read_text()

    # the choice reads validation metrics only: rewriting the selection records' test metrics changes
    # nothing; rewriting their validation accuracy does
    before = {k: c["chosen"] for k, c in choose_lrs(spec, selection_table(spec, sdir)).items()}
    loser = {k: next(lr for lr in GRID if lr != c) for k, c in before.items()}
    for t in selection_trials(spec):
        path = R.trial_dir(sdir, t.run_id) / R.RECORD
        rec = json.loads(path.read_text())
        rec["test_acc"] = 100.0 if t.config.lr != before[next(iter(before))] else 0.0
        path.write_text(json.dumps(rec))
    assert {k: c["chosen"] for k, c in choose_lrs(spec, selection_table(spec, sdir)).items()} == before
    for t in selection_trials(spec):
        path = R.trial_dir(sdir, t.run_id) / R.RECORD
        rec = json.loads(path.read_text())
        key = next(k for k in before if json.loads(k)["weight_policy"] == t.factors["weight_policy"])
        rec["val_acc"] = 100.0 if t.config.lr == loser[key] else 0.0
        path.write_text(json.dumps(rec))
    assert {k: c["chosen"] for k, c in choose_lrs(spec, selection_table(spec, sdir)).items()} == loser


def test_factor_value_valid_only_with_another_factor() -> None:
    spec = {
        "name": "sgd",
        "base": dict(TINY),
        "factors": {"optimizer": ["adam", "sgd"], "momentum": [0.0, 0.9]},
        "exclude": [{"optimizer": "adam", "momentum": 0.9}],
        "seeds": 1,
    }
    trials = expand(parse_spec(spec))
    assert {(t.config.optimizer, t.config.momentum) for t in trials} == {
        ("adam", 0.0),
        ("sgd", 0.0),
        ("sgd", 0.9),
    }
    with pytest.raises(ConfigError, match="momentum: applies to optimizer 'sgd' only"):
        parse_spec({**spec, "exclude": []})  # the cell adam + 0.9 is in the grid: refused
    with pytest.raises(ConfigError, match="factors.momentum: bad value 0.9"):
        parse_spec({**spec, "factors": {"momentum": [0.0, 0.9]}, "exclude": []})  # valid in no cell
