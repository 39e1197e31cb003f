"""Generated text read as a reader would (issue #32, item 4): the checker itself, then every committed
generated file (README blocks, docs/findings.md, each study's report.md, the paper's generated inputs),
and the paper's cross-references."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from study.analysis.prose import prose_problems

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "text",
    [
        "784-256-128-10 and 784-256-128-10 (mnist5k)",
        "(identical and identical)",
        "n = 0–100 seeds per point",
        "8–8 seeds per regime",
        "most precision (levels) levels",
        "exact is better by −4.87 pp",
        "better by -4.87 pp",
        "the effect is −25.57 pp smaller",
        "SDs of 1.21–1.21 pp",
        "10--10 conditions",
    ],
)
def test_each_slip_is_caught(text: str) -> None:
    assert prose_problems(text), text


@pytest.mark.parametrize(
    "text",
    [
        "64-64-32-10 and 784-256-128-10",
        "ste/exact and exact/exact (tied)",
        "n = 8 seeds; 6–8 seeds per regime; n = 100",
        "better by 4.87 pp; smaller by 3 pp",
        "[-5.03, -4.72]",
    ],
)
def test_clean_text_passes(text: str) -> None:
    assert prose_problems(text) == []


def test_divergence_sentences_only_where_something_diverged() -> None:
    text = "Fewer points at late epochs when trials diverged."
    assert prose_problems(text, diverged_trials=0) and not prose_problems(text, diverged_trials=3)


def _generated_files() -> list[Path]:
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    keep = [
        p
        for p in tracked
        if p in ("README.md", "docs/findings.md")
        or re.fullmatch(r"results/[^/]+/report\.md", p)
        or re.fullmatch(r"paper/generated/.+\.tex", p)
    ]
    return [ROOT / p for p in keep]


def _generated_text(path: Path) -> str:
    text = path.read_text()
    if path.name != "README.md":
        return text
    blocks = re.findall(r"<!-- (?:ANSWER|RECOMMEND):BEGIN.*?:END -->", text, flags=re.S)
    return "\n".join(blocks)  # the README's hand-written parts are read by people, not this checker


def _diverged(path: Path) -> int | None:
    runs = path.parent / "runs.csv"
    if path.name != "report.md" or not runs.exists():
        return None
    flags = pd.read_csv(runs, usecols=["diverged"])["diverged"].astype(str).str.lower()
    return int((flags == "true").sum())


def test_committed_generated_text_reads_cleanly() -> None:
    files = _generated_files()
    assert len(files) > 10
    problems = [
        f"{p.relative_to(ROOT)}: {m}" for p in files for m in prose_problems(_generated_text(p), _diverged(p))
    ]
    assert not problems, "\n".join(problems[:20])


def test_every_paper_figure_and_table_is_referenced() -> None:
    tex = (ROOT / "paper" / "main.tex").read_text()
    labels = set(re.findall(r"\\label\{((?:fig|tab):[^}]+)\}", tex))
    refs = {
        r.strip()
        for group in re.findall(r"\\(?:ref|eqref|cref|Cref|autoref|pageref)\{([^}]+)\}", tex)
        for r in group.split(",")
    }
    assert labels, "no labels found"
    assert not sorted(labels - refs), f"labels never referenced: {sorted(labels - refs)}"
