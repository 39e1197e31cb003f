"""Ablation-study specs: validation messages, the grid (product, exclude, include, shorthands), paired seeds,
stable trial identities, and the shipped specs."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import torch
from conftest import TINY, write_spec

from study.cli import main
from study.sweep.spec import cells, expand, load_spec, parse_spec
from study.training.bundle import member_model
from study.training.config import ConfigError, TrialConfig

POLICIES = ["ste", "exact", "zero"]


def _spec(**kw: Any) -> dict[str, Any]:
    return {"name": "t", "base": dict(TINY), **kw}


def _errors(spec: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_spec(spec)
    msg = str(exc.value)
    assert msg.startswith("invalid spec:")
    return [ln.strip() for ln in msg.splitlines()[1:]]


def _line(lines: list[str], prefix: str) -> str:
    hits = [ln for ln in lines if ln.startswith(prefix)]
    assert hits, (prefix, lines)
    return hits[0]


# ------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("spec", "prefix", "must_contain"),
    [
        pytest.param(
            _spec(factors={"bogus": [1, 2]}),
            "factors.bogus",
            ["unknown factor", "policies", "norm", "weight_policy", "leakage"],
            id="unknown-factor",
        ),
        pytest.param(
            _spec(factors={"weight_policy": ["ste", "nope"]}),
            "factors.weight_policy",
            ["'nope'", "exact", "ste", "zero"],
            id="unknown-value",
        ),
        pytest.param(
            _spec(factors={"signal_norm": ["clamp", "l3norm"]}),
            "factors.signal_norm",
            ["'l3norm'", "clamp", "l2norm_wm"],
            id="unknown-norm",
        ),
        pytest.param(
            _spec(factors={"epochs": ["three"]}), "factors.epochs", ["'three'", "integer"], id="bad-type"
        ),
        pytest.param(
            _spec(factors={"weight_policy": "ste"}),
            "factors.weight_policy",
            ["list", "'ste'"],
            id="not-a-list",
        ),
        pytest.param(_spec(seeds=0), "seeds", [">= 1", "0"], id="zero-seeds"),
        pytest.param(_spec(seeds=[1, 2, 1]), "seeds", ["repeats", "[1, 2, 1]"], id="repeated-seeds"),
        pytest.param(_spec(seeds="ten"), "seeds", ["'ten'", "integer"], id="seeds-type"),
        pytest.param(
            _spec(factors={"policies": ["analogvnn", "fancy"]}),
            "factors.policies",
            ["'fancy'", "analogvnn", "<weight>/<signal>", "exact, ste, zero"],
            id="bad-preset",
        ),
        pytest.param(
            _spec(factors={"policies": ["ste/fancy"]}),
            "factors.policies",
            ["'ste/fancy'", "signal", "exact, ste, zero"],
            id="bad-preset-pair",
        ),
        pytest.param(
            _spec(factors={"weight_policy": POLICIES}, exclude=[{"signal_policy": "zero"}]),
            "exclude[0].signal_policy",
            ["not a factor", "weight_policy"],
            id="exclude-non-factor",
        ),
        pytest.param(
            _spec(base={**TINY, "dataset": "cifar10"}),
            "base.dataset",
            ["'cifar10'", "digits", "mnist5k"],
            id="bad-base-value",
        ),
        pytest.param(
            _spec(base={**TINY, "epoch": 3}), "base.epoch", ["unknown field", "epochs"], id="bad-base-field"
        ),
        pytest.param(
            _spec(hypotheses={"margin": -1}),
            "hypotheses.margin",
            ["-1", "greater than 0"],
            id="bad-hypotheses",
        ),
        pytest.param(_spec(bogus=1), "bogus", ["unknown field", "factors", "seeds"], id="unknown-top-level"),
    ],
)
def test_bad_spec_specific_message(spec, prefix, must_contain):
    line = _line(_errors(spec), prefix)
    for text in must_contain:
        assert text in line, (text, line)


def test_bad_spec_reports_every_error_at_once():
    lines = _errors(
        {
            "name": "9bad",
            "base": dict(TINY),
            "seeds": 0,
            "factors": {
                "bogus": [1],
                "weight_policy": ["ste", "nope"],
                "epochs": ["x"],
                "policies": ["fancy"],
            },
            "exclude": [{"signal_policy": "ste"}],
        }
    )
    for prefix in (
        "name",
        "seeds",
        "factors.bogus",
        "factors.weight_policy",
        "factors.epochs",
        "factors.policies",
        "exclude[0].signal_policy",
    ):
        _line(lines, prefix)


def test_bad_base_does_not_hide_factor_errors():
    lines = _errors(
        _spec(base={**TINY, "dataset": "cifar10"}, factors={"bogus": [1]}, exclude=[{"signal_policy": "ste"}])
    )
    _line(lines, "base.dataset")
    _line(lines, "factors.bogus")
    _line(lines, "exclude[0].signal_policy")


@pytest.mark.parametrize(
    ("spec", "prefix"),
    [
        ({"name": "t", "factors": ["weight_policy"]}, "factors"),
        ({"name": "t", "base": "digits"}, "base"),
        ({"name": "t", "exclude": 5}, "exclude"),
        ({"name": "t", "include": "x"}, "include"),
    ],
)
def test_wrongly_shaped_spec_is_a_config_error(spec, prefix):
    line = _line(_errors(spec), prefix)
    assert "valid" in line  # e.g. "factors: Input should be a valid dictionary", not a crash


def test_bad_spec_runs_nothing(tmp_path, capsys):
    path = write_spec(tmp_path / "bad.yaml", _spec(factors={"weight_policy": ["ste", "nope"]}, seeds=0))
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--workers", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "factors.weight_policy" in err and "'nope'" in err and "seeds" in err
    assert not out.exists()
    assert main(["run", str(path), "--out", str(out), "--dry-run"]) == 2
    assert not out.exists()


def test_missing_spec_lists_shipped_specs(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "smoke" in err and "core" in err


# --------------------------------------------------------------------------------------------- the grid


def test_grid_is_product_of_factors_times_seeds():
    spec = parse_spec(
        _spec(
            factors={"weight_policy": POLICIES, "signal_policy": POLICIES, "lr": [0.001, 0.01]}, seeds=[3, 5]
        )
    )
    cs = cells(spec)
    assert cs == [
        {"weight_policy": w, "signal_policy": s, "lr": lr}
        for w, s, lr in itertools.product(POLICIES, POLICIES, [0.001, 0.01])
    ]
    trials = expand(spec)
    assert len(trials) == 18 * 2
    assert [t.config.seed for t in trials[:4]] == [3, 5, 3, 5]
    for t in trials:
        assert t.config.weight_policy == t.factors["weight_policy"]
        assert t.config.signal_policy == t.factors["signal_policy"]
        assert t.config.lr == t.factors["lr"]
        assert t.config.dataset == "digits" and t.config.hidden == (16,)  # from the base
    assert len({t.run_id for t in trials}) == len(trials)


def test_exclude_and_include_rules():
    spec = parse_spec(
        _spec(
            factors={"weight_policy": POLICIES, "signal_policy": POLICIES},
            exclude=[{"weight_policy": "zero"}, {"weight_policy": "exact", "signal_policy": ["ste", "zero"]}],
            include=[
                {"weight_policy": "zero", "signal_policy": "zero"},
                {"weight_policy": "ste", "signal_policy": "ste"},
            ],
            seeds=2,
        )
    )
    cs = cells(spec)
    expected = [{"weight_policy": "ste", "signal_policy": s} for s in POLICIES]
    expected += [
        {"weight_policy": "exact", "signal_policy": "exact"},
        {"weight_policy": "zero", "signal_policy": "zero"},
    ]
    assert (
        cs == expected
    )  # the kept cells in grid order, then new include cells; an included kept cell is not doubled
    assert len(expand(spec)) == 5 * 2


def test_exclude_rule_matches_all_its_keys():
    spec = parse_spec(
        _spec(
            factors={"weight_policy": POLICIES, "signal_policy": POLICIES},
            exclude=[{"weight_policy": ["ste", "exact"], "signal_policy": "zero"}],
            seeds=1,
        )
    )
    cs = cells(spec)
    assert len(cs) == 7
    assert {"weight_policy": "zero", "signal_policy": "zero"} in cs
    assert {"weight_policy": "ste", "signal_policy": "zero"} not in cs


def test_policies_preset_and_norm_shorthand():
    spec = parse_spec(
        _spec(
            factors={"norm": ["clamp", "l2norm", "l2norm_m"], "policies": ["analogvnn", "exact/zero"]},
            seeds=1,
        )
    )
    got = {(t.factors["norm"], t.factors["policies"]): t.config for t in expand(spec)}
    assert len(got) == 6
    for (norm, preset), cfg in got.items():
        assert cfg.weight_norm == cfg.signal_norm == norm  # `norm` sets both sites
        if preset == "analogvnn":
            # AnalogVNN 1.0.8: weights straight-through; signal clamps exact, Lp norms straight-through
            assert (cfg.weight_policy, cfg.signal_policy) == (
                ("ste", "exact") if norm == "clamp" else ("ste", "ste")
            )
        else:
            assert (cfg.weight_policy, cfg.signal_policy) == ("exact", "zero")


def test_analogvnn_preset_follows_base_norms():
    spec = parse_spec(
        _spec(
            base={**TINY, "weight_norm": "clamp", "signal_norm": "l1norm"},
            factors={"policies": ["analogvnn"]},
            seeds=1,
        )
    )
    cfg = expand(spec)[0].config
    assert (cfg.weight_policy, cfg.signal_policy) == ("ste", "ste")


def test_policy_variants_share_seeds_and_initial_weights():
    spec = parse_spec(
        _spec(
            base={**TINY, "hidden": [16, 8]},
            factors={"weight_policy": POLICIES, "signal_policy": ["ste", "exact"]},
            seeds=[0, 4, 9],
        )
    )
    trials = expand(spec)
    by_cell: dict[tuple, list[int]] = {}
    for t in trials:
        by_cell.setdefault((t.config.weight_policy, t.config.signal_policy), []).append(t.config.seed)
    assert len(by_cell) == 6 and all(seeds == [0, 4, 9] for seeds in by_cell.values())
    for seed in (0, 9):
        states = [member_model(t.config, 64, 10).state_dict() for t in trials if t.config.seed == seed]
        assert len(states) == 6
        for state in states[1:]:
            assert state.keys() == states[0].keys()
            assert all(torch.equal(state[k], states[0][k]) for k in state)
    other = member_model(trials[1].config, 64, 10).state_dict()  # seed 4
    first = member_model(trials[0].config, 64, 10).state_dict()  # seed 0
    assert not torch.equal(other["1.weight"], first["1.weight"])


# --------------------------------------------------------------------------------------------- run ids

# A run_id is the trial's identity on disk: finished results are found (resumed, collected) by it. These
# hashes must not change by accident; if TrialConfig deliberately gains a field, update them and note that
# existing trial folders will no longer be recognised.
STABLE_RUN_IDS = {
    "7a742e72d8056465": {},
    "7f06d41e337ab7f0": {"dataset": "digits", "hidden": [16], "seed": 3},
}

ALTERNATIVES = {
    "dataset": "digits",
    "data_dir": "/data",
    "n_samples": 1000,
    "split_seed": 1,
    "arch": "cnn",
    "channels": [4],
    "kernel_size": 5,
    "hidden": [16],
    "activation": "relu",
    "final_activation": False,
    "digital": True,
    "readout": "scaled",
    "weight_norm": "l2norm",
    "weight_policy": "exact",
    "signal_norm": "l1norm",
    "signal_policy": "ste",
    "precision_class": "stochastic",
    "precision": 64,
    "divide": 0.25,
    "noise": "laplacian",
    "leakage": 0.2,
    "noise_precision": 32,
    "noise_at_eval": False,
    "weight_clamp": 0.5,
    "optimizer": "sgd",
    "momentum": 0.9,
    "schedule": "cosine",
    "lr": 0.01,
    "batch_size": 64,
    "epochs": 3,
    "seed": 1,
    "diagnostics": False,
    "probe_size": 32,
    "eval_test": False,
    "test_draws": 3,
    "weight_levels": "range",
    "weight_init": "in_range",
    "weight_bound": "project",
    "signal_range_init": 2.0,
    "signal_range_per": "channel",
}
REQUIRES = {  # values valid only with another field's non-default
    "momentum": {"optimizer": "sgd"},
    "channels": {"arch": "cnn"},
    "kernel_size": {"arch": "cnn"},
    "signal_range_init": {"signal_norm": "learned_clamp"},
    "signal_range_per": {"signal_norm": "learned_clamp"},
}


@pytest.mark.parametrize(("run_id", "data"), list(STABLE_RUN_IDS.items()))
def test_run_id_is_stable(run_id, data):
    assert TrialConfig.parse(data).run_id == run_id
    assert TrialConfig.parse(dict(data)).run_id == run_id


def test_run_id_changes_with_every_field():
    assert set(ALTERNATIVES) == set(TrialConfig.model_fields), "add an alternative value for each new field"
    base = TrialConfig()
    seen = {base.run_id}
    for field, value in ALTERNATIVES.items():
        cfg = TrialConfig.parse({**base.canonical(), **REQUIRES.get(field, {}), field: value})
        assert getattr(cfg, field) != getattr(base, field), field
        assert cfg.run_id not in seen, field
        seen.add(cfg.run_id)


def test_run_id_ignores_how_values_are_written():
    a = TrialConfig.parse({"hidden": [16, 8], "lr": 0.001, "precision": 16})
    b = TrialConfig.parse({"hidden": (16, 8), "lr": 1e-3, "precision": 16.0, "dataset": "mnist5k"})
    assert a.run_id == b.run_id


def test_spec_hash_and_hypotheses_hash():
    a = parse_spec(_spec(factors={"weight_policy": POLICIES}))
    b = parse_spec(_spec(factors={"weight_policy": POLICIES}, hypotheses={"margin": 1.0}))
    c = parse_spec(_spec(factors={"weight_policy": POLICIES}, description="other words"))
    assert a.hash() != b.hash() and a.hypotheses_hash() != b.hypotheses_hash()
    assert a.hypotheses_hash() == c.hypotheses_hash()
    assert a.hash() == parse_spec(_spec(factors={"weight_policy": POLICIES})).hash()


# ---------------------------------------------------------------------------------------- shipped specs


@pytest.mark.parametrize(
    ("name", "n_cells", "n_trials"), [("smoke", 9, 36), ("core", 9, 900), ("generality", 72, 1440)]
)
def test_shipped_specs_parse(name, n_cells, n_trials):
    spec = load_spec(name)
    assert spec.name == name
    assert len(cells(spec)) == n_cells
    trials = expand(spec)
    assert len(trials) == n_trials
    assert len({t.run_id for t in trials}) == n_trials


def test_generality_design():
    trials = expand(load_spec("generality"))
    conditions = {
        (t.config.dataset, t.config.weight_norm, t.config.precision, t.config.leakage) for t in trials
    }
    assert len(conditions) == 2 * 9
    for _dataset, norm, precision, leakage in conditions:  # at most one factor away from clamp / 16 / 0.5
        assert (norm != "clamp") + (precision != 16) + (leakage != 0.5) <= 1
    assert all(t.config.weight_norm == t.config.signal_norm for t in trials)
    assert {(t.config.weight_policy, t.config.signal_policy) for t in trials} == set(
        itertools.product(["ste", "exact"], ["ste", "exact"])
    )
