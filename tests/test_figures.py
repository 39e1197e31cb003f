"""Figures stage: every figure is drawn, deterministic, TrueType-only, and skipped with a reason when the
study lacks what it needs. Runs, curves and spec are synthetic and written here; stats/ is what the
statistics stage writes from them (tests/test_figures_real.py checks the plotted values)."""

from __future__ import annotations

import gzip
import hashlib
import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from study.analysis.figures import paired, ranks, registry
from study.analysis.figures import style as st
from study.analysis.figures.common import REGISTRY, FigureResult, Made, Skip, StudyContext, mean_ci
from study.analysis.figures.effects import EFFECT_FIGURES
from study.analysis.figures.locations import LOCATION_FIGURES
from study.analysis.figures.ranges import RANGE_FIGURE
from study.analysis.figures.registry import make_figures
from study.analysis.figures.saturation import SATURATION_FIGURE
from study.analysis.publish import stats_stage
from study.sweep.spec import stored_spec_hash

SITE_COLUMN = {"weight": "weight_policy", "signal": "signal_policy"}
OTHER = {"weight": "signal_policy", "signal": "weight_policy"}
COMPARISONS = [
    ("weight", "exact", "ste", "primary"),
    ("signal", "exact", "ste", "primary"),
    ("weight", "zero", "ste", "positive_control"),
    ("signal", "zero", "ste", "positive_control"),
]


# --- a synthetic study ---------------------------------------------------------------------------
def _accuracy(cond: dict[str, str], w: str, s: str, seed_effect: float, rng: np.random.Generator) -> float:
    acc = 95.0 + seed_effect
    prec = cond.get("precision", "none")
    acc -= {"4": 6.0, "16": 1.5}.get(prec, 0.0)
    acc -= {"0.2": 1.0, "0.5": 3.0}.get(cond.get("leakage", "none"), 0.0)
    acc -= {"zero": 40.0}.get(w, 0.0) + {"zero": 25.0}.get(s, 0.0)
    if s == "exact" and cond.get("signal_norm", "clamp") == "clamp":
        acc -= 1.5 if prec == "4" else 0.1
    if w == "exact":
        acc += 0.05
    return float(np.clip(acc + rng.normal(0, 0.3), 0, 100))


def write_study(
    root: Path,
    factors: dict[str, list[Any]],
    weights: tuple[str, ...] = ("exact", "ste", "zero"),
    signals: tuple[str, ...] = ("exact", "ste", "zero"),
    n_seeds: int = 4,
    epochs: int = 4,
    layers: int = 2,
    stats: bool = True,
    curves: bool = True,
) -> Path:
    """Write spec.yaml, runs.csv, curves.csv.gz of a synthetic study and (optionally) run the stats stage."""
    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    spec = {
        "name": root.name,
        "factors": {**factors, "weight_policy": list(weights), "signal_policy": list(signals)},
        "seeds": n_seeds,
        "hypotheses": {"margin": 0.5, "bootstrap_resamples": 200},
    }
    (root / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    names = list(factors)
    levels = [["none" if v is None else str(v) for v in factors[n]] for n in names]
    seed_effect = rng.normal(0, 0.5, n_seeds)
    rows, curve_rows = [], []
    for values in itertools.product(*levels):
        cond = dict(zip(names, values, strict=True))
        for w, s, seed in itertools.product(weights, signals, range(n_seeds)):
            run_id = hashlib.sha1(repr((values, w, s, seed)).encode()).hexdigest()[:16]
            acc = _accuracy(cond, w, s, seed_effect[seed], rng)
            rows.append(
                {
                    "study": root.name,
                    "run_id": run_id,
                    "spec_hash": stored_spec_hash(spec),  # run under this spec
                    **cond,
                    "weight_policy": w,
                    "signal_policy": s,
                    "seed": seed,
                    "test_acc": acc,
                    "val_acc": acc + 0.2,
                    "diverged": False,
                    "failed": False,
                }
            )
            if not curves:
                continue
            for epoch in range(1, epochs + 1):
                frac = 1 - math.exp(-epoch / 1.5)
                for metric in ("val_acc", "test_acc"):
                    curve_rows.append((run_id, epoch, metric, "", acc * frac + rng.normal(0, 0.3)))
                for layer in range(layers):
                    cos = 1.0 if (w, s) == ("exact", "exact") else 0.95 - 0.1 * layer - 0.2 * (w == "zero")
                    curve_rows.append((run_id, epoch, "grad_cosine", layer, cos + rng.normal(0, 0.01)))
                    for m, base in (("sat_weight", 0.1), ("sat_signal_in", 0.05), ("sat_signal_out", 0.2)):
                        val = base * frac * (1.5 if w == "ste" else 1.0) + abs(rng.normal(0, 0.01))
                        curve_rows.append((run_id, epoch, m, layer, val))
    runs = pd.DataFrame(rows)
    runs.to_csv(root / "runs.csv", index=False)
    if curves:
        frame = pd.DataFrame(curve_rows, columns=["run_id", "epoch", "metric", "layer", "value"])
        with gzip.open(root / "curves.csv.gz", "wt") as fh:
            frame.to_csv(fh, index=False)
    if stats:
        stats_stage(root)  # the real statistics stage writes stats/
    return root


CORE = {"dataset": ["mnist"]}
GRID = {
    "dataset": ["mnist"],
    "signal_norm": ["clamp", "l2norm_m"],
    "precision": [4, None],
    "leakage": [None, 0.5],
}


# --- tests ----------------------------------------------------------------------------------------
def _by_name(results: list[FigureResult]) -> dict[str, FigureResult]:
    return {r.name: r for r in results}


@pytest.fixture(scope="module")
def grid_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[FigureResult], dict[str, bytes]]:
    root = write_study(
        tmp_path_factory.mktemp("grid") / "grid",
        GRID,
        weights=("exact", "ste"),
        n_seeds=3,
        epochs=2,
        layers=1,
    )
    results = make_figures(root, verbose=False)
    files = {p.name: p.read_bytes() for p in sorted((root / "figures").iterdir())}
    return root, results, files


def test_every_figure_is_made(grid_study: tuple[Path, list[FigureResult], dict[str, bytes]]) -> None:
    root, results, files = grid_study
    made = {r.name for r in results if r.status == "made"}
    # the location figures need location-wise signal policies (tests/test_location_figures.py), the
    # saturation and effect-model figures their analyses (tests/test_saturation_covariate.py,
    # tests/test_effect_model.py), the dose-response figure a weight_clamp factor (test below)
    elsewhere = {*LOCATION_FIGURES, SATURATION_FIGURE, *EFFECT_FIGURES, RANGE_FIGURE}
    bases = {base for base, _ in REGISTRY} - elsewhere
    assert {next(b for b in bases if name.startswith(b)) for name in made} == bases, results
    skipped = [r for r in results if r.status == "skipped"]
    assert {r.name for r in skipped} == elsewhere
    reasons = {r.name: r.reason for r in skipped}
    assert all("location-wise" in reasons[n] for n in LOCATION_FIGURES)
    assert "weight range" in reasons[RANGE_FIGURE]
    assert "covariate" in reasons[SATURATION_FIGURE] and all(
        "effect_model" in reasons[n] for n in EFFECT_FIGURES
    )
    for name in made:
        for ext in ("pdf", "png"):
            assert len(files[f"{name}.{ext}"]) > 2000, name
        assert files[f"{name}.png"].startswith(b"\x89PNG")
    index = (root / "figures" / "index.md").read_text()
    for r in results:
        if r.status == "skipped":
            assert f"`{r.name}`: {r.reason}" in index
            continue
        assert f"## {r.name}" in index and r.caption in index
        assert "n = " in r.caption and r.caption.endswith(".")


def test_figures_are_byte_identical_on_regeneration(
    grid_study: tuple[Path, list[FigureResult], dict[str, bytes]],
) -> None:
    root, _, first = grid_study
    make_figures(root, verbose=False)
    second = {p.name: p.read_bytes() for p in sorted((root / "figures").iterdir())}
    assert first.keys() == second.keys()
    changed = [name for name in first if first[name] != second[name]]
    assert not changed


def test_pdfs_embed_truetype_not_type3(grid_study: tuple[Path, list[FigureResult], dict[str, bytes]]) -> None:
    _, _, files = grid_study
    pdfs = {name: data for name, data in files.items() if name.endswith(".pdf")}
    assert pdfs
    for name, data in pdfs.items():
        assert b"/Type3" not in data.replace(b" ", b""), name
        assert b"/CreationDate" not in data and b"/Producer" not in data, name
        if b"/Font" in data:
            assert b"/FontFile2" in data, name  # embedded TrueType


def _only(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """Draw only these figures (keeps the tests short; the full registry runs on the grid study)."""
    monkeypatch.setattr(registry, "REGISTRY", [(b, f) for b, f in REGISTRY if b in names])


def test_core_study_skips_figures_lacking_factors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = write_study(tmp_path / "core", CORE, n_seeds=5, epochs=2, layers=1, curves=False)
    _only(
        monkeypatch,
        "paired_differences",
        "effect_heatmap",
        "learning_curves",
        "gradient_mismatch",
        "accuracy_vs_precision",
        "accuracy_vs_leakage",
    )
    results = _by_name(make_figures(root))
    printed = capsys.readouterr().out
    expected = [
        ("effect_heatmap_weight", "normalization"),
        ("effect_heatmap_signal", "normalization"),
        ("accuracy_vs_precision", "precision"),
        ("accuracy_vs_leakage", "leakage"),
        ("learning_curves", "curves.csv.gz"),
        ("gradient_mismatch", "curves.csv.gz"),
    ]
    for name, needle in expected:
        assert results[name].status == "skipped" and needle in results[name].reason, name
        assert f"skipped {name}: {results[name].reason}" in printed
        assert not (root / "figures" / f"{name}.pdf").exists()
    for name in ("paired_differences_weight", "paired_differences_signal"):
        assert results[name].status == "made", name
        assert f"made    {name}" in printed
    index = (root / "figures" / "index.md").read_text()
    assert "## Skipped" in index and results["accuracy_vs_leakage"].reason in index


def test_missing_stats_skip_with_reason_and_stale_files_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = write_study(
        tmp_path / "nostats",
        {"dataset": ["mnist"], "precision": [4, None]},
        weights=("ste",),
        signals=("exact", "ste"),
        n_seeds=3,
        epochs=2,
        layers=1,
        stats=False,
    )
    _only(monkeypatch, "paired_differences", "effect_heatmap", "critical_difference", "learning_curves")
    (root / "figures").mkdir()
    (root / "figures" / "critical_difference.png").write_bytes(b"old")
    results = _by_name(make_figures(root, verbose=False))
    for name in ("paired_differences_signal", "effect_heatmap_signal", "critical_difference"):
        assert results[name].status == "skipped" and "stats" in results[name].reason
    assert results["learning_curves"].status == "made"
    assert not (root / "figures" / "critical_difference.png").exists()


def test_style_palette_and_labels() -> None:
    assert len(set(st.POLICY_COLORS.values())) == 3
    palette = st.policy_palette(["zero", "mine", "ste", "exact"])
    assert palette == {**st.POLICY_COLORS, "mine": st.OTHER_POLICY_COLOR}
    assert st.rc_params()["pdf.fonttype"] == 42
    assert st.metric_label("test_acc") == "Test accuracy (%)"
    assert st.diff_label("test_acc") == "Δ test accuracy (pp)"
    assert st.level_label("precision", "none") == "full"
    styles = st.combo_styles(["exact", "ste"], ["ste", "zero"])
    assert styles[("exact", "zero")]["color"] == st.POLICY_COLORS["zero"]
    assert styles[("ste", "zero")]["linestyle"] != styles[("exact", "zero")]["linestyle"]


def test_mean_ci_is_deterministic() -> None:
    x = np.arange(10.0)
    assert mean_ci(x) == mean_ci(x)
    mean, lo, hi, n = mean_ci(x)
    assert mean == 4.5 and lo < mean < hi and n == 10
    assert math.isnan(mean_ci([1.0])[1])


def test_many_conditions_split_the_estimation_plot_and_become_a_rank_heatmap(
    grid_study: tuple[Path, list[FigureResult], dict[str, bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = StudyContext.load(grid_study[0])
    monkeypatch.setattr(paired, "MAX_ROWS", 4)
    outs = [o for o in paired.fig_paired_differences(ctx) if o.name.startswith("paired_differences_signal")]
    assert len(outs) == 4 and all(isinstance(o, Made) for o in outs)
    assert all(o.name.startswith("paired_differences_signal_weight_policy-") for o in outs)
    assert all("one figure per level" in o.caption for o in outs)
    monkeypatch.setattr(ranks, "MAX_CD_DIAGRAMS", 2)
    (cd,) = ranks.fig_critical_difference(ctx)
    assert isinstance(cd, Made) and cd.caption.startswith("Mean rank")
    for o in [*outs, cd]:
        o.figure.clear()
    monkeypatch.setattr(ranks, "MAX_RANK_ROWS", 3)  # too many rows to read: no figure, and why
    (skip,) = ranks.fig_critical_difference(ctx)
    assert isinstance(skip, Skip) and "too many rows to read" in skip.reason


def test_learning_curves_stop_where_the_shortest_averaged_condition_ends(tmp_path: Path) -> None:
    """A factor that sets the run length (epochs): averaging past the shortest condition would mix
    different conditions at different epochs, so the curves end there and the caption says so."""
    from study.analysis.figures.curves import fig_learning_curves

    root = write_study(tmp_path / "lengths", {"epochs": [2, 4]}, ("exact", "ste"), ("exact",), stats=False)
    runs = pd.read_csv(root / "runs.csv")
    short = set(runs.loc[runs["epochs"] == 2, "run_id"])
    curves = pd.read_csv(root / "curves.csv.gz")
    curves = curves[~(curves["run_id"].isin(short) & (curves["epoch"] > 2))]
    curves.to_csv(root / "curves.csv.gz", index=False)
    with st.style():
        (made,) = fig_learning_curves(StudyContext.load(root))
    assert "Shown up to epoch 2, the last one every averaged condition reaches." in made.caption
    xs = [x for ax in made.figure.axes for line in ax.get_lines() for x in line.get_xdata()]
    assert xs and max(xs) == 2


def test_weight_range_dose_figure_is_drawn_where_the_range_varies(tmp_path: Path) -> None:
    factors = {"dataset": ["mnist"], "weight_clamp": [0.05, 0.1, 0.5, 1.0], "optimizer": ["adam", "sgd"]}
    root = write_study(
        tmp_path / "ranges", factors, weights=("exact", "ste"), signals=("exact",), curves=False
    )
    runs = pd.read_csv(root / "runs.csv")
    runs["weight_saturation"] = 0.3 / runs["weight_clamp"] * (runs["weight_policy"] == "exact")
    runs.to_csv(root / "runs.csv", index=False)
    results = _by_name(make_figures(root, verbose=False))
    made = results[RANGE_FIGURE]
    assert made.status == "made" and "n = 4 seeds" in made.caption
    assert (root / "figures" / f"{RANGE_FIGURE}.pdf").stat().st_size > 2000
    two = write_study(tmp_path / "two", {"weight_clamp": [0.05, 1.0]}, weights=("exact", "ste"), curves=False)
    assert "fewer than three" in _by_name(make_figures(two, verbose=False))[RANGE_FIGURE].reason
