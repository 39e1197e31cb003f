"""Last stage: the study's report.md, the paper's generated inputs, and a one-screen summary.

Everything here reads only what earlier stages wrote (stats/, figures/, verify.json, run_log.jsonl).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pandas as pd

from study.tables import REDO_STATS, read_csv, require_study_dir, write_text_atomic

PAPER_GENERATED = Path(__file__).resolve().parent.parent / "paper" / "generated"


def write_report(sdir: str | Path) -> Path:
    """`DIR/report.md`: the statistics report followed by the figures (with their captions)."""
    sdir = Path(sdir)
    stats_report = sdir / "stats" / "report.md"
    if not stats_report.exists():
        raise FileNotFoundError(f"{stats_report} not found: run `python -m study stats {sdir}` first")
    text = stats_report.read_text().rstrip() + "\n"
    index = sdir / "figures" / "index.md"
    if index.exists():
        body = index.read_text()
        body = re.sub(r"\]\((?!https?:)([^)]+)\)", r"](figures/\1)", body)
        body = re.sub(r"^# ", "## ", body, flags=re.M)
        text += "\n" + body.rstrip() + "\n"
    out = sdir / "report.md"
    write_text_atomic(out, text)
    print(f"report -> {out}")
    return out


def build_paper_inputs(study_dirs: list[str | Path], out: Path = PAPER_GENERATED) -> Path:
    """Copy each study's LaTeX macros/tables and figure PDFs into `paper/generated/<study>/`.

    Every folder is checked first (a study with `spec.yaml` and `stats/latex/`, names distinct); only
    `out/<study>/` folders are replaced, each built beside its destination and swapped in whole.
    """
    dirs = [require_study_dir(d, ("spec.yaml", "stats/latex")) for d in study_dirs]
    names = [d.resolve().name for d in dirs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"study folders with the same name given twice: {', '.join(twice)}")
    out.mkdir(parents=True, exist_ok=True)
    root = out.resolve()
    inputs = []
    for sdir, name in zip(dirs, names, strict=True):
        dest = root / name
        if dest.parent != root:  # cannot happen for a valid name; the one guard before any rmtree
            raise ValueError(f"refusing to write {dest}: not directly inside {root}")
        tmp = root / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "figures").mkdir(parents=True)
        for f in sorted((sdir / "stats" / "latex").glob("*.tex")):
            shutil.copyfile(f, tmp / f.name)
        for f in sorted((sdir / "figures").glob("*.pdf")):
            shutil.copyfile(f, tmp / "figures" / f.name)
        old = root / f".{name}.old"
        shutil.rmtree(old, ignore_errors=True)
        if dest.exists():
            dest.rename(old)
        tmp.rename(dest)
        shutil.rmtree(old, ignore_errors=True)
        inputs.append(f"\\input{{generated/{name}/macros.tex}}")
    write_text_atomic(
        out / "macros.tex", "% written by `python -m study paper`; do not edit\n" + "\n".join(inputs) + "\n"
    )
    print(f"paper inputs -> {out}")
    return out


def summary(study_dirs: list[str | Path]) -> str:
    """The headline answer per study and site, from stats/comparisons.csv, and where outputs are."""
    lines = []
    for sdir in map(Path, study_dirs):
        comp_path = sdir / "stats" / "comparisons.csv"
        if not comp_path.exists():
            lines.append(f"{sdir.name}: no statistics yet ({comp_path} missing)")
            continue
        comp = read_csv(comp_path, REDO_STATS, keep_default_na=False, na_values=[""])
        lines.append(f"{sdir.name} ({sdir}):")
        for (label, role), g in comp.groupby(["comparison", "role"], sort=False):
            counts = g["verdict"].value_counts()
            verdicts = ", ".join(
                f"{counts.get(v, 0)} {v}" for v in ("different", "equivalent", "inconclusive")
            )
            big = g.loc[g["mean_diff"].abs().idxmax()] if g["mean_diff"].notna().any() else None
            effect = (
                ""
                if big is None
                else (
                    f"; largest |a-b| = {big['mean_diff']:+.2f} pp "
                    f"[{big['ci_low']:+.2f}, {big['ci_high']:+.2f}]"
                )
            )
            tag = " (positive control)" if role == "positive_control" else ""
            lines.append(f"  {label}{tag}: {len(g)} condition(s): {verdicts}{effect}")
        lines.append(f"  report: {sdir / 'report.md'}; figures: {sdir / 'figures'}")
    text = "\n".join(lines)
    print(text)
    return text


README = Path(__file__).resolve().parent.parent / "README.md"
BEGIN, END = "<!-- ANSWER:BEGIN (written by `python -m study readme`) -->", "<!-- ANSWER:END -->"


def _site_line(comp: pd.DataFrame, study: str, site: str) -> str:
    rows = comp[(comp["site"] == site) & (comp["role"] == "primary")]
    other = "signal_policy" if site == "weight" else "weight_policy"
    informative = rows[rows[other].astype(str) != "zero"] if other in rows else rows
    if informative.empty:
        return f"- **{study}, {site} site:** no primary comparison."
    counts = informative["verdict"].value_counts()
    big = informative.loc[informative["mean_diff"].abs().idxmax()]
    label = rows["comparison"].iloc[0]
    cols = list(informative.columns)
    keys = cols[cols.index("policy_b") + 1 : cols.index("metric")]  # condition columns, both policies
    cond = ", ".join(f"{c}={big[c]}" for c in keys if str(big[c]) not in ("", "nan")) or "all"
    return (
        f"- **{study}, {site} site** (`{label}`, {len(informative)} condition(s), n = "
        f"{int(informative['n_pairs'].min())}–{int(informative['n_pairs'].max())} paired seeds): "
        f"{counts.get('different', 0)} different, {counts.get('equivalent', 0)} equivalent, "
        f"{counts.get('inconclusive', 0)} inconclusive; largest effect {big['mean_diff']:+.2f} pp "
        f"[95% CI {big['ci_low']:+.2f}, {big['ci_high']:+.2f}] ({cond})."
    )


def readme_answer(study_dirs: list[str | Path], readme: Path = README) -> str:
    """Rewrite the generated answer block of the README from each study's stats/comparisons.csv."""
    lines = [BEGIN, ""]
    figure, margin = None, None
    for sdir in (require_study_dir(d) for d in study_dirs):
        comp_path = sdir / "stats" / "comparisons.csv"
        if not comp_path.exists():
            continue
        comp = read_csv(comp_path, REDO_STATS, keep_default_na=False, na_values=[""])
        for site in ("weight", "signal"):
            lines.append(_site_line(comp, sdir.name, site))
        margin = margin if margin is not None or comp.empty else comp["margin"].iloc[0]
        png = (sdir / "figures" / "paired_differences_signal.png").resolve()
        if figure is None and png.exists() and png.is_relative_to(readme.resolve().parent):
            figure = png
    lines += [
        "",
        "Rows whose other site is `zero` are left out above: under `zero` no gradient reaches any "
        "parameter, so those rows compare identical untrained networks. Verdicts: paired test with "
        f"Holm correction (different), else TOST within ±{margin:g} pp (equivalent), else inconclusive; full "
        "tables in each study's `report.md`.",
    ]
    if figure is not None:
        rel = figure.relative_to(readme.resolve().parent)
        lines += ["", f"![Per-seed paired differences at the signal site]({rel.as_posix()})"]
    lines += ["", END]
    block = "\n".join(lines)
    text = readme.read_text()
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END) :]
    else:
        text = text.replace("<!-- ANSWER -->", block)
    write_text_atomic(readme, text)
    print(f"README answer block -> {readme}")
    return block
