"""The trainability screen (spec `screen`, study.sweep.screen): screen trials on their own seeds, never on
the test split; screen.csv with the reference arm's and the digital twin's accuracy; the primary
statistics over the conditions that pass, the sensitivity analysis (stats_all/) over all."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import TINY, write_spec

import study.sweep.runner as R
from study.analysis.publish import stats_stage
from study.cli import main
from study.sweep.collect import collect
from study.sweep.screening import screen_trials
from study.sweep.spec import load_spec, parse_spec
from study.training.config import ConfigError

SCREEN = {"seeds": [50], "chance": 10, "min_above_chance": 15, "arm": {"signal_policy": "exact"}}


def _spec(**over: Any) -> dict[str, Any]:
    spec = {
        "name": "screened",
        "base": {**TINY, "noise": "none", "epochs": 2, "hidden": [32]},
        "factors": {"lr": [0.01, 1e-7], "signal_policy": ["exact", "ste"]},
        "seeds": [0, 1],
        "screen": dict(SCREEN),
        "hypotheses": {"comparisons": [{"site": "signal", "a": "exact", "b": "ste"}]},
    }
    spec.update(over)
    return spec


@pytest.mark.parametrize(
    ("screen", "needle"),
    [
        ({**SCREEN, "seeds": [1]}, r"screen.seeds: \[1\] are evaluation seeds"),
        ({**SCREEN, "seeds": []}, "screen.seeds: List should have at least 1"),
        ({**SCREEN, "seeds": [7, 7]}, "screen seeds must be distinct"),
        ({**SCREEN, "chance": float("nan")}, "screen.chance"),
        ({**SCREEN, "min_above_chance": 0}, "screen.min_above_chance"),
        ({**SCREEN, "min_above_chance": float("inf")}, "screen.min_above_chance"),
        ({**SCREEN, "metric": "test_acc"}, "screen.metric"),
        ({**SCREEN, "arm": {"signal_policy": "stee"}}, r"screen.arm.signal_policy: 'stee' is not one"),
        ({**SCREEN, "arm": {"policy": "ste"}}, "screen.arm: policy fields"),
        ({**SCREEN, "treshold": 3}, "screen.treshold: unknown field"),
        ({**SCREEN, "arm": {"weight_policy": "exact"}}, "screen.arm: no cell of the study runs"),
        ({"seeds": [50], "min_above_chance": 15}, "screen.chance: Field required"),
    ],
)
def test_bad_screen_is_refused(screen: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        parse_spec(_spec(screen=screen))


def test_spec_without_screen_keeps_its_hash() -> None:
    core = load_spec("core")
    assert "screen" not in core.dump() and core.hash() == parse_spec(core.dump()).hash()


def test_screen_decides_the_primary_analysis_and_the_sensitivity_keeps_all(tmp_path: Path) -> None:
    spec_path = write_spec(tmp_path / "screened.yaml", _spec())
    out = tmp_path / "out"
    argv = ["run", str(spec_path), "--out", str(out), "--workers", "1", "--bundle", "2", "--quiet"]
    assert main(argv) == 0
    sdir = out / "screened"
    spec = load_spec(spec_path)
    screen = screen_trials(spec)
    assert len(screen) == 4  # 2 conditions x (reference arm + digital twin) x 1 seed
    for t in screen:
        rec = json.loads((R.trial_dir(sdir, t.run_id) / R.RECORD).read_text())
        assert rec["config"]["seed"] == 50 and math.isnan(rec["test_acc"])  # never the test split
    assert (
        sum(
            json.loads((R.trial_dir(sdir, t.run_id) / R.RECORD).read_text())["config"].get("digital", False)
            for t in screen
        )
        == 2
    )
    collect(sdir)
    table = pd.read_csv(sdir / "screen.csv")
    assert len(table) == 2 and table["threshold"].tolist() == [25.0, 25.0]
    passed = table.set_index("lr")["passed"].to_dict()
    assert passed == {0.01: True, 1e-7: False}, table
    assert table["digital_val_acc"].notna().all()
    runs = pd.read_csv(sdir / "runs.csv")
    assert len(runs) == 8  # every condition's evaluation trials ran (screen trials are not rows)
    stats_stage(sdir)
    primary = pd.read_csv(sdir / "stats" / "comparisons.csv")
    everything = pd.read_csv(sdir / "stats_all" / "comparisons.csv")
    assert primary["lr"].tolist() == [0.01] and sorted(everything["lr"].tolist()) == [1e-7, 0.01]


def _arm_spec(**over: Any) -> dict[str, Any]:
    cells = [{"lr": 0.01, "signal_policy": "exact"}, {"lr": 0.02, "signal_policy": "ste"}]
    spec = {
        "name": "arms",
        "base": {**TINY, "noise": "none"},
        "factors": {"lr": [0.01, 0.02], "signal_policy": ["exact", "ste"]},
        "exclude": [{"lr": [0.01, 0.02]}],
        "include": cells,
        "arm_factors": ["lr"],
        "seeds": [0, 1],
    }
    spec.update(over)
    return spec


def test_arm_factors_pair_arms_at_their_own_learning_rates(tmp_path: Path) -> None:
    from study.tables import condition_columns

    spec = parse_spec(_arm_spec())
    assert condition_columns(spec.dump()) == [] and spec.dump()["arm_factors"] == ["lr"]
    assert "arm_factors" not in load_spec("core").dump()  # absent: older specs keep their hashes
    spec_path = write_spec(tmp_path / "arms.yaml", _arm_spec())
    out = tmp_path / "out"
    assert main(["run", str(spec_path), "--out", str(out), "--workers", "1", "--quiet"]) == 0
    collect(out / "arms")
    stats_stage(out / "arms")
    comp = pd.read_csv(out / "arms" / "stats" / "comparisons.csv")
    row = comp[comp["comparison"] == "signal: exact vs ste"]
    assert len(row) == 1 and row["n_pairs"].iloc[0] == 2  # exact at lr 0.01 paired with ste at lr 0.02


@pytest.mark.parametrize(
    ("arm", "needle"),
    [
        (["lrr"], "arm_factors: 'lrr' is not a condition factor"),
        (["signal_policy"], "arm_factors: 'signal_policy' is not a condition factor"),
        (["lr", "lr"], "arm_factors: listed twice"),
        ("lr", "arm_factors: Input should be a valid list"),
    ],
)
def test_bad_arm_factors_are_refused(arm: Any, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        parse_spec(_arm_spec(arm_factors=arm))


def test_screened_runs_match_conditions_whose_values_are_none(tmp_path: Path) -> None:
    """A factor value `None` is written `none` in runs.csv and screen.csv alike (full precision, no noise)."""
    from study.analysis.stats.compute import screened_runs

    spec = {"factors": {"precision": [16, None], "signal_policy": ["exact", "ste"]}}
    runs = pd.DataFrame(
        {"precision": ["16", "16", "none", "none"], "signal_policy": ["exact", "ste"] * 2, "seed": [0] * 4}
    )
    pd.DataFrame({"precision": [16, "none"], "passed": [False, True]}).to_csv(
        tmp_path / "screen.csv", index=False
    )
    kept = screened_runs(runs, spec, tmp_path)
    assert kept["precision"].tolist() == ["none", "none"]
