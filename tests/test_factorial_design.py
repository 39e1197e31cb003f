"""The factorial generality design (benchmarks/design_factorial.py -> study/specs/factorial.yaml)."""

from __future__ import annotations

import importlib.util
import itertools
from collections import Counter
from pathlib import Path

import numpy as np

from study.sweep.spec import expand, load_spec

ROOT = Path(__file__).resolve().parent.parent


def _generator():
    spec = importlib.util.spec_from_file_location("design_factorial", ROOT / "benchmarks/design_factorial.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_spec_is_the_generators_output():
    assert _generator().main(["--check"]) == 0


def test_latin_squares_are_mutually_orthogonal():
    gen = _generator()
    for m in (1, 2, 3):
        for r in range(4):
            assert sorted(gen.latin(m, r, c) for c in range(4)) == [0, 1, 2, 3]
            assert sorted(gen.latin(m, c, r) for c in range(4)) == [0, 1, 2, 3]
    for m1, m2 in itertools.combinations((1, 2, 3), 2):
        pairs = {(gen.latin(m1, r, c), gen.latin(m2, r, c)) for r in range(4) for c in range(4)}
        assert len(pairs) == 16


def test_design_crosses_the_structural_factors_and_balances_the_others():
    gen = _generator()
    conds = gen.conditions(np.random.default_rng(gen.SEED))
    assert len(conds) == 120 >= 96
    key = [(c["arch"], c["dataset"], c["norm"], c["noise"]) for c in conds]
    assert len(set(key)) == 120  # arch x dataset x norm x noise kind in full
    blocks: dict[tuple, list] = {}
    for c in conds:
        blocks.setdefault((c["arch"], c["dataset"], c["noise"]), []).append(c)
    for members in blocks.values():  # every block: all precisions, all (rounding, optimizer) pairs
        assert sorted(str(c["precision"]) for c in members) == sorted(map(str, gen.PRECISIONS))
        assert len({(c["precision_class"], c["optimizer"]) for c in members}) == 4
        leak = Counter(c["leakage"] for c in members)
        assert leak == ({None: 4} if members[0]["noise"] == "none" else {0.2: 2, 0.5: 2})
    assert set(Counter(str(c["precision"]) for c in conds).values()) == {30}
    assert set(Counter((c["precision_class"], c["optimizer"]) for c in conds).values()) == {30}
    diag = gen.model_diagnostics(conds)
    assert diag["rank"] == diag["columns"]
    assert gen.seeds_for_power() == 6
    cells = gen.spec()["include"]
    per_seed = sum(gen.MEASURED_S_PER_EPOCH[(c["arch"], c["dataset"])] * 5 for c in cells)
    n = gen.seeds_within_budget(gen.MEASURED_S_PER_EPOCH, cells, 5)
    assert n * per_seed <= gen.BUDGET_HOURS * 3600 * gen.WORKERS < (n + 1) * per_seed  # the most that fit
    assert gen.spec()["seeds"] == min(6, n) == 6
    assert gen.mde_inflation(3) > gen.mde_inflation(6) > 1
    # the first registration: at the `--measure` rates the budget held FIRST_SEEDS
    assert gen.seeds_within_budget(gen.MEASURE_ESTIMATE, cells, 5) == gen.FIRST_SEEDS == 3


def test_factorial_spec_expands_to_its_trials_with_three_policy_arms():
    spec = load_spec(ROOT / "study/specs/factorial.yaml")
    trials = expand(spec)
    assert len(trials) == 360 * spec.seeds
    arms = Counter((t.config.weight_policy, t.config.signal_policy) for t in trials)
    assert set(arms) == {("exact", "exact"), ("ste", "exact"), ("exact", "ste")}
    assert {t.config.arch for t in trials} == {"mlp", "cnn"}
    assert {t.config.noise for t in trials if t.config.leakage is not None} == {
        "gaussian",
        "poisson",
        "laplacian",
        "uniform",
    }
