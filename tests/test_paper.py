"""The paper's text against its generated inputs (issue #21): no setup number typed by hand, every macro
it uses generated (and in its fallback list), captions generated with the figures."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from study.analysis.publish import caption_tex, captions_tex, figure_captions
from study.analysis.report.latex import _answer, macro_prefix

ROOT = Path(__file__).resolve().parents[1]
MAIN = ROOT / "paper" / "main.tex"
GENERATED = ROOT / "paper" / "generated"
STUDIES = ("core", "generality", "mechanism", "analogvnn_gelu", "weights", "weights_tuned", "factorial")
ADVISOR = "advisor"  # results/advisor: macros and a figure, no study setup

# setup macros whose values must never be typed into main.tex (latex.py `setup_macros`)
SETUP = (
    "TrainSize",
    "StepsPerEpoch",
    "Architecture",
    "Batch",
    "Epochs",
    "Seeds",
    "Cells",
    "TrialsText",
    "TrialsDistinct",
    "Trials",
    "WallMinutes",
    "Lr",
)
# small numbers are hand-written only where no macro provides them: these words follow a setup number
SMALL_CONTEXT = r"(?:epochs?|seeds?|steps|cells|trials|distinct runs|minutes|min\b)"


def _text() -> str:
    """main.tex without comments."""
    return re.sub(r"(?<!\\)%.*", "", MAIN.read_text())


def _macros() -> dict[str, str]:
    out = {}
    for path in sorted(GENERATED.glob("*/*.tex")):
        for name, value in re.findall(r"\\newcommand\{\\([A-Za-z]+)\}\{(.*)\}\s*$", path.read_text(), re.M):
            out[name] = value
    return out


def test_every_macro_main_tex_uses_is_generated_and_has_a_fallback() -> None:
    text = MAIN.read_text()
    prefixes = "|".join(sorted((macro_prefix(s) for s in (*STUDIES, ADVISOR)), key=len, reverse=True))
    used = set(re.findall(rf"\\((?:{prefixes})[A-Za-z]+)", _text()))
    fallback = set(
        ",".join(re.findall(r"\\fallbacks\{([^}]*)\}", text.replace("%\n", ""))).replace("\n", "").split(",")
    )
    assert used - fallback == set(), "add these to main.tex's \\fallbacks list"
    assert used - set(_macros()) == set(), "main.tex uses macros the pipeline does not write"


def test_no_setup_number_is_hand_written() -> None:
    text = _text()
    macros = _macros()
    for study in STUDIES:
        prefix = macro_prefix(study)
        for key in SETUP:
            value = macros.get(prefix + key)
            assert value is not None, prefix + key
            if value in ("--", "") or not re.search(r"\d", value):
                continue
            if "ensuremath" in value:  # the learning rate: 10^{-3}
                exponent = re.search(r"\^\{(-?\d+)\}", value)
                assert exponent is None or f"10^{{{exponent.group(1)}}}" not in text, f"{prefix}{key}"
                continue
            number = re.escape(value)
            if len(value.replace(",", "")) >= 3 or "-" in value:
                hits = re.findall(rf"(?<![\w.,{{^-]){number}(?![\w.,}}-])", text)
            else:
                hits = re.findall(rf"(?<![\w.,{{^-]){number}~?\s*{SMALL_CONTEXT}", text)
            assert not hits, f"main.tex types {hits[0]!r}: use \\{prefix}{key}"


def test_the_check_catches_a_typed_number(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "main.tex"
    fake.write_text(MAIN.read_text() + "\nEvery trial ran for 10 epochs with batch 128.\n")
    monkeypatch.setattr(__import__(__name__), "MAIN", fake)
    with pytest.raises(AssertionError, match="use"):
        test_no_setup_number_is_hand_written()


def test_every_figure_of_the_paper_has_its_generated_caption() -> None:
    text = _text()
    for study in (*STUDIES, ADVISOR):
        captions = (GENERATED / study / "captions.tex").read_text()
        for figure in re.findall(rf"\\genfig(?:\[[^]]*\])?\{{{study}/figures/([a-z_0-9]+)\.pdf\}}", text):
            macro = f"\\{macro_prefix(study)}Caption{macro_prefix(figure)}"
            assert macro + "}" in captions and macro in text, f"{figure}: caption {macro} not used"


def test_captions_come_from_the_figure_index(tmp_path: Path) -> None:
    index = tmp_path / "index.md"
    index.write_text(
        "# Figures — x\n\nWritten by ...\n\n## fig_one\n\n![fig_one](fig_one.png)\n\n"
        "[PDF](fig_one.pdf) · [PNG](fig_one.png)\n\nBand: ±δ = 0.5 pp; `stats/x.csv` has 50% of α.\n\n"
        "## Skipped\n\n- `fig_two`: no data\n"
    )
    assert figure_captions(index) == {"fig_one": "Band: ±δ = 0.5 pp; `stats/x.csv` has 50% of α."}
    tex = captions_tex("my_study", index)
    assert r"\newcommand{\MyStudyCaptionFigOne}{Band: $\pm$$\delta$ = 0.5 pp; \texttt{stats/x.csv}" in tex
    assert r"50\% of $\alpha$.}" in tex
    with pytest.raises(ValueError, match="CAPTION_TEX"):
        caption_tex("a snowman ☃")


def test_committed_captions_are_ascii_latex() -> None:
    for study in STUDIES:
        text = (GENERATED / study / "captions.tex").read_text()
        assert text.isascii() and text.count(r"\newcommand") >= 4
    text = (GENERATED / ADVISOR / "captions.tex").read_text()
    assert text.isascii() and r"\newcommand{\AdvisorCaptionAdvisor}" in text


def _rows(*verdicts_better: tuple[str, str]) -> pd.DataFrame:
    return pd.DataFrame(
        [{"verdict": v, "better": b, "policy_a": "exact", "policy_b": "ste"} for v, b in verdicts_better]
    )


def test_summary_is_mixed_only_when_decided_rows_disagree() -> None:
    assert _answer(_rows(("different", "a"), ("inconclusive", ""))) == ("different", "exact")
    assert _answer(_rows(("inconclusive", ""), ("inconclusive", ""))) == ("inconclusive", "none")
    assert _answer(_rows(("identical", ""), ("different", "a")))[0] == "mixed"
    assert _answer(_rows(("different", "a"), ("different", "b"))) == ("mixed", "both")
