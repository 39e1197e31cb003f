"""The advisor (issue 20): spec validation, units from the committed studies, the fit that never sees
held-out units, the rule's advice, the probe (API and command) and their errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

import analog
from analog.advise import ADVICE, SITE_ONLY, Rule, gradient_disagreement
from study.advisor.fit import BASELINES, apply_rule, fit_advisor, fit_rule, validation_table
from study.advisor.spec import ADVISOR_SPEC, ADVISOR_SPEC_V1, load_advisor_spec
from study.advisor.units import build_units
from study.cli import main

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"
# committed studies that exist from a fresh clone; l2norm_wm (generality) is their only held-out value
SPEC = {
    "name": "advisor",
    "sources": ["core", "generality", "analogvnn_gelu", "weights"],
    "delta": 1.0,
    "band": 0.2,
    "probe_epoch": 1,
    "held_out": {"norm": ["l2norm_wm"]},
}


def _spec_file(tmp_path: Path, **changes) -> Path:
    path = tmp_path / "advisor.yaml"
    path.write_text(yaml.safe_dump({**SPEC, **changes}))
    return path


@pytest.fixture(scope="module")
def units() -> pd.DataFrame:
    return build_units(RESULTS, load_advisor_spec(_spec_file_module()))


def _spec_file_module() -> Path:
    import tempfile

    path = Path(tempfile.mkdtemp()) / "advisor.yaml"
    path.write_text(yaml.safe_dump(SPEC))
    return path


def test_committed_preregistration_is_valid():
    spec = load_advisor_spec(ADVISOR_SPEC)
    assert spec.held_out == {"arch": ["cnn"], "dataset": ["mnist1d"], "norm": ["l2norm_wm"]}
    assert "factorial" in spec.sources and spec.delta == 1.0
    assert spec.version == 2 and spec.trainable.threshold == 30 and spec.drop_identical and spec.band == 0.1
    assert spec.terms == ["signal_site", "log_disagreement", "site_saturation", "readout_saturation"]
    v1 = load_advisor_spec(ADVISOR_SPEC_V1)  # kept, and still means what it meant
    assert v1.version == 1 and v1.trainable is None and v1.terms == ["log_disagreement", "signal_site"]


def test_committed_advice_follows_the_committed_validation():
    """results/advisor: the rule is used for advice only if it met the pre-registered criterion."""
    val = pd.read_csv(RESULTS / "advisor" / "stats" / "validation.csv").set_index("group")
    held = val.loc["held out"]
    rule = Rule.load(RESULTS / "advisor" / "rule.json")
    assert rule.useful == bool(held["accuracy_all_ci_low"] > held["site_only_accuracy"])
    assert rule.held_out_units == held["units"]  # validation.csv holds 4 significant digits
    assert rule.site_only_accuracy == pytest.approx(held["site_only_accuracy"], abs=1e-3)
    for b in BASELINES:
        assert f"{b}_accuracy_ci_low" in val.columns
    report = (RESULTS / "advisor" / "report.md").read_text()
    assert ("**met**" in report) == rule.useful and ("**not met**" in report) == (not rule.useful)


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"held_out": {"architecture": ["cnn"]}}, "held_out: unknown key 'architecture'; allowed: arch"),
        ({"held_out": {"arch": []}}, "held_out.arch: give a non-empty list"),
        ({"held_out": {}}, "held_out"),
        ({"delta": float("inf")}, "delta"),
        ({"delta": float("nan")}, "delta"),
        ({"delta": 0}, "delta"),
        ({"band": 0.5}, "band"),
        ({"band": "wide"}, "band"),
        ({"sources": []}, "sources"),
        ({"sources": ["core", "core"]}, "listed twice"),
        ({"sources": [".."]}, "not study names"),
        ({"sources": ["."]}, "not study names"),
        ({"probe_epoch": 0}, "probe_epoch"),
        ({"sauces": ["core"]}, "sauces: unknown field"),
        ({"formula": "positive ~ log_disagreement + depth"}, "unknown terms ['depth']"),
        ({"formula": "y ~ signal_site"}, "'positive ~ term + term ...' expected"),
        ({"formula": "positive ~ signal_site + signal_site"}, "listed twice"),
        ({"trainable": {"chance": 10}}, "trainable"),
        ({"version": 3}, "version"),
    ],
)
def test_bad_advisor_specs_are_refused_by_field(tmp_path, changes, words):
    with pytest.raises(ValueError, match=None) as err:
        load_advisor_spec(_spec_file(tmp_path, **changes))
    assert words in str(err.value), str(err.value)


def test_units_join_outcomes_and_epoch_one_diagnostics(units):
    assert set(units["site"]) == {"weight", "signal"}
    # clamped weights never saturate in core: identical runs, identical gradients
    core_w = units[(units["study"] == "core") & (units["site"] == "weight")].iloc[0]
    assert core_w["mean_diff"] == 0 and core_w["disagreement"] < 1e-6 and not core_w["positive"]
    core_s = units[(units["study"] == "core") & (units["site"] == "signal")].iloc[0]
    assert core_s["mean_diff"] > 50 and core_s["positive"] and core_s["disagreement"] > 0.1
    assert core_s["n_probe_runs"] == 100
    held = units[units["held_out"]]
    assert len(held) == 4 and set(held["weight_norm"]) == {"l2norm_wm"}
    assert (units["disagreement"] >= 0).all()


def test_held_out_units_never_enter_the_fit(units):
    """Flipping every held-out outcome and disagreement leaves the rule unchanged."""
    spec = load_advisor_spec(_spec_file_module())
    fit = units[~units["held_out"]]
    rule, _ = fit_rule(fit, spec)
    scrambled = units.copy()
    held = scrambled["held_out"]
    scrambled.loc[held, "positive"] = ~scrambled.loc[held, "positive"].astype(bool)
    scrambled.loc[held, "disagreement"] = 0.5
    rule2, _ = fit_rule(scrambled[~scrambled["held_out"]], spec)
    assert rule == rule2
    rule3, _ = fit_rule(scrambled, spec)  # with them the rule would differ: the check can fail
    assert rule3 != rule


def test_validation_counts_and_baseline(units):
    spec = load_advisor_spec(_spec_file_module())
    rule, _ = fit_rule(units[~units["held_out"]], spec)
    scored = apply_rule(units, rule)
    val = validation_table(scored, spec).set_index("group")
    held = val.loc["held out"]
    assert held["units"] == 4 and held["decided"] <= 4
    assert held["baseline_accuracy"] == pytest.approx(held["positives"] / 4)
    assert 0 <= held["accuracy_ci_low"] <= held["accuracy"] <= held["accuracy_ci_high"] <= 1
    assert val.loc["held out: weight site", "units"] + val.loc["held out: signal site", "units"] == 4


V2 = {"trainable": {"chance": 10.0, "min_above_chance": 20.0}, "drop_identical": True, "version": 2}


def test_v2_labels_only_units_that_train_and_differ(tmp_path):
    units = build_units(RESULTS, load_advisor_spec(_spec_file(tmp_path, **V2)))
    assert (units["trainable"] == (units["best_arm"] >= 30)).all()
    assert (units["labelled"] == (units["trainable"] & ~units["trivial"])).all()
    core_w = units[(units["study"] == "core") & (units["site"] == "weight")].iloc[0]
    assert core_w["trivial"] and not core_w["labelled"]  # clamped weights never saturate: identical arms
    core_s = units[(units["study"] == "core") & (units["site"] == "signal")].iloc[0]
    assert core_s["labelled"] and core_s["best_arm"] > 80 and 0 < core_s["readout_saturation"] <= 1
    assert units["site_saturation"].between(0, 1).all() and units["readout_saturation"].between(0, 1).all()
    strict = {**V2, "trainable": {"chance": 10.0, "min_above_chance": 75.0}}  # 85 %: some do not reach it
    units = build_units(RESULTS, load_advisor_spec(_spec_file(tmp_path, **strict)))
    assert (~units["trainable"].astype(bool)).any() and (units["labelled"] <= units["trainable"]).all()


def test_validation_scores_the_rule_and_every_baseline_on_the_same_units(tmp_path):
    spec = load_advisor_spec(_spec_file(tmp_path, **V2))
    units = build_units(RESULTS, spec)
    units = units.assign(held_out=units["site"] == "signal")  # enough held-out units to score
    rule = Rule(intercept=0.0, slope=1.0, signal=0.0, delta=1.0, band=0.1)
    scored = apply_rule(units, rule)
    val = validation_table(scored, spec).set_index("group")
    held = val.loc["held out"]
    rows = scored[scored["labelled"] & scored["held_out"]]
    assert held["units"] == len(rows) and held["coverage"] == pytest.approx(held["decided"] / len(rows))
    assert held["accuracy_all"] == pytest.approx(held["correct"] / len(rows))  # abstentions not right
    assert held["accuracy_all"] <= held["accuracy"]
    positive = rows["positive"].astype(bool)
    assert held["always_exact_accuracy"] == pytest.approx(positive.mean())
    assert held["always_ste_accuracy"] == pytest.approx(1 - positive.mean())
    assert held["site_only_accuracy"] == pytest.approx(positive.mean())  # signal site: exact
    assert val.loc["held out, untrainable included", "units"] >= held["units"]


def test_rule_probability_and_advice():
    rule = Rule(intercept=0.0, slope=2.0, signal=0.0, delta=1.0, band=0.2)
    assert rule.probability(1.0, "weight") == pytest.approx(0.5)
    assert rule.advice(0.5) == ADVICE[2] and rule.advice(0.9) == ADVICE[0] and rule.advice(0.1) == ADVICE[1]
    assert rule.advice(float("nan")) == ADVICE[2]
    assert rule.probability(0.0, "signal") == pytest.approx(1 / (1 + math.exp(12)))  # floored at 1e-6
    with pytest.raises(ValueError, match="site: unknown 'signals'; allowed: weight, signal"):
        rule.probability(0.1, "signals")
    v2 = Rule(intercept=-1.0, slope=0.0, signal=0.0, delta=1.0, band=0.1, saturation=2.0, readout=-1.0)
    assert v2.probability(0.1, "weight", 0.5, 0.0) == pytest.approx(0.5)
    assert v2.probability(0.1, "weight", 0.5, 1.0) == pytest.approx(1 / (1 + math.e))
    assert math.isnan(v2.probability(0.1, "weight", float("nan"), 0.0))
    assert gradient_disagreement([1.0000001, float("nan"), 0.5]) == pytest.approx(0.5)
    assert gradient_disagreement([1.0000001]) == 0.0
    assert math.isnan(gradient_disagreement([float("nan")]))


def test_fit_writes_everything_and_regenerates_identically(tmp_path):
    spec = _spec_file(tmp_path)
    out = tmp_path / "advisor"
    fit_advisor(RESULTS, spec, out, allow_uncommitted_spec=True)
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    for name in (
        "rule.json",
        "units.csv",
        "stats/validation.csv",
        "stats/latex/macros.tex",
        "figures/advisor.pdf",
    ):
        assert Path(name) in files, name
    first = {f: (out / f).read_bytes() for f in files}
    fit_advisor(RESULTS, spec, out, allow_uncommitted_spec=True)
    assert {f: (out / f).read_bytes() for f in files} == first
    rule = Rule.load(out / "rule.json")
    assert rule.fitted_on == 42 and rule.probe_epoch == 1
    assert r"\AdvisorHeldAcc" in (out / "stats/latex/macros.tex").read_text()
    # a changed spec after the fit is refused (the pre-registration is written once)
    spec.write_text(spec.read_text().replace("band: 0.2", "band: 0.1"))
    with pytest.raises(ValueError, match="differs from the pre-registration"):
        fit_advisor(RESULTS, spec, out, allow_uncommitted_spec=True)


def test_v2_fit_uses_the_rule_for_advice_only_when_it_beats_the_site_only_rule(tmp_path):
    out = fit_advisor(RESULTS, _spec_file(tmp_path, **V2), tmp_path / "v2", allow_uncommitted_spec=True)
    val = pd.read_csv(out / "stats" / "validation.csv").set_index("group")
    held = val.loc["held out"]
    rule = Rule.load(out / "rule.json")
    assert rule.useful == bool(held["accuracy_all_ci_low"] > held["site_only_accuracy"])
    assert rule.held_out_units == held["units"] > 0
    assert rule.fitted_on == val.loc["fitted (in-sample)", "units"]
    text = (out / "report.md").read_text()
    assert "site-only [95% CI]" in text and "always ste" in text and "coverage" in text
    assert r"\AdvisorSiteOnlyAcc" in (out / "stats" / "latex" / "macros.tex").read_text()


def test_fit_refuses_an_uncommitted_spec_and_bad_outputs(tmp_path, capsys):
    spec = _spec_file(tmp_path)
    with pytest.raises(ValueError, match="not committed"):
        fit_advisor(RESULTS, spec, tmp_path / "a")
    with pytest.raises(ValueError, match="source study's folder"):
        fit_advisor(RESULTS, spec, RESULTS / "core", allow_uncommitted_spec=True)
    (tmp_path / "file").write_text("x")
    assert (
        main(["advisor", "--spec", str(spec), "--out", str(tmp_path / "file"), "--allow-uncommitted-spec"])
        == 2
    )
    assert "exists and is not a folder" in capsys.readouterr().err
    for bad in (".", ".."):  # the working folder or its parent would be filled with the advisor's files
        assert main(["advisor", "--spec", str(spec), "--out", bad, "--allow-uncommitted-spec"]) == 2
        assert "not an advisor's" in capsys.readouterr().err
    missing = _spec_file(tmp_path, sources=["core", "nosuchstudy"])
    assert (
        main(["advisor", "--spec", str(missing), "--out", str(tmp_path / "b"), "--allow-uncommitted-spec"])
        == 2
    )
    assert "nosuchstudy: no such study folder" in capsys.readouterr().err


@pytest.fixture
def rule_file(tmp_path) -> Path:
    path = tmp_path / "rule.json"
    rule = Rule(intercept=2.0, slope=2.0, signal=3.0, delta=1.0, band=0.2, fitted_on=10)
    path.write_text(json.dumps(rule.to_dict()))
    return path


def test_advise_api_probes_each_site_and_leaves_the_model_alone(rule_file):
    torch.manual_seed(0)
    model = analog.build_classifier(16, 4, hidden=(8,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [(torch.rand(32, 16), torch.randint(0, 4, (32,))) for _ in range(4)]
    lines: list[str] = []
    advice = analog.advise(model, batches, Rule.load(rule_file), seeds=(0,), progress=lines.append)
    assert [a.site for a in advice] == ["weight", "signal"] and len(lines) == 2
    weight, signal = advice
    assert weight.disagreement < 1e-6 and weight.advice == ADVICE[1]  # clamp: no weight leaves [-1, 1]
    assert signal.disagreement > 1e-3 and len(signal.layer_cosines) == 2
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="batches: empty"):
        analog.advise(model, [], Rule.load(rule_file))
    with pytest.raises(ValueError, match="model: has no analog layers"):
        analog.advise(torch.nn.Linear(16, 4), batches, Rule.load(rule_file))


def test_advise_command_prints_advice_per_site(rule_file, tmp_path, capsys):
    config = tmp_path / "trial.yaml"
    config.write_text(yaml.safe_dump({"dataset": "digits", "hidden": [16], "batch_size": 256}))
    assert main(["advise", "--config", str(config), "--rule", str(rule_file), "--seeds", "0"]) == 0
    out = capsys.readouterr().out
    assert "weight site: STRAIGHT-THROUGH IS SAFE" in out and "signal site:" in out
    assert "probe took" in out and "cosine ste vs exact" in out and "P[exact better" in out


@pytest.fixture
def site_only_rule_file(tmp_path) -> Path:
    """A rule that did not beat the site-only rule on held-out units (useful: false)."""
    path = tmp_path / "site_only_rule.json"
    rule = Rule(
        intercept=2.0,
        slope=2.0,
        signal=3.0,
        delta=1.0,
        band=0.1,
        fitted_on=10,
        useful=False,
        held_out_accuracy=0.7,
        site_only_accuracy=0.67,
        always_exact_accuracy=0.86,
        held_out_units=63,
    )
    path.write_text(json.dumps(rule.to_dict()))
    return path


def test_advise_gives_the_site_only_rule_when_the_rule_did_not_beat_it(site_only_rule_file):
    torch.manual_seed(0)
    model = analog.build_classifier(16, 4, hidden=(8,))
    batches = [(torch.rand(32, 16), torch.randint(0, 4, (32,))) for _ in range(4)]
    advice = analog.advise(model, batches, Rule.load(site_only_rule_file), seeds=(0,))
    for a in advice:
        assert a.advice == SITE_ONLY[a.site] and a.basis == "site-only" and math.isnan(a.probability)
        assert 0 <= a.readout_saturation <= 1  # the measurements are still there, as evidence
    assert advice[1].disagreement > 1e-3


def test_advise_command_says_plainly_it_prints_the_site_only_rule(site_only_rule_file, tmp_path, capsys):
    config = tmp_path / "trial.yaml"
    config.write_text(yaml.safe_dump({"dataset": "digits", "hidden": [16], "batch_size": 256}))
    args = ["advise", "--config", str(config), "--rule", str(site_only_rule_file), "--seeds", "0"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "weight site: STRAIGHT-THROUGH IS SAFE  (site-only rule: signals exact, weights ste)" in out
    assert "signal site: USE THE TRUE DERIVATIVE  (site-only rule" in out
    assert "P[exact" not in out and "evidence (no probability)" in out and "read-out saturation" in out
    assert "did not beat it on 63 held-out" in out and "70% right" in out and "vs 67%" in out


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--seeds", "a,b"], "--seeds: comma-separated integers"),
        (["--seeds", "0,0"], "--seeds: give distinct seeds"),
        (["--seeds", ""], "--seeds: give distinct seeds"),
        (["--seeds", "-1"], "--seeds: give distinct seeds"),
        (["--dataset", "mnits"], "dataset"),
        (["--digital", "true"], "digital: the configuration trains a digital network"),
        (["--rule", "{tmp}/none.json"], "no advisor rule there"),
        (["--rule", "{tmp}/bad.json"], "not an advisor rule"),
    ],
)
def test_advise_command_errors(rule_file, tmp_path, capsys, args, words):
    (tmp_path / "bad.json").write_text('{"intercept": 1}')
    args = [a.format(tmp=tmp_path) for a in args]
    rule = [] if "--rule" in args else ["--rule", str(rule_file)]
    assert main(["advise", "--dataset", "digits", *rule, *args]) == 2
    assert words in capsys.readouterr().err
