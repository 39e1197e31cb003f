"""Distinct runs (duplicates collapsed), ties and the planted-effect sensitivity check (issue #21)."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sst

from study.analysis import stats as S
from study.analysis.report.latex import best_combos, sensitivity_macros
from study.analysis.stats.duplicates import combo_groups, distinct_trials, duplicate_table
from study.analysis.stats.sensitivity import PLANTED_MULTIPLES, plant, sensitivity_table

POLICIES = ("exact", "ste")


def _spec(seeds: int) -> dict:
    return {
        "name": "dup",
        "base": {},
        "factors": {"dataset": ["A"], "weight_policy": list(POLICIES), "signal_policy": list(POLICIES)},
        "seeds": seeds,
        "hypotheses": {
            "bootstrap_resamples": 999,
            "comparisons": [
                {"site": "weight", "a": "exact", "b": "ste", "role": "primary"},
                {"site": "signal", "a": "exact", "b": "ste", "role": "primary"},
            ],
        },
    }


def _table(seeds: int, weight_matters: bool, sd: float = 1.0, break_seed: int | None = None) -> pd.DataFrame:
    """Trial table: signal exact is 10 better; weight exact = ste bit for bit unless `weight_matters`."""
    rng = np.random.default_rng(0)
    rows = []
    for w, s, seed in itertools.product(POLICIES, POLICIES, range(seeds)):
        base = 80.0 + 10.0 * (s == "exact")
        rows.append({"dataset": "A", "weight_policy": w, "signal_policy": s, "seed": seed, "value": base})
    table = pd.DataFrame(rows)
    noise = np.random.default_rng(1).normal(0, sd, size=(2, seeds))
    for i, s in enumerate(POLICIES):
        for seed in range(seeds):
            sel = (table["signal_policy"] == s) & (table["seed"] == seed)
            table.loc[sel, "value"] += noise[i, seed]
    if weight_matters:
        sel = table["weight_policy"] == "exact"
        table.loc[sel, "value"] += rng.normal(0, sd, size=int(sel.sum()))
    if break_seed is not None:
        sel = (table["weight_policy"] == "exact") & (table["seed"] == break_seed)
        table.loc[sel, "value"] += 0.1
    table["status"], table["diverged"] = "ok", False
    table["fingerprint"] = [repr(float(v)) for v in table["value"]]
    return table


def test_identical_combinations_are_grouped_and_listed() -> None:
    table, spec = _table(6, weight_matters=False), _spec(6)
    groups = combo_groups(table, spec)
    dup = duplicate_table(groups)
    assert set(dup["combo"]) == {"ste/exact", "ste/ste"}
    assert set(dup["same_runs_as"]) == {"exact/exact", "exact/ste"}
    assert set(dup["n_seeds"]) == {6}
    kept = distinct_trials(table, spec)
    assert len(kept) == 12 and set(kept["combo"]) == {"exact/exact = ste/exact", "exact/ste = ste/ste"}


def test_one_differing_seed_keeps_combinations_apart() -> None:
    table = _table(6, weight_matters=False, break_seed=3)
    assert duplicate_table(combo_groups(table, _spec(6))).empty
    assert len(distinct_trials(table, _spec(6))) == 24


def test_friedman_and_model_count_each_run_once() -> None:
    seeds = 8
    table, spec = _table(seeds, weight_matters=False), _spec(seeds)
    # a third, distinct combination so that Friedman runs (k >= 3 after collapsing)
    extra = table[(table["weight_policy"] == "exact") & (table["signal_policy"] == "exact")].copy()
    extra["weight_policy"], extra["signal_policy"] = "zero", "zero"
    extra["value"] = 10.0 + np.arange(seeds) * 0.01
    extra["fingerprint"] = [repr(float(v)) for v in extra["value"]]
    table = pd.concat([table, extra], ignore_index=True)
    spec["factors"]["weight_policy"].append("zero")
    spec["factors"]["signal_policy"].append("zero")
    hyp = S.load_hypotheses(spec)
    omni, _ = S.omnibus(table, spec, hyp, S.value_orders(spec, table))
    assert set(omni["k"]) == {3} and sorted(omni["n_combos"]) == [1, 2, 2]
    block = distinct_trials(table, spec).pivot(index="seed", columns="combo", values="value")
    assert omni["friedman_stat"].iloc[0] == pytest.approx(
        sst.friedmanchisquare(*block.to_numpy().T).statistic
    )
    text, _ = S.fit_mixed_model(table, spec, hyp)
    assert f"observations: {3 * seeds} distinct runs ({2 * seeds} trials" in text


def test_ties_are_reported_as_ties() -> None:
    omni = pd.DataFrame(
        {
            "combo": ["exact/exact = ste/exact", "exact/ste = ste/ste"],
            "mean_rank": [1.0, 2.0],
        }
    )
    assert best_combos(omni) == (["exact/exact", "ste/exact"], 1.0)
    distinct = pd.DataFrame({"combo": ["a/b", "c/d", "e/f"], "mean_rank": [1.5, 1.5, 3.0]})
    assert best_combos(distinct)[0] == ["a/b", "c/d"]
    assert best_combos(pd.DataFrame({"combo": ["a/b", "c/d"], "mean_rank": [1.2, 1.8]}))[0] == ["a/b"]


def test_plant_moves_the_mean_difference_to_the_shift_and_keeps_the_noise() -> None:
    seeds = 10
    table, spec = _table(seeds, weight_matters=True), _spec(seeds)
    hyp = S.load_hypotheses(spec)
    comp, _, _ = S.compare(table, spec, hyp)
    rows = comp[comp["comparison"] == "weight: exact vs ste"]
    moved = plant(table, rows, spec, "weight", "exact", 0.75)
    again, _, _ = S.compare(moved, spec, hyp)
    new = again[again["comparison"] == "weight: exact vs ste"]
    assert new["mean_diff"].to_numpy() == pytest.approx(0.75)
    assert new["sd_diff"].to_numpy() == pytest.approx(rows["sd_diff"].to_numpy())
    assert table["value"].sum() != moved["value"].sum() and len(moved) == len(table)


@pytest.mark.parametrize("sd, expect_two", [(0.05, 1.0), (30.0, 0.0)])
def test_sensitivity_detects_planted_effects_only_when_the_noise_allows(sd: float, expect_two: float) -> None:
    seeds = 12
    table, spec = _table(seeds, weight_matters=True, sd=sd), _spec(seeds)
    hyp = S.load_hypotheses(spec)
    comp, _, _ = S.compare(table, spec, hyp)
    sens = sensitivity_table(table, comp, spec, hyp)
    weight = sens[sens["site"] == "weight"].set_index("multiple")
    assert list(weight.index) == list(PLANTED_MULTIPLES) and set(weight["rows"]) == {2}
    assert weight.loc[2, "detection_rate"] == expect_two and weight.loc[-2, "detection_rate"] == expect_two
    assert weight.loc[0, "detected"] == 0 and weight.loc[2, "wrong_direction"] == 0
    macros = "\n".join(sensitivity_macros("Dup", sens))
    assert rf"\newcommand{{\DupWeightPlantedTwoDetected}}{{{int(4 * expect_two)}}}" in macros


def test_identical_rows_are_not_planted() -> None:
    table, spec = _table(6, weight_matters=False), _spec(6)
    hyp = S.load_hypotheses(spec)
    comp, _, _ = S.compare(table, spec, hyp)
    sens = sensitivity_table(table, comp, spec, hyp)
    assert set(sens.loc[sens["site"] == "weight", "rows"]) == {0}
    assert sens.loc[sens["site"] == "weight", "detection_rate"].isna().all()
