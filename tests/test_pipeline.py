"""End to end: `run_all.sh --smoke` in a temporary copy, and `--analyze` regenerating committed results."""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STUDIES = ("core", "generality")


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


def test_analyze_regenerates_committed_results_byte_identical(tmp_path: Path) -> None:
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
    out = subprocess.run(
        ["bash", "run_all.sh", "--analyze"], cwd=repo, env=_env(), capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for s in present:
        for sub in ("stats", "figures"):
            _assert_same_tree(ROOT / "results" / s / sub, repo / "results" / s / sub)
        assert filecmp.cmp(
            ROOT / "results" / s / "report.md", repo / "results" / s / "report.md", shallow=False
        )
    _assert_same_tree(ROOT / "paper" / "generated", repo / "paper" / "generated")


def _assert_same_tree(a: Path, b: Path) -> None:
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b, (a, set(files_a) ^ set(files_b))
    changed = [str(f) for f in files_a if not filecmp.cmp(a / f, b / f, shallow=False)]
    assert not changed, (a, changed)
