"""End to end: `run_all.sh --smoke` in a temporary copy, and `--analyze` regenerating committed results."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# the canonical studies, as run_all.sh lists them (one definition)
STUDIES = tuple(re.search(r"^STUDIES=\(([^)]*)\)", (ROOT / "run_all.sh").read_text(), re.M).group(1).split())


def _copy_tracked(dest: Path) -> Path:
    """A copy of the repository's tracked files (what a fresh clone holds)."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for rel in filter(None, files.decode().split("\0")):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["NORMGRAD_NO_SETUP"] = "1"  # use this interpreter's environment instead of creating .venv
    env["NORMGRAD_NO_PDF"] = "1"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = ""  # the copy's own packages come first through its working directory
    return env


@pytest.mark.slow
def test_smoke_end_to_end_in_a_copy(tmp_path: Path) -> None:
    repo = _copy_tracked(tmp_path / "repo")
    scratch = tmp_path / "smoke-out"
    env = {**_env(), "SMOKE_DIR": str(scratch), "WORKERS": "2"}
    out = subprocess.run(
        ["bash", "run_all.sh", "--smoke"], cwd=repo, env=env, capture_output=True, text=True, timeout=900
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    study = scratch / "smoke"
    for name in (
        "runs.csv",
        "curves.csv.gz",
        "report.md",
        "stats/comparisons.csv",
        "figures/index.md",
        "verify.json",
    ):
        assert (study / name).exists(), name
    assert "36/36 done" in out.stdout + out.stderr
    assert "2/2 re-trained records identical" in out.stdout
    assert not (repo / "results" / "smoke").exists()  # committed results untouched


def test_analyze_regenerates_committed_results_at_their_precision(tmp_path: Path) -> None:
    tracked = subprocess.run(["git", "ls-files", "results"], cwd=ROOT, capture_output=True, text=True).stdout
    present = [s for s in STUDIES if f"results/{s}/runs.csv" in tracked.split()]
    if not present:
        pytest.skip("no committed results yet")
    repo = _copy_tracked(tmp_path / "repo")
    for s in present:
        for sub in ("stats", "figures"):
            shutil.rmtree(repo / "results" / s / sub, ignore_errors=True)
        (repo / "results" / s / "report.md").unlink(missing_ok=True)
    shutil.rmtree(repo / "paper" / "generated", ignore_errors=True)
    (repo / "results" / "recommendations.csv").unlink(missing_ok=True)
    out = subprocess.run(
        ["bash", "run_all.sh", "--analyze"], cwd=repo, env=_env(), capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for s in present:
        for sub in ("stats", "figures"):
            _assert_same_tree(ROOT / "results" / s / sub, repo / "results" / s / sub)
        report = "report.md"
        assert_same_numbers(
            (ROOT / "results" / s / report).read_text(), (repo / "results" / s / report).read_text(), report
        )
    if "results/advisor/rule.json" in tracked.split():  # refitted by --analyze from the studies' statistics
        for sub in ("stats", "figures"):
            _assert_same_tree(ROOT / "results" / "advisor" / sub, repo / "results" / "advisor" / sub)
        for name in ("rule.json", "units.csv", "preregistration.json"):
            assert_same_numbers(
                (ROOT / "results" / "advisor" / name).read_text(),
                (repo / "results" / "advisor" / name).read_text(),
                name,
            )
    if "results/recommendations.csv" in tracked.split():  # the front door's table, from the statistics
        assert_same_numbers(
            (ROOT / "results" / "recommendations.csv").read_text(),
            (repo / "results" / "recommendations.csv").read_text(),
            "recommendations.csv",
        )
    _assert_same_tree(ROOT / "paper" / "generated", repo / "paper" / "generated")


_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def _last_digit_unit(token: str) -> float:
    """One unit in the last written digit of a number token (`74.26` -> 0.01, `8.197e-81` -> 1e-84)."""
    mantissa, _, exponent = token.lower().lstrip("+-").partition("e")
    decimals = len(mantissa.partition(".")[2])
    return 10.0 ** (int(exponent or 0) - decimals)


def assert_same_numbers(a: str, b: str, where: str) -> None:
    """Texts equal apart from numbers, and numbers equal within one unit of their last written digit.

    That is what the number policy of `study.tables` promises across machines: the same digits, except
    where an estimate's last bits straddle a rounding boundary.
    """
    assert _NUMBER.split(a) == _NUMBER.split(b), f"{where}: text differs"
    for x, y in zip(_NUMBER.findall(a), _NUMBER.findall(b), strict=True):
        if x != y:
            unit = max(_last_digit_unit(x), _last_digit_unit(y))
            assert abs(float(x) - float(y)) <= unit * 1.0001, f"{where}: {x} vs {y}"


def _assert_same_figure(a: Path, b: Path) -> None:
    """PNGs: the same picture (a different matplotlib or FreeType may move a few antialiased pixels)."""
    import matplotlib.image as mpimg
    import numpy as np

    if a.read_bytes() == b.read_bytes():
        return
    pa, pb = mpimg.imread(a), mpimg.imread(b)
    assert pa.shape == pb.shape, (a, pa.shape, pb.shape)
    differing = float(np.mean(np.abs(pa - pb).max(axis=-1) > 0.25))
    assert differing < 0.005, (a, differing)


def _assert_same_tree(a: Path, b: Path) -> None:
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b, (a, set(files_a) ^ set(files_b))
    for f in files_a:
        if f.suffix == ".png":
            _assert_same_figure(a / f, b / f)
        elif f.suffix == ".pdf":
            assert (b / f).read_bytes().startswith(b"%PDF"), b / f  # drawn from the same data as the PNG
        else:
            assert_same_numbers((a / f).read_text(), (b / f).read_text(), str(f))


def test_number_comparison_allows_only_the_last_digit() -> None:
    assert_same_numbers("x,74.26,8.197e-81\n", "x,74.25,8.198e-81\n", "t")
    for bad in ("x,74.24,8.197e-81\n", "y,74.26,8.197e-81\n", "x,74.26,8.199e-81\n"):
        with pytest.raises(AssertionError):
            assert_same_numbers("x,74.26,8.197e-81\n", bad, "t")
