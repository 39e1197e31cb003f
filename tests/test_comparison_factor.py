"""Pre-registered comparisons of a condition factor (`Comparison.factor`): values a and b of a factor paired
by seed within the other condition factors and both sites' policies, through the whole statistics stage."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import TINY

from study.analysis import stats as S
from study.analysis.publish import stats_stage
from study.sweep.hypotheses import Comparison, Hypotheses
from study.sweep.spec import StudySpec, _check_comparison_factors, parse_spec, stored_spec_hash
from study.tables import condition_columns
from study.training.config import ConfigError

SEEDS = list(range(6))
FACTOR_LABEL = "weight: project vs forward (weight_bound)"
POLICY_LABEL = "weight: exact vs ste"
# planted project - forward per (dataset, signal policy) at weight policy ste; exact - ste at forward
PLANTED_BOUND = {("A", "exact"): 1.5, ("A", "ste"): -0.75, ("B", "exact"): 3.0, ("B", "ste"): 0.0}
PLANTED_POLICY = {("A", "exact"): -2.0, ("A", "ste"): 0.25, ("B", "exact"): 1.0, ("B", "ste"): -4.0}


def _spec(**hypotheses: Any) -> dict[str, Any]:
    """weight_bound x weight_policy x signal_policy x dataset; `project` runs only with weight `ste`."""
    hyp = {
        "margin": 0.5,
        "bootstrap_resamples": 999,
        "comparisons": [
            {"site": "weight", "a": "exact", "b": "ste"},
            {"site": "weight", "factor": "weight_bound", "a": "project", "b": "forward"},
        ],
        "effect_model": {"formula": "C(dataset)"},
    } | hypotheses
    return {
        "name": "bound",
        "description": "synthetic",
        "base": {"epochs": 2},
        "factors": {
            "dataset": ["A", "B"],
            "weight_bound": ["forward", "project"],
            "weight_policy": ["exact", "ste"],
            "signal_policy": ["exact", "ste"],
        },
        "exclude": [{"weight_bound": "project", "weight_policy": "exact"}],
        "seeds": SEEDS,
        "hypotheses": hyp,
    }


def _centred(rng: np.random.Generator, sd: float) -> np.ndarray:
    """Per-seed noise whose mean is exactly 0 (so a planted mean difference is the observed one)."""
    x = rng.normal(0, sd, len(SEEDS))
    return x - x.mean()


def _runs() -> pd.DataFrame:
    """One row per trial of `_spec`: forward/ste is the reference, the others planted against it."""
    rng = np.random.default_rng(3)
    seed_effect = rng.normal(0, 1.0, len(SEEDS))
    rows = []
    for dataset, sp in itertools.product(("A", "B"), ("exact", "ste")):
        ref = 80 + seed_effect + rng.normal(0, 1.0, len(SEEDS))
        cells = {
            ("forward", "ste"): ref,
            ("project", "ste"): ref + PLANTED_BOUND[dataset, sp] + _centred(rng, 0.3),
            ("forward", "exact"): ref + PLANTED_POLICY[dataset, sp] + _centred(rng, 0.3),
        }
        for (bound, wp), values in cells.items():
            for seed, acc in zip(SEEDS, values, strict=True):
                rows.append(
                    {
                        "study": "bound",
                        "run_id": f"{len(rows):016x}",
                        "dataset": dataset,
                        "weight_bound": bound,
                        "weight_policy": wp,
                        "signal_policy": sp,
                        "seed": seed,
                        "test_acc": round(float(acc), 6),
                        "test_loss": 1 - acc / 100,
                        "val_acc": acc,
                        "diverged": False,
                        "failed": False,
                        "wall_time_s": 1.0,
                    }
                )
    return pd.DataFrame(rows)


def _write(path: Path, runs: pd.DataFrame, spec: dict[str, Any]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    runs.assign(spec_hash=stored_spec_hash(spec)).to_csv(path / "runs.csv", index=False)
    return path


def _read(out: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(out / name, dtype=str, keep_default_na=False)


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return stats_stage(_write(tmp_path_factory.mktemp("bound") / "bound", _runs(), _spec()))


# --------------------------------------------------------------------------- pairing


def test_pairs_only_where_both_values_ran() -> None:
    spec = _spec()
    hyp = S.load_hypotheses(spec)
    table = S.trial_table(_runs(), spec, hyp)
    conds, seeds = condition_columns(spec), SEEDS
    bound, policy = hyp.comparisons[1], hyp.comparisons[0]
    pairs, missing, skipped = S.pair_trials(table, bound, conds, seeds)
    assert missing.empty and len(pairs) == 4 * len(SEEDS)
    assert set(pairs["weight_policy"]) == {"ste"} and set(pairs["weight_bound"]) == {""}
    assert set(pairs["signal_policy"]) == {"exact", "ste"}
    # forward/exact has no project partner: said so, naming the factor's absent value
    assert set(skipped["weight_policy"]) == {"exact"}
    assert set(skipped["absent_policy"]) == {"weight_bound=project"}
    pairs, _, skipped = S.pair_trials(table, policy, conds, seeds)
    assert set(pairs["weight_bound"]) == {"forward"} and set(pairs["weight_policy"]) == {""}
    assert set(skipped["weight_bound"]) == {"project"} and set(skipped["absent_policy"]) == {"exact"}


def test_comparison_rows_hold_the_planted_differences(study: Path) -> None:
    comp = _read(study, "comparisons.csv")
    rows = comp[comp["comparison"] == FACTOR_LABEL]
    assert len(rows) == 4
    assert set(rows["weight_bound"]) == {""} and set(rows["weight_policy"]) == {"ste"}
    assert set(rows["policy_a"]) == {"project"} and set(rows["policy_b"]) == {"forward"}
    assert set(rows["site"]) == {"weight"} and set(rows["analogvnn"]) == {""}
    for _, r in rows.iterrows():
        assert int(r["n_pairs"]) == len(SEEDS)
        assert float(r["mean_diff"]) == pytest.approx(
            PLANTED_BOUND[r["dataset"], r["signal_policy"]], abs=1e-4
        )
    policy = comp[comp["comparison"] == POLICY_LABEL]
    assert len(policy) == 4 and set(policy["weight_bound"]) == {"forward"}
    assert set(policy["weight_policy"]) == {""}
    for _, r in policy.iterrows():
        assert float(r["mean_diff"]) == pytest.approx(
            PLANTED_POLICY[r["dataset"], r["signal_policy"]], abs=1e-4
        )
    diffs = _read(study, "differences.csv")
    mine = diffs[diffs["comparison"] == FACTOR_LABEL]
    assert len(mine) == 4 * len(SEEDS) and set(mine["weight_policy"]) == {"ste"}
    means = mine["diff"].astype(float).groupby([mine["dataset"], mine["signal_policy"]]).mean()
    assert means.to_dict() == pytest.approx(PLANTED_BOUND, abs=1e-5)  # runs.csv holds 6 decimals


def test_skipped_missing_and_the_other_tables(study: Path) -> None:
    skipped = _read(study, "skipped.csv")
    mine = skipped[skipped["comparison"] == FACTOR_LABEL]
    assert len(mine) == 4 and set(mine["scope"]) == {"condition"}
    assert set(mine["weight_policy"]) == {"exact"} and set(mine["absent_policy"]) == {"weight_bound=project"}
    assert _read(study, "missing.csv").empty
    sens = _read(study, "sensitivity.csv")
    assert set(sens["comparison"]) == {POLICY_LABEL, FACTOR_LABEL}
    bayes = _read(study, "bayes.csv")
    assert (bayes["comparison"] == FACTOR_LABEL).sum() == 4
    pooled = _read(study, "effects_conditions.csv")
    assert set(pooled["comparison"]) == {POLICY_LABEL, FACTOR_LABEL}
    marginal = _read(study, "effects_marginal.csv")
    overall = marginal[(marginal["comparison"] == FACTOR_LABEL) & (marginal["factor"] == "all")]
    assert float(overall["emm"].iloc[0]) == pytest.approx(np.mean(list(PLANTED_BOUND.values())), abs=1e-3)
    report = (study / "report.md").read_text()
    assert FACTOR_LABEL in report and "`weight_bound`" in report
    assert "(absent: weight_bound=project)" in report
    macros = (study / "latex" / "macros.tex").read_text()
    assert "EmmWeightWeightBoundAll" in macros and "RowWeightAExactSteProjectVsForwardDiff" in macros
    names = [ln.split("}", 1)[0] for ln in macros.splitlines() if ln.startswith("\\newcommand")]
    assert len(names) == len(set(names))  # the factor comparison's macros clash with no other


def test_effect_model_naming_the_compared_factor_is_not_fitted(tmp_path: Path) -> None:
    spec = _spec(effect_model={"formula": "C(dataset)", "marginal": ["weight_bound"]})
    out = stats_stage(_write(tmp_path / "bound", _runs(), spec))
    text = (out / "effects_model.txt").read_text()
    assert f"comparison: {FACTOR_LABEL}: not fitted: the model's `marginal` names weight_bound" in text
    assert set(_read(out, "effects_terms.csv")["comparison"]) == {POLICY_LABEL}


# --------------------------------------------------------------------------- the spec


def _valid(**hypotheses: Any) -> dict[str, Any]:
    return {
        "name": "t",
        "base": dict(TINY),
        "factors": {
            "weight_bound": ["forward", "project"],
            "weight_policy": ["exact", "ste"],
            "lr": [0.01, 0.02],
        },
        "exclude": [{"weight_bound": "project", "weight_policy": "exact"}],  # moot there
        "arm_factors": ["lr"],
        "seeds": 2,
        "hypotheses": hypotheses,
    }


def _errors(comparison: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_spec(_valid(comparisons=[comparison]))
    return [ln.strip() for ln in str(exc.value).splitlines()[1:]]


def test_a_valid_factor_comparison_parses_and_dumps_its_factor() -> None:
    comp = {"site": "weight", "factor": "weight_bound", "a": "project", "b": "forward"}
    spec = parse_spec(_valid(comparisons=[comp]))
    assert spec.hypotheses.comparisons[0].label == FACTOR_LABEL
    assert spec.dump()["hypotheses"]["comparisons"] == [comp | {"role": "primary"}]


@pytest.mark.parametrize(
    ("comparison", "field", "needles"),
    [
        pytest.param(
            {"factor": "bound"},
            "hypotheses.comparisons.0.factor",
            ["'bound'", "not a factor of this study", "allowed: the condition factors weight_bound"],
            id="unknown-factor",
        ),
        pytest.param(
            {"factor": "weight_policy", "a": "exact", "b": "ste"},
            "hypotheses.comparisons.0.factor",
            ["'weight_policy'", "a policy column", "allowed: the condition factors weight_bound"],
            id="policy-column",
        ),
        pytest.param(
            {"factor": "lr", "a": "0.01", "b": "0.02"},
            "hypotheses.comparisons.0.factor",
            ["'lr'", "an arm factor", "allowed: the condition factors weight_bound"],
            id="arm-factor",
        ),
        pytest.param(
            {"factor": "seed", "a": "0", "b": "1"},
            "hypotheses.comparisons.0.factor",
            ["'seed'", "not a factor of this study", "allowed: the condition factors weight_bound"],
            id="seed",
        ),
        pytest.param(
            {"b": "project"},
            "hypotheses.comparisons.0.b",
            ["must differ from a", "'project'"],
            id="a-equals-b",
        ),
        pytest.param(
            {"a": "projected"},
            "hypotheses.comparisons.0.a",
            ["'projected' is not a value of factor 'weight_bound'", "allowed: forward, project"],
            id="unknown-value",
        ),
    ],
)
def test_bad_factor_comparisons_give_one_line_errors(
    comparison: dict[str, Any], field: str, needles: list[str]
) -> None:
    base = {"site": "weight", "factor": "weight_bound", "a": "project", "b": "forward"}
    lines = _errors(base | comparison)
    hits = [ln for ln in lines if ln.startswith(field)]
    assert len(hits) == 1, lines
    assert all(n in hits[0] for n in needles), hits[0]


def test_without_factor_nothing_changes() -> None:
    """The canonical dump leaves `factor` out when unset: the hashes are those of the code before it."""
    spec = {
        "name": "bound",
        "base": {"epochs": 2},
        "factors": {"weight_bound": ["forward", "project"], "weight_policy": ["exact", "ste"]},
        "seeds": 3,
        "hypotheses": {"comparisons": [{"site": "weight", "a": "exact", "b": "ste"}]},
    }
    model = StudySpec.model_validate(spec)
    assert all("factor" not in c for c in model.dump()["hypotheses"]["comparisons"])
    assert model.hash() == "44a3e5f3a12d05f7"  # computed by the code before `factor` existed
    assert StudySpec.model_validate({"name": "x"}).hash() == "e7cab5609834bede"
    assert "factor" not in yaml.safe_dump(Hypotheses().dump())
    plain = Comparison(site="signal", a="exact", b="ste")
    assert plain.label == "signal: exact vs ste" and plain.column == "signal_policy"
    assert plain.held_columns(["dataset"]) == ["dataset", "weight_policy"]
    bound = Comparison(site="weight", factor="weight_bound", a="project", b="forward")
    assert bound.column == "weight_bound"
    assert bound.held_columns(["dataset", "weight_bound"]) == ["dataset", "weight_policy", "signal_policy"]


def test_factor_values_match_as_runs_csv_spells_numbers() -> None:
    """A numeric factor: `a: "0.50"` finds the trials runs.csv records as 0.5 (numbers compared as values)."""
    spec = {
        "name": "num",
        "factors": {"weight_clamp": [0.1, 0.5], "weight_policy": ["ste"]},
        "seeds": [0, 1],
        "hypotheses": {
            "comparisons": [{"site": "weight", "factor": "weight_clamp", "a": "0.50", "b": "0.1"}]
        },
    }
    runs = pd.DataFrame(
        {
            "weight_clamp": ["0.1", "0.1", "0.5", "0.5"],
            "weight_policy": ["ste"] * 4,
            "signal_policy": ["exact"] * 4,
            "seed": [0, 1, 0, 1],
            "test_acc": [70.0, 71.0, 72.0, 74.0],
        }
    )
    hyp = S.load_hypotheses(spec)
    table = S.trial_table(runs, spec, hyp)
    pairs, _, skipped = S.pair_trials(table, hyp.comparisons[0], ["weight_clamp"], [0, 1])
    assert skipped.empty and pairs["diff"].tolist() == [2.0, 3.0]
    assert set(pairs["policy_a"]) == {"0.50"} and set(pairs["weight_clamp"]) == {""}
    assert _check_comparison_factors(spec, spec["factors"]) == []
    same = {**spec, "hypotheses": {"comparisons": [{"factor": "weight_clamp", "a": "0.10", "b": "0.1"}]}}
    (error,) = _check_comparison_factors(same, spec["factors"])
    assert error.startswith("hypotheses.comparisons.0.b: '0.1' is the same value of 'weight_clamp' as a")
