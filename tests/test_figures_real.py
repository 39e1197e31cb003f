"""Figures drawn from the tables the real statistics stage writes, checked by the values they plot.

A small synthetic study (runs.csv, curves.csv.gz, spec.yaml) goes through
`study.analysis.publish.stats_stage`;
every plotted value is read back from the matplotlib artists and compared with a value computed here
from runs.csv / curves.csv.gz alone (pandas means, an exact or large reference bootstrap), never with the
figure code's own helpers.
"""

from __future__ import annotations

import gzip
import itertools
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats as sst

from study.analysis.figures import common, curves, paired
from study.analysis.figures import ranks as rank_figures
from study.analysis.figures import style as st
from study.analysis.figures.common import Made, StudyContext, mean_ci
from study.analysis.publish import stats_stage

WEIGHTS, SIGNALS = ("exact", "ste", "zero"), ("exact", "ste")
NORMS, PRECS = ("clamp", "l2norm_m"), ("4", "16")
N_SEEDS, EPOCHS = 5, 3


# --- reference computations ------------------------------------------------------------------------
def t_band(x: np.ndarray) -> tuple[tuple[float, float], ...]:
    """The 95% t interval of the mean of `x` (scipy.stats.t.interval), each end as a zero-width band."""
    x = np.asarray(x, float)
    lo, hi = sst.t.interval(0.95, len(x) - 1, loc=float(np.mean(x)), scale=float(sst.sem(x)))
    return (float(lo), float(lo)), (float(hi), float(hi))


def within(value: float, interval: tuple[float, float], slack: float = 1e-9) -> bool:
    return interval[0] - slack <= value <= interval[1] + slack


# --- mean_ci ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [5, 12, 200])
def test_mean_ci_is_the_95_percent_t_interval(n: int) -> None:
    x = np.random.default_rng(n).gamma(2.0, 3.0, size=n)
    mean, lo, hi, count = mean_ci(x)
    assert count == n and mean == pytest.approx(float(np.mean(x)), rel=1e-12)
    band_lo, band_hi = t_band(x)
    assert within(lo, band_lo) and within(hi, band_hi)
    if n == 200:  # large n: the normal-theory interval, mean +- 1.96 sd / sqrt(n)
        half = 1.96 * np.std(x) / math.sqrt(n)
        assert (hi - lo) / 2 == pytest.approx(half, rel=0.08)


def test_mean_ci_drops_non_finite_values_and_handles_tiny_samples() -> None:
    mean, lo, hi, n = mean_ci([1.0, np.nan, 3.0, np.inf, 2.0])
    assert (mean, n) == (2.0, 3) and (lo, hi) == pytest.approx(
        (t_band([1.0, 3.0, 2.0])[0][0], t_band([1.0, 3.0, 2.0])[1][0])
    )
    assert mean_ci([4.0])[0] == 4.0 and math.isnan(mean_ci([4.0])[1])
    assert mean_ci([])[3] == 0 and math.isnan(mean_ci([])[0])


# --- the study ---------------------------------------------------------------------------------------
def _accuracy(norm: str, prec: str, w: str, s: str, seed_effect: float, rng: np.random.Generator) -> float:
    acc = 80.0 + seed_effect - (3.0 if prec == "4" else 0.0) - (20.0 if w == "zero" else 0.0)
    if s == "exact" and norm == "clamp":
        acc += 1.0
    return acc + rng.normal(0, 0.5)


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("real") / "real"
    root.mkdir()
    rng = np.random.default_rng(3)
    seed_effect = rng.normal(0, 1.0, N_SEEDS)
    spec = {
        "name": "real",
        "factors": {
            "signal_norm": list(NORMS),
            "precision": [int(p) for p in PRECS],
            "weight_policy": list(WEIGHTS),
            "signal_policy": list(SIGNALS),
        },
        "seeds": N_SEEDS,
        "hypotheses": {"margin": 0.5, "bootstrap_resamples": 500},
    }
    (root / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    rows, curves = [], []
    for norm, prec, w, s, seed in itertools.product(NORMS, PRECS, WEIGHTS, SIGNALS, range(N_SEEDS)):
        run_id = f"{len(rows):016x}"
        acc = _accuracy(norm, prec, w, s, seed_effect[seed], rng)
        rows.append(
            {
                "run_id": run_id,
                "signal_norm": norm,
                "precision": prec,
                "weight_policy": w,
                "signal_policy": s,
                "seed": seed,
                "test_acc": acc,
                "val_acc": acc + 0.3,
                "diverged": False,
                "failed": False,
            }
        )
        for epoch in range(1, EPOCHS + 1):
            for metric in ("val_acc", "test_acc"):
                curves.append((run_id, epoch, metric, "", acc * (1 - 0.5**epoch) + rng.normal(0, 1.0)))
    pd.DataFrame(rows).to_csv(root / "runs.csv", index=False)
    with gzip.open(root / "curves.csv.gz", "wt") as fh:
        pd.DataFrame(curves, columns=["run_id", "epoch", "metric", "layer", "value"]).to_csv(fh, index=False)
    stats_stage(root)
    return root


@pytest.fixture(scope="module")
def runs(study: Path) -> pd.DataFrame:
    return pd.read_csv(study / "runs.csv", dtype={"precision": str})


@pytest.fixture(scope="module")
def ctx(study: Path) -> StudyContext:
    return StudyContext.load(study)


def _one(outputs) -> Made:
    (made,) = [o for o in outputs if isinstance(o, Made)]
    return made


def _paired(runs: pd.DataFrame, a: str, b: str) -> pd.DataFrame:
    """Signal-site paired differences a - b per (signal_norm, precision, weight_policy, seed), from runs."""
    keys = ["signal_norm", "precision", "weight_policy", "seed"]
    va = runs[runs["signal_policy"] == a].set_index(keys)["test_acc"]
    vb = runs[runs["signal_policy"] == b].set_index(keys)["test_acc"]
    return (va - vb).rename("diff").reset_index()


def _tick_rows(ax) -> dict[str, float]:
    return {t.get_text(): float(y) for t, y in zip(ax.get_yticklabels(), ax.get_yticks(), strict=True)}


# --- 1. paired differences -----------------------------------------------------------------------
def test_paired_difference_plot_shows_the_stats_stage_means_cis_and_every_pair(ctx, runs) -> None:
    made = _one(o for o in paired.fig_paired_differences(ctx) if o.name == "paired_differences_signal")
    (ax,) = made.figure.axes
    comps = ctx.table("comparisons")
    comps = comps[comps["site"] == "signal"]
    assert len(comps) == len(NORMS) * len(PRECS) * len(WEIGHTS)
    diffs = _paired(runs, "exact", "ste")
    row_cols = ["signal_norm", "precision", "weight_policy"]
    rows = _tick_rows(ax)
    assert len(rows) == len(comps)
    points = [ln for ln in ax.lines if len(ln.get_xdata()) == 1]
    bars = [ln for ln in ax.lines if len(ln.get_xdata()) == 2 and ln.get_ydata()[0] == ln.get_ydata()[1]]
    mean_at = {float(ln.get_ydata()[0]): float(ln.get_xdata()[0]) for ln in points}
    bar_at = {float(ln.get_ydata()[0]): tuple(map(float, ln.get_xdata())) for ln in bars}
    for _, row in comps.iterrows():
        key = tuple(str(row[c]) for c in row_cols)
        y = rows[common._key_label(row_cols, key)]
        sel = diffs[(diffs[row_cols].astype(str) == list(key)).all(axis=1)]
        assert len(sel) == N_SEEDS
        assert mean_at[y] == pytest.approx(
            float(sel["diff"].mean()), rel=5e-4, abs=1e-9
        )  # 4 significant digits
        assert bar_at[y] == pytest.approx((row["ci_low"], row["ci_high"]), rel=1e-9)
        assert bar_at[y][0] < mean_at[y] < bar_at[y][1]
    (scatter,) = ax.collections
    offsets = np.asarray(scatter.get_offsets())
    assert len(offsets) == len(diffs)
    by_row = {y: label for label, y in rows.items()}
    for x, y in offsets:
        label = by_row[float(round(y))]
        assert abs(y - round(y)) <= 0.28 + 1e-9  # jitter (0.28 rows when there are more than 8) keeps the row
        key = next(
            k for k in itertools.product(NORMS, PRECS, WEIGHTS) if common._key_label(row_cols, k) == label
        )
        sel = diffs[(diffs[row_cols].astype(str) == list(key)).all(axis=1)]
        assert np.isclose(sel["diff"], x, atol=1e-4).any()
    made.figure.clear()


# --- 2. effect heatmap ---------------------------------------------------------------------------
def test_effect_heatmap_cells_are_the_mean_paired_differences(ctx, runs) -> None:
    made = _one(o for o in paired.fig_effect_heatmap(ctx) if o.name == "effect_heatmap_signal")
    axes = [ax for ax in made.figure.axes if ax.images]
    assert len(axes) == len(WEIGHTS)  # one row of panels per weight-site policy
    expected = (
        _paired(runs, "exact", "ste").groupby(["weight_policy", "signal_norm", "precision"])["diff"].mean()
    )
    for ax, w in zip(axes, st.policy_order(WEIGHTS), strict=True):
        assert ax.get_ylabel() == w
        grid = np.ma.filled(ax.images[0].get_array(), np.nan)
        assert grid.shape == (len(NORMS), len(PRECS))
        for (r, norm), (c, prec) in itertools.product(enumerate(NORMS), enumerate(PRECS)):
            assert grid[r, c] == pytest.approx(
                expected[(w, norm, prec)], rel=5e-4, abs=1e-9
            )  # comparisons.csv: 4 significant digits
    made.figure.clear()


# --- 3. policy interaction -----------------------------------------------------------------------
def test_policy_interaction_cells_show_seed_means_and_their_95_percent_ci(ctx, runs) -> None:
    made = _one(paired.fig_policy_interaction(ctx))
    panels = [a for a in made.figure.axes if a.images]
    assert len(panels) == len(NORMS)  # one panel per normalization: never averaged across them
    weights, signals = st.policy_order(WEIGHTS), st.policy_order(SIGNALS)
    for ax, norm in zip(panels, NORMS, strict=True):
        sel = runs[runs["signal_norm"] == norm]
        per_seed = sel.groupby(["weight_policy", "signal_policy", "seed"])["test_acc"].mean()
        texts = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
        assert len(texts) == len(weights) * len(signals)
        grid = np.ma.filled(ax.images[0].get_array(), np.nan)
        for (r, w), (c, s) in itertools.product(enumerate(weights), enumerate(signals)):
            x = per_seed[(w, s)].to_numpy()
            mean_text, lo, hi = re.fullmatch(r"(\S+)\n(\S+)–(\S+)", texts[(r, c)]).groups()
            assert float(mean_text) == pytest.approx(x.mean(), abs=0.005 + 1e-9)
            assert grid[r, c] == pytest.approx(x.mean(), rel=1e-12)
            band_lo, band_hi = t_band(x)
            assert within(float(lo), band_lo, 0.005) and within(float(hi), band_hi, 0.005)  # 2 decimals
    made.figure.clear()


# --- 4. learning curves --------------------------------------------------------------------------
def test_learning_curves_are_seed_means_with_95_percent_bands(ctx, study, runs) -> None:
    made_all = [o for o in curves.fig_learning_curves(ctx) if isinstance(o, Made)]
    assert len(made_all) == len(NORMS)  # one figure per normalization: never averaged across them
    for made, norm in zip(made_all, NORMS, strict=True):
        assert made.name.endswith(norm)
        _check_learning_curves(made, study, runs[runs["signal_norm"] == norm])


def _check_learning_curves(made: Made, study: Path, runs: pd.DataFrame) -> None:
    curves = pd.read_csv(study / "curves.csv.gz").merge(runs, on="run_id")
    per_seed = curves.groupby(["metric", "weight_policy", "signal_policy", "seed", "epoch"])["value"].mean()
    axes = np.array(made.figure.axes[: 2 * len(WEIGHTS)]).reshape(2, len(WEIGHTS))
    for (i, metric), (j, w) in itertools.product(enumerate(("val_acc", "test_acc")), enumerate(WEIGHTS)):
        ax = axes[i, j]
        assert len(ax.lines) == len(ax.collections) == len(SIGNALS)
        expected = {}
        for s in SIGNALS:
            block = per_seed[(metric, w, s)].unstack("epoch")  # seeds x epochs
            expected[s] = block
        for line, band in zip(ax.lines, ax.collections, strict=True):
            y = np.asarray(line.get_ydata(), float)
            match = [s for s, b in expected.items() if np.allclose(b.mean().to_numpy(), y, rtol=0, atol=1e-9)]
            assert len(match) == 1, (metric, w, y)
            block = expected.pop(match[0])
            assert list(line.get_xdata()) == list(range(1, EPOCHS + 1))
            vertices = np.concatenate([p.vertices for p in band.get_paths()])
            for epoch in range(1, EPOCHS + 1):
                at = vertices[np.isclose(vertices[:, 0], epoch), 1]
                x = block[epoch].to_numpy()
                band_lo, band_hi = t_band(x)
                assert within(at.min(), band_lo) and within(at.max(), band_hi)
    made.figure.clear()


# --- 5. critical difference ----------------------------------------------------------------------
def test_critical_difference_ranks_are_mean_within_seed_ranks(ctx, runs) -> None:
    made = _one(rank_figures.fig_critical_difference(ctx))
    expected = {}
    for (norm, prec), cond in runs.groupby(["signal_norm", "precision"]):
        block = cond.pivot(index="seed", columns=["weight_policy", "signal_policy"], values="test_acc")
        ranks = pd.DataFrame(sst.rankdata(-block.to_numpy(), axis=1), columns=block.columns).mean()
        expected[common._key_label(["signal_norm", "precision"], (norm, prec))] = {
            st.combo_label(w, s): r for (w, s), r in ranks.items()
        }
    seen = set()
    for ax in made.figure.axes:
        title = next(t.get_text() for t in ax.texts if "Friedman" in t.get_text())
        cond = title.split(": Friedman")[0]
        got = {}
        for t in ax.texts:
            m = re.fullmatch(r"(?:\* )?(W \S+ · S \S+) \((\d+\.\d\d)\)", t.get_text())  # * = preset
            if m:
                got[m.group(1)] = float(m.group(2))
        assert got.keys() == expected[cond].keys()
        for combo, rank in got.items():
            assert rank == pytest.approx(expected[cond][combo], abs=0.005 + 1e-9)
        seen.add(cond)
    assert seen == set(expected)
    made.figure.clear()
