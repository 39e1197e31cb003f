"""The statistics report, `DIR/stats/report.md`, written from files only.

Reads `DIR/stats/*` (tables the statistics stage wrote, `skipped.csv` included), `DIR/runs.csv` and
`DIR/spec.yaml` (and, when present, `DIR/verify.json`, `DIR/run_summary.json` and the hypotheses log);
it never re-pairs or re-tests trials.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from study.analysis.report.common import (
    MAX_LISTED,
    _cell_seeds,
    _read_json,
    compared_column,
    compared_columns,
    condition_label,
    count_text,
    distinct,
    families,
    fmt,
    fmt_ci,
    fmt_p,
    informative_rows,
    largest_effects,
    md_table,
    merged_text,
    plural,
    read_stats_csv,
    row_columns,
    settle_cost,
    side_cells,
    varying,
    verdict_counts,
)
from study.analysis.stats import (
    PERMUTATION_RESAMPLES,
    POSTERIOR_DECISION,
    POSTERIOR_DRAWS,
    VERDICTS,
    analogvnn_cell,
    higher_is_better,
    key_columns,
    load_hypotheses,
    planning_alpha,
    sd_limit_equivalence,
)
from study.sweep.hypotheses import Hypotheses
from study.sweep.screen import ALL_STATS, SCREEN_TABLE
from study.tables import (
    DRAW_METRICS,
    HYPOTHESES_LOG,
    POLICY_COLUMNS,
    PRESET_FLAG,
    REDO_COLLECT,
    REDO_STATS,
    TUNED_STATS,
    condition_columns,
    diff_unit,
    load_runs,
    load_spec_dict,
    other_site_informative,
    parse_bool,
    read_csv,
    read_jsonl,
    span,
    truthy,
    write_text_atomic,
)
from study.training.config import TrialConfig


def _effect_text(row: pd.Series, columns: list[str], u: str) -> str:
    cond = condition_label(row, columns)
    return (
        f"{fmt(row['mean_diff'], signed=True)}{u} [95% CI {fmt(row['ci_low'])}, {fmt(row['ci_high'])}] "
        f"({cond}; {row['verdict']})"
    )


def _family_sentence(rows: pd.DataFrame, spec: dict[str, Any]) -> str:
    """Counts per normalization family when the rows span more than one."""
    fam = families(rows, spec)
    if fam.nunique() < 2:
        return ""
    parts = [f"{name}: {count_text(verdict_counts(rows[fam == name]))}" for name in dict.fromkeys(fam)]
    return " By normalization family — " + "; ".join(parts) + "."


def answer_section(
    comp: pd.DataFrame, spec: dict[str, Any], hyp: Hypotheses, runs: pd.DataFrame | None = None
) -> list[str]:
    """One paragraph per site: verdict counts over distinct rows and the largest effects."""
    u = diff_unit(hyp.metric)
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
            own = distinct(group)
            cols = row_columns(group, spec, site)
            tested = own[own["verdict"] != "identical"]
            effects = "; ".join(_effect_text(r, cols, u) for _, r in largest_effects(tested).iterrows())
            sentences.append(
                f"`{label}` ({group['role'].iloc[0]}, {hyp.metric}, a − b) over "
                f"{plural(len(own), 'distinct condition')}{merged_text(group)}: "
                f"**{count_text(verdict_counts(own))}** (margin ±{hyp.margin:g}{u})."
                + (f" Largest effects: {effects}." if effects else " No row needed a test.")
            )
        informative = distinct(informative_rows(rows, site))
        primary = distinct(rows[rows["role"] == "primary"])
        if len(informative) < len(primary):
            sentences.append(
                "Rows whose other site is `zero` compare two untrained networks (under `zero` no gradient "
                "reaches any parameter), so they say nothing about this site; without them: "
                f"**{count_text(verdict_counts(informative))}** of "
                f"{plural(len(informative), 'distinct condition')}."
            )
        sentences.append(_family_sentence(informative, spec).strip())
        lines += [f"**{site.capitalize()} site.** " + " ".join(x for x in sentences if x), ""]
    lines += [
        f"`identical`: every pair of runs is {_identity_text(comp)}, so no test is run; the "
        "other verdicts are statistical (Methods).",
        "",
    ]
    return lines + (identity_caveat(comp, runs, spec) if runs is not None else [])


def identity_caveat(comp: pd.DataFrame, runs: pd.DataFrame, spec: dict[str, Any]) -> list[str]:
    """Rows `identical` by their recorded metrics only (no checksums) whose trials had weights beyond
    the bound: the policies computed different gradients there, so the runs are equal in what was
    recorded, not shown bit-identical."""
    if "weight_saturation_max" not in runs or not len(comp):
        return []
    rows = comp[
        (comp["ci_method"].astype(str) == "identical (recorded metrics)")
        & (comp["site"] == "weight")
        # weight-policy comparisons only: a `factor` comparison's rows hold the weight policy
        & (comp.get("weight_policy", pd.Series("", index=comp.index)).astype(str) == "")
    ]
    conds = [c for c in condition_columns(spec) if c in runs]
    sat = pd.to_numeric(runs["weight_saturation_max"], errors="coerce").fillna(0.0)
    notes = []
    for _, r in rows.iterrows():
        match = pd.Series(True, index=runs.index)
        for c in [*conds, "signal_policy"]:
            if c in runs and c in r:
                match &= runs[c].astype(str) == str(r[c])
        hit = match & (sat > 0)
        if hit.any():
            notes.append(
                f"{condition_label(r, conds) or 'all'}: {int(hit.sum())} of {int(match.sum())} trials had "
                f"weight-site parameters beyond the bound (at most {100 * sat[hit].max():.4g} % of them)"
            )
    if not notes:
        return []
    return [
        "Equal in every recorded metric is not bit-identical: in "
        + "; ".join(notes)
        + ". There the two weight policies computed different gradients for those parameters, so the "
        "runs agree in what was recorded (6 significant digits) without being shown identical; the study "
        "predates the checksums that would settle it.",
        "",
    ]


def control_section(comp: pd.DataFrame, spec: dict[str, Any], hyp: Hypotheses) -> list[str]:
    """What the positive control (`zero` vs `ste`) detected, and why it could not elsewhere."""
    u = diff_unit(hyp.metric)
    lines = ["## Positive control", ""]
    rows = comp[comp["role"] == "positive_control"]
    if rows.empty:
        return lines + [
            "No positive control was run (its policies are absent from the runs), so the "
            "analysis's ability to detect a real effect is not demonstrated here.",
            "",
        ]
    for label, group in rows.groupby("comparison", sort=False):
        site = group["site"].iloc[0]
        cols = row_columns(group, spec, site)
        zero_zero = distinct(group).drop(distinct(other_site_informative(group, site)).index)
        own = distinct(other_site_informative(group, site))
        detected = own[own["verdict"] == "different"]
        text = (
            f"`{label}`{merged_text(group)}: `different` in **{len(detected)} of "
            f"{plural(len(own), 'informative distinct condition')}**"
        )
        if len(zero_zero):
            text += (
                f" ({len(zero_zero)} more row(s) have `zero` at the other site too: no gradient reaches "
                "any parameter under either policy, so they compare two untrained networks; not a control, "
                "not counted)"
            )
        if len(detected):
            effects = "; ".join(_effect_text(r, cols, u) for _, r in detected.iterrows())
            text += f"; it detected {effects}."
        else:
            text += "."
        same = own[own["verdict"] == "identical"]
        if len(same):
            where = "; ".join(condition_label(r, cols) for _, r in same.iterrows())
            text += (
                f" In {len(same)} condition(s) ({where}) the two policies give identical runs: there the "
                "other site blocks every gradient too, nothing trains under either policy, and the true "
                "effect is zero, so there is nothing to detect."
            )
        other = own[~own["verdict"].isin(["different", "identical"])]
        if len(other):
            where = "; ".join(f"{condition_label(r, cols)}: {r['verdict']}" for _, r in other.iterrows())
            text += f" Not detected as `different` in {len(other)} condition(s) ({where})."
        lines += [text, ""]
    return lines


def _preset_text(cell: dict[str, str]) -> str:
    return f"weight_policy={cell['weight_policy']}, signal_policy={cell['signal_policy']}"


def preset_section(omni: pd.DataFrame, spec: dict[str, Any]) -> list[str]:
    """Where the `analogvnn` preset cell of each condition stands (Friedman mean rank)."""
    lines = ["## The `analogvnn` preset cell", ""]
    intro = (
        "AnalogVNN 1.0.8's own choice (the `analogvnn` preset) depends on the normalization: weights "
        "straight-through (`ste`); signals `exact` for clamps and `ste` for Lp norms, whose backward "
        "AnalogVNN removed. In the per-condition table, column `analogvnn` says which side (a or b) of a "
        "row is that cell in the row's condition."
    )
    if omni.empty or PRESET_FLAG not in omni:
        return lines + [intro, "", "No omnibus table: the preset cell's rank is not available.", ""]
    cell = omni[truthy(omni, PRESET_FLAG)]
    if cell.empty:
        return lines + [intro, "", "The `analogvnn` preset cell is not part of this study.", ""]
    conds = varying(omni, condition_columns(spec))
    if len(cell) == 1:
        r = cell.iloc[0]
        return lines + [
            intro,
            "",
            f"Here it is {_preset_text(analogvnn_cell(spec, r))}; its Friedman mean rank (1 = best): "
            f"{condition_label(r, conds)}: {fmt(r['mean_rank'])} of {int(r['k'])} "
            f"(mean {fmt(r['mean_metric'])}).",
            "",
        ]
    rows = [
        [
            condition_label(r, conds),
            str(r["combo"]),
            f"{fmt(r['mean_rank'])} of {int(r['k'])}",
            fmt(r["mean_metric"]),
        ]
        for _, r in cell.iterrows()
    ]
    fam = families(cell, spec)
    means = "; ".join(
        f"{name}: {fmt(cell.loc[fam == name, 'mean_rank'].mean())} over {int((fam == name).sum())} conditions"
        for name in dict.fromkeys(fam)
    )
    return (
        lines
        + [intro, "", *md_table(["condition", "analogvnn cell (W/S)", "mean rank", "mean"], rows), ""]
        + [f"Mean rank of the preset cell (1 = best) by normalization family: {means}.", ""]
    )


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
        "p (t)",
        "p (perm.)",
        "p adj",
        "TOST p adj",
        "verdict",
        "better",
        PRESET_FLAG,
        "same data as",
    ]
    rows = []
    for _, r in comp.iterrows():
        rows.append(
            [
                r["comparison"],
                *[r[c] or "–" for c in cols],
                str(int(r["n_pairs"])),
                f"{fmt(r['mean_diff'], signed=True)} {fmt_ci(r['ci_low'], r['ci_high'])}",
                fmt_p(r["p_ttest"]),
                fmt_p(r["p_permutation"]),
                fmt_p(r["p_adjusted"]),
                fmt_p(r["p_tost_adjusted"]),
                r["verdict"],
                r["better"],
                r[PRESET_FLAG],
                r["same_data_as"],
            ]
        )
    note = (
        "`identical` rows have no test (n/a). A row with an entry under `same data as` holds exactly the "
        "paired runs of the row named there; it is tested and counted once, and repeats that row's numbers."
    )
    own = distinct(comp)
    own = own[own["verdict"] != "identical"]
    changed = own[own["verdict_permutation"].astype(str) != own["verdict"].astype(str)]
    robust = (
        f"Robustness: with the sign-flip permutation test in place of the t-test, {len(changed)} of "
        f"{len(own)} distinct tested rows would get another verdict"
        + (
            ": "
            + "; ".join(
                f"{r['comparison']} at {condition_label(r, cols)}: {r['verdict']} → "
                f"{r['verdict_permutation']}"
                for _, r in changed.head(MAX_LISTED).iterrows()
            )
            if len(changed)
            else ""
        )
        + "."
    )
    return lines + md_table(header, rows) + ["", note, "", robust, ""]


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
    n_sig = int(truthy(post, "significant").sum()) if len(post) else 0
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


def bayes_section(bayes: pd.DataFrame, spec: dict[str, Any]) -> list[str]:
    """Cross-tabulate verdicts against the Bayesian decision and list every disagreement."""
    lines = ["## Bayesian view", ""]
    usable = distinct(bayes)
    usable = usable[usable["bayes_decision"].astype(str) != ""] if len(usable) else usable
    if usable.empty:
        return lines + ["No tested row has two or more pairs (identical rows get no posterior).", ""]
    decisions = [
        d for d in ("a better", "b better", "rope", "undecided") if d in set(usable["bayes_decision"])
    ]
    verdicts = [v for v in VERDICTS if v in set(usable["verdict"])]
    table = pd.crosstab(usable["verdict"], usable["bayes_decision"]).reindex(
        index=verdicts, columns=decisions, fill_value=0
    )
    rows = [[v, *[str(int(x)) for x in table.loc[v]]] for v in verdicts]
    agree = usable["agrees"].astype(str) == "True"
    text = [
        f"Posterior of the mean paired difference under the Bayesian bootstrap (Rubin 1981: a "
        f"Dirichlet-process model in its non-informative limit, no normality assumption; {POSTERIOR_DRAWS} "
        f"seeded draws), with a region of practical equivalence (rope) ±δ. A region is called when it holds "
        f"at least {POSTERIOR_DECISION:g} of the posterior, else `undecided` (`bayes.csv`). Distinct tested "
        "rows by frequentist verdict (rows) and Bayesian decision (columns):",
        "",
        *md_table(["verdict", *decisions], rows),
        "",
        f"The Bayesian view says what the verdict says (different ↔ the same side beyond δ; equivalent "
        f"or trivial ↔ rope; inconclusive ↔ undecided) in **{int(agree.sum())} of {len(usable)}** rows.",
    ]
    lines += text
    disagree = usable[~agree]
    if len(disagree):
        lines += ["", "Where they disagree:", ""]
        for _, r in disagree.head(MAX_LISTED).iterrows():
            cols = row_columns(bayes[bayes["site"] == r["site"]], spec, r["site"])
            lines.append(
                f"- `{r['comparison']}` at {condition_label(r, cols)}: verdict `{r['verdict']}`, "
                f"posterior P(a better) {fmt(r['p_a_better'], 3)}, P(rope) {fmt(r['p_equiv'], 3)}, "
                f"P(b better) {fmt(r['p_a_worse'], 3)} → `{r['bayes_decision']}`"
            )
    return lines + [""]


def power_section(comp: pd.DataFrame, runs: pd.DataFrame, spec: dict[str, Any], hyp: Hypotheses) -> list[str]:
    """MDE of the rows that differ; for the inconclusive ones the seeds TOST would need, and the cost."""
    u = diff_unit(hyp.metric)
    lines = ["## Power: what would settle the inconclusive rows", ""]
    own = distinct(comp)
    if own.empty:
        return lines + ["No comparison row.", ""]
    moved = own[own["verdict"].isin(["different", "trivial"])]
    if len(moved):
        lines += [
            f"For the {len(moved)} `different` or `trivial` rows the minimal detectable effect (two-sided "
            f"paired t-test, 80% power, α = {hyp.alpha:g} before adjustment, at the row's n and sd) is "
            f"{span(fmt(moved['mde'].min()), fmt(moved['mde'].max()))}{u}.",
            "",
        ]
    inc = own[own["verdict"] == "inconclusive"]
    if inc.empty:
        return lines + ["No row is inconclusive.", ""]
    limits, beyond = [], 0
    for n in sorted(set(int(x) for x in inc["n_pairs"] if x >= 2)):
        limit = sd_limit_equivalence(n, hyp.margin, hyp.alpha)
        limits.append(f"with n = {n} pairs, below {fmt(limit)}{u}")
        beyond += int((inc.loc[inc["n_pairs"] == n, "sd_diff"] >= limit).sum())
    sd = inc["sd_diff"].dropna()
    levels = []
    for name in dict.fromkeys(inc["family"]):
        tests = int(pd.to_numeric(own.loc[own["family"] == name, "p_tost"], errors="coerce").notna().sum())
        levels.append(f"{planning_alpha(hyp, tests):.2g} in family `{name}` (m = {tests})")
    lines += [
        f"{len(inc)} distinct row(s) are `inconclusive`. TOST with margin ±{hyp.margin:g}{u} can reject at "
        f"level α = {hyp.alpha:g} only if the sample SD of the differences is small enough "
        f"({'; '.join(limits)}), even when the observed mean difference is exactly 0; the inconclusive rows "
        f"{'has an SD of' if len(sd) == 1 else 'have SDs of'} {span(fmt(sd.min()), fmt(sd.max()))}{u}"
        + ("" if len(sd) == 1 else f" (median {fmt(sd.median())}{u})")
        + f", and **{beyond} of "
        f"{len(inc)}** lie above that limit: those could not have been found equivalent at this n whatever "
        "their true difference, so their verdict reflects the design's resolution, not evidence of an "
        "effect. The others missed equivalence after the multiplicity adjustment or by their mean.",
        "",
        f"`seeds_needed_equivalence`: paired seeds for 80% TOST power at the row's observed SD, if the true "
        f"mean difference were 0 (the best case; a true difference inside ±δ needs more), each one-sided "
        f"test at α/m = {'; '.join(levels)}, m being the TOST tests of the family (the level Holm demands "
        "of the first one), computed exactly (the TOST rejection region integrated over the distribution "
        "of the sample SD, Owen 1965), not simulated.",
        "",
    ]
    rows = []
    times = (
        runs.assign(_t=pd.to_numeric(runs["wall_time_s"], errors="coerce")) if "wall_time_s" in runs else None
    )
    conds = condition_columns(spec)
    columns = compared_columns(spec)
    for _, r in inc.iterrows():
        cols = row_columns(comp[comp["site"] == r["site"]], spec, r["site"])
        needed = r["seeds_needed_equivalence"]
        extra = 2 * max(int(needed) - int(r["n_pairs"]), 0) if math.isfinite(needed) else math.nan
        secs = math.nan
        if times is not None and math.isfinite(extra):
            column = compared_column(columns, r)
            loose = None if column in POLICY_COLUMNS else column
            per = [_cell_seeds(times, cell, loose)["_t"].mean() for cell in side_cells(r, conds, column)]
            secs = extra / 2 * sum(per)
        rows.append(
            [
                r["comparison"],
                condition_label(r, cols),
                str(int(r["n_pairs"])),
                fmt(r["mean_diff"], signed=True),
                fmt(r["sd_diff"]),
                "n/a" if not math.isfinite(needed) else str(int(needed)),
                "n/a" if not math.isfinite(extra) else str(extra),
                "n/a" if not math.isfinite(secs) else fmt(secs / 3600),
            ]
        )
    lines += md_table(
        ["comparison", "condition", "n", "mean diff", "sd", "seeds needed", "extra trials", "hours"], rows
    )
    cost = settle_cost(comp, runs, spec)
    hours = "n/a" if not math.isfinite(cost["seconds"]) else fmt(cost["seconds"] / 3600, 1)
    lines += [
        "",
        f"Settling all {cost['rows']} inconclusive rows this way needs {int(cost['trials'])} more trials in "
        f"{cost['cells']} cells (a cell shared by two rows counted once, at the larger need), about "
        f"{hours} hours at the measured `wall_time_s` per trial of each cell (this study's protocol and "
        "machine; the per-row hours above count shared cells in each row).",
        "",
    ]
    return lines


def _identity_text(comp: pd.DataFrame) -> str:
    """What `identical` rests on in this study: checksums (bit-identical) or the recorded metrics."""
    methods = set(comp["ci_method"].astype(str)) if len(comp) and "ci_method" in comp else set()
    if "identical (recorded metrics)" in methods:
        return "equal in every recorded metric (the study predates the checksums)"
    return "bit-identical (equal checksums of the final parameters and test logits)"


def _tally(counts: dict[str, int]) -> str:
    return ", ".join(f"{k or 'none (n < 2)'} {v}" for k, v in sorted(counts.items())) or "none"


def _factor_pairing(hyp: Hypotheses) -> list[str]:
    """The methods line on comparisons of a condition factor (`factor` in the spec), if there are any."""
    factors = list(dict.fromkeys(c.factor for c in hyp.comparisons if c.factor is not None))
    if not factors:
        return []
    names = ", ".join(f"`{f}`" for f in factors)
    return [
        f"- Comparisons of a condition factor ({names}): values a and b of the factor are paired by seed "
        "within every combination of the other condition factors and both sites' policies (the factor's "
        "column is empty in their rows, both policy columns are filled); a combination where one value "
        "has no trial is not compared (`skipped.csv`, `absent_policy` = factor=value)."
    ]


def methods_section(comp: pd.DataFrame, hyp: Hypotheses) -> list[str]:
    """Test, alpha, margin, correction, family, verdicts, intervals, power and the Bayesian view."""
    u = diff_unit(hyp.metric)
    n = comp["n_pairs"] if len(comp) else pd.Series([0])
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
        *_factor_pairing(hyp),
        f"- `identical`: a row whose every pair of runs is {_identity_text(comp)} is not tested: no "
        "p-value, no TOST, no posterior. Bit-identical means equal sha256 checksums of the final parameters "
        "and of every final test logit (records since issue #28); a study recorded before them can show "
        "only equal values of every metric runs.csv records (test, validation and training accuracy and "
        "loss, at 6 significant digits), which two runs that computed different gradients can share.",
        "- Same data, counted once: a row whose paired runs (seeds and every recorded metric) are those "
        "of an earlier row of the same comparison (`same_data_as`) is neither tested nor counted again; "
        "it repeats that row's numbers.",
        "- Test (one, fixed in advance, about the mean paired difference): the paired t-test. Beside it, "
        f"as a robustness check, a sign-flip permutation test of the mean ({PERMUTATION_RESAMPLES} seeded "
        "random sign patterns, all 2^n when fewer; `p_permutation`, `verdict_permutation`), and the "
        "Wilcoxon signed-rank p (`p_wilcoxon`, a sensitivity column about the pseudo-median; not used).",
        f"- Equivalence: paired TOST with bounds ±δ = ±{hyp.margin:g}{u} (`p_tost`; its interval "
        f"`tost_ci_*` is the {tost_level} t interval).",
        f"- Multiplicity: `{hyp.correction}` within each family (`family: {hyp.family}`), separately over "
        "the t-test p, the TOST p and the permutation p of the family's distinct tested rows "
        "(`p_adjusted`, `p_tost_adjusted`, `p_permutation_adjusted`).",
        f"- Verdict (α = {hyp.alpha:g}): `different` if the adjusted t-test p < α and the 95% CI reaches "
        "outside ±δ; `trivial` if the adjusted t-test p < α but the whole CI lies within ±δ; "
        "`equivalent` if the adjusted TOST p < α (and the difference test does not reject); "
        "`inconclusive` otherwise (also below 2 pairs). `better` names the side a `different` or "
        "`trivial` row favours.",
        "- Intervals: the 95% paired t interval of the mean difference, the interval of the "
        "pre-specified t-test (it excludes 0 exactly when the unadjusted test rejects); the BCa bootstrap "
        "the studies reported before issue #28 covers the mean in only ~88-91% of samples at 6-8 pairs "
        "(`benchmarks/coverage.py`). [d, d] (`degenerate`) when all differences are equal, [0, 0] for "
        f"identical rows. Interval methods used: {ci_methods}.",
        "- Effect sizes: d_z = mean/sd of the differences, Hodges–Lehmann (median of Walsh averages), "
        "share of seeds where a beats b.",
        "- Power: `mde` = smallest difference a two-sided paired t-test detects with 80% power at this n "
        "and sd (α before adjustment); `seeds_needed_equivalence` (inconclusive rows) = paired seeds for "
        "80% TOST power at the observed sd if the true difference were 0, at the family's α/m (section "
        "Power).",
        f"- Bayesian view: Bayesian-bootstrap posterior of the mean difference ({POSTERIOR_DRAWS} draws), "
        f"rope ±δ, a region called at ≥ {POSTERIOR_DECISION:g} (section Bayesian view).",
        f"- n pairs per row: {span(int(n.min()), int(n.max()))}.",
        "- Omnibus: Friedman test per condition over all weight/signal policy combinations on the seeds "
        "complete for all of them; Nemenyi post-hoc (scikit-posthocs) and critical difference "
        "q_α(k, ∞)/√2·√(k(k+1)/6n).",
        "- Mixed model: statsmodels `mixedlm` (REML), random intercept per seed.",
        "- Change of the analysis: this rule replaced (issue #14, after the committed studies had run) "
        "the rule first registered with the studies: a Shapiro–Wilk pre-test chose the t-test or the "
        "Wilcoxon test, TOST p-values were not adjusted, and rows were `different`, `equivalent` or "
        "`inconclusive`, bit-identical runs and repeated rows included. `normality_alpha` in the spec is "
        "no longer used.",
        "",
    ]


def design_section(study_dir: Path, spec: dict[str, Any], hyp: Hypotheses) -> list[str]:
    """Factors, seeds, comparisons, exclude/include rules and what was not compared (`stats/skipped.csv`)."""
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
    skipped = read_stats_csv(study_dir, "skipped.csv", spec)
    columns = compared_columns(spec)
    for _, r in skipped[skipped["scope"] == "comparison"].iterrows():
        if compared_column(columns, r) in POLICY_COLUMNS:
            lines.append(f"- **skipped** `{r['comparison']}`: policy absent from the runs")
        else:
            lines.append(f"- **skipped** `{r['comparison']}`: absent from the runs: {r['absent_policy']}")
    cells = skipped[skipped["scope"] == "condition"]
    if len(cells):
        lines.append(
            f"- {len(cells)} comparison × condition cell(s) not compared because one policy has no "
            "trial there:"
        )
        for _, r in cells.head(MAX_LISTED).iterrows():
            column = compared_column(columns, r)
            cond = condition_label(r, [c for c in key_columns(spec) if c != column])
            lines.append(f"  - `{r['comparison']}` at {cond} (absent: {r['absent_policy']})")
    return lines + [""]


def sensitivity_section(study_dir: Path, spec: dict[str, Any], hyp: Hypotheses) -> list[str]:
    """The planted-effect check (stats/sensitivity.csv): detection of ±δ and ±2δ in these data."""
    sens = read_stats_csv(study_dir, "sensitivity.csv", spec)
    u = diff_unit(hyp.metric)
    lines = ["## Sensitivity: planted effects", ""]
    if sens.empty:
        return lines + ["No primary comparison.", ""]
    lines += [
        "Can the analysis detect an effect of the size of the margin in these data? For each primary "
        "comparison, a copy of the trial table has policy a's values moved so that every tested row's "
        "mean paired difference becomes exactly the planted Δ, keeping each seed's deviation (the real "
        "noise); the whole comparison analysis (tests, Holm, verdicts) is run again. *Detected*: verdict "
        "`different` or `trivial` in the planted direction. At Δ = 0 the detected count is the false-"
        "positive count. Rows with identical runs (no spread) or `zero` at the other site are left out; "
        "rows repeating another row's paired runs count once (`stats/sensitivity.csv`).",
        "",
    ]
    rows = [
        [
            r["comparison"],
            f"{r['shift']:+g}{u}",
            str(int(r["rows"])),
            str(int(r["detected"])) if int(r["rows"]) else "–",
            fmt(r["detection_rate"]) if pd.notna(r["detection_rate"]) else "–",
            str(int(r["equivalent"])) if pd.notna(r["equivalent"]) else "–",
            str(int(r["inconclusive"])) if pd.notna(r["inconclusive"]) else "–",
        ]
        for _, r in sens.iterrows()
    ]
    header = ["comparison", "planted Δ", "rows", "detected", "rate", "equivalent", "inconclusive"]
    return lines + md_table(header, rows) + [""]


def _pct(x: Any) -> str:
    """A fraction as a percentage with two decimals (`n/a` for NaN)."""
    return "n/a" if x is None or not math.isfinite(float(x)) else f"{100 * float(x):.2f}%"


def saturation_section(study_dir: Path, hyp: Hypotheses) -> list[str]:
    """The weight-site difference against weight saturation (stats/saturation_*.csv; `stats.covariate`);
    nothing for studies where it is not fitted."""
    stats = Path(study_dir) / "stats"
    if not (stats / "saturation_model.csv").exists():
        return []
    regimes = read_csv(stats / "saturation_regimes.csv", REDO_STATS)
    model = read_csv(stats / "saturation_model.csv", REDO_STATS)
    onset = read_csv(stats / "saturation_onset.csv", REDO_STATS)
    u = diff_unit(hyp.metric)
    lines = [
        "## Weight saturation as a covariate",
        "",
        "Per seed, the paired difference of the weight-site comparison (a − b) against the pair's mean "
        "final fraction of weight-site parameters beyond their range (pooled over layers; there `exact` "
        "passes no gradient and `ste` passes it unchanged). Regimes: conditions named by where they "
        "depart from the most common factor values.",
        "",
    ]
    rows = [
        [
            r["comparison"],
            r["regime"],
            str(int(r["pairs"])),
            f"{_pct(r['saturation_mean'])} ({_pct(r['saturation_min'])}–{_pct(r['saturation_max'])})",
            fmt(r["diff_mean"], signed=True) + u,
            fmt_ci(r["ci_low"], r["ci_high"]),
            str(r["verdict"]),
        ]
        for _, r in regimes.iterrows()
    ]
    lines += md_table(
        ["comparison", "regime", "pairs", "saturation mean (range)", "mean diff", "95% CI", "verdict"], rows
    )
    slopes = model[model["term"] == "saturation"]
    lines += [
        "",
        "Linear mixed models on the pairs (REML, random intercept per regime): the signed difference and "
        "its absolute value on the saturation. Slope per 10% of the weights saturated:",
        "",
    ]
    lines += md_table(
        ["comparison", "response", "slope per 10%", "95% CI", "p", "regimes", "pairs"],
        [
            [
                r["comparison"],
                "signed difference" if r["response"] == "diff" else "absolute difference",
                fmt(r["coef"] / 10, signed=True) + u,
                fmt_ci(r["ci_low"] / 10, r["ci_high"] / 10),
                fmt_p(r["p"]),
                str(int(r["groups"])),
                str(int(r["pairs"])),
            ]
            for _, r in slopes.iterrows()
        ],
    )
    lines.append("")
    for _, r in onset.iterrows():
        margin = f"{float(r['margin']):+g}{u}"
        if r["bounded"] == "yes":
            lines.append(
                f"- {r['comparison']}: the fitted difference reaches {margin} at "
                f"{_pct(r['saturation_at_margin'])} of the weights saturated (Fieller 95% interval "
                f"{_pct(r['ci_low'])} to {_pct(r['ci_high'])}: beyond its upper end the line's 95% band "
                "lies wholly past the margin)."
            )
        else:
            lines.append(
                f"- {r['comparison']}: the slope is not distinguishable from 0 at 95%, so no saturation "
                f"level is shown to bring the difference to {margin} (Fieller interval unbounded)."
            )
    return lines + [
        "",
        "Tables: `saturation_regimes.csv`, `saturation_model.csv`, `saturation_onset.csv`.",
        "",
    ]


def effects_section(study_dir: Path, hyp: Hypotheses) -> list[str]:
    """The pre-registered across-condition model (stats/effects_*; `stats.effects`), if the spec has one."""
    stats = Path(study_dir) / "stats"
    if hyp.effect_model is None or not (stats / "effects_terms.csv").exists():
        return []
    terms = read_csv(stats / "effects_terms.csv", REDO_STATS)
    marg = read_csv(stats / "effects_marginal.csv", REDO_STATS)
    text = (stats / "effects_model.txt").read_text()
    logit = hyp.effect_model.scale == "logit"
    u = " logit" if logit else diff_unit(hyp.metric)
    scale = (
        " On the logit scale: d = logit(a) - logit(b) of the accuracies, the log odds ratio of a correct "
        "prediction (+0.3 is, e.g., 70 % -> 76 % or 90 % -> 92.4 %); floor and ceiling do not compress it "
        "as they compress percentage points."
        if logit
        else ""
    )
    lines = [
        "## Across conditions: the effect model",
        "",
        f"Pre-registered: per primary comparison, d ~ {hyp.effect_model.formula} with random intercepts "
        "per condition and per seed, fitted as least squares on the condition means of d (the same fixed "
        f"effects when the seeds are balanced; `stats.effects`).{scale}",
        "",
    ]
    lines += [f"    {ln}" for ln in text.split("\nfixed effects", 1)[0].strip().splitlines()]
    if len(marg):
        lines += ["", "Estimated marginal means of d (averaged over the design's conditions):", ""]
        lines += md_table(
            ["comparison", "factor", "level", "conditions", "mean d", "95% CI"],
            [
                [
                    r["comparison"],
                    r["factor"],
                    str(r["level"]),
                    str(int(r["conditions"])),
                    fmt(r["emm"], signed=True) + u,
                    fmt_ci(r["ci_low"], r["ci_high"]),
                ]
                for _, r in marg.iterrows()
            ],
        )
    main = terms[~terms["term"].astype(str).str.contains(":")]
    lines += ["", "Coefficients (main effects; every term in `effects_terms.csv`):", ""]
    lines += md_table(
        ["comparison", "term", "coef", "95% CI", "p"],
        [
            [
                r["comparison"],
                r["term"],
                fmt(r["coef"], signed=True) + u,
                fmt_ci(r["ci_low"], r["ci_high"]),
                fmt_p(r["p"]),
            ]
            for _, r in main.iterrows()
        ],
    )
    return lines + [""] + pooled_section(stats, u)


def pooled_section(stats: Path, u: str) -> list[str]:
    """Partially pooled per-condition effects (stats/effects_conditions.csv): how far the empirical-Bayes
    estimates move from the raw condition means, and the conditions whose pooled interval excludes 0."""
    path = stats / "effects_conditions.csv"
    if not path.exists():
        return []
    pooled = read_csv(path, REDO_STATS)
    if pooled.empty:
        return []
    lines = [
        "### Per condition, partially pooled",
        "",
        "Each condition's mean difference pulled towards the model's fitted value by its share of sampling "
        "noise (empirical Bayes: weight tau^2 / (tau^2 + sigma^2 / n); `stats/effects_conditions.csv`, "
        "beside the raw per-condition verdicts of `comparisons.csv`).",
        "",
    ]
    rows = []
    for comparison, g in pooled.groupby("comparison", sort=False):
        above, below = int((g["eb_low"] > 0).sum()), int((g["eb_high"] < 0).sum())
        low, high = fmt(float(g["eb_diff"].min()), signed=True), fmt(float(g["eb_diff"].max()), signed=True)
        rows.append(
            [
                comparison,
                str(len(g)),
                fmt(float(g["shrinkage"].median())),
                str(above),
                str(below),
                str(len(g) - above - below),
                f"{low}{u} to {high}{u}",
            ]
        )
    header = ["comparison", "conditions", "median shrinkage", "interval > 0", "interval < 0", "holds 0"]
    lines += md_table([*header, "range of pooled d"], rows)
    return lines + [""]


def _acc(value: Any) -> str:
    """An accuracy already in percent (`screen.csv`), one decimal."""
    try:
        return f"{float(value):.1f} %"
    except (TypeError, ValueError):
        return "n/a"


def screen_section(study_dir: Path) -> list[str]:
    """The trainability screen (screen.csv): the criterion, and every screened-out condition with its
    screen accuracy; the sensitivity analysis over all conditions (stats_all/) beside the primary one."""
    path = Path(study_dir) / SCREEN_TABLE
    if not path.exists():
        return []
    screen = read_csv(path, REDO_COLLECT, keep_default_na=False)
    passed = screen["passed"].map(lambda v: parse_bool(v) is True)
    out = screen[~passed]
    metric = next(c for c in screen.columns if c.startswith("reference_"))
    digital = next((c for c in screen.columns if c.startswith("digital_")), None)
    thr = float(screen["threshold"].iloc[0]) if len(screen) else math.nan
    lines = [
        "## Trainability screen",
        "",
        "Pre-registered (`screen` in the spec): a condition can test the question when its reference arm's "
        f"mean {metric.removeprefix('reference_')} on the screen seeds (never evaluated on the test split) "
        f"is at least {thr:g} %. **{int(passed.sum())} of {len(screen)} conditions pass**; the statistics "
        "above cover them. Every condition's evaluation trials ran, so the same analysis over all "
        f"{len(screen)} conditions is in `stats_all/` (sensitivity analysis).",
        "",
    ]
    if len(out):
        cols = [c for c in screen.columns if c not in (metric, digital, "threshold", "passed")]
        keep = [c for c in cols if screen[c].astype(str).nunique() > 1]
        lines += [f"Screened out ({len(out)}):", ""]
        lines += md_table(
            [*keep, "reference arm", *(["digital twin"] if digital else [])],
            [
                [*(str(r[c]) for c in keep), _acc(r[metric]), *([_acc(r[digital])] if digital else [])]
                for _, r in out.iterrows()
            ],
        )
        lines += [""]
    all_comp = Path(study_dir) / ALL_STATS / "comparisons.csv"
    if all_comp.exists():
        comp = read_csv(all_comp, REDO_STATS, keep_default_na=False)
        counts = [
            f"{label}: {count_text(verdict_counts(g))}" for label, g in comp.groupby("comparison", sort=False)
        ]
        lines += [
            "Sensitivity (every condition, `stats_all/comparisons.csv`): " + "; ".join(counts) + ".",
            "",
        ]
    return lines


def interaction_section(study_dir: Path, hyp: Hypotheses) -> list[str]:
    """The signal policy's readout x rest interaction (stats/interaction.csv; not pre-registered for the
    studies that predate it): do the two locations' costs of ste add up?"""
    path = Path(study_dir) / "stats" / "interaction.csv"
    if not path.exists():
        return []
    table = read_csv(path, REDO_STATS, keep_default_na=False)
    u = diff_unit(hyp.metric)
    fields = {"n_seeds", "readout_cost_rest_exact", "readout_cost_rest_ste", "all_ste_loss"}
    fields |= {"additive_prediction", "interaction", "ci_low", "ci_high", "p_ttest"}
    keep = [c for c in table.columns if c not in fields and table[c].astype(str).nunique() > 1]
    lines = [
        "## Location interaction",
        "",
        "The signal policy as a 2 × 2 over two locations: the readout's output clamp and every other "
        "signal position (rest). Per seed, I = (EE − ES) − (SE − SS) (first letter: rest, second: readout; "
        "E exact, S ste): what ste at the readout costs with the rest exact minus what it costs with the "
        "rest ste; equivalently the additive prediction of the all-ste loss, (EE − ES) + (EE − SE), minus "
        "the observed one. I = 0: the costs add; I > 0: all-ste loses less than the sum; I < 0: more. 95 % "
        "paired t interval over the seeds. (An analysis added after the fact, not pre-registered.)",
        "",
    ]
    lines += md_table(
        [
            *keep,
            "n",
            "readout cost, rest exact",
            "readout cost, rest ste",
            "all-ste loss",
            "additive",
            "I [95% CI]",
        ],
        [
            [
                *(str(r[c]) for c in keep),
                str(r["n_seeds"]),
                *(f"{float(r[c]):+.2f}{u}" for c in ("readout_cost_rest_exact", "readout_cost_rest_ste")),
                *(f"{float(r[c]):+.2f}{u}" for c in ("all_ste_loss", "additive_prediction")),
                f"{float(r['interaction']):+.2f} [{float(r['ci_low']):+.2f}, {float(r['ci_high']):+.2f}]",
            ]
            for _, r in table.iterrows()
        ],
    )
    return lines + [""]


def tuned_section(study_dir: Path, spec: dict[str, Any], hyp: Hypotheses) -> list[str]:
    """The comparisons at each policy's own learning rate (tune_lr: stats_tuned/, lr_choice.csv)."""
    path = Path(study_dir) / TUNED_STATS / "comparisons.csv"
    if not path.exists():
        return []
    comp = read_stats_csv(study_dir, "comparisons.csv", spec, TUNED_STATS)
    choice = read_csv(Path(study_dir) / "lr_choice.csv", REDO_STATS)
    tune = spec.get("tune_lr") or {}
    u = diff_unit(hyp.metric)
    lines = [
        "## At each policy's own learning rate",
        "",
        f"`tune_lr`: each cell's learning rate chosen from {tune.get('grid')} by the mean "
        f"`{tune.get('metric', 'val_acc')}` over selection seeds {tune.get('selection_seeds')} (never "
        "evaluated on the test split; disjoint from the evaluation seeds), then the cell's evaluation "
        "seeds trained at that lr (`runs_tuned.csv`) and compared exactly as above "
        f"(`{TUNED_STATS}/`).",
        "",
    ]
    chosen = choice[choice["chosen"].astype(str).str.lower() == "true"]
    cells = [c for c in choice.columns if c not in ("lr", "chosen") and not c.startswith("mean_")]
    lines += md_table(
        [*cells, "chosen lr"],
        [[*(str(r[c]) for c in cells), f"{float(r['lr']):g}"] for _, r in chosen.iterrows()],
    )
    cols = [c for c in varying(comp, key_columns(spec))] or []
    lines += [""] + md_table(
        ["comparison", *cols, "n", "mean diff [95% CI]", "p adj", "verdict"],
        [
            [
                r["comparison"],
                *[r[c] or "–" for c in cols],
                str(int(r["n_pairs"])),
                f"{fmt(r['mean_diff'], signed=True)}{u} {fmt_ci(r['ci_low'], r['ci_high'])}",
                fmt_p(r["p_adjusted"]),
                str(r["verdict"]),
            ]
            for _, r in comp.iterrows()
        ],
    )
    return lines + [""]


def evaluation_section(runs: pd.DataFrame, spec: dict[str, Any], hyp: Hypotheses) -> list[str]:
    """Which test accuracy the numbers are: one noise draw at the last epoch, or the mean over K draws
    after training; and the noise-off accuracy where recorded."""
    lines = ["## Test evaluation", ""]
    if not set(DRAW_METRICS) <= set(runs.columns):
        return lines + [
            "`test_acc` is the accuracy on the test split at the last epoch under one draw of the analog "
            "noise (this study ran before the final evaluation over several noise draws existed).",
            "",
        ]
    k = (spec.get("base") or {}).get("test_draws", TrialConfig.model_fields["test_draws"].default)
    lines.append(
        f"After training, each network is evaluated on the test split under {k} independent draws of the "
        "analog noise (`test_acc_mean`, their mean) and with the noise off (`test_acc_noise_off`); "
        f"`test_acc` is the last epoch's one-draw accuracy. The statistics use `{hyp.metric}`. Means over "
        "the trials of each policy combination:"
    )
    done = runs[runs["status"].astype(str) == "done"] if "status" in runs else runs
    cols = ["test_acc", *DRAW_METRICS]
    table = done.groupby(list(POLICY_COLUMNS), sort=True)[cols].mean(numeric_only=True).reset_index()
    lines += [""] + md_table(
        ["weight policy", "signal policy", "test_acc (1 draw)", f"test_acc_mean ({k} draws)", "noise off"],
        [
            [r[POLICY_COLUMNS[0]], r[POLICY_COLUMNS[1]], *(fmt(r[c]) for c in cols)]
            for _, r in table.iterrows()
        ],
    )
    return lines + [""]


def duplicates_section(study_dir: Path, spec: dict[str, Any]) -> list[str]:
    """Combinations whose runs are bit-identical seed by seed, collapsed in the omnibus test, the ranks
    and the mixed model (stats/duplicates.csv)."""
    dup = read_stats_csv(study_dir, "duplicates.csv", spec)
    runs = load_runs(study_dir)
    lines = ["## Distinct runs", ""]
    if dup.empty:
        return lines + [f"All {len(runs)} trials are distinct runs: no combination repeats another's.", ""]
    repeated = int(pd.to_numeric(dup["n_seeds"]).sum())
    lines.append(
        f"{len(runs)} trials hold **{len(runs) - repeated} distinct runs**: in {len(dup)} (condition, "
        f"combination) cells every seed's trial records exactly the values of another combination's "
        f"trial (e.g. weight `exact` and `ste` under a clamp that no weight reaches), {repeated} trials in "
        "all. The omnibus test, the ranks and the mixed model count each such run once; combinations "
        "with identical runs share one rank (named `a/b = c/d`). `stats/duplicates.csv` lists them."
    )
    groups = dup.groupby(["same_runs_as", "combo"], sort=False).size().reset_index(name="conditions")
    lines += [""] + md_table(
        ["combination", "same runs as", "conditions"],
        [[r["combo"], r["same_runs_as"], str(r["conditions"])] for _, r in groups.iterrows()],
    )
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
    diverged = truthy(runs, "diverged") if "diverged" in runs else None
    n_div = int(diverged.sum()) if diverged is not None else 0
    if hyp.diverged == "include":
        used = int(comp["n_diverged"].sum()) if len(comp) else 0
        lines.append(
            f"Diverged trials count as data (their final {hyp.metric}): {n_div} diverged trial(s) in "
            f"the runs; {used} analysed pair(s) contain one."
            if n_div
            else "No trial diverged."
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
    failed = truthy(runs, "failed").sum()
    diverged = truthy(runs, "diverged").sum()
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
    lines += (
        answer_section(comp, spec, hyp, runs) + control_section(comp, spec, hyp) + preset_section(omni, spec)
    )
    lines += screen_section(study_dir)
    lines += saturation_section(study_dir, hyp) + effects_section(study_dir, hyp)
    lines += interaction_section(study_dir, hyp)
    lines += tuned_section(study_dir, spec, hyp)
    lines += evaluation_section(runs, spec, hyp)
    lines += sensitivity_section(study_dir, spec, hyp) + duplicates_section(study_dir, spec)
    lines += condition_table(comp, spec) + omnibus_section(omni, post, spec) + model_section(study_dir)
    lines += bayes_section(bayes, spec) + power_section(comp, runs, spec, hyp)
    lines += methods_section(comp, hyp) + design_section(study_dir, spec, hyp)
    lines += preregistration_section(study_dir)
    lines += missing_section(missing, comp, runs, spec, hyp) + provenance_section(runs)
    lines += verification_section(study_dir) + run_section(study_dir)
    path = study_dir / "stats" / "report.md"
    write_text_atomic(path, "\n".join(lines).rstrip() + "\n")
    return path
