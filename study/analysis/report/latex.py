"""LaTeX outputs of the statistics stage, `DIR/stats/latex/` (macros and tables for the paper), from files."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pandas as pd

from analog.policies import OTHER_SITE
from study.analysis.report.common import (
    distinct,
    families,
    fmt,
    fmt_p,
    headline_rows,
    informative_rows,
    largest_effects,
    read_stats_csv,
    row_columns,
    settle_cost,
    verdict_counts,
)
from study.analysis.stats import (
    VERDICTS,
    load_hypotheses,
    sd_limit_equivalence,
)
from study.sweep.hypotheses import Hypotheses
from study.tables import (
    PRESET_FLAG,
    REDO_COLLECT,
    SITE_COLUMN,
    condition_columns,
    load_runs,
    load_spec_dict,
    read_csv,
    truthy,
    write_text_atomic,
)

DIGITS = ["Zero", "One", "Two", "Three", "Four", "Five", "Six", "Seven", "Eight", "Nine"]


def macro_prefix(name: str) -> str:
    """Study name as letters-only CamelCase, digits spelled out: `core` -> `Core`, `exp2_a` -> `ExpTwoA`."""
    parts = re.findall(r"[A-Za-z]+|\d", name)
    out = "".join(DIGITS[int(p)] if p.isdigit() else p[0].upper() + p[1:] for p in parts)
    return out or "Study"


def camel(text: str) -> str:
    """`positive_control` -> `PositiveControl` (letters only)."""
    return macro_prefix(text)


def latex_escape(text: str) -> str:
    """Escape LaTeX special characters."""
    repl = {
        "\\": r"\textbackslash{}",
        "&": r"\&",
        "%": r"\%",
        "$": r"\$",
        "#": r"\#",
        "_": r"\_",
        "{": r"\{",
        "}": r"\}",
        "~": r"\textasciitilde{}",
        "^": r"\textasciicircum{}",
    }
    return "".join(repl.get(ch, ch) for ch in str(text))


def tex_num(x: Any, digits: int = 2) -> str:
    """A number as it should print; negatives wrapped in \\ensuremath, `--` for NaN."""
    if x is None or not math.isfinite(float(x)):
        return "--"
    text = fmt(x, digits)
    return rf"\ensuremath{{{text}}}" if text.startswith("-") else text


def tex_p(p: Any) -> str:
    """p-value for a table cell."""
    text = fmt_p(p)
    return "--" if text == "n/a" else (r"\ensuremath{<}0.001" if text.startswith("<") else text)


def _macro(prefix: str, name: str, value: Any) -> str:
    return rf"\newcommand{{\{prefix}{name}}}{{{value}}}"


def headline_macros(
    comp: pd.DataFrame, runs: pd.DataFrame, spec: dict[str, Any], hyp: Hypotheses
) -> list[str]:
    """`\\newcommand` lines for the paper's headline numbers (verdict counts over distinct rows)."""
    prefix = macro_prefix(str(spec.get("name", "study")))
    out = [_macro(prefix, "Margin", f"{hyp.margin:g}"), _macro(prefix, "Alpha", f"{hyp.alpha:g}")]
    failed = truthy(runs, "failed").sum()
    diverged = truthy(runs, "diverged").sum()
    out += [
        _macro(prefix, "Trials", len(runs)),
        _macro(prefix, "TrialsFailed", int(failed)),
        _macro(prefix, "TrialsDiverged", int(diverged)),
        _macro(prefix, "Conditions", _n_conditions(comp, spec)),
        _macro(prefix, "ComparisonRows", len(comp)),
        _macro(prefix, "DistinctRows", len(distinct(comp))),
    ]
    n = comp["n_pairs"] if len(comp) else pd.Series([math.nan])
    low, high = n.min(), n.max()
    both = "--" if not math.isfinite(low) else f"{int(low)}" if low == high else f"{int(low)}--{int(high)}"
    out += [
        _macro(prefix, "NPairs", both),
        _macro(prefix, "NPairsMin", tex_num(low, 0)),
        _macro(prefix, "NPairsMax", tex_num(high, 0)),
    ]
    roles = list(dict.fromkeys(c.role for c in hyp.comparisons))
    for site in ("weight", "signal"):
        s = camel(site)
        for role in roles:
            rows = comp[(comp["site"] == site) & (comp["role"] == role)] if len(comp) else comp
            counts = verdict_counts(distinct(rows))
            out += [_macro(prefix, f"{s}{camel(role)}{camel(v)}", counts[v]) for v in VERDICTS]
            out.append(_macro(prefix, f"{s}{camel(role)}Conditions", len(rows)))
            out.append(_macro(prefix, f"{s}{camel(role)}Distinct", len(distinct(rows))))
        out += _largest_macros(prefix, s, comp, site)
        out += _control_macros(prefix, s, comp, site)
    return out


def _n_conditions(comp: pd.DataFrame, spec: dict[str, Any]) -> int:
    """Distinct conditions (combinations of the condition factors) among the comparison rows."""
    cols = condition_columns(spec)
    if not len(comp):
        return 0
    return len(comp[cols].drop_duplicates()) if cols else 1


def _answer(rows: pd.DataFrame) -> tuple[str, str]:
    """(common verdict or `mixed`, which policy the `different` rows favour)."""
    if rows.empty:
        return "--", "--"
    verdicts = set(rows["verdict"])
    answer = verdicts.pop() if len(verdicts) == 1 else "mixed"
    diff = rows[rows["verdict"] == "different"]
    if diff.empty:
        return answer, "none"
    winners = {r["policy_a"] if r["better"] == "a" else r["policy_b"] for _, r in diff.iterrows()}
    return answer, winners.pop() if len(winners) == 1 else "both"


def answer_macros(
    prefix: str,
    comp: pd.DataFrame,
    omni: pd.DataFrame,
    bayes: pd.DataFrame,
    runs: pd.DataFrame,
    spec: dict[str, Any],
    hyp: Hypotheses,
) -> list[str]:
    """Text and count macros the paper's discussion is driven by: the headline counts per site and per
    normalization family, the preset cell, ranks, the Bayesian view and the cost of settling rows."""
    out = []
    for site in ("weight", "signal"):
        s = camel(site)
        rows = headline_rows(comp, site)
        answer, better = _answer(rows)
        counts = verdict_counts(rows)
        preset = rows[rows[PRESET_FLAG].astype(str) != ""] if len(rows) else rows
        first = preset.iloc[0] if len(preset) == 1 else None
        effect = (
            "--"
            if first is None
            else (f"{tex_num(first['mean_diff'])} [{tex_num(first['ci_low'])}, {tex_num(first['ci_high'])}]")
        )
        tested = rows[rows["verdict"] != "identical"] if len(rows) else rows
        all_rows = informative_rows(comp, site) if len(comp) else comp
        out += [_macro(prefix, f"{s}{camel(v)}", counts[v]) for v in VERDICTS]
        out += [
            _macro(prefix, f"{s}Answer", answer),
            _macro(prefix, f"{s}Better", better),
            _macro(prefix, f"{s}InformativeConditions", len(all_rows)),
            _macro(prefix, f"{s}Distinct", len(rows)),
            _macro(prefix, f"{s}Merged", len(all_rows) - len(rows)),
            _macro(prefix, f"{s}PresetEffect", effect),
            _macro(prefix, f"{s}PresetVerdict", "--" if first is None else first["verdict"]),
            _macro(prefix, f"{s}MdeMax", tex_num(tested["mde"].max()) if len(tested) else "--"),
        ]
        fam = families(rows, spec) if len(rows) else pd.Series([], dtype=object)
        for name in ("clamp", "Lp"):
            part = rows[fam == name] if len(rows) else rows
            c = verdict_counts(part)
            out += [_macro(prefix, f"{s}{camel(name)}{camel(v)}", c[v]) for v in VERDICTS]
            out.append(_macro(prefix, f"{s}{camel(name)}Distinct", len(part)))
    if len(omni) and PRESET_FLAG in omni:
        preset = omni[truthy(omni, PRESET_FLAG)]
        ranks = omni.groupby("combo", sort=True)["mean_rank"].mean()
        out.append(
            _macro(prefix, "PresetRank", tex_num(preset["mean_rank"].mean() if len(preset) else math.nan))
        )
        out.append(_macro(prefix, "BestCombo", ranks.idxmin() if ranks.notna().any() else "--"))
    else:
        out += [_macro(prefix, "PresetRank", "--"), _macro(prefix, "BestCombo", "--")]
    usable = distinct(bayes) if len(bayes) else bayes
    usable = usable[usable["bayes_decision"].astype(str) != ""] if len(usable) else usable
    agree = int((usable["agrees"].astype(str) == "True").sum()) if len(usable) else 0
    out += [
        _macro(prefix, "BayesRows", len(usable)),
        _macro(prefix, "BayesAgree", agree),
        _macro(prefix, "BayesDisagree", len(usable) - agree),
    ]
    own = distinct(comp) if len(comp) else comp
    inc = own[own["verdict"] == "inconclusive"] if len(own) else own
    seeds = inc["seeds_needed_equivalence"].dropna() if len(inc) else pd.Series([], dtype=float)
    sds = inc["sd_diff"].dropna() if len(inc) else pd.Series([], dtype=float)
    n = own["n_pairs"] if len(own) else pd.Series([], dtype=float)
    limit = (
        sd_limit_equivalence(int(n.min()), hyp.margin, hyp.alpha)
        if len(n) and n.min() == n.max()
        else math.nan
    )
    cost = settle_cost(comp, runs, spec) if len(comp) else {"trials": 0.0, "seconds": math.nan}
    hours = cost["seconds"] / 3600 if math.isfinite(cost["seconds"]) else math.nan
    out += [
        _macro(prefix, "InconclusiveRows", len(inc)),
        _macro(prefix, "SdLimit", tex_num(limit)),
        _macro(prefix, "InconclusiveSdMin", tex_num(sds.min() if len(sds) else math.nan)),
        _macro(prefix, "InconclusiveSdMedian", tex_num(sds.median() if len(sds) else math.nan)),
        _macro(prefix, "InconclusiveSdMax", tex_num(sds.max() if len(sds) else math.nan)),
        _macro(prefix, "SeedsEquivMin", tex_num(seeds.min() if len(seeds) else math.nan, 0)),
        _macro(prefix, "SeedsEquivMax", tex_num(seeds.max() if len(seeds) else math.nan, 0)),
        _macro(prefix, "SettleTrials", int(cost["trials"])),
        _macro(prefix, "SettleHours", tex_num(hours, 1)),
    ]
    return out


def mechanism_macros(prefix: str, study_dir: Path, runs: pd.DataFrame) -> list[str]:
    """Final-epoch gradient cosine and saturation, from curves.csv.gz (mean over layers and seeds)."""
    path = Path(study_dir) / "curves.csv.gz"
    names = ["WeightCosine", "SignalCosine", "SatWeight", "SatSignalOut", "SatSignalOutSte"]
    if not path.exists() or "weight_policy" not in runs:
        return [_macro(prefix, n, "--") for n in names]
    curves = read_csv(path, REDO_COLLECT)
    diag = curves[curves["metric"].isin(["grad_cosine", "sat_weight", "sat_signal_out"])]
    last = diag[diag["epoch"] == diag.groupby("run_id")["epoch"].transform("max")]
    cells = runs[["run_id", "weight_policy", "signal_policy"]].astype(str)
    last = last.merge(cells, on="run_id")

    def mean(metric: str, w: str, s: str) -> str:
        sel = last[(last["metric"] == metric) & (last["weight_policy"] == w) & (last["signal_policy"] == s)]
        return tex_num(sel["value"].mean()) if len(sel) else "--"

    # the weight site alone differs from exact in the ste/exact cell; the signal site alone in exact/ste
    return [
        _macro(prefix, "WeightCosine", mean("grad_cosine", "ste", "exact")),
        _macro(prefix, "SignalCosine", mean("grad_cosine", "exact", "ste")),
        _macro(prefix, "SatWeight", mean("sat_weight", "ste", "exact")),
        _macro(prefix, "SatSignalOut", mean("sat_signal_out", "ste", "exact")),
        _macro(prefix, "SatSignalOutSte", mean("sat_signal_out", "ste", "ste")),
    ]


def _largest_macros(prefix: str, s: str, comp: pd.DataFrame, site: str) -> list[str]:
    rows = comp[(comp["site"] == site) & (comp["role"] == "primary")] if len(comp) else comp
    rows = rows.dropna(subset=["mean_diff"]) if len(rows) else rows
    top = largest_effects(rows, 1).iloc[0] if len(rows) else None
    get = (lambda c: top[c]) if top is not None else (lambda c: math.nan)  # noqa: E731
    return [
        _macro(prefix, f"{s}LargestDiff", tex_num(get("mean_diff"))),
        _macro(prefix, f"{s}LargestDiffLow", tex_num(get("ci_low"))),
        _macro(prefix, f"{s}LargestDiffHigh", tex_num(get("ci_high"))),
    ]


def _control_macros(prefix: str, s: str, comp: pd.DataFrame, site: str) -> list[str]:
    rows = comp[(comp["site"] == site) & (comp["role"] == "positive_control")] if len(comp) else comp
    rows = distinct(rows)
    diffs = rows["mean_diff"].dropna() if len(rows) else pd.Series([], dtype=float)
    agg = (diffs.mean(), diffs.min(), diffs.max()) if len(diffs) else (math.nan,) * 3
    detected = int((rows["verdict"] == "different").sum()) if len(rows) else 0
    identical = int((rows["verdict"] == "identical").sum()) if len(rows) else 0
    return [
        _macro(prefix, f"{s}ControlMeanDiff", tex_num(agg[0])),
        _macro(prefix, f"{s}ControlMinDiff", tex_num(agg[1])),
        _macro(prefix, f"{s}ControlMaxDiff", tex_num(agg[2])),
        _macro(prefix, f"{s}ControlDetected", detected),
        _macro(prefix, f"{s}ControlIdentical", identical),
        _macro(prefix, f"{s}ControlConditions", len(rows)),
    ]


def comparisons_tex(comp: pd.DataFrame, spec: dict[str, Any], site: str) -> str:
    """Booktabs tabular (no float) of one site's comparison rows."""
    rows = comp[comp["site"] == site] if len(comp) else comp
    cols = row_columns(rows, spec, site) if len(rows) else [SITE_COLUMN[OTHER_SITE[site]]]
    merged = bool(len(rows)) and (rows["same_data_as"].astype(str) != "").any()
    header = [
        "Comparison",
        *[latex_escape(c) for c in cols],
        "$n$",
        r"$\Delta$ [95\% CI]",
        r"$p_\mathrm{adj}$",
        r"$p_\mathrm{TOST,adj}$",
        "Verdict",
        *(["Same data as"] if merged else []),
    ]
    lines = [
        "% Generated by the normgrad statistics stage; do not edit.",
        r"\begin{tabular}{" + "l" * (1 + len(cols)) + "rlrrl" + ("l" if merged else "") + "}",
        r"\toprule",
        " & ".join(header) + r" \\",
        r"\midrule",
    ]
    previous = None
    for _, r in rows.iterrows():
        if previous is not None and r["comparison"] != previous:
            lines.append(r"\midrule")
        previous = r["comparison"]
        label = r["comparison"] + (" (control)" if r["role"] == "positive_control" else "")
        cells = [
            latex_escape(label),
            *[latex_escape(r[c]) for c in cols],
            str(int(r["n_pairs"])),
            f"{tex_num(r['mean_diff'])} [{tex_num(r['ci_low'])}, {tex_num(r['ci_high'])}]",
            tex_p(r["p_adjusted"]),
            tex_p(r["p_tost_adjusted"]),
            latex_escape(r["verdict"]),
            *([latex_escape(r["same_data_as"])] if merged else []),
        ]
        lines.append(" & ".join(cells) + r" \\")
    return "\n".join(lines + [r"\bottomrule", r"\end{tabular}"]) + "\n"


def write_latex(study_dir: Path) -> Path:
    """Write `stats/latex/macros.tex` and `comparisons_{weight,signal}.tex`; return the folder."""
    study_dir = Path(study_dir)
    spec = load_spec_dict(study_dir)
    hyp = load_hypotheses(spec)
    comp = read_stats_csv(study_dir, "comparisons.csv", spec)
    runs = load_runs(study_dir)
    out = study_dir / "stats" / "latex"
    out.mkdir(parents=True, exist_ok=True)
    head = "% Generated by the normgrad statistics stage; do not edit.\n"
    prefix = macro_prefix(str(spec.get("name", "study")))
    omni = read_stats_csv(study_dir, "omnibus.csv", spec)
    bayes = read_stats_csv(study_dir, "bayes.csv", spec)
    lines = headline_macros(comp, runs, spec, hyp) + answer_macros(prefix, comp, omni, bayes, runs, spec, hyp)
    lines += mechanism_macros(prefix, study_dir, runs)
    write_text_atomic(out / "macros.tex", head + "\n".join(lines) + "\n")
    for site in ("weight", "signal"):
        write_text_atomic(out / f"comparisons_{site}.tex", comparisons_tex(comp, spec, site))
    return out
