"""Statistics stage: each statistic against an independent computation, planted effects end to end,
missing/diverged trials, determinism, and the Holm family-wise error rate."""

from __future__ import annotations

import gc
import itertools
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pingouin as pg
import pytest
import yaml
from scipy import stats as sst

from study.analysis import stats as S
from study.analysis.publish import stats_stage
from study.analysis.report.latex import latex_escape, macro_prefix
from study.sweep.spec import stored_spec_hash

POLICIES = ("exact", "ste", "zero")
SEEDS = list(range(8))


# --------------------------------------------------------------------------- synthetic studies


def planted_effect(dataset: str, wp: str, sp: str) -> float:
    """A: signal exact +2 pp over ste, weight exact = ste; zero is far worse everywhere."""
    effect = 0.0
    if dataset == "A" and sp == "exact":
        effect += 2.0
    if wp == "zero":
        effect -= 8.0
    if sp == "zero":
        effect -= 8.0
    return effect


NOISE = {"A": 0.05, "B": 3.0}


def make_runs(seeds: list[int] = SEEDS, rng_seed: int = 1, name: str = "core") -> pd.DataFrame:
    """One row per trial with the columns of results/README.md."""
    rng = np.random.default_rng(rng_seed)
    seed_effect = rng.normal(0, 1.0, size=max(seeds) + 1)
    rows = []
    for dataset, wp, sp, seed in itertools.product(("A", "B"), POLICIES, POLICIES, seeds):
        acc = 80 + seed_effect[seed] + planted_effect(dataset, wp, sp) + rng.normal(0, NOISE[dataset])
        rows.append(
            {
                "study": name,
                "run_id": f"{len(rows):016x}",
                "spec_hash": "abc123",
                "dataset": dataset,
                "weight_policy": wp,
                "signal_policy": sp,
                "seed": seed,
                "test_acc": acc,
                "test_loss": 1 - acc / 100,
                "val_acc": acc,
                "val_loss": 0.5,
                "epochs_run": 10,
                "diverged": False,
                "failed": False,
                "error": "",
                "wall_time_s": 1.0,
                "torch_version": "2.3",
                "lightning_version": "2.2",
                "normgrad_version": "0.1.0",
                "git_commit": "deadbeef",
            }
        )
    return pd.DataFrame(rows)


def make_spec(name: str = "core", **hypotheses) -> dict:
    hyp = {"margin": 0.5, "bootstrap_resamples": 999} | hypotheses
    return {
        "name": name,
        "description": "synthetic",
        "base": {"epochs": 10},
        "factors": {"dataset": ["A", "B"], "weight_policy": list(POLICIES), "signal_policy": list(POLICIES)},
        "seeds": SEEDS,
        "hypotheses": hyp,
    }


def write_study(path: Path, runs: pd.DataFrame, spec: dict) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    runs.assign(spec_hash=stored_spec_hash(spec)).to_csv(path / "runs.csv", index=False)  # run under it
    return path


def read(out: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(out / name, keep_default_na=False, na_values=[""], dtype={"seed": int})


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Path:
    study = write_study(tmp_path_factory.mktemp("planted"), make_runs(), make_spec())
    return stats_stage(study)


# --------------------------------------------------------------------------- statistics vs independent values

X = np.array([71.2, 73.5, 70.1, 74.8, 72.0, 75.3, 71.9, 73.0])
Y = np.array([70.0, 72.9, 70.4, 73.1, 71.2, 74.0, 71.5, 71.6])
D = X - Y


def test_describe_by_hand():
    out = S.describe_differences(np.array([1.0, 2.0, 4.0, 9.0]))
    assert out == {
        "n_pairs": 4,
        "mean_diff": 4.0,
        "median_diff": 3.0,
        "sd_diff": pytest.approx(math.sqrt(38 / 3)),
    }


def hand_bca(d: np.ndarray, resamples: int = 40000, level: float = 0.95) -> tuple[float, float]:
    """Textbook BCa (Efron & Tibshirani 1993, ch. 14) with an independent resampler."""
    rng = np.random.default_rng(123)
    theta = d.mean()
    boot = d[rng.integers(0, len(d), size=(resamples, len(d)))].mean(axis=1)
    z0 = sst.norm.ppf(np.mean(boot < theta))
    jack = np.array([np.delete(d, i).mean() for i in range(len(d))])
    u = jack.mean() - jack
    acc = np.sum(u**3) / (6 * np.sum(u**2) ** 1.5)
    z = sst.norm.ppf([(1 - level) / 2, (1 + level) / 2])
    q = sst.norm.cdf(z0 + (z0 + z) / (1 - acc * (z0 + z)))
    return tuple(np.quantile(boot, q))


def test_bootstrap_bca_matches_textbook_bca():
    low, high, method = S.bootstrap_ci(X, Y, resamples=9999, seed=0)
    ref = hand_bca(D)
    assert method == "bca"
    assert low == pytest.approx(ref[0], abs=0.04) and high == pytest.approx(ref[1], abs=0.04)
    assert low < D.mean() < high


def test_bootstrap_fallbacks():
    assert S.bootstrap_ci(np.array([3.0, 4.0]), np.array([2.0, 3.0]), 999, 0) == (1.0, 1.0, "degenerate")
    low, high, method = S.bootstrap_ci(np.array([1.0]), np.array([0.0]), 999, 0)
    assert method == "none" and math.isnan(low) and math.isnan(high)


def test_bootstrap_is_seeded():
    assert S.bootstrap_ci(X, Y, 999, 7) == S.bootstrap_ci(X, Y, 999, 7)


def test_ttest_matches_pingouin():
    assert S.ttest_p(X, Y) == pytest.approx(pg.ttest(X, Y, paired=True)["p_val"].iloc[0], rel=1e-9)
    assert S.ttest_p(X, X) == 1.0


def test_wilcoxon_matches_exact_enumeration():
    d = np.array([0.3, -0.1, 0.7, 1.2, -0.4, 0.9, 0.5, 1.6])  # no ties, no zeros
    ranks = sst.rankdata(np.abs(d))
    observed = ranks[d > 0].sum()
    total = ranks.sum()
    w_plus = [
        sum(r for r, s in zip(ranks, signs, strict=True) if s)
        for signs in itertools.product([0, 1], repeat=len(d))
    ]
    extreme = min(observed, total - observed)
    p_exact = np.mean([min(w, total - w) <= extreme for w in w_plus])
    assert S.wilcoxon_p(d) == pytest.approx(p_exact, rel=1e-12)
    assert S.wilcoxon_p(np.zeros(5)) == 1.0
    assert S.wilcoxon_p(np.ones(5)) == pytest.approx(2 / 2**5)  # all positive: 2 of 32 sign patterns


def test_one_test_without_a_normality_pretest():
    """The primary test is the paired t-test whatever the shape of the differences (no Shapiro switch)."""
    skewed = np.array([0.1, 0.1, 0.2, 0.1, 0.3, 0.1, 4.0, 0.2])  # Shapiro-Wilk rejects normality here
    assert sst.shapiro(skewed).pvalue < 0.05
    hyp = S.load_hypotheses({})
    out = S.row_statistics(skewed, np.zeros(len(skewed)), hyp)
    assert out["p_primary"] == out["p_ttest"] == pytest.approx(sst.ttest_1samp(skewed, 0).pvalue)
    assert "test_used" not in S.STAT_COLUMNS and "shapiro_p" not in S.STAT_COLUMNS
    assert not hasattr(S, "choose_test")


def test_tost_matches_pingouin_and_t_interval():
    p, low, high = S.tost(X, Y, margin=1.5, alpha=0.05)
    assert p == pytest.approx(pg.tost(X, Y, bound=1.5, paired=True)["pval"].iloc[0], rel=1e-9)
    n, sd = len(D), D.std(ddof=1)
    half = sst.t.ppf(0.95, n - 1) * sd / math.sqrt(n)  # 90% two-sided interval
    assert (low, high) == (pytest.approx(D.mean() - half), pytest.approx(D.mean() + half))
    assert S.tost(X, X, 0.5, 0.05) == (0.0, 0.0, 0.0)


def test_effect_sizes_by_hand():
    d = np.array([1.0, 2.0, 4.0])
    assert S.cohen_dz(d) == pytest.approx((7 / 3) / np.std(d, ddof=1))
    # Walsh averages: 1, 1.5, 2.5, 2, 3, 4 -> median 2.25
    assert S.hodges_lehmann(d) == pytest.approx(2.25)
    assert S.prob_a_better(np.array([1.0, -1.0, 0.0, 2.0]), higher=True) == 0.5
    assert S.prob_a_better(np.array([1.0, -1.0, 0.0, 2.0]), higher=False) == 0.25


def test_power_matches_pingouin():
    d_min = pg.power_ttest(d=None, n=8, power=0.8, alpha=0.05, contrast="paired")
    assert S.mde(8, 2.0, 0.05) == pytest.approx(2.0 * d_min, rel=1e-4)
    for n in (2, 3):  # pingouin cannot solve n = 2: check the power at the MDE by hand (noncentral t)
        crit, nc = sst.t.ppf(0.975, n - 1), S.mde(n, 1.0, 0.05) * math.sqrt(n)
        power = sst.nct.sf(crit, n - 1, nc) + sst.nct.cdf(-crit, n - 1, nc)
        assert power == pytest.approx(0.8, abs=1e-4)
    # `seeds_needed` (pairs to detect a difference of δ) is gone: it is not what settles equivalence;
    # `seeds_needed_equivalence` (TOST power) is tested in test_verdicts.py
    assert "seeds_needed" not in S.STAT_COLUMNS and "seeds_needed_equivalence" in S.STAT_COLUMNS


def test_holm_by_hand():
    p = np.array([0.01, 0.04, 0.03, 0.2, np.nan])
    # sorted 0.01, 0.03, 0.04, 0.2 times 4, 3, 2, 1 -> 0.04, 0.09, 0.08 -> monotone 0.09, 0.2
    out = S.adjust_pvalues(p, "holm")
    assert out[:4] == pytest.approx([0.04, 0.09, 0.09, 0.2])
    assert math.isnan(out[4])
    assert S.adjust_pvalues(p, "none")[:4] == pytest.approx(p[:4])


def test_bayes_table_is_the_posterior_of_the_differences(planted):
    """bayes.csv holds the Bayesian-bootstrap posterior of each row's differences, not a t computation."""
    bayes, diffs = read(planted, "bayes.csv").fillna(""), read(planted, "differences.csv").fillna("")
    keys = ["comparison", "dataset", "weight_policy", "signal_policy"]
    row = bayes[(bayes["comparison"] == "signal: exact vs ste") & (bayes["dataset"] == "B")].iloc[0]
    sel = diffs.merge(row[keys].to_frame().T, on=keys)
    out = S.posterior_probs(sel["diff"].to_numpy(), 0.5, higher=True)
    assert row["p_equiv"] == pytest.approx(out["p_equiv"], rel=1e-3)
    assert row["bayes_decision"] == S.bayes_decision(out["p_a_worse"], out["p_equiv"], out["p_a_better"])


def test_friedman_ranks_and_nemenyi():
    rng = np.random.default_rng(3)
    block = pd.DataFrame(rng.normal(size=(6, 4)) + [0, 0.5, 1, 10], columns=list("abcd"))
    long = block.reset_index().melt(id_vars="index", var_name="g", value_name="v")
    ref = pg.friedman(long, dv="v", within="g", subject="index")
    stat, p = S.friedman(block)
    assert stat == pytest.approx(ref["Q"].iloc[0]) and p == pytest.approx(ref["p_unc"].iloc[0])
    ranks = S.mean_ranks(block, higher=True)
    assert ranks["d"] == 1.0  # always the largest value
    by_hand = np.mean([sst.rankdata(-row) for row in block.to_numpy()], axis=0)
    assert ranks.to_numpy() == pytest.approx(by_hand)
    # Demsar (2006), Table 5: q_0.05 = 2.343 (k=3), 2.569 (k=4), 2.728 (k=5)
    for k, q in [(3, 2.343), (4, 2.569), (5, 2.728)]:
        assert S.nemenyi_cd(k, 10, 0.05) == pytest.approx(q * math.sqrt(k * (k + 1) / 60), abs=2e-3)
    rows = S.posthoc_pairs(block, ranks, 0.05)
    ad = next(r for r in rows if (r["combo_a"], r["combo_b"]) == ("a", "d"))
    z = abs(ad["mean_rank_diff"]) / math.sqrt(4 * 5 / (6 * 6))
    assert ad["p_nemenyi"] == pytest.approx(sst.studentized_range.sf(z * math.sqrt(2), 4, np.inf), rel=1e-6)
    assert S.friedman(pd.DataFrame([[1, 1, 1], [2, 2, 2]])) == (0.0, 1.0)


# --------------------------------------------------------------------------- planted effects end to end


def rows_of(frame: pd.DataFrame, comparison: str, dataset: str) -> pd.DataFrame:
    return frame[(frame["comparison"] == comparison) & (frame["dataset"] == dataset)]


def test_planted_difference_is_different_with_right_better(planted):
    comp = read(planted, "comparisons.csv")
    rows = rows_of(comp, "signal: exact vs ste", "A")
    assert len(rows) == 3  # one per weight policy
    assert set(rows["verdict"]) == {"different"} and set(rows["better"]) == {"a"}
    assert rows["mean_diff"].to_numpy() == pytest.approx(2.0, abs=0.15)
    assert (rows["ci_low"] < rows["mean_diff"]).all() and (rows["mean_diff"] < rows["ci_high"]).all()


def test_planted_zero_difference_small_noise_is_equivalent(planted):
    rows = rows_of(read(planted, "comparisons.csv"), "weight: exact vs ste", "A")
    assert set(rows["verdict"]) == {"equivalent"} and set(rows["better"].fillna("")) == {""}
    assert (rows["p_tost"] < 0.05).all() and (rows["tost_ci_high"] < 0.5).all()


def test_planted_zero_difference_large_noise_is_inconclusive(planted):
    comp = read(planted, "comparisons.csv")
    for label in ("weight: exact vs ste", "signal: exact vs ste"):
        assert set(rows_of(comp, label, "B")["verdict"]) == {"inconclusive"}


def test_positive_control_detected_and_reported(planted):
    comp = read(planted, "comparisons.csv")
    ctrl = comp[comp["role"] == "positive_control"]
    assert len(ctrl) == 12 and set(ctrl["verdict"]) == {"different"} and set(ctrl["better"]) == {"b"}
    report = (planted / "report.md").read_text()
    # issue #21: rows with `zero` at the other site too compare two untrained networks: not controls
    assert (
        "`weight: zero vs ste`: `different` in **4 of 4 informative distinct conditions** (2 more row(s) "
        "have `zero` at the other site too" in report
    )
    assert report.index("## Answer") < report.index("## Positive control") < report.index("## Per-condition")
    assert "`analogvnn` preset cell" in report


def test_comparison_columns_and_family(planted):
    comp = read(planted, "comparisons.csv")
    required = [
        "comparison",
        "site",
        "policy_a",
        "policy_b",
        "dataset",
        "weight_policy",
        "signal_policy",
        "metric",
        "n_pairs",
        "mean_diff",
        "median_diff",
        "sd_diff",
        "ci_low",
        "ci_high",
        "p_ttest",
        "p_wilcoxon",
        "p_adjusted",
        "p_tost",
        "tost_ci_low",
        "tost_ci_high",
        "margin",
        "dz",
        "hodges_lehmann",
        "prob_a_better",
        "mde",
        "seeds_needed_equivalence",
        "verdict",
        "verdict_permutation",
        "better",
        "p_primary",
        "p_permutation",
        "p_permutation_adjusted",
        "p_tost_adjusted",
        "n_identical",
        "same_data_as",
        "analogvnn",
        "ci_method",
        "role",
    ]
    assert set(required) <= set(comp.columns)
    assert len(comp) == 4 * 2 * 3
    primary = comp[comp["role"] == "primary"]
    expected = S.adjust_pvalues(primary["p_primary"].to_numpy(), "holm")
    assert primary["p_adjusted"].to_numpy() == pytest.approx(expected, rel=1e-5)
    assert comp["p_primary"].to_numpy() == pytest.approx(comp["p_ttest"].to_numpy(), rel=1e-5)  # one test


def test_differences_and_bayes_align_with_comparisons(planted):
    comp, diffs, bayes = (read(planted, n) for n in ("comparisons.csv", "differences.csv", "bayes.csv"))
    assert list(diffs.columns) == [
        "comparison",
        "role",
        "site",
        "policy_a",
        "policy_b",
        "dataset",
        "weight_policy",
        "signal_policy",
        "seed",
        "value_a",
        "value_b",
        "diff",
    ]
    keys = ["comparison", "dataset", "weight_policy", "signal_policy"]
    means = diffs.fillna("").groupby(keys, sort=False)["diff"].mean().reset_index()
    merged = comp.fillna({"weight_policy": "", "signal_policy": ""}).merge(means, on=keys)
    # mean_diff is written with the 4 significant digits of the number policy (study.tables)
    assert merged["diff"].to_numpy() == pytest.approx(merged["mean_diff"].to_numpy(), rel=6e-4, abs=1e-9)
    assert list(bayes["comparison"]) == list(comp["comparison"]) and len(bayes) == len(comp)
    total = bayes[["p_a_worse", "p_equiv", "p_a_better"]].sum(axis=1)
    assert total.to_numpy() == pytest.approx(1.0, abs=2e-4)  # three probabilities at 4 significant digits


def test_omnibus_posthoc_and_model(planted):
    omni = read(planted, "omnibus.csv")
    assert len(omni) == 2 * 9 and set(omni["k"]) == {9} and set(omni["n_seeds"]) == {8}
    a = omni[omni["dataset"] == "A"].set_index("combo")
    assert a.loc["exact/exact", "mean_rank"] < a.loc["zero/zero", "mean_rank"]
    assert a["friedman_p"].iloc[0] < 0.001
    post = read(planted, "posthoc.csv")
    assert len(post) == 2 * 36
    model = read(planted, "model.csv")
    assert list(model.columns) == ["term", "coef", "std_err", "z", "p", "ci_low", "ci_high"]
    zero = model.set_index("term").loc["weight_policy[zero]", "coef"]
    assert zero == pytest.approx(-8.0, abs=1.5)
    assert "warnings (" in (planted / "model.txt").read_text()


def test_mixed_model_unfittable_is_explained():
    table = pd.DataFrame(
        {
            "dataset": ["A"] * 2,
            "weight_policy": ["ste"] * 2,
            "signal_policy": ["exact"] * 2,
            "seed": [0, 0],
            "value": [1.0, 2.0],
            "status": ["ok", "ok"],
        }
    )
    text, frame = S.fit_mixed_model(table, make_spec(), S.load_hypotheses(make_spec()))
    assert "model not fitted" in text and frame.empty


def test_latex_outputs(planted):
    latex = planted / "latex"
    macros = (latex / "macros.tex").read_text()
    names = re.findall(r"\\newcommand\{\\([^}]*)\}", macros)
    assert names and all(re.fullmatch(r"[A-Za-z]+", n) for n in names) and len(names) == len(set(names))
    assert r"\newcommand{\CoreSignalPrimaryDifferent}{3}" in macros
    assert r"\newcommand{\CoreTrials}{144}" in macros
    table = (latex / "comparisons_signal.tex").read_text()
    assert r"\toprule" in table and r"\begin{tabular}" in table and r"\begin{table}" not in table
    # readable column headers, never raw column names (issue #21)
    assert "Weight-site policy" in table and "Dataset" in table and r"weight\_policy" not in table
    assert macro_prefix("generality") == "Generality" and macro_prefix("exp2_noise") == "ExpTwoNoise"
    assert latex_escape("a_b & 5%") == r"a\_b \& 5\%"


# --------------------------------------------------------------------------- missing, diverged, determinism


def test_missing_and_diverged_never_shift_pairing(tmp_path):
    runs = make_runs()
    cell = (runs["dataset"] == "A") & (runs["weight_policy"] == "ste")
    failed = cell & (runs["signal_policy"] == "exact") & (runs["seed"] == 2)
    runs.loc[failed, ["test_acc", "failed", "error"]] = [np.nan, True, "RuntimeError: boom"]
    diverged = cell & (runs["signal_policy"] == "ste") & (runs["seed"] == 5)
    runs.loc[diverged, "diverged"] = True
    absent = cell & (runs["signal_policy"] == "ste") & (runs["seed"] == 6)
    full = runs.copy()
    # collect's row for a trial that never ran: status `missing`, no metric
    runs.loc[absent, ["status", "test_acc"]] = ["missing", np.nan]
    runs = runs.sample(frac=1.0, random_state=0)  # shuffled rows must not matter

    out = stats_stage(write_study(tmp_path / "ex", runs, make_spec(diverged="exclude")))
    missing = read(out, "missing.csv")
    assert list(missing.columns) == [
        "comparison",
        "role",
        "site",
        "policy_a",
        "policy_b",
        "dataset",
        "weight_policy",
        "signal_policy",
        "seed",
        "policy_a_status",
        "policy_b_status",
    ]
    sig = missing[
        (missing["comparison"] == "signal: exact vs ste")
        & (missing["dataset"] == "A")
        & (missing["weight_policy"] == "ste")
    ]
    got = sorted(zip(sig["seed"], sig["policy_a_status"], sig["policy_b_status"], strict=True))
    assert got == [(2, "failed", "ok"), (5, "ok", "diverged"), (6, "ok", "absent")]

    diffs = read(out, "differences.csv").fillna("")
    sel = diffs[
        (diffs["comparison"] == "signal: exact vs ste")
        & (diffs["dataset"] == "A")
        & (diffs["weight_policy"] == "ste")
    ]
    assert sorted(sel["seed"]) == [0, 1, 3, 4, 7]
    value = full.set_index(["dataset", "weight_policy", "signal_policy", "seed"])["test_acc"]
    for _, r in sel.iterrows():
        assert r["value_a"] == pytest.approx(value[("A", "ste", "exact", r["seed"])], rel=1e-6)
        assert r["value_b"] == pytest.approx(value[("A", "ste", "ste", r["seed"])], rel=1e-6)
    comp = read(out, "comparisons.csv").fillna("")
    row = comp[
        (comp["comparison"] == "signal: exact vs ste")
        & (comp["dataset"] == "A")
        & (comp["weight_policy"] == "ste")
    ]
    assert row["n_pairs"].item() == 5
    report = (out / "report.md").read_text()
    assert "## Missing data" in report and "diverged" in report and "absent" in report and "failed" in report
    assert "trials: 144 total, 1 failed, 1 diverged, 1 not run" in report

    # default (diverged: include): the diverged trial is data, only failed and absent are missing
    out = stats_stage(write_study(tmp_path / "in", runs, make_spec()))
    missing = read(out, "missing.csv")
    assert "diverged" not in set(missing["policy_a_status"]) | set(missing["policy_b_status"])
    assert (
        "1 diverged trial(s) in the runs; 4 analysed pair(s) contain one" in (out / "report.md").read_text()
    )


def test_same_input_gives_byte_identical_outputs(tmp_path):
    runs, spec = make_runs(), make_spec()
    first = stats_stage(write_study(tmp_path / "one", runs, spec))
    second = stats_stage(write_study(tmp_path / "two", runs, spec))
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert len(files) == 16  # skipped.csv (issue #15); duplicates, sensitivity (.csv, .tex) (issue #21)
    for name in files:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_report_optional_sections_and_skips(tmp_path):
    runs = make_runs()
    runs = runs[runs["signal_policy"] != "zero"]  # drops the signal positive control
    spec = make_spec()
    spec["exclude"] = [{"signal_policy": "zero"}]
    study = write_study(tmp_path / "s", runs, spec)
    (study / "verify.json").write_text(json.dumps({"checked": 3, "matched": 2, "mismatches": ["run 7"]}))
    (study / "run_summary.json").write_text(json.dumps({"wall_time_s": 12.5, "trials": 144}))
    out = stats_stage(study)
    report = (out / "report.md").read_text()
    assert "**skipped** `signal: zero vs ste`" in report
    assert "## Verification" in report and "matched: 2" in report and "run 7" in report
    assert "## Run" in report and "wall_time_s: 12.5" in report
    assert "`exclude` rules" in report
    assert str(tmp_path) not in report


def test_too_few_pairs_is_inconclusive_and_loss_flips_better(tmp_path):
    runs = make_runs(seeds=[0])
    out = stats_stage(write_study(tmp_path / "one", runs, {**make_spec(), "seeds": [0]}))
    comp = read(out, "comparisons.csv")
    assert set(comp["verdict"]) == {"inconclusive"} and comp["p_ttest"].isna().all()
    assert "model not fitted" in (out / "model.txt").read_text()

    out = stats_stage(write_study(tmp_path / "loss", make_runs(), make_spec(metric="test_loss")))
    rows = rows_of(read(out, "comparisons.csv"), "signal: exact vs ste", "A")
    # 2 pp of accuracy is 0.02 of loss here, well inside the margin of 0.5 (loss units): significant but
    # trivial; lower loss is better, so a (exact) is the better side
    assert set(rows["verdict"]) == {"trivial"} and set(rows["better"]) == {"a"}


# --------------------------------------------------------------------------- family-wise error rate


def test_holm_keeps_family_wise_error_at_nominal_rate(monkeypatch):
    """20 conditions of pure noise, 1000 simulated studies: P(any adjusted p < alpha) stays at 5%.

    The per-row paired t-test p-values are computed vectorized (scipy, axis=1) and checked against the
    stage's own function on the first rows; the Holm adjustment is the stage's.
    """
    # statsmodels' multipletests calls gc.collect() on every call (~70 ms here); skip that in this loop
    monkeypatch.setattr(gc, "collect", lambda *args: 0)
    rng = np.random.default_rng(2024)
    hyp = S.load_hypotheses({})
    sims, conditions, n = 1000, 20, 8
    a, b = rng.normal(75, 1.0, (sims * conditions, n)), rng.normal(75, 1.0, (sims * conditions, n))
    p_t = sst.ttest_rel(a, b, axis=1).pvalue
    for i in range(10):
        assert S.ttest_p(a[i], b[i]) == pytest.approx(p_t[i], rel=1e-9)
    p = p_t.reshape(sims, conditions)
    any_false = [bool((S.adjust_pvalues(row, "holm") < hyp.alpha).any()) for row in p]
    raw_false = (p < hyp.alpha).any(axis=1).mean()
    rate = float(np.mean(any_false))
    se = math.sqrt(0.05 * 0.95 / sims)
    assert 0.05 - 4 * se <= rate <= 0.05 + 3 * se
    assert raw_false > 0.5  # without correction, 20 tests at 5% give ~64% studies with a false positive


def test_tables_are_the_same_whatever_the_floating_point_order(tmp_path: Path) -> None:
    """Another machine's BLAS/SIMD changes the last bits of every estimate; shuffling the rows does the
    same here. Effects that are exactly zero (weight exact = ste, bit-identical runs) came out as
    ±1e-13 with order-dependent digits; the number policy writes the same files either way."""
    runs = make_runs()
    ste = runs[runs["weight_policy"] == "ste"].set_index(["dataset", "signal_policy", "seed"])["test_acc"]
    exact = runs["weight_policy"] == "exact"
    keys = list(runs.loc[exact, ["dataset", "signal_policy", "seed"]].itertuples(index=False, name=None))
    runs.loc[exact, "test_acc"] = ste.loc[keys].to_numpy()
    outs = []
    for i, order in enumerate((np.arange(len(runs)), np.random.default_rng(7).permutation(len(runs)))):
        outs.append(stats_stage(write_study(tmp_path / f"s{i}", runs.iloc[order], make_spec())))
    model = read(outs[0], "model.csv").set_index("term")
    assert model.loc["weight_policy[exact]", "coef"] == 0 and model.loc["weight_policy[exact]", "z"] == 0
    for f in sorted(p.relative_to(outs[0]) for p in outs[0].rglob("*") if p.is_file()):
        assert (outs[0] / f).read_bytes() == (outs[1] / f).read_bytes(), f
