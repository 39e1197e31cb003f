"""Ordinary mistakes cost a clear message, never results (issue #13): odd study paths, bad spec rules
and values, edited specs, tables that do not cover the spec."""

from __future__ import annotations

from pathlib import Path

import pytest

from study.publish import build_paper_inputs

ROOT = Path(__file__).resolve().parent.parent


def _fake_study(path: Path) -> Path:
    (path / "stats" / "latex").mkdir(parents=True)
    (path / "stats" / "latex" / "macros.tex").write_text("% macros\n")
    (path / "figures").mkdir()
    (path / "spec.yaml").write_text("name: x\n")
    return path


@pytest.mark.parametrize("odd", [".", "..", "", "paper", "/"])
def test_paper_refuses_folders_that_are_not_studies_and_deletes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, odd: str
) -> None:
    paper = tmp_path / "paper"
    out = paper / "generated"
    (out / "core").mkdir(parents=True)
    (out / "core" / "keep.tex").write_text("kept")
    (paper / "main.tex").write_text("kept")
    monkeypatch.chdir(out)  # `python -m study paper ..` from inside paper/generated named paper/ itself
    with pytest.raises(ValueError, match="not a study folder"):
        build_paper_inputs([odd], out=out)
    assert (paper / "main.tex").read_text() == "kept" and (out / "core" / "keep.tex").read_text() == "kept"


def test_paper_refuses_a_study_without_statistics_before_touching_anything(tmp_path: Path) -> None:
    out = tmp_path / "generated"
    good = _fake_study(tmp_path / "core")
    bare = tmp_path / "other"
    bare.mkdir()
    (bare / "spec.yaml").write_text("name: other\n")
    (out / "core").mkdir(parents=True)
    (out / "core" / "old.tex").write_text("old")
    with pytest.raises(ValueError, match="stats/latex missing"):
        build_paper_inputs([good, bare], out=out)
    assert (out / "core" / "old.tex").read_text() == "old"  # the valid one was not half-replaced either


def test_paper_refuses_two_studies_of_one_name(tmp_path: Path) -> None:
    a, b = _fake_study(tmp_path / "a" / "core"), _fake_study(tmp_path / "b" / "core")
    with pytest.raises(ValueError, match="same name given twice: core"):
        build_paper_inputs([a, b], out=tmp_path / "generated")


def test_paper_replaces_only_its_own_study_folder(tmp_path: Path) -> None:
    out = tmp_path / "generated"
    study = _fake_study(tmp_path / "runs" / "core")
    (out / "core").mkdir(parents=True)
    (out / "core" / "stale.tex").write_text("stale")
    (out / "other").mkdir()
    (out / "other" / "macros.tex").write_text("other")
    build_paper_inputs([study], out=out)
    assert sorted(p.name for p in (out / "core").iterdir()) == ["figures", "macros.tex"]
    assert (out / "other" / "macros.tex").read_text() == "other"
    assert sorted(p.name for p in out.iterdir()) == ["core", "macros.tex", "other"]


def test_cli_refuses_a_dot_study_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from study.cli import main

    for argv in (["paper", "."], ["stats", ".."], ["readme", str(tmp_path)]):
        assert main(argv) == 2, argv
        assert "is not a study folder" in capsys.readouterr().err
