"""The five verdicts on a hand-made runs.csv with planted cases, counts over distinct rows, the power for
equivalence, the permutation test, the Bayesian view and the `analogvnn` preset per condition."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats as sst

from study.analysis import stats as S
from study.analysis.publish import stats_stage, summary
from study.sweep.spec import stored_spec_hash

N_SEEDS = 30
# `epochs` is only a label here: one planted case per value (the statistics never look at its meaning)
CASES = {1: "identical", 2: "trivial", 3: "different", 4: "equivalent", 5: "inconclusive"}
METRIC_COLUMNS = ("test_acc", "test_loss", "val_acc", "val_loss", "train_acc", "train_loss")


def planted_runs(cases: dict[int, str] = CASES, seed: int = 3) -> pd.DataFrame:
    """Trials of weight policies exact (a) and ste (b) per case: a - b is the planted difference."""
    rng = np.random.default_rng(seed)
    rows = []
    for epochs, case in cases.items():
        base = 80 + rng.normal(0, 2.0, N_SEEDS)  # seed-to-seed variation the pairing removes
        diff = {
            "identical": np.zeros(N_SEEDS),
            "trivial": 0.1 + rng.normal(0, 0.02, N_SEEDS),  # 0.1 pp, tiny noise
            "different": 3.0 + rng.normal(0, 1.0, N_SEEDS),  # 3 pp
            "equivalent": rng.normal(0, 0.05, N_SEEDS),  # zero effect, tiny noise
            "inconclusive": rng.normal(0, 3.0, N_SEEDS),  # zero effect, 3 pp noise
        }[case]
        for policy, seed_ in itertools.product(("exact", "ste"), range(N_SEEDS)):
            acc = base[seed_] + (diff[seed_] if policy == "exact" else 0.0)
            metrics = {m: acc if m.endswith("acc") else 1 - acc / 100 for m in METRIC_COLUMNS}
            rows.append(
                {
                    "study": "planted",
                    "run_id": f"{len(rows):016x}",
                    "epochs": epochs,
                    "weight_policy": policy,
                    "signal_policy": "exact",
                    "seed": seed_,
                    "status": "done",
                    **metrics,
                    "diverged": False,
                    "failed": False,
                    "wall_time_s": 2.0,
                }
            )
    return pd.DataFrame(rows)


def planted_spec(cases: dict[int, str] = CASES) -> dict:
    return {
        "name": "planted",
        "description": "hand-made cases with known verdicts",
        "base": {"dataset": "digits"},
        "factors": {"epochs": list(cases), "weight_policy": ["exact", "ste"], "signal_policy": ["exact"]},
        "seeds": N_SEEDS,
        "hypotheses": {
            "margin": 0.5,
            "bootstrap_resamples": 999,
            "comparisons": [{"site": "weight", "a": "exact", "b": "ste"}],
        },
    }


def write_study(path: Path, runs: pd.DataFrame, spec: dict) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    runs.assign(spec_hash=stored_spec_hash(spec)).to_csv(path / "runs.csv", index=False)
    return path


def read(out: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(out / name, keep_default_na=False, na_values=[""])


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return stats_stage(write_study(tmp_path_factory.mktemp("v") / "planted", planted_runs(), planted_spec()))


def by_case(out: Path) -> pd.DataFrame:
    comp = read(out, "comparisons.csv")
    return comp.assign(case=comp["epochs"].map(CASES)).set_index("case")


# --------------------------------------------------------------------------- the planted cases


def test_bit_identical_pairs_are_identical_with_no_test(planted: Path) -> None:
    row = by_case(planted).loc["identical"]
    assert row["verdict"] == "identical" and row["n_identical"] == N_SEEDS
    for column in (
        "p_ttest",
        "p_permutation",
        "p_wilcoxon",
        "p_adjusted",
        "p_tost",
        "p_tost_adjusted",
        "mde",
    ):
        assert math.isnan(row[column]), column  # no p-value invented
    assert (row["mean_diff"], row["ci_low"], row["ci_high"]) == (0, 0, 0)
    bayes = read(planted, "bayes.csv").set_index("epochs").loc[1]
    assert math.isnan(bayes["p_equiv"]) and math.isnan(bayes["agrees"])


def test_small_effect_with_tiny_noise_is_trivial(planted: Path) -> None:
    row = by_case(planted).loc["trivial"]
    assert row["verdict"] == "trivial" and row["better"] == "a"
    assert row["p_adjusted"] < 0.05 and -0.5 < row["ci_low"] and row["ci_high"] < 0.5


def test_three_pp_effect_is_different(planted: Path) -> None:
    row = by_case(planted).loc["different"]
    assert row["verdict"] == "different" and row["better"] == "a"
    assert row["mean_diff"] == pytest.approx(3.0, abs=0.5) and row["ci_high"] > 0.5
    assert row["verdict_permutation"] == "different"


def test_zero_effect_with_tiny_noise_is_equivalent(planted: Path) -> None:
    row = by_case(planted).loc["equivalent"]
    assert row["verdict"] == "equivalent" and pd.isna(row["better"])
    assert row["p_adjusted"] >= 0.05 and row["p_tost_adjusted"] < 0.05


def test_zero_effect_with_large_noise_is_inconclusive_and_needs_hundreds_of_seeds(planted: Path) -> None:
    row = by_case(planted).loc["inconclusive"]
    assert row["verdict"] == "inconclusive" and row["n_pairs"] == N_SEEDS
    assert 2 < row["sd_diff"] < 4
    assert 100 <= row["seeds_needed_equivalence"] < 1000
    # the rows that are not inconclusive get no such number
    others = by_case(planted).drop(index="inconclusive")
    assert others["seeds_needed_equivalence"].isna().all()
    report = (planted / "report.md").read_text()
    assert "## Power: what would settle the inconclusive rows" in report
    assert "more trials in 2 cells" in report  # the two policy cells of the one inconclusive row


def test_holm_runs_over_the_tested_rows_for_both_tests(planted: Path) -> None:
    comp = by_case(planted)
    tested = comp.drop(index="identical")
    assert tested["p_adjusted"].to_numpy() == pytest.approx(
        S.adjust_pvalues(tested["p_ttest"].to_numpy(), "holm"), rel=2e-3
    )
    assert tested["p_tost_adjusted"].to_numpy() == pytest.approx(
        S.adjust_pvalues(tested["p_tost"].to_numpy(), "holm"), rel=2e-3, abs=1e-12
    )
    assert (comp["p_primary"].dropna() == comp["p_ttest"].dropna()).all()  # one test, never switched


def test_report_counts_identical_first(planted: Path) -> None:
    report = (planted / "report.md").read_text()
    assert "**1 identical, 1 equivalent, 1 different, 1 trivial, 1 inconclusive**" in report
    macros = (planted / "latex" / "macros.tex").read_text()
    for verdict in ("Identical", "Equivalent", "Different", "Trivial", "Inconclusive"):
        assert rf"\newcommand{{\PlantedWeight{verdict}}}{{1}}" in macros


# --------------------------------------------------------------------------- repeated data counted once


def test_rows_with_the_same_paired_runs_are_merged_and_counted_once(tmp_path: Path) -> None:
    cases = {1: "different", 2: "different", 3: "inconclusive"}
    runs = planted_runs(cases)
    first = runs["epochs"] == 1
    second = runs["epochs"] == 2
    for column in METRIC_COLUMNS:  # case 2 holds exactly the runs of case 1
        runs.loc[second, column] = runs.loc[first, column].to_numpy()
    out = stats_stage(write_study(tmp_path / "planted", runs, planted_spec(cases)))
    comp = read(out, "comparisons.csv").set_index("epochs")
    assert comp.loc[2, "same_data_as"] == "epochs=1" and pd.isna(comp.loc[1, "same_data_as"])
    assert comp.loc[2, "verdict"] == comp.loc[1, "verdict"] == "different"
    assert comp.loc[2, "p_adjusted"] == comp.loc[1, "p_adjusted"]
    # Holm over the two distinct rows, not three
    distinct = comp.drop(index=2)
    assert distinct["p_adjusted"].to_numpy() == pytest.approx(
        S.adjust_pvalues(distinct["p_ttest"].to_numpy(), "holm"), rel=2e-3
    )
    report = (out / "report.md").read_text()
    assert "over 2 distinct conditions (3 rows, of which 1 repeats the paired runs" in report
    assert "**0 identical, 0 equivalent, 1 different, 0 trivial, 1 inconclusive**" in report
    assert "1 distinct condition(s); 2 rows" not in summary([out.parent])
    assert "2 distinct condition(s); 3 rows, 1 repeating" in summary([out.parent])


# --------------------------------------------------------------------------- the rule, power, tests


def test_verdict_rule() -> None:
    v = S.verdict
    assert v(True, 30, math.nan, math.nan, 0, 0, 0.5, 0.05) == "identical"
    assert v(False, 30, 0.01, 0.01, 0.05, 0.2, 0.5, 0.05) == "trivial"
    assert v(False, 30, 0.01, 0.2, 0.2, 0.6, 0.5, 0.05) == "different"  # CI reaches beyond +δ
    assert v(False, 30, 0.01, 0.9, -0.6, -0.1, 0.5, 0.05) == "different"
    assert v(False, 30, 0.2, 0.01, -0.2, 0.2, 0.5, 0.05) == "equivalent"
    assert v(False, 30, 0.2, 0.2, -1.0, 1.0, 0.5, 0.05) == "inconclusive"
    assert v(False, 1, math.nan, math.nan, math.nan, math.nan, 0.5, 0.05) == "inconclusive"


def test_tost_power_is_exact_against_simulation() -> None:
    rng = np.random.default_rng(11)
    for n, sd, mean in ((5, 0.3, 0.0), (20, 1.0, 0.0), (12, 0.4, 0.2)):
        d = rng.normal(mean, sd, (200_000, n))
        m, s = d.mean(axis=1), d.std(axis=1, ddof=1)
        half = sst.t.ppf(0.95, n - 1) * s / math.sqrt(n)
        simulated = np.mean((m - half > -0.5) & (m + half < 0.5))
        assert S.tost_power(n, sd, 0.5, 0.05, mean) == pytest.approx(simulated, abs=0.004)
    assert S.tost_power(20, 0.0, 0.5, 0.05) == 1.0
    assert S.tost_power(20, 2.0, 0.5, 0.05) < 0.01  # only a sample sd far below 2 can let TOST reject


def test_seeds_needed_equivalence_is_the_smallest_n_with_80_percent_power() -> None:
    for sd, alpha in ((3.0, 0.05), (1.5, 0.05 / 36), (0.3, 0.05)):
        n = int(S.seeds_needed_equivalence(sd, 0.5, alpha))
        assert S.tost_power(n, sd, 0.5, alpha) >= 0.8 > S.tost_power(n - 1, sd, 0.5, alpha)
    assert 250 < S.seeds_needed_equivalence(3.0, 0.5, 0.05) < 400  # ~ ((z_.95 + z_.9) * 3 / 0.5)^2
    assert math.isnan(S.seeds_needed_equivalence(0.0, 0.5, 0.05))
    # with n = 20 and δ = 0.5, TOST cannot reject once the sample sd exceeds ~1.3 pp
    assert S.sd_limit_equivalence(20, 0.5, 0.05) == pytest.approx(1.293, abs=1e-3)


def test_permutation_test_matches_exact_enumeration() -> None:
    d = np.array([0.3, -0.1, 0.7, 1.2, -0.4, 0.9, 0.5, 1.6])
    flips = np.array(list(itertools.product([-1, 1], repeat=len(d))))
    means = (flips * d).mean(axis=1)
    exact = np.mean(np.abs(means) >= abs(d.mean()) - 1e-12)
    assert S.permutation_p(d) == pytest.approx(exact, rel=1e-9)
    assert S.permutation_p(np.zeros(6)) == 1.0 and math.isnan(S.permutation_p(np.array([1.0])))
    big = np.random.default_rng(1).normal(0.4, 1, 50)  # 2^50 patterns: seeded random flips
    assert S.permutation_p(big, seed=0) == S.permutation_p(big, seed=0)
    assert S.permutation_p(big) == pytest.approx(S.ttest_p(big, np.zeros(50)), abs=0.02)


def test_posterior_is_the_bayesian_bootstrap_of_the_mean() -> None:
    d = np.array([0.2, -0.6, 1.1, 0.4, 0.9, -0.2, 0.3, 0.7, 1.4, 0.0])
    rng = np.random.default_rng(99)
    mu = rng.dirichlet(np.ones(len(d)), size=200_000) @ d
    out = S.posterior_probs(d, 0.5, higher=True)
    assert out["p_equiv"] == pytest.approx(np.mean(np.abs(mu) < 0.5), abs=0.01)
    assert out["p_a_better"] == pytest.approx(np.mean(mu > 0.5), abs=0.01)
    assert out["p_a_worse"] == pytest.approx(np.mean(mu < -0.5), abs=0.01)
    assert S.posterior_probs(d, 0.5, higher=False)["p_a_worse"] == out["p_a_better"]
    assert S.bayes_decision(0.01, 0.97, 0.02) == "rope" and S.bayes_decision(0.2, 0.5, 0.3) == "undecided"
    assert S.bayes_agrees("different", "a", "a better") == "True"
    assert S.bayes_agrees("inconclusive", "", "rope") == "False"


# --------------------------------------------------------------------------- analogvnn preset per condition


def test_analogvnn_cell_follows_the_normalization() -> None:
    spec = {"base": {}, "factors": {"norm": ["clamp", "l2norm"]}}
    assert S.analogvnn_cell(spec, {"norm": "clamp"}) == {"weight_policy": "ste", "signal_policy": "exact"}
    assert S.analogvnn_cell(spec, {"norm": "l2norm_m"}) == {"weight_policy": "ste", "signal_policy": "ste"}
    spec = {"base": {"signal_norm": "l2norm"}, "factors": {}}
    assert S.analogvnn_cell(spec, {}) == {"weight_policy": "ste", "signal_policy": "ste"}
    assert S.analogvnn_cell({"base": {}}, {"signal_norm": "clamp01"})["signal_policy"] == "exact"
    assert [S.norm_family(n) for n in ("clamp", "clamp01", "l2norm_wm", "l1norm", "none")] == [
        "clamp",
        "clamp",
        "Lp",
        "Lp",
        "none",
    ]


def test_omnibus_and_rows_mark_the_preset_cell_of_each_condition(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    rows = []
    for norm, w, s, seed in itertools.product(
        ("clamp", "l2norm"), ("exact", "ste"), ("exact", "ste"), range(6)
    ):
        acc = 80 + rng.normal(0, 1)
        rows.append(
            {
                "run_id": f"{len(rows):016x}",
                "norm": norm,
                "weight_policy": w,
                "signal_policy": s,
                "seed": seed,
            }
            | {"status": "done", "test_acc": acc, "diverged": False, "failed": False}
        )
    spec = {
        "name": "presets",
        "base": {},
        "factors": {
            "norm": ["clamp", "l2norm"],
            "weight_policy": ["exact", "ste"],
            "signal_policy": ["exact", "ste"],
        },
        "seeds": 6,
        "hypotheses": {"bootstrap_resamples": 999},
    }
    out = stats_stage(write_study(tmp_path / "presets", pd.DataFrame(rows), spec))
    omni = read(out, "omnibus.csv")
    flagged = omni[omni["analogvnn"].astype(str) == "True"].set_index("norm")["combo"].to_dict()
    assert flagged == {"clamp": "ste/exact", "l2norm": "ste/ste"}
    comp = read(out, "comparisons.csv").fillna("")
    signal = comp[(comp["comparison"] == "signal: exact vs ste") & (comp["weight_policy"] == "ste")]
    assert dict(zip(signal["norm"], signal["analogvnn"], strict=True)) == {"clamp": "a", "l2norm": "b"}
    preset = (out / "report.md").read_text().split("## The `analogvnn` preset cell")[1]
    assert "| norm=clamp | ste/exact |" in preset and "| norm=l2norm | ste/ste |" in preset
