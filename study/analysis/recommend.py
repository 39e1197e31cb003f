"""The recommendation table: one row per site x kind of bound x regime where the evidence differs.

Written by `python -m study analyze` (and `python -m study recommend RESULTS`) to
`RESULTS/recommendations.csv` from the committed studies' statistics alone; the README's front door and
the paper's Table 1 are both rendered from that one file (`markdown_table`, `latex_table`), so they
cannot disagree. A row whose study is absent, or a bound no study has measured yet, says so in its
caveat instead of giving advice.

Each row's evidence is one of:
* `row`: per-condition rows of a study's `stats/comparisons.csv` (filters on its columns): the verdicts,
  and the effect of a single row (or the median over several) with its 95% t interval, in pp;
* `marginal`: a level of the across-condition effect model (`stats/effects_marginal.csv`, logit units
  when the model's scale is logit) with its 95% CI, plus the per-condition verdicts of the conditions at
  that level (`comparisons.csv`) and their median raw effect in pp;
* `untested`: nothing measured yet; the caveat says what exists and what is missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from study.analysis.report.common import distinct, fmt, fmt_ci
from study.analysis.report.latex import latex_escape
from study.tables import read_csv, write_table, write_text_atomic

TABLE = "recommendations.csv"
COLUMNS = ["site", "bound", "regime", "advice", "effect", "evidence", "caveat"]
EXACT, STE, EITHER, OPEN = (
    "true derivative (exact)",
    "straight-through (ste)",
    "either: identical runs",
    "no detected difference",
)

# the rows, in reading order; `where` filters comparisons.csv (values as it writes them)
ROWS: list[dict[str, Any]] = [
    {
        "site": "signal",
        "bound": "fixed clamp [-1, 1]",
        "regime": "AnalogVNN's MLP and protocol (mnist5k, 10 epochs)",
        "study": "core",
        "kind": "row",
        "where": {"comparison": "signal: exact vs ste", "weight_policy": "ste"},
        "caveat": "ste's collapse comes mostly from the clamped logits (mechanism study)",
    },
    {
        "site": "signal",
        "bound": "fixed clamp [-1, 1]",
        "regime": "factorial: MLP, CNN; mnist5k, digits; 5 noise kinds; Adam, SGD; own lr per arm",
        "study": "factorial_v2",
        "kind": "marginal",
        "comparison": "signal: exact vs ste",
        "factor": "norm",
        "level": "clamp",
        "caveat": "conditions that pass the trainability screen",
    },
    {
        "site": "signal",
        "bound": "L2 norm (l2norm_m)",
        "regime": "factorial, as above",
        "study": "factorial_v2",
        "kind": "marginal",
        "comparison": "signal: exact vs ste",
        "factor": "norm",
        "level": "l2norm_m",
        "by": "optimizer",
        "caveat": "AnalogVNN 1.0.8 uses ste here",
    },
    {
        "site": "signal",
        "bound": "L2 norm (l2norm_wm)",
        "regime": "factorial, as above",
        "study": "factorial_v2",
        "kind": "marginal",
        "comparison": "signal: exact vs ste",
        "factor": "norm",
        "level": "l2norm_wm",
        "by": "optimizer",
        "caveat": "AnalogVNN 1.0.8 uses ste here",
    },
    {
        "site": "signal",
        "bound": "fixed clamp [-1, 1], unclamped read-out",
        "regime": "signal_range: MLP, CNN; mnist5k and full MNIST; digital read-outs; own lr per arm",
        "study": "signal_range",
        "kind": "row",
        "where": {
            "comparison": "signal: exact vs ste",
            "signal_norm": "clamp",
            "readout": ["digital", "digital_act"],
        },
        "caveat": "without the clamped logits the gap is smaller but stays; keeping the activation after the "
        "read-out does not shrink it (digital_act)",
    },
    {
        "site": "signal",
        "bound": "learned range (PACT-style, as aihwkit-lightning)",
        "regime": "signal_range: as above, analog and digital read-outs",
        "study": "signal_range",
        "kind": "row",
        "where": {"comparison": "signal: exact vs ste", "signal_norm": "learned_clamp"},
        "caveat": "PACT-style bound per layer, true gradient to it; narrows ste's loss in the MLP with a "
        "digital read-out, not in the CNN; 2 epochs on full MNIST, 5 seeds",
    },
    {
        "site": "weight",
        "bound": "fixed clamp [-1, 1], weights inside it",
        "regime": "core protocol; factorial conditions",
        "study": "factorial_v2",
        "kind": "row",
        "where": {"comparison": "weight: exact vs ste", "norm": "clamp"},
        "caveat": "identical while no weight reaches the bound; high SGD lrs reach it",
    },
    {
        "site": "weight",
        "bound": "L2 norm (l2norm_m)",
        "regime": "factorial, as above",
        "study": "factorial_v2",
        "kind": "marginal",
        "comparison": "weight: exact vs ste",
        "factor": "norm",
        "level": "l2norm_m",
        "by": "optimizer",
        "caveat": "mostly an SGD effect",
    },
    {
        "site": "weight",
        "bound": "L2 norm (l2norm_wm)",
        "regime": "factorial, as above",
        "study": "factorial_v2",
        "kind": "marginal",
        "comparison": "weight: exact vs ste",
        "factor": "norm",
        "level": "l2norm_wm",
        "by": "optimizer",
        "caveat": "mostly an SGD effect",
    },
    {
        "site": "weight",
        "bound": "narrow hardware range c = 0.05 (levels span it), forward clamp",
        "regime": "weight_range: full MNIST; MLP (Adam, SGD), CNN (Adam); default or in-range init",
        "study": "weight_range",
        "kind": "row",
        "where": {"comparison": "weight: exact vs ste", "weight_clamp": "0.05"},
        "caveat": "most of the gap comes from weights that start outside the range: initialised inside "
        "it, the MLP's gap is near the 0.5 pp margin; 2 epochs; replaces the weights study's +-0.05 row "
        "(1/16 absolute levels)",
    },
    {
        "site": "weight",
        "bound": "hardware range c = 0.1 to 1 (levels span it), forward clamp",
        "regime": "weight_range, as above",
        "study": "weight_range",
        "kind": "row",
        "where": {"comparison": "weight: exact vs ste", "weight_clamp": ["0.1", "0.25", "0.5", "1"]},
        "caveat": "bit-identical where no weight reaches the bound (c = 1 with Adam); 2 epochs",
    },
    {
        "site": "weight",
        "bound": "projected clipping after each step (aihwkit, BinaryConnect)",
        "regime": "weight_range, as above; against the forward clamp with ste",
        "study": "weight_range",
        "kind": "row",
        "where": {"comparison": "weight: project vs forward (weight_bound)"},
        "labels": ["projected clipping", "forward clamp with ste"],
        "effect_label": "project - clamp",
        "caveat": "no clamp in the forward pass, so the gradient policy is moot; each arm at its own lr",
    },
]


def _verdicts(rows: pd.DataFrame) -> str:
    counts = rows["verdict"].value_counts()
    order = ("different", "trivial", "equivalent", "inconclusive", "identical")
    return ", ".join(f"{int(counts[v])} {v}" for v in order if counts.get(v, 0))


def _seeds(rows: pd.DataFrame) -> str:
    low, high = int(rows["n_pairs"].min()), int(rows["n_pairs"].max())
    return f"{low} seeds" if low == high else f"{low}-{high} seeds"


def _advice_from_rows(rows: pd.DataFrame, labels: tuple[str, str] = (EXACT, STE)) -> str:
    """The advice a set of comparison rows supports; `labels` name sides a and b of the comparison."""
    verdicts = set(rows["verdict"])
    if verdicts == {"identical"}:
        return EITHER
    better = set(rows.loc[rows["verdict"] == "different", "better"].astype(str))
    most = (rows["verdict"] == "different").mean() >= 0.5
    if better == {"a"}:
        return labels[0] if most else f"{labels[0]}, where it differs"
    if better == {"b"}:
        return labels[1] if most else f"{labels[1]}, where it differs"
    if better == {"a", "b"}:
        return "it depends: both directions occur"
    return OPEN


def _row_evidence(spec: dict[str, Any], results: Path) -> dict[str, str]:
    study = spec["study"]
    comp = read_csv(
        results / study / "stats" / "comparisons.csv",
        "run the study's stats again",
        dtype=str,
        keep_default_na=False,
    )
    for col, value in spec["where"].items():  # a value, or a list of values any of which may match
        if col in comp:
            comp = comp[comp[col].astype(str).isin(value if isinstance(value, list) else [value])]
    rows = distinct(comp)
    if rows.empty:
        return {"advice": "-", "effect": "-", "evidence": f"{study}: no such rows", "caveat": spec["caveat"]}
    num = {c: pd.to_numeric(rows[c], errors="coerce") for c in ("mean_diff", "ci_low", "ci_high", "n_pairs")}
    rows = rows.assign(**num)
    if len(rows) == 1:
        r = rows.iloc[0]
        effect = f"{fmt(r['mean_diff'], signed=True)} pp {fmt_ci(r['ci_low'], r['ci_high'])}"
    elif set(rows["verdict"]) == {"identical"}:
        effect = "0 (identical runs)"
    else:
        effect = f"median {fmt(float(rows['mean_diff'].median()), signed=True)} pp over conditions"
    evidence = (
        f"{study}: {len(rows)} condition{'s' if len(rows) > 1 else ''}, {_seeds(rows)}; {_verdicts(rows)}"
    )
    if spec.get("effect_label"):  # a comparison other than exact - ste names its sides
        effect = f"{spec['effect_label']}: {effect}"
    return {
        "advice": _advice_from_rows(rows, tuple(spec.get("labels", (EXACT, STE)))),
        "effect": effect,
        "evidence": evidence,
        "caveat": spec["caveat"],
    }


def _marginal_evidence(spec: dict[str, Any], results: Path) -> dict[str, str]:
    study, stats = spec["study"], results / spec["study"] / "stats"
    marg = read_csv(stats / "effects_marginal.csv", "run the study's stats again", keep_default_na=False)
    m = marg[
        (marg["comparison"] == spec["comparison"])
        & (marg["factor"] == spec["factor"])
        & (marg["level"].astype(str) == spec["level"])
    ]
    comp = read_csv(
        stats / "comparisons.csv", "run the study's stats again", dtype=str, keep_default_na=False
    )
    site = spec["comparison"].split(":", 1)[0]
    comp = comp[(comp["site"] == site) & (comp[spec["factor"]].astype(str) == spec["level"])]
    other = "weight_policy" if site == "signal" else "signal_policy"
    comp = distinct(comp[comp[other].astype(str) == "exact"]) if other in comp else distinct(comp)
    if m.empty or comp.empty:
        return {
            "advice": "-",
            "effect": "-",
            "evidence": f"{study}: not in its tables",
            "caveat": spec["caveat"],
        }
    r = m.iloc[0]
    low, high = float(r["ci_low"]), float(r["ci_high"])
    advice = EXACT if low > 0 else STE if high < 0 else OPEN
    logit = _scale(results / study) == "logit"
    unit = " logit" if logit else " pp"
    pp = pd.to_numeric(comp["mean_diff"], errors="coerce").median()
    effect = f"{fmt(r['emm'], signed=True)}{unit} {fmt_ci(low, high)}"
    if logit:
        effect += f"; median {fmt(pp, signed=True)} pp"
    comp = comp.assign(n_pairs=pd.to_numeric(comp["n_pairs"], errors="coerce"))
    evidence = f"{study}: {len(comp)} conditions, {_seeds(comp)}; {_verdicts(comp)}"
    if advice != OPEN and (comp["verdict"] == "different").mean() < 0.5:  # the model sees it, rows rarely do
        advice += " on average; most conditions inconclusive"
    caveat = spec["caveat"]
    if spec.get("by"):
        caveat = f"{_split(stats, spec, unit)}; {caveat}"
    return {"advice": advice, "effect": effect, "evidence": evidence, "caveat": caveat}


def _split(stats: Path, spec: dict[str, Any], unit: str) -> str:
    """The row's conditions split by another factor: mean partially pooled effect per level (and the
    mean raw effect in pp), from stats/effects_conditions.csv."""
    pooled = read_csv(stats / "effects_conditions.csv", "run the study's stats again", keep_default_na=False)
    rows = pooled[
        (pooled["comparison"] == spec["comparison"]) & (pooled[spec["factor"]].astype(str) == spec["level"])
    ]
    parts = []
    for level, g in rows.groupby(spec["by"], sort=True):
        eb, pp = pd.to_numeric(g["eb_diff"]).mean(), pd.to_numeric(g["diff_pp"]).mean()
        parts.append(f"{level} {fmt(eb, signed=True)}{unit} ({fmt(pp, signed=True)} pp)")
    return f"pooled effect by {spec['by']}: " + ", ".join(parts)


def _scale(study_dir: Path) -> str:
    from study.tables import load_spec_dict

    model = (load_spec_dict(study_dir).get("hypotheses") or {}).get("effect_model") or {}
    return str(model.get("scale", "pp"))


def recommendation_table(results: Path) -> pd.DataFrame:
    """The table from `results/<study>/stats/` (module docstring); rows whose study is absent say so."""
    rows = []
    for spec in ROWS:
        base = {k: spec[k] for k in ("site", "bound", "regime")}
        study = spec.get("study")
        if spec["kind"] == "untested":
            found = {"advice": "not measured", "effect": "-", "evidence": "-", "caveat": spec["caveat"]}
        elif not (Path(results) / study / "stats" / "comparisons.csv").exists():
            found = {
                "advice": "not measured",
                "effect": "-",
                "evidence": "-",
                "caveat": f"results/{study} has no statistics yet",
            }
        elif spec["kind"] == "row":
            found = _row_evidence(spec, Path(results))
        else:
            found = _marginal_evidence(spec, Path(results))
        rows.append(base | found)
    return pd.DataFrame(rows, columns=COLUMNS)


def write_recommendations(results: Path) -> Path:
    """`RESULTS/recommendations.csv`."""
    path = Path(results) / TABLE
    write_table(recommendation_table(Path(results)), path)
    print(f"recommendations -> {path}")
    return path


def markdown_table(results: Path) -> list[str]:
    """The README rendering of `recommendations.csv` (site and bound merged into the first column)."""
    table = read_csv(Path(results) / TABLE, "run `python -m study analyze` again", keep_default_na=False)
    lines = [
        "| site · bound | regime | advice | effect (exact − ste) | evidence | caveat |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for _, r in table.iterrows():
        cells = [
            f"**{r['site']}** · {r['bound']}",
            r["regime"],
            f"**{r['advice']}**",
            r["effect"],
            r["evidence"],
            r["caveat"],
        ]
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    return lines


def _tex(text: str) -> str:
    """`latex_escape`, with markdown code spans (`name`) as \\texttt{name}."""
    parts = str(text).split("`")
    return "".join(
        latex_escape(p) if i % 2 == 0 else f"\\texttt{{{latex_escape(p)}}}" for i, p in enumerate(parts)
    )


def latex_table(results: Path) -> str:
    """The paper's Table 1 body (a tabularx environment) from `recommendations.csv`."""
    table = read_csv(Path(results) / TABLE, "run `python -m study analyze` again", keep_default_na=False)
    out = [
        "% written by `python -m study paper` from results/recommendations.csv; do not edit",
        r"\begin{tabularx}{\textwidth}{@{}p{0.16\textwidth}p{0.12\textwidth}p{0.17\textwidth}p{0.18\textwidth}X@{}}",
        r"\toprule",
        r"Site / bound & Advice & Effect (exact $-$ ste) & Evidence & Caveat \\",
        r"\midrule",
    ]
    for _, r in table.iterrows():
        cells = [
            f"\\textbf{{{r['site']}}}: {_tex(r['bound'])}",
            _tex(r["advice"]),
            _tex(r["effect"]),
            _tex(r["evidence"]),
            _tex(r["caveat"]),
        ]
        out.append(" & ".join(cells) + r" \\")
    out += [r"\bottomrule", r"\end{tabularx}"]
    return "\n".join(out) + "\n"


def write_latex(results: Path, out: Path) -> Path:
    path = Path(out) / "recommendations.tex"
    write_text_atomic(path, latex_table(results))
    return path
