"""Report and LaTeX outputs of the statistics stage.

Reads only `DIR/stats/*` plus `DIR/runs.csv` and `DIR/spec.yaml` (and, when present,
`DIR/verify.json` and `DIR/run_summary.json`); writes `DIR/stats/report.md` and `DIR/stats/latex/`.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from study.hypotheses import Hypotheses
from study.stats import (
    ANALOGVNN_CELL,
    OTHER_SITE,
    ROW_KEYS,
    applicable_comparisons,
    higher_is_better,
    key_columns,
    load_hypotheses,
    skipped_conditions,
    trial_table,
)
from study.tables import (
    HYPOTHESES_LOG,
    REDO_COLLECT,
    REDO_STATS,
    SITE_COLUMN,
    condition_columns,
    load_runs,
    load_spec_dict,
    read_csv,
    read_jsonl,
    write_text_atomic,
)

VERDICTS = ("different", "equivalent", "inconclusive")
DIGITS = ["Zero", "One", "Two", "Three", "Four", "Five", "Six", "Seven", "Eight", "Nine"]
MAX_LISTED = 50


# --------------------------------------------------------------------------- reading


def read_stats_csv(study_dir: Path, name: str, spec: dict[str, Any]) -> pd.DataFrame:
    """A stats/ CSV with key columns as strings ("" for empty) and the rest parsed as usual."""
    text_cols = (
        ROW_KEYS
        + key_columns(spec)
        + [
            "combo",
            "combo_a",
            "combo_b",
            "term",
            "ci_method",
            "test_used",
            "family",
            "verdict",
            "better",
            "metric",
        ]
    )
    path = Path(study_dir) / "stats" / name
    frame = read_csv(
        path,
        REDO_STATS,
        dtype={c: str for c in text_cols},
        keep_default_na=False,
        na_values=[""],
    )
    for column in text_cols:
        if column in frame:
            frame[column] = frame[column].fillna("")
    return frame


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


# --------------------------------------------------------------------------- formatting


def fmt(x: Any, digits: int = 2, signed: bool = False) -> str:
    """Fixed-point number, `n/a` for NaN/None."""
    if x is None or not math.isfinite(float(x)):
        return "n/a"
    x = float(x) if round(float(x), digits) != 0 else 0.0  # no "-0.00"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def fmt_p(p: Any) -> str:
    """p-value with three decimals, `<0.001` below that."""
    if p is None or not math.isfinite(float(p)):
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def fmt_ci(low: float, high: float) -> str:
    """`[low, high]` with two decimals."""
    return f"[{fmt(low)}, {fmt(high)}]"


def unit(metric: str) -> str:
    """Unit suffix of a metric's differences: percentage points for accuracies."""
    return " pp" if metric.endswith("acc") else ""


def varying(frame: pd.DataFrame, columns: list[str]) -> list[str]:
    """The columns of `columns` that take more than one value in `frame`."""
    return [c for c in columns if c in frame and frame[c].nunique() > 1]


def condition_label(row: pd.Series, columns: list[str]) -> str:
    """`dataset=A, weight_policy=ste` for the given columns (`all` when there are none)."""
    parts = [f"{c}={row[c]}" for c in columns if row[c] != ""]
    return ", ".join(parts) or "all"


def row_columns(frame: pd.DataFrame, spec: dict[str, Any], site: str) -> list[str]:
    """Condition columns worth printing for a site's rows: varying ones plus the other site's policy."""
    other = SITE_COLUMN[OTHER_SITE[site]]
    return [c for c in varying(frame, condition_columns(spec)) if c != other] + [other]


def preset_mark(row: pd.Series) -> str:
    """`a`/`b` when that side of the row is the `analogvnn` preset cell (weight=ste, signal=exact)."""
    other = SITE_COLUMN[OTHER_SITE[row["site"]]]
    if row[other] != ANALOGVNN_CELL[other]:
        return ""
    own = ANALOGVNN_CELL[SITE_COLUMN[row["site"]]]
    return "a" if row["policy_a"] == own else "b" if row["policy_b"] == own else ""


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def verdict_counts(frame: pd.DataFrame) -> dict[str, int]:
    """Number of rows per verdict (all three verdicts present)."""
    return {v: int((frame["verdict"] == v).sum()) for v in VERDICTS}


# --------------------------------------------------------------------------- report sections


def _effect_text(row: pd.Series, columns: list[str], u: str) -> str:
    cond = condition_label(row, columns)
    return (
        f"{fmt(row['mean_diff'], signed=True)}{u} [95% CI {fmt(row['ci_low'])}, {fmt(row['ci_high'])}] "
        f"({cond}; {row['verdict']})"
    )


def largest_effects(rows: pd.DataFrame, count: int = 3) -> pd.DataFrame:
    """The `count` rows with the largest |mean_diff| (ties kept in file order)."""
    order = rows["mean_diff"].abs().sort_values(ascending=False, kind="mergesort").index
    return rows.loc[order[:count]]


def answer_section(comp: pd.DataFrame, spec: dict[str, Any], hyp: Hypotheses) -> list[str]:
    """One paragraph per site: verdict counts and the largest effects, per non-control comparison."""
    u = unit(hyp.metric)
    lines = ["## Answer", ""]
    for site in ("weight", "signal"):
        rows = comp[(comp["site"] == site) & (comp["role"] != "positive_control")]
        if rows.empty:
            lines += [
                f"**{site.capitalize()} site.** No comparison at this site was run "
                "(not pre-registered, or its policies are absent from the runs).",
                "",
            ]
            continue
        sentences = []
        for label, group in rows.groupby("comparison", sort=False):
            c = verdict_counts(group)
            cols = row_columns(group, spec, site)
            effects = "; ".join(_effect_text(r, cols, u) for _, r in largest_effects(group).iterrows())
            sentences.append(
                f"`{label}` ({group['role'].iloc[0]}, {hyp.metric}, a − b) over {len(group)} conditions: "
                f"**{c['different']} different, {c['equivalent']} equivalent** within ±{hyp.margin:g}{u}, "
                f"**{c['inconclusive']} inconclusive**. Largest effects: {effects}."
            )
        informative = informative_rows(rows, site)
        if len(informative) < len(rows[rows["role"] == "primary"]):
            c = verdict_counts(informative)
            sentences.append(
                f"Rows whose other site is `zero` compare identical networks (under `zero` no gradient "
                f"reaches any parameter, so nothing trains), so their verdicts are structural, not evidence; "
                f"without them: **{c['different']} different, {c['equivalent']} equivalent, "
                f"{c['inconclusive']} inconclusive** of {len(informative)}."
            )
        lines += [f"**{site.capitalize()} site.** " + " ".join(sentences), ""]
    return lines


def control_section(comp: pd.DataFrame, spec: dict[str, Any], hyp: Hypotheses) -> list[str]:
    """Does the analysis detect the positive control (`zero` vs `ste`)?"""
    u = unit(hyp.metric)
    lines = ["## Positive control", ""]
    rows = comp[comp["role"] == "positive_control"]
    if rows.empty:
        return lines + [
            "No positive control was run (its policies are absent from the runs), so the "
            "analysis's ability to detect a real effect is not demonstrated here.",
            "",
        ]
    for label, group in rows.groupby("comparison", sort=False):
        cols = row_columns(group, spec, group["site"].iloc[0])
        detected = group[group["verdict"] == "different"]
        text = (
            f"`{label}`: detected (`different`) in **{len(detected)} of {len(group)}** conditions; "
            f"mean difference from {fmt(group['mean_diff'].min(), signed=True)}{u} to "
            f"{fmt(group['mean_diff'].max(), signed=True)}{u}; largest "
            f"{_effect_text(largest_effects(group, 1).iloc[0], cols, u)}."
        )
        missed = group[group["verdict"] != "different"]
        if missed.empty:
            text += " The analysis detects this real effect in every condition."
        else:
            where = "; ".join(condition_label(r, cols) for _, r in missed.iterrows())
            text += (
                f" **Not detected in {len(missed)} condition(s)** ({where}): there, the comparisons "
                "cannot be trusted to detect an effect of this size."
            )
        lines += [text, ""]
    return lines


def preset_section(omni: pd.DataFrame, spec: dict[str, Any]) -> list[str]:
    """Where the `analogvnn` preset cell (weight_policy=ste, signal_policy=exact) stands."""
    cell = omni[(omni["weight_policy"] == "ste") & (omni["signal_policy"] == "exact")]
    lines = ["## The `analogvnn` preset cell", ""]
    if cell.empty:
        return lines + [
            "The `analogvnn` preset cell (weight_policy=ste, signal_policy=exact) is not part of this study.",
            "",
        ]
    conds = varying(omni, condition_columns(spec))
    parts = [
        f"{condition_label(r, conds)}: mean rank {fmt(r['mean_rank'])} of {int(r['k'])}"
        f" (mean {fmt(r['mean_metric'])})"
        for _, r in cell.iterrows()
    ]
    return lines + [
        "AnalogVNN's own choice is the `analogvnn` preset cell (weight_policy=ste, signal_policy=exact). "
        "In the per-condition table, column `analogvnn` says which side (a or b) of a row is that cell. "
        "Its Friedman mean rank (1 = best): " + "; ".join(parts) + ".",
        "",
    ]


def condition_table(comp: pd.DataFrame, spec: dict[str, Any]) -> list[str]:
    """The per-condition markdown table of comparisons.csv."""
    lines = ["## Per-condition results", ""]
    if comp.empty:
        return lines + ["No comparison could be computed.", ""]
    cols = [c for c in varying(comp, key_columns(spec))] or key_columns(spec)
    header = [
        "comparison",
        *cols,
        "n",
        "mean diff [95% CI]",
        "test",
        "p",
        "p adj",
        "TOST p",
        "verdict",
        "better",
        "analogvnn",
    ]
    rows = []
    for _, r in comp.iterrows():
        rows.append(
            [
                r["comparison"],
                *[r[c] or "–" for c in cols],
                str(int(r["n_pairs"])),
                f"{fmt(r['mean_diff'], signed=True)} {fmt_ci(r['ci_low'], r['ci_high'])}",
                r["test_used"],
                fmt_p(r["p_primary"]),
                fmt_p(r["p_adjusted"]),
                fmt_p(r["p_tost"]),
                r["verdict"],
                r["better"],
                preset_mark(r),
            ]
        )
    return lines + md_table(header, rows) + [""]


def omnibus_section(omni: pd.DataFrame, post: pd.DataFrame, spec: dict[str, Any]) -> list[str]:
    """Friedman test per condition: statistic, p, Nemenyi CD and the best combination."""
    lines = ["## Omnibus test (Friedman) across all policy combinations", ""]
    if omni.empty:
        return lines + ["No usable trials.", ""]
    conds = condition_columns(spec)
    rows = []
    keys = conds or None
    groups = omni.groupby(keys, sort=False, dropna=False) if keys else [((), omni)]
    for _, group in groups:
        first = group.iloc[0]
        best = group.sort_values("mean_rank", kind="mergesort").iloc[0]
        rows.append(
            [
                condition_label(first, varying(omni, conds)),
                str(int(first["k"])),
                str(int(first["n_seeds"])),
                fmt(first["friedman_stat"]),
                fmt_p(first["friedman_p"]),
                fmt(first["cd"]),
                f"{best['combo']} ({fmt(best['mean_rank'])})",
            ]
        )
    header = ["condition", "k", "n", "χ²", "p", "CD", "best (mean rank)"]
    n_sig = int(post["significant"].astype(str).str.lower().eq("true").sum()) if len(post) else 0
    return (
        lines
        + md_table(header, rows)
        + [
            "",
            f"Nemenyi post-hoc: {n_sig} of {len(post)} pairwise combination differences are significant "
            "(`posthoc.csv`; mean ranks in `omnibus.csv` give the critical-difference diagram).",
            "",
        ]
    )


def model_section(study_dir: Path) -> list[str]:
    """Mixed-model formula, its policy terms and every captured warning."""
    text = (Path(study_dir) / "stats" / "model.txt").read_text()
    lines = ["## Mixed model", ""]
    head = [ln for ln in text.splitlines() if ln.startswith(("formula:", "model not fitted", "groups:"))]
    lines += [f"- {ln}" for ln in head]
    warn = text.split("\nwarnings (", 1)
    if len(warn) == 2:
        body = warn[1].splitlines()
        lines += [f"- warnings: {body[0].rstrip('):')}"] + [
            f"  {ln}" for ln in body[1:] if ln.startswith("- ")
        ]
    model = read_csv(Path(study_dir) / "stats" / "model.csv", REDO_STATS)
    terms = model[model["term"].astype(str).str.contains("policy")]
    if len(terms):
        rows = [
            [r["term"], fmt(r["coef"], signed=True), fmt_ci(r["ci_low"], r["ci_high"]), fmt_p(r["p"])]
            for _, r in terms.iterrows()
        ]
        lines += ["", *md_table(["term", "coef", "95% CI", "p"], rows)]
    return lines + ["", "Full summary: `model.txt`; fixed effects: `model.csv`.", ""]


def bayes_section(bayes: pd.DataFrame) -> list[str]:
    """Cross-tabulate verdicts against the most probable posterior region."""
    lines = ["## Bayesian cross-check", ""]
    usable = bayes.dropna(subset=["p_equiv"])
    if usable.empty:
        return lines + ["No row has two or more pairs.", ""]
    regions = usable[["p_a_worse", "p_equiv", "p_a_better"]].idxmax(axis=1).str.replace("p_", "")
    table = pd.crosstab(usable["verdict"], regions)
    header = ["verdict", *[str(c) for c in table.columns]]
    rows = [[str(v), *[str(int(x)) for x in table.loc[v]]] for v in table.index]
    agree = int(
        ((usable["verdict"] == "equivalent") & (usable["p_equiv"] >= 0.5)).sum()
        + ((usable["verdict"] == "different") & (usable["p_equiv"] < 0.5)).sum()
    )
    decided = int(usable["verdict"].isin(["equivalent", "different"]).sum())
    return lines + [
        "Most probable region of the mean difference under a Student-t (reference-prior) posterior, "
        "by verdict (`bayes.csv`):",
        "",
        *md_table(header, rows),
        "",
        f"The posterior agrees with {agree} of {decided} decided verdicts (equivalent ⇒ P(|a−b|<δ) ≥ 0.5; "
        "different ⇒ P(|a−b|<δ) < 0.5).",
        "",
    ]


def _tally(counts: dict[str, int]) -> str:
    return ", ".join(f"{k or 'none (n < 2)'} {v}" for k, v in sorted(counts.items())) or "none"


def methods_section(comp: pd.DataFrame, hyp: Hypotheses) -> list[str]:
    """Tests, alpha, margin, correction, family, n, normality check, bootstrap and fallbacks."""
    u = unit(hyp.metric)
    n = comp["n_pairs"] if len(comp) else pd.Series([0])
    used = _tally(comp["test_used"].value_counts().to_dict() if len(comp) else {})
    ci_methods = _tally(comp["ci_method"].value_counts().to_dict() if len(comp) else {})
    direction = "lower" if not higher_is_better(hyp.metric) else "higher"
    tost_level = f"{100 * (1 - 2 * hyp.alpha):g}%"
    return [
        "## Methods",
        "",
        f"- Metric: `{hyp.metric}` ({direction} is better); differences are a − b in the metric's units "
        f"({u.strip() or 'as recorded'}).",
        "- Pairing: within each condition (every combination of the condition factors plus the other "
        "site's policy), trials of policy a and b are paired by seed; incomplete pairs are excluded "
        "(Missing data).",
        f"- Normality check: Shapiro–Wilk on the paired differences; p ≥ {hyp.normality_alpha:g} → paired "
        "t-test, otherwise (or n < 3, or constant differences) Wilcoxon signed-rank (zeros dropped; "
        f"all-zero differences → p = 1). Tests used: {used}.",
        f"- Multiplicity: `{hyp.correction}` within each family (`family: {hyp.family}`), applied to the "
        "p of the test used.",
        f"- Decision rule (pre-registered): `different` if adjusted p < α = {hyp.alpha:g}; else "
        f"`equivalent` if the paired TOST p < α with margin δ = ±{hyp.margin:g}{u} (TOST p is not "
        "adjusted); else `inconclusive`. Rows with fewer than 2 pairs are `inconclusive`.",
        f"- Intervals: 95% BCa paired bootstrap of the mean difference ({hyp.bootstrap_resamples} "
        f"resamples, seed {hyp.bootstrap_seed}); fallback to the percentile bootstrap when BCa is "
        "undefined, and [d, d] (`degenerate`) when all differences are equal. The TOST interval is the "
        f"{tost_level} t interval. Interval methods used: {ci_methods}.",
        "- Effect sizes: d_z = mean/sd of the differences, Hodges–Lehmann (median of Walsh averages), "
        "share of seeds where a beats b.",
        "- Power: `mde` = smallest difference a two-sided paired t-test detects with 80% power at this n "
        "and sd; `seeds_needed` = pairs for 80% power at a difference of δ.",
        f"- n pairs per row: {int(n.min())}–{int(n.max())}.",
        "- Omnibus: Friedman test per condition over all weight/signal policy combinations on the seeds "
        "complete for all of them; Nemenyi post-hoc (scikit-posthocs) and critical difference "
        "q_α(k, ∞)/√2·√(k(k+1)/6n).",
        "- Mixed model: statsmodels `mixedlm` (REML), random intercept per seed.",
        "- Bayesian cross-check: P(a−b < −δ), P(|a−b| < δ), P(a−b > δ) under the Student-t posterior "
        "(df n−1, loc mean, scale sd/√n).",
        "",
    ]


def design_section(spec: dict[str, Any], runs: pd.DataFrame, hyp: Hypotheses) -> list[str]:
    """Factors, seeds, comparisons, exclude/include rules and comparisons not run."""
    lines = ["## Design", ""]
    for name, values in (spec.get("factors") or {}).items():
        shown = ", ".join("none" if v is None else str(v) for v in (values or []))
        lines.append(f"- factor `{name}`: {shown}")
    lines.append(f"- seeds: {spec.get('seeds')}")
    for comp in hyp.comparisons:
        lines.append(f"- comparison `{comp.label}` ({comp.role})")
    for key in ("exclude", "include"):
        if spec.get(key):
            dumped = yaml.safe_dump(spec[key], sort_keys=True, default_flow_style=None).rstrip()
            lines += [f"- `{key}` rules:", "", "```yaml", dumped, "```"]
    table = trial_table(runs, spec, hyp)
    _, skipped = applicable_comparisons(hyp, table)
    for comp in skipped:
        lines.append(f"- **skipped** `{comp.label}`: policy absent from the runs")
    cells = skipped_conditions(runs, spec)
    if len(cells):
        lines.append(
            f"- {len(cells)} comparison × condition cell(s) not compared because one policy has no "
            "trial there:"
        )
        for _, r in cells.head(MAX_LISTED).iterrows():
            cond = condition_label(r, [c for c in key_columns(spec) if c != SITE_COLUMN[r["site"]]])
            lines.append(f"  - `{r['comparison']}` at {cond} (absent: {r['absent_policy']})")
    return lines + [""]


def preregistration_section(study_dir: Path) -> list[str]:
    """Every change of the pre-registered hypotheses after trials existed, with its reason (or none)."""
    changes = read_jsonl(Path(study_dir) / HYPOTHESES_LOG)
    lines = ["## Pre-registration", ""]
    if not changes:
        return lines + ["No change of the `hypotheses:` block after the first trial is logged.", ""]
    lines.append(f"The `hypotheses:` block was changed {len(changes)} time(s) after trials existed:")
    for c in changes:
        diff = ", ".join(
            f"`{k}` {json.dumps(c['old'].get(k))} → {json.dumps(c['new'].get(k))}"
            for k in sorted(set(c["old"]) | set(c["new"]))
            if c["old"].get(k) != c["new"].get(k)
        )
        lines.append(f"- {c['time']}: {diff}; reason: {c['reason']}")
    return lines + [""]


def missing_section(
    missing: pd.DataFrame, comp: pd.DataFrame, runs: pd.DataFrame, spec: dict, hyp
) -> list[str]:
    """Incomplete pairs (excluded) and diverged trials (kept as data unless the spec excludes them)."""
    lines = ["## Missing data", ""]
    diverged = runs["diverged"].astype(str).str.lower().isin({"true", "1"}) if "diverged" in runs else None
    n_div = int(diverged.sum()) if diverged is not None else 0
    if hyp.diverged == "include":
        used = int(comp["n_diverged"].sum()) if len(comp) else 0
        lines.append(
            f"Diverged trials count as data (their final {hyp.metric}): {n_div} diverged trial(s) in "
            f"the runs; {used} analysed pair(s) contain one."
        )
    else:
        lines.append(f"Diverged trials are excluded (`hypotheses.diverged: exclude`): {n_div} in the runs.")
    if missing.empty:
        return lines + ["", "Every expected pair is complete; no seed was excluded.", ""]
    lines += [
        "",
        f"{len(missing)} incomplete pair(s) were excluded from their comparison (`missing.csv`):",
        "",
    ]
    cols = key_columns(spec)
    rows = [
        [
            r["comparison"],
            *[r[c] or "–" for c in cols],
            str(r["seed"]),
            r["policy_a_status"],
            r["policy_b_status"],
        ]
        for _, r in missing.head(MAX_LISTED).iterrows()
    ]
    lines += md_table(["comparison", *cols, "seed", "a", "b"], rows)
    if len(missing) > MAX_LISTED:
        lines.append(f"\n… and {len(missing) - MAX_LISTED} more (see `missing.csv`).")
    return lines + [""]


def provenance_section(runs: pd.DataFrame) -> list[str]:
    """Spec hash, git commit, versions and trial counts from runs.csv."""
    lines = ["## Provenance", ""]
    for column in ("spec_hash", "git_commit", "normgrad_version", "torch_version", "lightning_version"):
        if column in runs:
            values = sorted(runs[column].dropna().astype(str).unique())
            lines.append(f"- {column}: {', '.join(f'`{v}`' for v in values) or 'n/a'}")
    failed = runs["failed"].astype(str).str.lower().isin({"true", "1"}).sum() if "failed" in runs else 0
    diverged = runs["diverged"].astype(str).str.lower().isin({"true", "1"}).sum() if "diverged" in runs else 0
    never = int(runs["status"].astype(str).eq("missing").sum()) if "status" in runs else 0
    not_run = f", {never} not run" if never else ""
    lines.append(f"- trials: {len(runs)} total, {int(failed)} failed, {int(diverged)} diverged{not_run}")
    return lines + [""]


def verification_section(study_dir: Path) -> list[str]:
    """Render `verify.json` when present."""
    data = _read_json(Path(study_dir) / "verify.json")
    if data is None:
        return []
    lines = ["## Verification", "", f"- checked: {data.get('checked')}", f"- matched: {data.get('matched')}"]
    mismatches = data.get("mismatches") or []
    lines.append(f"- mismatches: {len(mismatches)}")
    lines += [f"  - {json.dumps(m, sort_keys=True) if not isinstance(m, str) else m}" for m in mismatches]
    return lines + [""]


def run_section(study_dir: Path) -> list[str]:
    """Render `run_summary.json` when present."""
    data = _read_json(Path(study_dir) / "run_summary.json")
    if data is None:
        return []
    items = data.items() if isinstance(data, dict) else [("summary", data)]
    return [
        "## Run",
        "",
        *[f"- {k}: {json.dumps(v, sort_keys=True) if not isinstance(v, str) else v}" for k, v in items],
        "",
    ]


def write_report(study_dir: Path) -> Path:
    """Write `study_dir/stats/report.md` from the stats/ outputs, runs.csv and spec.yaml; return its path."""
    study_dir = Path(study_dir)
    spec = load_spec_dict(study_dir)
    hyp = load_hypotheses(spec)
    runs = load_runs(study_dir)
    comp = read_stats_csv(study_dir, "comparisons.csv", spec)
    omni = read_stats_csv(study_dir, "omnibus.csv", spec)
    post = read_stats_csv(study_dir, "posthoc.csv", spec)
    bayes = read_stats_csv(study_dir, "bayes.csv", spec)
    missing = read_stats_csv(study_dir, "missing.csv", spec)
    lines = [f"# {spec.get('name', 'study')}: statistics", ""]
    if spec.get("description"):
        lines += [" ".join(str(spec["description"]).split()), ""]
    lines += answer_section(comp, spec, hyp) + control_section(comp, spec, hyp) + preset_section(omni, spec)
    lines += condition_table(comp, spec) + omnibus_section(omni, post, spec) + model_section(study_dir)
    lines += bayes_section(bayes) + methods_section(comp, hyp) + design_section(spec, runs, hyp)
    lines += preregistration_section(study_dir)
    lines += missing_section(missing, comp, runs, spec, hyp) + provenance_section(runs)
    lines += verification_section(study_dir) + run_section(study_dir)
    path = study_dir / "stats" / "report.md"
    write_text_atomic(path, "\n".join(lines).rstrip() + "\n")
    return path


# --------------------------------------------------------------------------- LaTeX


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
    """`\\newcommand` lines for the paper's headline numbers."""
    prefix = macro_prefix(str(spec.get("name", "study")))
    out = [_macro(prefix, "Margin", f"{hyp.margin:g}"), _macro(prefix, "Alpha", f"{hyp.alpha:g}")]
    failed = runs["failed"].astype(str).str.lower().isin({"true", "1"}).sum() if "failed" in runs else 0
    diverged = runs["diverged"].astype(str).str.lower().isin({"true", "1"}).sum() if "diverged" in runs else 0
    out += [
        _macro(prefix, "Trials", len(runs)),
        _macro(prefix, "TrialsFailed", int(failed)),
        _macro(prefix, "TrialsDiverged", int(diverged)),
        _macro(prefix, "Conditions", _n_conditions(comp, spec)),
        _macro(prefix, "ComparisonRows", len(comp)),
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
            counts = verdict_counts(rows) if len(rows) else dict.fromkeys(VERDICTS, 0)
            out += [_macro(prefix, f"{s}{camel(role)}{camel(v)}", counts[v]) for v in VERDICTS]
            out.append(_macro(prefix, f"{s}{camel(role)}Conditions", len(rows)))
        out += _largest_macros(prefix, s, comp, site)
        out += _control_macros(prefix, s, comp, site)
    return out


def _n_conditions(comp: pd.DataFrame, spec: dict[str, Any]) -> int:
    """Distinct conditions (combinations of the condition factors) among the comparison rows."""
    cols = condition_columns(spec)
    if not len(comp):
        return 0
    return len(comp[cols].drop_duplicates()) if cols else 1


PRESET = {"weight": "ste", "signal": "exact"}  # AnalogVNN 1.0.8's own choice at each site


def informative_rows(comp: pd.DataFrame, site: str) -> pd.DataFrame:
    """Primary rows of `site`, without those whose other site is `zero`.

    With `zero` at either site no gradient reaches any parameter (the network stays at its
    initialisation), so such rows compare identical networks whatever the policy under test.
    """
    other = SITE_COLUMN[OTHER_SITE[site]]
    rows = comp[(comp["site"] == site) & (comp["role"] == "primary")]
    return rows[rows[other].astype(str) != "zero"] if other in rows else rows


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


def answer_macros(prefix: str, comp: pd.DataFrame, omni: pd.DataFrame, bayes: pd.DataFrame) -> list[str]:
    """Text macros the paper's discussion is driven by (verdict summaries, the preset cell, ranks)."""
    out = []
    for site in ("weight", "signal"):
        s = camel(site)
        rows = informative_rows(comp, site) if len(comp) else comp
        answer, better = _answer(rows)
        other = SITE_COLUMN[OTHER_SITE[site]]
        preset = rows[rows[other].astype(str) == PRESET[OTHER_SITE[site]]] if len(rows) else rows
        first = preset.iloc[0] if len(preset) == 1 else None
        effect = (
            "--"
            if first is None
            else (f"{tex_num(first['mean_diff'])} [{tex_num(first['ci_low'])}, {tex_num(first['ci_high'])}]")
        )
        identical = int(((rows["mean_diff"] == 0) & (rows["sd_diff"] == 0)).sum()) if len(rows) else 0
        out += [
            _macro(prefix, f"{s}Identical", identical),
            _macro(prefix, f"{s}Answer", answer),
            _macro(prefix, f"{s}Better", better),
            _macro(prefix, f"{s}InformativeConditions", len(rows)),
            _macro(prefix, f"{s}PresetEffect", effect),
            _macro(prefix, f"{s}PresetVerdict", "--" if first is None else first["verdict"]),
            _macro(prefix, f"{s}MdeMax", tex_num(rows["mde"].max()) if len(rows) else "--"),
        ]
    if len(omni):
        ranks = omni.groupby("combo", sort=True)["mean_rank"].mean()
        out.append(_macro(prefix, "PresetRank", tex_num(ranks.get("ste/exact", math.nan))))
        out.append(_macro(prefix, "BestCombo", ranks.idxmin() if ranks.notna().any() else "--"))
    else:
        out += [_macro(prefix, "PresetRank", "--"), _macro(prefix, "BestCombo", "--")]
    usable = bayes.dropna(subset=["p_equiv"]) if len(bayes) else bayes
    agree = (
        int(
            ((usable["verdict"] == "equivalent") & (usable["p_equiv"] >= 0.5)).sum()
            + ((usable["verdict"] == "different") & (usable["p_equiv"] < 0.5)).sum()
        )
        if len(usable)
        else 0
    )
    decided = int(usable["verdict"].isin(["equivalent", "different"]).sum()) if len(usable) else 0
    out += [_macro(prefix, "BayesAgree", agree), _macro(prefix, "BayesDecided", decided)]
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
    diffs = rows["mean_diff"].dropna() if len(rows) else pd.Series([], dtype=float)
    agg = (diffs.mean(), diffs.min(), diffs.max()) if len(diffs) else (math.nan,) * 3
    detected = int((rows["verdict"] == "different").sum()) if len(rows) else 0
    return [
        _macro(prefix, f"{s}ControlMeanDiff", tex_num(agg[0])),
        _macro(prefix, f"{s}ControlMinDiff", tex_num(agg[1])),
        _macro(prefix, f"{s}ControlMaxDiff", tex_num(agg[2])),
        _macro(prefix, f"{s}ControlDetected", detected),
        _macro(prefix, f"{s}ControlConditions", len(rows)),
    ]


def comparisons_tex(comp: pd.DataFrame, spec: dict[str, Any], site: str) -> str:
    """Booktabs tabular (no float) of one site's comparison rows."""
    rows = comp[comp["site"] == site] if len(comp) else comp
    cols = row_columns(rows, spec, site) if len(rows) else [SITE_COLUMN[OTHER_SITE[site]]]
    header = [
        "Comparison",
        *[latex_escape(c) for c in cols],
        "$n$",
        r"$\Delta$ [95\% CI]",
        r"$p_\mathrm{adj}$",
        "Verdict",
    ]
    lines = [
        "% Generated by the normgrad statistics stage; do not edit.",
        r"\begin{tabular}{" + "l" * (1 + len(cols)) + "rlrl}",
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
            latex_escape(r["verdict"]),
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
    lines = headline_macros(comp, runs, spec, hyp) + answer_macros(prefix, comp, omni, bayes)
    lines += mechanism_macros(prefix, study_dir, runs)
    write_text_atomic(out / "macros.tex", head + "\n".join(lines) + "\n")
    for site in ("weight", "signal"):
        write_text_atomic(out / f"comparisons_{site}.tex", comparisons_tex(comp, spec, site))
    return out
