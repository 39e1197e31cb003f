"""Weight saturation as a covariate of the weight-site difference: pairing, the mixed models, Fieller's
interval for the saturation level where the policies start to differ, and when nothing is fitted."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from study.analysis.stats.covariate import (
    fieller,
    fittable,
    regime_labels,
    regime_table,
    saturation_models,
    saturation_pairs,
)
from study.analysis.stats.families import compare
from study.analysis.stats.table import load_hypotheses, trial_table

SEEDS = list(range(8))
SPEC = {
    "name": "w",
    "base": {"dataset": "digits"},
    "factors": {"weight_policy": ["ste", "exact"], "weight_clamp": [1.0, 0.3, 0.05], "lr": [0.001, 0.01]},
    "exclude": [{"weight_clamp": [0.3, 0.05], "lr": 0.01}],
    "seeds": len(SEEDS),
    "hypotheses": {
        "metric": "test_acc",
        "comparisons": [{"site": "weight", "a": "exact", "b": "ste"}],
        "bootstrap_resamples": 200,
    },
}
REGIMES = {(1.0, 0.001): 0.0, (0.3, 0.001): 0.3, (0.05, 0.001): 0.8, (1.0, 0.01): 0.5}


def _runs(slope: float, noise: float = 0.3, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for (clamp, lr), sat in REGIMES.items():
        for s in SEEDS:
            base = 90 + rng.normal(0, 1)
            for policy in ("ste", "exact"):
                shift = slope * sat + rng.normal(0, noise) if policy == "exact" else 0.0
                rows.append(
                    {
                        "run_id": f"{clamp}-{lr}-{s}-{policy}",
                        "weight_clamp": clamp,
                        "lr": lr,
                        "weight_policy": policy,
                        "signal_policy": "exact",
                        "seed": s,
                        "status": "done",
                        "test_acc": base + shift,
                        "weight_saturation": sat + rng.uniform(-0.02, 0.02),
                    }
                )
    return pd.DataFrame(rows)


def _pairs(runs: pd.DataFrame) -> pd.DataFrame:
    hyp = load_hypotheses(SPEC)
    return saturation_pairs(trial_table(runs, SPEC, hyp), runs, SPEC, hyp)


def _comparisons(runs: pd.DataFrame) -> pd.DataFrame:
    hyp = load_hypotheses(SPEC)
    return compare(trial_table(runs, SPEC, hyp), SPEC, hyp)[0]


def test_pairs_carry_the_difference_and_the_pair_mean_saturation():
    runs = _runs(slope=-6.0)
    pairs = _pairs(runs)
    assert len(pairs) == len(REGIMES) * len(SEEDS)
    assert set(pairs["regime"]) == {"base", "weight_clamp=0.3", "weight_clamp=0.05", "lr=0.01"}
    one = pairs[(pairs["regime"] == "weight_clamp=0.05") & (pairs["seed"] == 3)].iloc[0]
    mine = runs[(runs["weight_clamp"] == 0.05) & (runs["seed"] == 3)].set_index("weight_policy")
    assert one["diff"] == pytest.approx(mine.at["exact", "test_acc"] - mine.at["ste", "test_acc"])
    assert one["saturation"] == pytest.approx(mine["weight_saturation"].mean())
    table = regime_table(pairs, _comparisons(runs), ["weight_clamp", "lr"])
    assert list(table["regime"]) == ["base", "weight_clamp=0.3", "lr=0.01", "weight_clamp=0.05"]  # sorted
    strong = table.set_index("regime").loc["weight_clamp=0.05"]
    assert strong["verdict"] == "different" and strong["ci_low"] < strong["diff_mean"] < strong["ci_high"]


def test_rising_saturation_costs_exact_and_the_onset_is_recovered():
    model, onset, text = saturation_models(_pairs(_runs(slope=-6.0)), margin=0.5)
    slope = model[(model["response"] == "diff") & (model["term"] == "saturation")].iloc[0]
    assert slope["ci_low"] < -6.0 < slope["ci_high"] and slope["p"] < 1e-3
    grows = model[(model["response"] == "abs_diff") & (model["term"] == "saturation")].iloc[0]
    assert grows["coef"] > 0 and grows["p"] < 0.05
    row = onset.iloc[0]
    assert row["margin"] == -0.5 and row["bounded"] == "yes"
    assert row["ci_low"] < 0.5 / 6 < row["ci_high"] < 0.5  # the true onset, 0.083, inside
    assert "random" not in text or "regime" in text


def test_no_effect_gives_an_unbounded_onset():
    _, onset, _ = saturation_models(_pairs(_runs(slope=0.0, noise=0.3, seed=2)), margin=0.5)
    assert onset.iloc[0]["bounded"] == "no" or onset.iloc[0]["ci_high"] > 1  # never reached


def test_fieller_matches_the_confidence_band_crossing():
    b0, b1 = 0.1, 4.0
    cov = np.array([[0.04, -0.01], [-0.01, 0.09]])
    lo, hi, bounded = fieller(b0, b1, cov, 0.5)
    assert bounded
    z = 1.959963984540054
    for s in (lo, hi):  # the band's edge passes through the target there
        half = z * np.sqrt(cov[0, 0] + 2 * s * cov[0, 1] + s * s * cov[1, 1])
        assert min(abs(b0 + b1 * s - half - 0.5), abs(b0 + b1 * s + half - 0.5)) < 1e-9
    assert fieller(0.0, 0.1, cov, 0.5)[2] is False  # slope within noise: unbounded


def test_nothing_fitted_without_saturation_or_with_one_regime():
    runs = _runs(slope=-6.0).drop(columns=["weight_saturation"])
    assert _pairs(runs).empty
    one = _pairs(_runs(slope=-6.0))
    assert not fittable(one[one["regime"] == "base"])
    flat = one.assign(saturation=0.0)
    assert not fittable(flat)


def test_regime_labels_name_the_departure_from_the_common_values():
    conds = pd.DataFrame({"a": [1, 1, 2, 1], "b": ["x", "y", "x", "x"]})
    assert list(regime_labels(conds)) == ["base", "b=y", "a=2", "base"]


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    """A study with weight saturation and the draw metrics, through the statistics stage once."""
    import yaml

    from study.analysis.publish import stats_stage
    from study.sweep.spec import stored_spec_hash

    sdir = tmp_path_factory.mktemp("saturated")
    runs = _runs(slope=-6.0).assign(test_acc_mean=lambda f: f["test_acc"], test_acc_noise_off=95.0)
    spec = {**SPEC, "base": {"dataset": "digits", "test_draws": 3}}
    spec["hypotheses"] = {**SPEC["hypotheses"], "metric": "test_acc_mean"}
    (sdir / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    runs.assign(spec_hash=stored_spec_hash(spec)).to_csv(sdir / "runs.csv", index=False)
    stats_stage(sdir)
    return sdir


def test_stats_report_and_latex_carry_the_covariate_analysis(analysed):
    out = analysed / "stats"
    for name in (
        "saturation_pairs.csv",
        "saturation_regimes.csv",
        "saturation_model.csv",
        "saturation_onset.csv",
    ):
        assert (out / name).exists(), name
    report = (out / "report.md").read_text()
    assert "## Weight saturation as a covariate" in report and "Fieller 95% interval" in report
    assert "under 3 independent draws" in report and "test_acc_mean (3 draws)" in report
    macros = (out / "latex" / "macros.tex").read_text()
    assert r"\newcommand{\WSatWeightClampZeroZeroFiveVerdict}{different}" in macros
    assert r"\newcommand{\WSatOnsetBounded}{yes}" in macros and r"\newcommand{\WTestDraws}{3}" in macros
    assert "weight\\_clamp=0.05" in (out / "latex" / "saturation.tex").read_text()


def test_studies_without_saturation_get_no_covariate_outputs(tmp_path):
    import yaml

    from study.analysis.publish import stats_stage
    from study.sweep.spec import stored_spec_hash

    runs = _runs(slope=-6.0).drop(columns=["weight_saturation"])
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(SPEC, sort_keys=False))
    runs.assign(spec_hash=stored_spec_hash(SPEC)).to_csv(tmp_path / "runs.csv", index=False)
    out = stats_stage(tmp_path)
    assert not list(out.glob("saturation_*")) and not (out / "latex" / "saturation.tex").exists()
    report = (out / "report.md").read_text()
    assert "Weight saturation" not in report and "under one draw of the analog noise" in report


def test_saturation_figure_drawn_from_the_covariate_tables_only(analysed, tmp_path):
    import shutil

    from study.analysis.figures import style
    from study.analysis.figures.common import StudyContext
    from study.analysis.figures.saturation import fig_weight_saturation

    with style.style():
        (made,) = fig_weight_saturation(StudyContext.load(analysed))
    assert type(made).__name__ == "Made" and "Fieller 95% interval" in made.caption
    copy = shutil.copytree(analysed, tmp_path / "copy")
    (copy / "stats" / "saturation_pairs.csv").unlink()
    (skipped,) = fig_weight_saturation(StudyContext.load(copy))
    assert type(skipped).__name__ == "Skip"
