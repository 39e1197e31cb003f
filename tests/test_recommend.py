"""The recommendation table (study.analysis.recommend): one file, rendered for the README and the paper."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

from study.analysis.publish import REC_BEGIN, REC_END, readme_answer
from study.analysis.recommend import COLUMNS, ROWS, TABLE, latex_table, markdown_table, write_recommendations

ROOT = Path(__file__).resolve().parent.parent


def _results(tmp_path: Path) -> Path:
    """A results folder with the committed statistics of two studies only (the others are absent)."""
    results = tmp_path / "results"
    for study in ("core", "weights", "weight_range"):
        for name in ("spec.yaml", "stats"):
            src = ROOT / "results" / study / name
            dst = results / study / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if src.is_dir() else shutil.copyfile)(src, dst)
    return results


def test_table_rows_from_the_studies_and_honest_gaps(tmp_path: Path) -> None:
    results = _results(tmp_path)
    write_recommendations(results)
    table = pd.read_csv(results / TABLE, keep_default_na=False)
    assert list(table.columns) == COLUMNS and len(table) == len(ROWS)
    core = table.iloc[0]
    assert core["advice"] == "true derivative (exact)" and core["effect"].startswith("+74.")
    assert "core: 1 condition, 100 seeds; 1 different" == core["evidence"]
    narrow = table[table["bound"].str.startswith("narrow hardware range")].iloc[0]
    assert narrow["advice"] == "straight-through (ste)" and narrow["effect"].startswith("median -")
    assert narrow["evidence"].startswith("weight_range: 6 conditions, 4 seeds")
    wide = table[table["bound"].str.startswith("hardware range c = 0.1 to 1")].iloc[0]  # a list filter
    assert wide["evidence"].startswith("weight_range: 13 conditions")
    project = table[table["bound"].str.startswith("projected")].iloc[0]  # sides named by the row
    assert project["effect"].startswith("project - clamp: ") and "exact" not in project["advice"]
    absent = table[table["caveat"].str.contains("has no statistics yet")]
    assert len(absent) >= 1 and set(absent["advice"]) == {"not measured"}


def test_an_untested_bound_says_so(tmp_path: Path, monkeypatch) -> None:
    import study.analysis.recommend as rec

    row = {"site": "signal", "bound": "b", "regime": "-", "kind": "untested", "caveat": "exists (issue #9)"}
    monkeypatch.setattr(rec, "ROWS", [row])
    table = rec.recommendation_table(_results(tmp_path))
    assert table.iloc[0]["advice"] == "not measured" and table.iloc[0]["caveat"] == "exists (issue #9)"


def test_readme_and_paper_render_the_same_table(tmp_path: Path) -> None:
    results = _results(tmp_path)
    write_recommendations(results)
    md = markdown_table(results)
    tex = latex_table(results)
    table = pd.read_csv(results / TABLE, keep_default_na=False)
    assert len(md) == 2 + len(table) and tex.count(r"\\") == 1 + len(table)
    for advice in table["advice"]:
        assert f"**{advice}**" in "\n".join(md)
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{REC_BEGIN}\nold\n{REC_END}\n\n<!-- ANSWER -->\n")
    readme_answer([results / "core", results / "weights"], readme, findings=tmp_path / "findings.md")
    text = readme.read_text()
    assert "old" not in text and "\n".join(md) in text and text.count(REC_BEGIN) == 1
