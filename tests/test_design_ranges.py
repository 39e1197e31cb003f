"""benchmarks/design_ranges.py: the range studies' specs follow from their selection studies."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent


def _module():
    spec = importlib.util.spec_from_file_location("design_ranges", ROOT / "benchmarks" / "design_ranges.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["design_ranges"] = mod
    spec.loader.exec_module(mod)
    return mod


DR = _module()


@pytest.mark.parametrize("kind", sorted(DR.STUDIES))
def test_committed_specs_are_what_the_script_writes(kind: str, capsys: pytest.CaptureFixture) -> None:
    assert DR.main([kind, "--check"]) == 0, capsys.readouterr().out


def test_half_decade_ladder() -> None:
    assert [DR._half_decade(x, 1) for x in (0.0003, 0.001, 0.3, 1.0)] == [0.001, 0.003, 1.0, 3.0]
    assert [DR._half_decade(x, -1) for x in (0.0003, 0.01, 0.0001)] == [0.0001, 0.003, 3e-05]


def test_choice_takes_the_best_mean_and_the_smaller_lr_on_ties_and_flags_edges() -> None:
    key = ("arch=mlp",)
    runs = pd.DataFrame(
        {
            "_key": [key] * 4,
            "lr": ["0.001", "0.003", "0.01", "0.01"],
            "val_acc": ["90", "95", "95", "nan"],
        }
    )
    row = DR.choose({key: [0.001, 0.003, 0.01]}, runs).iloc[0]
    assert row["chosen_lr"] == 0.003 and not row["low_edge"] and not row["high_edge"]
    row = DR.choose({key: [0.003, 0.01]}, runs).iloc[0]
    assert row["chosen_lr"] == 0.003 and row["low_edge"]
    assert pd.isna(DR.choose({key: [0.1, 0.3]}, runs).iloc[0]["chosen_lr"])


def test_units_pair_every_condition_with_every_arm_and_in_range_only_where_it_changes_the_init() -> None:
    conds = DR.weight_conditions()
    assert all(c["weight_clamp"] < DR.INIT_MAX[c["arch"]] for c in conds if c["weight_init"] == "in_range")
    assert len(DR._units(DR.STUDIES["weight"])) == 3 * len(conds)
    signal = DR.signal_conditions()
    assert not [c for c in signal if c["readout"] == "scaled" and c["signal_norm"] == "learned_clamp"]
