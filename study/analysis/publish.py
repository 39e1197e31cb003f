"""Last stage: the study's report.md, the paper's generated inputs, and a one-screen summary.

Everything here reads only what earlier stages wrote (stats/, figures/, verify.json, run_log.jsonl).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pandas as pd

from study.analysis.recommend import TABLE, markdown_table
from study.analysis.recommend import write_latex as write_recommendation_tex
from study.analysis.report.common import (
    count_text,
    distinct,
    families,
    informative_rows,
    read_stats_csv,
    verdict_counts,
)
from study.analysis.report.latex import camel, latex_escape, macro_prefix, write_latex
from study.analysis.report.markdown import write_report as write_stats_report
from study.analysis.stats import compute_stats
from study.sweep.screen import ALL_STATS, SCREEN_TABLE
from study.tables import (
    TUNED_RUNS,
    TUNED_STATS,
    diff_unit,
    load_spec_dict,
    require_study_dir,
    write_text_atomic,
)

ROOT = Path(__file__).resolve().parents[2]  # the repository
PAPER_GENERATED = ROOT / "paper" / "generated"


def stats_stage(sdir: str | Path) -> Path:
    """`python -m study stats DIR`: the statistics tables, then the statistics report and LaTeX read from
    them (`stats/report.md`, `stats/latex/`); returns `DIR/stats`."""
    out = compute_stats(Path(sdir))
    if (Path(sdir) / TUNED_RUNS).exists():  # tune_lr: the same comparisons at each policy's own lr
        compute_stats(Path(sdir), TUNED_RUNS, TUNED_STATS)
    if (Path(sdir) / SCREEN_TABLE).exists():  # the sensitivity analysis: every condition, screened out too
        compute_stats(Path(sdir), out_name=ALL_STATS, screened=False)
    write_latex(Path(sdir))
    write_stats_report(Path(sdir))
    return out


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


# characters of the figure captions (figures/index.md) and their LaTeX spelling (text mode, T1)
CAPTION_TEX = {
    "±": r"$\pm$",
    "·": r"$\cdot$",
    "×": r"$\times$",
    "α": r"$\alpha$",
    "δ": r"$\delta$",
    "Δ": r"$\Delta$",
    "–": "--",
    "—": "---",
    "•": r"$\bullet$",
    "−": r"$-$",
    "≃": r"$\simeq$",
    "≈": r"$\approx$",
    "≠": r"$\neq$",
    "≡": r"$\equiv$",
    "≥": r"$\geq$",
    "≤": r"$\leq$",
    "‖": r"$\|$",
    "χ": r"$\chi$",
    "²": r"$^2$",
    "→": r"$\to$",
}


def caption_tex(text: str) -> str:
    """A markdown caption of figures/index.md as LaTeX: special characters escaped, `code` as
    \\texttt, the symbols of `CAPTION_TEX`; any other non-ASCII character is an error (it would not
    print with the paper's fonts)."""
    parts = re.split(r"(`[^`]*`)", " ".join(text.split()))
    out = []
    for part in parts:
        code = part.startswith("`") and part.endswith("`") and len(part) >= 2
        body = latex_escape(part[1:-1] if code else part)
        body = "".join(CAPTION_TEX.get(ch, ch) for ch in body)
        out.append(rf"\texttt{{{body}}}" if code else body)
    tex = "".join(out)
    bad = sorted({ch for ch in tex if ord(ch) > 127})
    if bad:
        raise ValueError(f"caption has characters without a LaTeX spelling {bad}: add them to CAPTION_TEX")
    return tex


def figure_captions(index_md: Path) -> dict[str, str]:
    """{figure name: caption} from a study's figures/index.md (the figure stage's captions)."""
    captions: dict[str, str] = {}
    if not index_md.exists():
        return captions
    for block in re.split(r"^## ", index_md.read_text(), flags=re.M)[1:]:
        name, _, body = block.partition("\n")
        if name.strip() == "Skipped":
            continue
        paragraphs = [p.strip() for p in body.strip().split("\n\n") if p.strip()]
        text = [p for p in paragraphs if not p.startswith(("![", "[PDF]"))]
        if text:
            captions[name.strip()] = " ".join(text)
    return captions


def captions_tex(study: str, index_md: Path) -> str:
    """`\\newcommand{\\<Study>Caption<Figure>}{...}` for every figure of the study: the paper's captions
    are the figure stage's own, so each states exactly what its figure plots and pools."""
    prefix = macro_prefix(study)
    lines = ["% written by `python -m study paper` from figures/index.md; do not edit"]
    for name, text in figure_captions(index_md).items():
        lines.append(rf"\newcommand{{\{prefix}Caption{camel(name)}}}{{{caption_tex(text)}}}")
    return "\n".join(lines) + "\n"


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
        (tmp / "captions.tex").write_text(captions_tex(name, sdir / "figures" / "index.md"))
        old = root / f".{name}.old"
        shutil.rmtree(old, ignore_errors=True)
        if dest.exists():
            dest.rename(old)
        tmp.rename(dest)
        shutil.rmtree(old, ignore_errors=True)
        inputs.append(f"\\input{{generated/{name}/macros.tex}}")
        inputs.append(f"\\input{{generated/{name}/captions.tex}}")
    write_text_atomic(
        out / "macros.tex", "% written by `python -m study paper`; do not edit\n" + "\n".join(inputs) + "\n"
    )
    results = dirs[0].resolve().parent if dirs else None
    if results is not None and (results / TABLE).exists():  # Table 1 of the paper
        write_recommendation_tex(results, out)
    print(f"paper inputs -> {out}")
    return out


def _merged(rows: pd.DataFrame) -> str:
    n = len(rows) - len(distinct(rows))
    return f"; {len(rows)} rows, {n} repeating another row's paired runs, counted once" if n else ""


def _counts(frame: pd.DataFrame) -> str:
    return count_text(verdict_counts(frame))


def summary(study_dirs: list[str | Path]) -> str:
    """The headline answer per study and site, from stats/comparisons.csv, and where outputs are."""
    lines = []
    for sdir in map(Path, study_dirs):
        comp_path = sdir / "stats" / "comparisons.csv"
        if not comp_path.exists():
            lines.append(f"{sdir.name}: no statistics yet ({comp_path} missing)")
            continue
        comp = read_stats_csv(sdir, "comparisons.csv", load_spec_dict(sdir))
        lines.append(f"{sdir.name} ({sdir}):")
        for (label, role), g in comp.groupby(["comparison", "role"], sort=False):
            own = distinct(g)
            tested = own[own["verdict"] != "identical"]
            big = (
                tested.loc[tested["mean_diff"].abs().idxmax()] if tested["mean_diff"].notna().any() else None
            )
            effect = (
                ""
                if big is None
                else (
                    f"; largest |a-b| = {big['mean_diff']:+.2f}{diff_unit(big['metric'])} "
                    f"[{big['ci_low']:+.2f}, {big['ci_high']:+.2f}]"
                )
            )
            tag = " (positive control)" if role == "positive_control" else ""
            lines.append(
                f"  {label}{tag}: {len(own)} distinct condition(s){_merged(g)}: {_counts(own)}{effect}"
            )
        lines.append(f"  report: {sdir / 'report.md'}; figures: {sdir / 'figures'}")
    text = "\n".join(lines)
    print(text)
    return text


README = ROOT / "README.md"
FINDINGS = ROOT / "docs" / "findings.md"  # the per-study answer block (the README keeps the table)
BEGIN, END = "<!-- ANSWER:BEGIN (written by `python -m study readme`) -->", "<!-- ANSWER:END -->"
# the recommendation table at the front door, rendered from results/recommendations.csv
REC_BEGIN = "<!-- RECOMMEND:BEGIN (written by `python -m study readme` from results/recommendations.csv) -->"
REC_END = "<!-- RECOMMEND:END -->"


def _site_line(comp: pd.DataFrame, study: str, site: str, spec: dict) -> str:
    rows = comp[(comp["site"] == site) & (comp["role"] == "primary")]
    informative = informative_rows(comp, site)
    if informative.empty:
        return f"- **{study}, {site} site:** no primary comparison."
    own = distinct(informative)
    names = list(dict.fromkeys(rows["comparison"]))
    label = names[0] if len(names) == 1 else f"{len(names)} primary comparisons"
    n = own["n_pairs"]
    pairs = f"{int(n.min())}" if n.min() == n.max() else f"{int(n.min())}–{int(n.max())}"
    text = (
        f"- **{study}, {site} site** ({label if len(names) > 1 else f'`{label}`'}, "
        f"{len(own)} distinct condition(s){_merged(informative)}; "
        f"n = {pairs} paired seeds): **{_counts(own)}**"
    )
    fam = families(own.fillna(""), spec)
    if fam.nunique() > 1:
        text += " (" + "; ".join(f"{f}: {_counts(own[fam == f])}" for f in dict.fromkeys(fam)) + ")"
    tested = own[own["verdict"] != "identical"]
    if tested.empty:
        return text + "; no row needed a test: every pair of runs is identical."
    big = tested.loc[tested["mean_diff"].abs().idxmax()]
    cols = list(own.columns)
    keys = cols[cols.index("policy_b") + 1 : cols.index("metric")]  # condition columns, both policies
    cond = ", ".join(f"{c}={big[c]}" for c in keys if str(big[c]) not in ("", "nan")) or "all"
    if len(names) > 1:
        cond = f"`{big['comparison']}`, {cond}"
    return text + (
        f"; largest effect {big['mean_diff']:+.2f}{diff_unit(big['metric'])} "
        f"[95% CI {big['ci_low']:+.2f}, {big['ci_high']:+.2f}] "
        f"({cond}, {big['verdict']})."
    )


def _advisor_line(study_dirs: list[Path]) -> str | None:
    """The advisor's held-out validation in one line, when `<results>/advisor/` was fitted beside them."""
    if not study_dirs:
        return None
    adir = study_dirs[0].resolve().parent / "advisor"
    if not (adir / "stats" / "validation.csv").exists():
        return None
    from study.tables import read_yaml

    held_out = read_yaml(adir / "spec.yaml", "fit the advisor again (python -m study advisor)")["held_out"]
    val = pd.read_csv(adir / "stats" / "validation.csv").set_index("group")
    held, fit = val.loc["held out"], val.loc["fitted (in-sample)"]
    unseen = "; ".join(f"{k} {', '.join(map(str, v))}" for k, v in held_out.items())

    def pct(x: float) -> str:
        return f"{100 * x:.0f}%"

    if "accuracy_all" not in held or "site_only_accuracy" not in held:  # a version-1 fit
        return (
            f'- **advisor** ("can I ignore this gradient?"; fitted on {int(fit["units"])} study conditions x '
            f"sites, validated on {int(held['units'])} held out, never seen in the fit: {unseen}): decided "
            f"{int(held['decided'])} of {int(held['units'])}, **{pct(held['accuracy'])} correct [95% CI "
            f"{pct(held['accuracy_ci_low'])}, {pct(held['accuracy_ci_high'])}]**; always using the true "
            f"derivative would be right in {pct(held['baseline_accuracy'])} (`results/advisor/report.md`)."
        )
    beats = held["accuracy_all_ci_low"] > held["site_only_accuracy"]
    return (
        f'- **advisor** ("can I ignore this gradient?"; fitted on {int(fit["units"])} trainable study '
        f"conditions x sites, validated on {int(held['units'])} held out, never seen in the fit: {unseen}): "
        f"right on **{pct(held['accuracy_all'])} [95% CI {pct(held['accuracy_all_ci_low'])}, "
        f"{pct(held['accuracy_all_ci_high'])}]** counting its {int(held['units'] - held['decided'])} "
        f"abstentions as not right, against {pct(held['site_only_accuracy'])} for the site-only rule "
        f"(signals exact, weights ste), {pct(held['always_exact_accuracy'])} for always exact and "
        f"{pct(held['always_ste_accuracy'])} for always ste on the same units: "
        + (
            "it beats the site-only rule."
            if beats
            else "**it does not beat the site-only rule**, so `advise` prints that rule, with the probe's "
            "measurements as evidence."
        )
        + " (`results/advisor/report.md`)"
    )


def readme_answer(study_dirs: list[str | Path], readme: Path = README, findings: Path = FINDINGS) -> str:
    """Rewrite the generated per-study answer block (in `findings` when it has the block's markers, else
    in `readme`) from each study's stats/comparisons.csv, and the README's recommendation table from
    `<results>/recommendations.csv`."""
    target = findings if findings.exists() and BEGIN in findings.read_text() else readme
    lines = [BEGIN, ""]
    figure, margin, unit = None, None, ""
    for sdir in (require_study_dir(d) for d in study_dirs):
        comp_path = sdir / "stats" / "comparisons.csv"
        if not comp_path.exists():
            continue
        spec = load_spec_dict(sdir)
        comp = read_stats_csv(sdir, "comparisons.csv", spec)
        for site in ("weight", "signal"):
            lines.append(_site_line(comp, sdir.name, site, spec))
        if margin is None and not comp.empty:
            margin, unit = comp["margin"].iloc[0], diff_unit(comp["metric"].iloc[0])
        png = (sdir / "figures" / "paired_differences_signal.png").resolve()
        if figure is None and png.exists() and png.is_relative_to(readme.resolve().parent):
            figure = png
    advisor = _advisor_line([require_study_dir(d) for d in study_dirs])
    if advisor:
        lines.append(advisor)
    lines += [
        "",
        "Counts are over distinct conditions: a row whose paired runs repeat another row's (e.g. the "
        "signal-site rows with weight `exact` and `ste` under a clamp, whose weight policies give identical "
        "runs) is counted once. Rows whose other site is `zero` are left out: under `zero` no gradient "
        "reaches any parameter, so those rows compare two untrained networks. Verdicts: `identical` = "
        "every pair of runs bit-identical (equal checksums of the final parameters and test logits; in "
        "studies recorded before the checksums: equal in every recorded metric), no test; otherwise a "
        "paired t-test (95% t interval) and TOST "
        f"within ±{margin:g}{unit}, both Holm-adjusted: `different` (difference, CI reaching beyond the "
        "margin), `trivial` (difference, CI within the margin), `equivalent` (TOST), else "
        "`inconclusive`. Full tables, the Bayesian view and what the inconclusive rows would need in each "
        "study's `report.md`.",
    ]
    if figure is not None:
        rel = Path(os.path.relpath(figure, target.resolve().parent))
        lines += ["", f"![Per-seed paired differences at the signal site]({rel.as_posix()})"]
    lines += ["", END]
    block = "\n".join(lines)
    text = target.read_text()
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END) :]
    else:
        text = text.replace("<!-- ANSWER -->", block)
    if target != readme:
        write_text_atomic(target, text)
        print(f"answer block -> {target}")
        text = readme.read_text()
    results = Path(study_dirs[0]).resolve().parent if study_dirs else None
    if results is not None and (results / TABLE).exists() and REC_BEGIN in text and REC_END in text:
        table = "\n".join([REC_BEGIN, "", *markdown_table(results), "", REC_END])
        text = text[: text.index(REC_BEGIN)] + table + text[text.index(REC_END) + len(REC_END) :]
    write_text_atomic(readme, text)
    print(f"README answer block -> {readme}")
    return block
