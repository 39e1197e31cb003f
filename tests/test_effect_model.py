"""The pre-registered across-condition model (`hypotheses.effect_model`): the spec checks, the fit
recovering planted factor effects, marginal means, derived columns, and nothing without it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from study.analysis.publish import stats_stage
from study.sweep.spec import parse_spec, stored_spec_hash

SEEDS = 6
MODEL = {"formula": "C(arch) + C(dataset) + l2", "derived": {"l2": "norm == 'l2norm'"}, "marginal": ["arch"]}


def _spec(model: dict | None = MODEL) -> dict:
    hyp = {
        "metric": "test_acc",
        "comparisons": [{"site": "signal", "a": "exact", "b": "ste"}],
        "bootstrap_resamples": 200,  # the CIs of this file's checks come from the model, not the bootstrap
    }
    if model is not None:
        hyp["effect_model"] = model
    return {
        "name": "fx",
        "base": {"dataset": "digits"},
        "factors": {
            "arch": ["mlp", "cnn"],
            "dataset": ["digits", "mnist1d"],
            "norm": ["clamp", "l2norm"],
            "signal_policy": ["ste", "exact"],
        },
        "seeds": SEEDS,
        "hypotheses": hyp,
    }


def _runs(seed: int = 0) -> pd.DataFrame:
    """d = 2 + 3 [cnn] - 1 [mnist1d] + 1.5 [l2norm] + condition and seed noise."""
    rng = np.random.default_rng(seed)
    seed_fx = rng.normal(0, 0.5, SEEDS)
    rows = []
    for arch in ("mlp", "cnn"):
        for ds in ("digits", "mnist1d"):
            for norm in ("clamp", "l2norm"):
                d = (
                    2
                    + 3 * (arch == "cnn")
                    - 1 * (ds == "mnist1d")
                    + 1.5 * (norm == "l2norm")
                    + rng.normal(0, 0.3)
                )
                for s in range(SEEDS):
                    base = 80 + rng.normal(0, 2)
                    for policy, value in (
                        ("ste", base),
                        ("exact", base + d + seed_fx[s] + rng.normal(0, 0.5)),
                    ):
                        rows.append(
                            {
                                "run_id": f"{arch}{ds}{norm}{s}{policy}",
                                "arch": arch,
                                "dataset": ds,
                                "norm": norm,
                                "weight_policy": "ste",
                                "signal_policy": policy,
                                "seed": s,
                                "status": "done",
                                "test_acc": value,
                            }
                        )
    return pd.DataFrame(rows)


def _study(tmp_path, spec: dict):
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    _runs().assign(spec_hash=stored_spec_hash(spec)).to_csv(tmp_path / "runs.csv", index=False)
    return stats_stage(tmp_path)


@pytest.fixture(scope="module")
def modelled(tmp_path_factory) -> Path:
    """One study with the effect model: statistics, report, LaTeX and figures written once."""
    from study.analysis.figures.registry import make_figures

    sdir = tmp_path_factory.mktemp("modelled")
    _study(sdir, _spec())
    make_figures(sdir, verbose=False)
    return sdir


def test_model_recovers_planted_factor_effects_and_marginal_means(modelled):
    out = modelled / "stats"
    terms = pd.read_csv(out / "effects_terms.csv").set_index("term")
    for term, true in (("C(arch)[T.mlp]", -3.0), ("C(dataset)[T.mnist1d]", -1.0), ("l2", 1.5)):
        row = terms.loc[term]
        assert abs(row["coef"] - true) < 3.5 * row["std_err"] and row["p"] < 0.01, term
    marg = pd.read_csv(out / "effects_marginal.csv").set_index("level")
    # true marginal means over the design: mlp 2 - 0.5 + 0.75 = 2.25, cnn 5.25 (plus noise)
    assert marg.loc["cnn", "emm"] - marg.loc["mlp", "emm"] == pytest.approx(
        abs=2e-3, expected=-terms.loc["C(arch)[T.mlp]", "coef"]
    )
    assert marg.loc["mlp", "ci_low"] < 2.25 + 1 and marg.loc["cnn", "ci_low"] > 3
    assert int(marg.loc["mlp", "conditions"]) == 4
    # the overall mean: balanced design, so the average of the two architectures' marginal means
    assert int(marg.loc["all", "conditions"]) == 8
    assert marg.loc["all", "emm"] == pytest.approx(
        (marg.loc["mlp", "emm"] + marg.loc["cnn", "emm"]) / 2, abs=2e-3
    )
    assert marg.loc["all", "ci_low"] < marg.loc["all", "emm"] < marg.loc["all", "ci_high"]
    text = (out / "effects_model.txt").read_text()
    assert "(1 | condition) + (1 | seed)" in text and "pairs: 48" in text and "conditions: 8" in text


@pytest.fixture(scope="module")
def unmodelled(tmp_path_factory) -> Path:
    sdir = tmp_path_factory.mktemp("unmodelled")
    _study(sdir, _spec(None))
    return sdir


def test_no_effect_model_no_tables(unmodelled):
    assert not list((unmodelled / "stats").glob("effects_*"))


@pytest.mark.parametrize(
    "model, message",
    [
        ({"formula": "C(arch) + C(datset)"}, "unknown names ['datset']"),
        (
            {"formula": "C(arch)", "marginal": ["signal_policy"]},
            "marginal: ['signal_policy'] are not condition",
        ),
        ({"formula": "C(arch)", "marginal": ["arch", "arch"]}, "duplicate factor names"),
        ({"formula": ""}, "formula"),
        ({"formula": "   "}, "formula: a right-hand side"),
        ({"formula": "C(arch)", "derived": {"norm": "arch == 'cnn'"}}, "derived.norm: a factor of that name"),
        (
            {"formula": "C(arch)", "derived": {"bad name": "arch == 'cnn'"}},
            "derived: names must be identifiers",
        ),
        ({"formula": "C(arch)", "extra": 1}, "extra"),
    ],
)
def test_bad_effect_models_refused_by_name(model, message):
    with pytest.raises(Exception, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")):
        parse_spec(_spec(model))


def test_a_bad_derived_expression_is_named_at_analysis(tmp_path):
    with pytest.raises(ValueError, match="effect_model.derived.l2: cannot evaluate"):
        _study(tmp_path, _spec({**MODEL, "derived": {"l2": "nrom == 'l2norm'"}}))


def test_effect_figures_drawn_only_with_an_effect_model(modelled, unmodelled):
    from study.analysis.figures.common import StudyContext
    from study.analysis.figures.effects import fig_effects_factors, fig_effects_forest

    index = (modelled / "figures" / "index.md").read_text()
    assert "## effects_forest" in index and "## effects_factors" in index
    assert (modelled / "figures" / "effects_factors.png").exists()
    ctx = StudyContext.load(unmodelled)
    skipped = [*fig_effects_forest(ctx), *fig_effects_factors(ctx)]
    assert [type(s).__name__ for s in skipped] == ["Skip", "Skip"]


def test_report_and_macros_carry_the_effect_model(modelled):
    out = modelled / "stats"
    report = (out / "report.md").read_text()
    assert "## Across conditions: the effect model" in report and "Estimated marginal means" in report
    macros = (out / "latex" / "macros.tex").read_text()
    assert r"\newcommand{\FxEmmSignalArchCnn}" in macros and r"\newcommand{\FxEmmSignalArchMlpHi}" in macros
    assert r"\newcommand{\FxCoefSignalArchMlp}" in macros and r"\newcommand{\FxCoefSignalLTwoP}" in macros
    assert r"\newcommand{\FxEmmSignalAllAll}" in macros


def test_partially_pooled_effects_lie_between_the_raw_mean_and_the_fit(modelled):
    pooled = pd.read_csv(modelled / "stats" / "effects_conditions.csv")
    assert len(pooled) == 8 and {"diff", "fitted", "eb_diff", "shrinkage", "eb_low", "eb_high"} <= set(pooled)
    low = np.minimum(pooled["diff"], pooled["fitted"]) - 1e-9
    high = np.maximum(pooled["diff"], pooled["fitted"]) + 1e-9
    assert ((pooled["eb_diff"] >= low) & (pooled["eb_diff"] <= high)).all()
    assert ((pooled["shrinkage"] >= 0) & (pooled["shrinkage"] <= 1)).all()
    assert (pooled["eb_low"] <= pooled["eb_diff"]).all() and (pooled["eb_diff"] <= pooled["eb_high"]).all()
    assert "### Per condition, partially pooled" in (modelled / "stats" / "report.md").read_text()


def test_logit_scale_models_log_odds_differences(tmp_path):
    from study.analysis.stats.effects import logit_percent

    sdir = tmp_path / "fx"
    _study(sdir, _spec({**MODEL, "scale": "logit"}))
    runs = _runs()
    exact = runs[runs["signal_policy"] == "exact"].reset_index(drop=True)
    ste = runs[runs["signal_policy"] == "ste"].reset_index(drop=True)
    d = (logit_percent(exact["test_acc"]) - logit_percent(ste["test_acc"])).to_numpy()
    pooled = pd.read_csv(sdir / "stats" / "effects_conditions.csv")
    assert pooled["diff"].mean() == pytest.approx(d.mean(), rel=1e-3)  # balanced: mean of condition means
    assert pooled["diff_pp"].mean() == pytest.approx((exact["test_acc"] - ste["test_acc"]).mean(), rel=1e-3)
    assert "logit" in (sdir / "stats" / "report.md").read_text()


def test_logit_scale_needs_an_accuracy_and_keeps_older_hashes():
    from study.training.config import ConfigError

    spec = _spec({**MODEL, "scale": "logit"})
    spec["hypotheses"]["metric"] = "test_loss"
    with pytest.raises(ConfigError, match="effect_model.scale: 'logit' needs an accuracy metric"):
        parse_spec(spec)
    bad = _spec({**MODEL, "scale": "logits"})
    with pytest.raises(ConfigError, match="scale"):
        parse_spec(bad)
    assert stored_spec_hash(_spec()) == stored_spec_hash(_spec({**MODEL, "scale": "pp"}))
