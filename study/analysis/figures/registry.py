"""Figures of a study: `python -m study figures DIR`.

Reads `DIR/runs.csv`, `DIR/curves.csv.gz` and `DIR/stats/` (never the trial folders, never trains)
and writes `DIR/figures/NAME.pdf`, `NAME.png` (300 dpi) and `index.md` with one caption per figure.
Each figure is one generator function `fig_<name>(ctx)`, registered with
`study.analysis.figures.common.register_figure`; it yields `Made` figures or `Skip` reasons (e.g. when
the study lacks the factor the figure needs). The families (`paired`, `curves`, `ranks`, `sweeps`,
`locations`, `saturation`, `ranges`, `effects`) are imported here in the order their figures appear in
`index.md`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from study.analysis.figures import style as st
from study.analysis.figures.common import REGISTRY, FigureResult, Skip, StudyContext
from study.tables import (
    write_text_atomic,
)

# isort: off
# the figure families register their figures on import, in this order (the order of index.md)
from study.analysis.figures import paired, curves, ranks, sweeps, locations, saturation, ranges, effects  # noqa: F401, E402,E501
# isort: on


def make_figures(study_dir: Path, verbose: bool = True) -> list[FigureResult]:
    """Draw every figure of the study into `study_dir/figures/` and write `index.md`; one line per figure."""
    study_dir = Path(study_dir)
    ctx = StudyContext.load(study_dir)
    out_dir = study_dir / "figures"
    out_dir.mkdir(parents=True, exist_ok=True)
    results: list[FigureResult] = []
    with st.style():
        for base, function in REGISTRY:
            items = function(ctx) if len(ctx.runs) else [Skip(base, "runs.csv has no successful trial")]
            for item in items:
                if isinstance(item, Skip):
                    result = FigureResult(item.name, "skipped", reason=item.reason)
                    line = f"skipped {item.name}: {item.reason}"
                else:
                    files = st.save_figure(item.figure, out_dir, item.name)
                    item.figure.clear()
                    result = FigureResult(item.name, "made", caption=item.caption, files=tuple(files))
                    line = f"made    {item.name}"
                results.append(result)
                if verbose:
                    print(line, flush=True)
    _remove_stale(out_dir, results)
    write_text_atomic(out_dir / "index.md", render_index(ctx.name, results))
    return results


def _remove_stale(out_dir: Path, results: list[FigureResult]) -> None:
    """Delete figure files of earlier runs that this run did not produce (only names the registry owns)."""
    made = {r.name for r in results if r.status == "made"}
    prefixes = tuple(base for base, _ in REGISTRY)
    for path in sorted(out_dir.glob("*")):
        if path.suffix in (".pdf", ".png") and path.stem.startswith(prefixes) and path.stem not in made:
            path.unlink()


def render_index(study: str, results: list[FigureResult]) -> str:
    """`figures/index.md`: each made figure with its caption, then the skipped ones with reasons."""
    lines = [
        f"# Figures — {study}",
        "",
        "Written by `python -m study figures` from `runs.csv`, `curves.csv.gz` and `stats/`; "
        "each figure as PDF (TrueType fonts) and 300-dpi PNG.",
        "",
    ]
    for r in results:
        if r.status == "made":
            lines += [
                f"## {r.name}",
                "",
                f"![{r.name}]({r.name}.png)",
                "",
                f"[PDF]({r.name}.pdf) · [PNG]({r.name}.png)",
                "",
                r.caption,
                "",
            ]
    skipped = [r for r in results if r.status == "skipped"]
    if skipped:
        lines += ["## Skipped", ""] + [f"- `{r.name}`: {r.reason}" for r in skipped] + [""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: `python -m study.analysis.figures.registry DIR` (the same as `python -m study figures DIR`)."""
    parser = argparse.ArgumentParser(prog="python -m study figures", description=__doc__.splitlines()[0])
    parser.add_argument("study_dir", type=Path, help="study folder with runs.csv, curves.csv.gz and stats/")
    args = parser.parse_args(argv)
    make_figures(args.study_dir)
    return 0
