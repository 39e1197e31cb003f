"""Figures of studies that set the signal policy by location (study.analysis.figures.locations)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import TINY, write_spec

import study.sweep.runner as R
from study.analysis.figures.locations import policy_text
from study.analysis.figures.registry import make_figures
from study.analysis.publish import stats_stage
from study.sweep.collect import collect
from study.sweep.spec import load_spec


@pytest.mark.parametrize(
    "policy, text",
    [
        ("exact", "exact"),
        ("ste,readout_output=exact", "ste, readout out: exact"),
        ("exact,hidden_output=ste:exact", "exact, hidden out: ste/exact"),
        ("exact,input=ste", "exact, inputs: ste"),
    ],
)
def test_policy_text_names_the_locations(policy: str, text: str) -> None:
    assert policy_text(policy) == text


@pytest.mark.slow
def test_location_study_gets_a_forest_plot_and_diagnostics(tmp_path: Path) -> None:
    spec = {
        "name": "loc",
        "base": {**TINY, "diagnostics": True, "epochs": 1},
        "factors": {"signal_policy": ["exact", "ste", "exact,readout_output=ste"]},
        "seeds": 3,
        "hypotheses": {
            "comparisons": [
                {"site": "signal", "a": "exact", "b": "ste"},
                {"site": "signal", "a": "exact", "b": "exact,readout_output=ste"},
            ]
        },
    }
    counts = R.run_study(
        load_spec(write_spec(tmp_path / "loc.yaml", spec)), out=tmp_path, workers=1, bundle=3, quiet=True
    )
    assert counts["done"] == 9
    sdir = tmp_path / "loc"
    collect(sdir)
    stats_stage(sdir)
    results = {r.name: r for r in make_figures(sdir, verbose=False)}
    assert results["location_effects"].status == "made"
    assert "n = 3 paired seeds per row" in results["location_effects"].caption
    assert results["location_diagnostics"].status == "made"  # one dataset: no suffix
    assert results["paired_differences_signal"].status == "skipped"
    assert "location" in results["paired_differences_signal"].reason
    assert (sdir / "figures" / "location_effects.png").stat().st_size > 0
