"""Contracts of the statistics stage that mutation testing (benchmarks/mutation.py) found unguarded: how trial
flags and statuses are read, and the small helpers behind comparisons.csv. Expected values by hand."""

from __future__ import annotations

import itertools
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats as sst

from study.analysis import stats as S
from study.analysis.publish import stats_stage
from study.tables import truthy


def _hyp(**kwargs) -> S.Hypotheses:
    return S.load_hypotheses({"hypotheses": kwargs})


# --- flags and statuses ------------------------------------------------------------------------------


def test_truthy_reads_the_usual_spellings_and_a_missing_column_as_false():
    frame = pd.DataFrame(
        {
            "flag": [
                "True",
                "1",
                "1.0",
                "yes",
                " YES ",
                "true",
                "0",
                "False",
                "",
                None,
                "no",
                1,
                0,
                True,
                False,
            ]
        },
        index=range(100, 115),
    )
    got = truthy(frame, "flag")
    assert got.tolist() == [True] * 6 + [False] * 5 + [True, False, True, False]
    assert got.index.equals(frame.index)
    missing = truthy(frame, "absent")
    assert missing.dtype == bool and not missing.any() and missing.index.equals(frame.index)


def test_trial_status_failed_diverged_ok():
    runs = pd.DataFrame(
        {
            "test_acc": [90.0, "n/a", 80.0, 85.0, None],
            "failed": [False, False, True, False, False],
            "diverged": [False, False, False, "true", False],
        },
        index=[7, 3, 9, 1, 5],
    )
    excluded = S.trial_status(runs, _hyp(diverged="exclude"))
    assert excluded.name == "status" and excluded.index.equals(runs.index)
    assert excluded.tolist() == ["ok", "failed", "failed", "diverged", "failed"]
    included = S.trial_status(runs, _hyp())  # diverged: include (the default) keeps the trial as data
    assert included.tolist() == ["ok", "failed", "failed", "ok", "failed"]
    no_flags = S.trial_status(runs[["test_acc"]], _hyp(diverged="exclude"))
    assert no_flags.tolist() == ["ok", "failed", "ok", "ok", "failed"]


def test_trial_table_keeps_the_status_and_value_of_each_trial():
    runs = pd.DataFrame(
        {
            "run_id": ["b", "a", "c"],
            "weight_policy": ["ste", "ste", "exact"],
            "signal_policy": ["exact", "exact", "exact"],
            "seed": [0, 1, 0],
            "test_acc": [90.0, np.nan, 70.0],
            "failed": [False, True, False],
        },
        index=[30, 10, 20],
    )
    spec = {"factors": {"weight_policy": ["exact", "ste"], "signal_policy": ["exact"]}}
    table = S.trial_table(runs, spec, _hyp())
    rows = {(r.weight_policy, r.seed): (r.value, r.status) for r in table.itertuples()}
    assert rows[("ste", 0)] == (90.0, "ok") and rows[("exact", 0)] == (70.0, "ok")
    assert rows[("ste", 1)][1] == "failed" and np.isnan(rows[("ste", 1)][0])


# --- the tables compute_stats writes, value by value ---------------------------------------------------

POLICIES = ("exact", "ste", "zero")
SEEDS = list(range(5))


def _study_runs() -> pd.DataFrame:
    rng = np.random.default_rng(11)
    rows = []
    for dataset, wp, sp, seed in itertools.product(("A", "B"), POLICIES, POLICIES, SEEDS):
        acc = 80 + seed + (1.5 if sp == "exact" else 0) - (10 if "zero" in (wp, sp) else 0) + rng.normal(0, 1)
        rows.append(
            {
                "run_id": f"r{len(rows):04d}",
                "dataset": dataset,
                "weight_policy": wp,
                "signal_policy": sp,
                "seed": seed,
                "test_acc": round(acc, 3),
                "diverged": False,
                "failed": False,
            }
        )
    return pd.DataFrame(rows)


SPEC = {
    "name": "tables",
    "factors": {"dataset": ["B", "A"], "weight_policy": list(POLICIES), "signal_policy": list(POLICIES)},
    "seeds": SEEDS,
    "hypotheses": {"margin": 0.5, "bootstrap_resamples": 200},
}
KEYS = ["dataset", "weight_policy", "signal_policy"]


@pytest.fixture(scope="module")
def tables(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tables")
    (root / "spec.yaml").write_text(yaml.safe_dump(SPEC, sort_keys=False))
    _study_runs().to_csv(root / "runs.csv", index=False)
    return stats_stage(root)


def _read(out: Path, name: str) -> pd.DataFrame:
    """A written table; the own site's policy column is empty in comparison rows (read as "")."""
    frame = pd.read_csv(out / name, keep_default_na=False, na_values=[""])
    return frame.assign(**{c: frame[c].fillna("") for c in [*KEYS, "better"] if c in frame})


def _walsh_median(d: np.ndarray) -> float:
    return float(np.median([(d[i] + d[j]) / 2 for i in range(len(d)) for j in range(i, len(d))]))


def test_comparison_rows_every_statistic_by_hand(tables: Path):
    comp, diffs = _read(tables, "comparisons.csv"), _read(tables, "differences.csv")
    assert len(comp) == 4 * 2 * 3
    for _, row in comp.iterrows():
        sel = diffs[(diffs[["comparison", *KEYS]] == row[["comparison", *KEYS]].to_numpy()).all(axis=1)]
        d = sel["diff"].to_numpy(float)
        n, mean, sd = len(d), d.mean(), d.std(ddof=1)
        half = sst.t.ppf(0.95, n - 1) * sd / math.sqrt(n)  # TOST: the (1 - 2 alpha) = 90% t interval
        assert row["margin"] == 0.5 and row["metric"] == "test_acc" and n == row["n_pairs"] == 5
        half95 = sst.t.ppf(0.975, n - 1) * sd / math.sqrt(n)  # the 95% paired t interval of the mean
        assert row["ci_method"] == "t"
        assert row["ci_low"] == pytest.approx(mean - half95, rel=5e-4, abs=1e-5)
        assert row["ci_high"] == pytest.approx(mean + half95, rel=5e-4, abs=1e-5)
        assert row["tost_ci_low"] == pytest.approx(mean - half, rel=5e-4, abs=1e-5)
        assert row["tost_ci_high"] == pytest.approx(mean + half, rel=5e-4, abs=1e-5)
        assert row["hodges_lehmann"] == pytest.approx(_walsh_median(d), rel=5e-4, abs=1e-5)
        assert row["dz"] == pytest.approx(mean / sd, rel=5e-4)
        # issue #14: `better` names the side of every significant difference (different or trivial)
        assert row["better"] == (
            "" if row["verdict"] not in ("different", "trivial") else "a" if mean > 0 else "b"
        )
        assert row["p_ttest"] == pytest.approx(sst.ttest_rel(sel["value_a"], sel["value_b"]).pvalue, rel=1e-3)
        assert row["p_primary"] == row["p_ttest"]  # one pre-specified test: no normality pre-test switching


def test_written_floats_have_the_number_policys_four_significant_digits(tables: Path):
    text = (tables / "comparisons.csv").read_text()
    numbers = re.findall(r"(?<![\w.])-?\d+\.\d+(?:e[-+]\d+)?", text)
    assert numbers
    for token in numbers:
        mantissa = token.lstrip("-").split("e")[0].replace(".", "").lstrip("0")
        assert len(mantissa) <= 4, token  # study.tables.SIG_DIGITS


def test_bayes_table_columns_and_posteriors(tables: Path):
    bayes, comp = _read(tables, "bayes.csv"), _read(tables, "comparisons.csv")
    assert list(bayes.columns) == (
        ["comparison", "role", "site", "policy_a", "policy_b", *KEYS]
        + ["metric", "n_pairs", "margin", "mean_diff", "p_a_worse", "p_equiv", "p_a_better"]
        + ["bayes_decision", "same_data_as", "verdict", "agrees"]
    )
    assert (bayes[["comparison", *KEYS, "verdict"]] == comp[["comparison", *KEYS, "verdict"]]).all().all()
    diffs = _read(tables, "differences.csv")
    rng = np.random.default_rng(99)
    for (_, b), (_, c) in zip(bayes.iterrows(), comp.iterrows(), strict=True):
        sel = diffs[(diffs[["comparison", *KEYS]] == c[["comparison", *KEYS]].to_numpy()).all(axis=1)]
        d = sel["diff"].to_numpy(float)
        # issue #14: a Bayesian bootstrap of the mean (Dirichlet(1,...,1) weights), not the t posterior;
        # an independent draw here agrees within Monte Carlo error (20,000 draws in the stage)
        mu = rng.dirichlet(np.ones(len(d)), size=40_000) @ d
        assert b["p_a_worse"] == pytest.approx(np.mean(mu < -0.5), abs=0.02)
        assert b["p_equiv"] == pytest.approx(np.mean(np.abs(mu) < 0.5), abs=0.02)
        assert b["p_a_worse"] + b["p_equiv"] + b["p_a_better"] == pytest.approx(1, abs=2e-3)


def test_omnibus_and_posthoc_by_hand(tables: Path):
    omni, post = _read(tables, "omnibus.csv"), _read(tables, "posthoc.csv")
    assert list(omni.columns) == [
        "dataset",
        "combo",
        "weight_policy",
        "signal_policy",
        "metric",
        "n_seeds",
    ] + [
        "mean_metric",
        "mean_rank",
        "friedman_stat",
        "friedman_p",
        "cd",
        "k",
        "n_combos",  # issue #21: combinations with identical runs are ranked once, as one group
        "analogvnn",  # issue #14: the preset cell of each condition is marked
    ]
    assert list(post.columns) == [
        "dataset",
        "combo_a",
        "combo_b",
        "mean_rank_diff",
        "p_nemenyi",
        "significant",
    ]
    assert list(dict.fromkeys(omni["dataset"])) == ["B", "A"]  # the spec's order
    runs = _study_runs().assign(combo=lambda r: r["weight_policy"] + "/" + r["signal_policy"])
    for dataset, block in runs.groupby("dataset"):
        wide = block.pivot(index="seed", columns="combo", values="test_acc")
        ranks = dict(
            zip(wide.columns, np.mean([sst.rankdata(-r) for r in wide.to_numpy()], axis=0), strict=True)
        )
        stat = sst.friedmanchisquare(*wide.to_numpy().T).statistic
        k, n = wide.shape[1], wide.shape[0]
        cd = sst.studentized_range.ppf(0.95, k, np.inf) / math.sqrt(2) * math.sqrt(k * (k + 1) / (6 * n))
        got = omni[omni["dataset"] == dataset].set_index("combo")
        assert set(got["k"]) == {9} and set(got["n_seeds"]) == {5}
        for combo in wide.columns:
            assert got.at[combo, "mean_metric"] == pytest.approx(wide[combo].mean(), rel=5e-4)
            assert got.at[combo, "mean_rank"] == pytest.approx(ranks[combo], rel=5e-4)
            assert (got.at[combo, "weight_policy"], got.at[combo, "signal_policy"]) == tuple(combo.split("/"))
        assert got["friedman_stat"].iloc[0] == pytest.approx(stat, rel=5e-4)
        assert got["cd"].iloc[0] == pytest.approx(cd, rel=5e-4)
        pairs = post[post["dataset"] == dataset]
        assert len(pairs) == 9 * 8 // 2
        for _, p in pairs.iterrows():
            assert p["mean_rank_diff"] == pytest.approx(
                ranks[p["combo_a"]] - ranks[p["combo_b"]], rel=5e-4, abs=1e-9
            )
            assert p["significant"] == (p["p_nemenyi"] < 0.05)


def test_mixed_model_table_and_text(tables: Path):
    model = _read(tables, "model.csv").set_index("term")
    terms = {"Intercept", "weight_policy[exact]", "signal_policy[exact]", "dataset[B]"}
    assert terms | {"weight_policy[zero]:signal_policy[zero]"} <= set(model.index)
    for term, row in model.iterrows():
        assert row["z"] == pytest.approx(row["coef"] / row["std_err"], rel=1e-3), term
        assert row["ci_low"] < row["coef"] < row["ci_high"]
    assert model.at["signal_policy[exact]", "coef"] == pytest.approx(1.5, abs=1.0)
    text = (tables / "model.txt").read_text()
    assert (
        "formula: test_acc ~ C(weight_policy, Treatment('ste')) * C(signal_policy, Treatment('ste'))" in text
    )
    assert "reference levels: weight_policy=ste, signal_policy=ste, dataset=A" in text


# --- helpers, by hand -------------------------------------------------------------------------------------


def test_trial_table_names_the_missing_columns():
    runs = pd.DataFrame({"weight_policy": ["ste"], "signal_policy": ["ste"], "test_acc": [1.0]})
    with pytest.raises(ValueError, match=re.escape("runs.csv lacks columns ['seed']")):
        S.trial_table(runs, {"factors": {}}, _hyp())


def test_value_orders_follow_the_spec_then_known_policies_then_sorted():
    spec = {"factors": {"dataset": ["B", "A"], "precision": [16, None], "weight_policy": ["zero", "mine"]}}
    table = pd.DataFrame(
        {
            "dataset": ["A", "C", "B"],
            "precision": ["16", "none", "4"],
            "weight_policy": ["ste", "mine", "zero"],
            "signal_policy": ["ste", "exact", "ste"],
        }
    )
    orders = S.value_orders(spec, table)
    assert orders["dataset"] == {"": -1, "B": 0, "b": 1, "A": 2, "a": 3, "C": 4}
    assert orders["precision"] == {"": -1, "16": 0, "none": 1, "4": 2}
    assert orders["weight_policy"] == {"": -1, "zero": 0, "mine": 1, "exact": 2, "ste": 3}
    assert orders["signal_policy"] == {"": -1, "exact": 0, "ste": 1, "zero": 2}
    assert S.value_orders({"factors": None}, table)["weight_policy"] == {
        "": -1,
        "exact": 0,
        "ste": 1,
        "zero": 2,
        "mine": 3,
    }


def test_skipped_conditions_name_the_absent_policy():
    rows = []
    for dataset, wp, sp, seed in itertools.product(("A", "B"), ("exact", "ste"), ("exact", "ste"), range(3)):
        if dataset == "B" and sp == "exact":
            continue  # no signal exact trial at all in dataset B
        rows.append(
            {"dataset": dataset, "weight_policy": wp, "signal_policy": sp, "seed": seed, "test_acc": 1.0}
        )
    spec = {
        "factors": {
            "dataset": ["A", "B"],
            "weight_policy": ["exact", "ste"],
            "signal_policy": ["exact", "ste"],
        }
    }
    skipped = S.skipped_conditions(pd.DataFrame(rows), spec)
    sig = skipped[skipped["comparison"] == "signal: exact vs ste"]
    assert sorted(zip(sig["dataset"], sig["weight_policy"], sig["absent_policy"], strict=True)) == [
        ("B", "exact", "exact"),
        ("B", "ste", "exact"),
    ]


def test_condition_without_any_complete_pair_still_gets_an_inconclusive_row():
    rows = []
    for wp, sp, seed in itertools.product(("exact", "ste"), ("exact", "ste"), range(4)):
        failed = wp == "ste" and sp == "exact"  # every seed of this cell failed
        rows.append(
            {
                "run_id": f"{wp}{sp}{seed}",
                "weight_policy": wp,
                "signal_policy": sp,
                "seed": seed,
                "test_acc": np.nan if failed else 80.0 + seed + (sp == "exact"),
                "failed": failed,
            }
        )
    spec = {"factors": {"weight_policy": ["exact", "ste"], "signal_policy": ["exact", "ste"]}}
    hyp = _hyp(comparisons=[{"site": "signal", "a": "exact", "b": "ste"}])
    comp, _, missing = S.compare(S.trial_table(pd.DataFrame(rows), spec, hyp), spec, hyp)
    empty = comp[comp["weight_policy"] == "ste"]
    assert len(comp) == 2 and len(empty) == 1
    assert empty["n_pairs"].item() == 0 and empty["verdict"].item() == "inconclusive"
    assert empty["comparison"].item() == "signal: exact vs ste" and empty["_index"].item() == 0
    assert len(missing) == 4 and set(missing["policy_a_status"]) == {"failed"}


def test_small_statistics_edge_cases():
    assert S.bootstrap_ci(np.array([1.0]), np.array([0.0]), 100, 0)[2] == "none"
    assert S.wilcoxon_p(np.zeros(5)) == 1.0
    assert math.isnan(S.cohen_dz(np.full(4, 0.3)))
    assert S.better_side("different", 0.5, True) == "a" and S.better_side("different", 0.5, False) == "b"
    assert S.better_side("equivalent", 0.5, True) == ""
    adjusted = S.adjust_pvalues(pd.Series([0.01, None, 0.04], dtype=object), "bonferroni")
    assert (
        adjusted[0] == pytest.approx(0.02) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.08)
    )
    assert S.nemenyi_cd(2, 10, 0.05) == pytest.approx(
        sst.studentized_range.ppf(0.95, 2, np.inf) / math.sqrt(2) * math.sqrt(2 * 3 / 60)
    )
    assert math.isnan(S.nemenyi_cd(1, 10, 0.05)) and math.isnan(S.nemenyi_cd(3, 0, 0.05))


def test_paired_t_power_is_symmetric_in_the_effect_and_matches_statsmodels():
    from statsmodels.stats.power import TTestPower

    for effect in (0.3, 1.2):
        ref = TTestPower().power(effect_size=effect, nobs=10, alpha=0.05, alternative="two-sided")
        assert float(S.paired_t_power(effect, 10, 0.05)) == pytest.approx(ref, rel=1e-6)
        assert float(S.paired_t_power(-effect, 10, 0.05)) == pytest.approx(ref, rel=1e-6)


def test_bayes_probabilities_with_constant_differences():
    """Constant differences: the Bayesian bootstrap posterior is a point mass at that value."""
    worse, rope, better = (
        {"p_a_worse": 1.0, "p_equiv": 0.0, "p_a_better": 0.0},
        {"p_a_worse": 0.0, "p_equiv": 1.0, "p_a_better": 0.0},
        {"p_a_worse": 0.0, "p_equiv": 0.0, "p_a_better": 1.0},
    )
    assert S.posterior_probs(np.full(5, -0.7), 0.5, True) == worse
    assert S.posterior_probs(np.full(5, 0.7), 0.5, True) == better
    assert S.posterior_probs(np.full(5, 0.2), 0.5, True) == rope
    assert S.posterior_probs(np.full(5, 0.7), 0.5, False) == worse  # a loss: lower is better
    nan = S.posterior_probs(np.array([0.2]), 0.5, True)
    assert set(nan) == {"p_a_worse", "p_equiv", "p_a_better"} and all(math.isnan(v) for v in nan.values())


def test_short_term_names():
    assert S.short_term("C(weight_policy, Treatment('ste'))[T.exact]") == "weight_policy[exact]"
    assert S.short_term('C(Q("signal-norm"))[T.l2norm]') == "signal-norm[l2norm]"
    assert S.short_term("C(dataset)[T.B]:C(precision)[T.4]") == "dataset[B]:precision[4]"


def test_holm_equals_statsmodels_multipletests():
    import numpy as np
    from statsmodels.stats.multitest import multipletests

    from study.analysis.stats.families import adjust_pvalues, holm

    rng = np.random.default_rng(0)
    for m in (1, 2, 5, 40):
        for _ in range(20):
            p = rng.uniform(0, 1, m) ** rng.uniform(0.2, 4)  # includes ties after rounding below
            p = np.round(p, 3)
            np.testing.assert_allclose(holm(p), multipletests(p, method="holm")[1], rtol=0, atol=1e-15)
    p = np.array([0.01, np.nan, 0.04, 0.03])
    out = adjust_pvalues(p, "holm")
    assert np.isnan(out[1]) and np.allclose(out[[0, 2, 3]], multipletests(p[[0, 2, 3]], method="holm")[1])
