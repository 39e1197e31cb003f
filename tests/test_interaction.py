"""The signal policy's 2 x 2 location interaction contrast (study.analysis.stats.interaction)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from study.analysis.stats.interaction import CELLS, interaction_table

SPEC = {"factors": {"dataset": ["a", "b"], "signal_policy": list(CELLS.values())}, "seeds": 6}


def _table(effects: dict[tuple[str, str], float], seeds: int = 6, noise: float = 0.5) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for dataset in ("a", "b"):
        for seed in range(seeds):
            base = 80 + rng.normal()
            for cell, policy in CELLS.items():
                value = base - effects[cell] + rng.normal(0, noise)
                rows.append(
                    {"dataset": dataset, "weight_policy": "ste", "signal_policy": policy, "seed": seed}
                    | {"value": value, "status": "ok", "diverged": False}
                )
    return pd.DataFrame(rows)


def test_additive_locations_give_a_contrast_near_zero_and_planted_ones_are_found():
    additive = {("E", "E"): 0.0, ("E", "S"): 10.0, ("S", "E"): 4.0, ("S", "S"): 14.0}
    out = interaction_table(_table(additive, seeds=40), SPEC)
    assert list(out["dataset"]) == ["a", "b"] and (out["n_seeds"] == 40).all()
    assert ((out["ci_low"] < 0) & (out["ci_high"] > 0)).all()
    sub = {("E", "E"): 0.0, ("E", "S"): 10.0, ("S", "E"): 4.0, ("S", "S"): 5.0}  # all-ste loses 5, not 14
    out = interaction_table(_table(sub, seeds=40), SPEC)
    assert out["additive_prediction"].to_numpy() == pytest.approx([14.0, 14.0], abs=0.5)
    assert out["all_ste_loss"].to_numpy() == pytest.approx([5.0, 5.0], abs=0.5)
    assert out["interaction"].to_numpy() == pytest.approx([9.0, 9.0], abs=0.5)  # (10 - 0) - (5 - 4)
    assert (out["ci_low"] > 8).all() and (out["p_ttest"] < 1e-6).all()


def test_no_table_without_the_four_cells_and_unusable_trials_are_left_out():
    effects = {("E", "E"): 0.0, ("E", "S"): 1.0, ("S", "E"): 1.0, ("S", "S"): 2.0}
    table = _table(effects)
    assert interaction_table(table[table["signal_policy"] != "ste"], SPEC) is None
    table.loc[(table["dataset"] == "b") & (table["signal_policy"] == "ste"), "status"] = "failed"
    out = interaction_table(table, SPEC)
    assert list(out["dataset"]) == ["a"]
    table.loc[(table["seed"] == 0), "status"] = "failed"
    assert int(interaction_table(table, SPEC)["n_seeds"].iloc[0]) == 5
