"""LaTeX outputs of the statistics stage, `DIR/stats/latex/` (macros and tables for the paper), from files."""

from __future__ import annotations

import json
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
from study.analysis.stats.duplicates import GROUP_JOIN
from study.analysis.stats.omnibus import OMNIBUS_COLUMNS
from study.sweep.hypotheses import Hypotheses
from study.sweep.screen import ALL_STATS, SCREEN_TABLE
from study.sweep.spec import StudySpec, cells
from study.tables import (
    DRAW_METRICS,
    HYPOTHESES_LOG,
    PRESET_FLAG,
    REDO_COLLECT,
    REDO_STATS,
    SITE_COLUMN,
    SPEC_LOG,
    TUNED_STATS,
    condition_columns,
    factor_label,
    is_percent,
    load_runs,
    load_spec_dict,
    other_site_informative,
    parse_bool,
    read_csv,
    read_jsonl,
    truthy,
    write_text_atomic,
)
from study.tables import span as span_text
from study.training.config import TrialConfig
from study.training.data import FEATURES, split_sizes

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
    """(the common verdict of the decided rows, which policy the `different` rows favour).

    Inconclusive rows decide nothing, so they do not make a summary `mixed`: when every decided row
    agrees, that is the answer (the inconclusive ones are counted beside it, `...Inconclusive`);
    `inconclusive` when no row is decided; `mixed` only when decided rows disagree (in verdict, or
    `different` rows in direction)."""
    if rows.empty:
        return "--", "--"
    decided = set(rows["verdict"]) - {"inconclusive"}
    answer = decided.pop() if len(decided) == 1 else "inconclusive" if not decided else "mixed"
    diff = rows[rows["verdict"] == "different"]
    if diff.empty:
        return answer, "none"
    winners = {r["policy_a"] if r["better"] == "a" else r["policy_b"] for _, r in diff.iterrows()}
    if len(winners) > 1 and answer == "different":
        answer = "mixed"
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
    out += rank_macros(prefix, omni)
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


def best_combos(omni: pd.DataFrame) -> tuple[list[str], float]:
    """(every combination sharing the best mean rank averaged over conditions, that rank).

    A group row of omnibus.csv (`a/b = c/d`: identical runs, ranked once) stands for each member, so
    combinations whose runs are identical tie by construction and are reported together; so are
    distinct combinations whose mean ranks are equal (at the 4 significant digits of the table).
    """
    rows = [
        (member, float(r["mean_rank"]))
        for _, r in omni.iterrows()
        for member in str(r["combo"]).split(GROUP_JOIN)
        if pd.notna(r["mean_rank"])
    ]
    if not rows:
        return [], math.nan
    ranks = pd.DataFrame(rows, columns=["combo", "rank"]).groupby("combo", sort=False)["rank"].mean()
    best = float(ranks.min())
    return [c for c, r in ranks.items() if abs(r - best) < 5e-4 * max(1.0, best)], best


def rank_macros(prefix: str, omni: pd.DataFrame) -> list[str]:
    """Ranks over distinct runs: the preset cell's mean rank, the best combination(s) (`A and B (tied)`
    when several share the best rank), the numbers of distinct combinations and of Friedman tests."""
    names = ["PresetRank", "BestCombo", "BestRank", "BestTied", "RankKMin", "RankKMax", "FriedmanTests"]
    if not len(omni) or PRESET_FLAG not in omni:
        return [_macro(prefix, n, "--") for n in names]
    preset = omni[truthy(omni, PRESET_FLAG)]
    best, rank = best_combos(omni)
    text = " and ".join(latex_escape(c) for c in best) + (" (tied)" if len(best) > 1 else "")
    conds = [c for c in omni.columns if c not in OMNIBUS_NON_CONDITION]
    per = omni.drop_duplicates(conds) if conds else omni.iloc[:1]
    k = pd.to_numeric(per["k"], errors="coerce")
    tests = int(pd.to_numeric(per["friedman_p"], errors="coerce").notna().sum())
    return [
        _macro(prefix, "PresetRank", tex_num(preset["mean_rank"].mean() if len(preset) else math.nan)),
        _macro(prefix, "BestCombo", text or "--"),
        _macro(prefix, "BestRank", tex_num(rank)),
        _macro(prefix, "BestTied", "yes" if len(best) > 1 else "no"),
        _macro(prefix, "RankKMin", tex_num(k.min(), 0)),
        _macro(prefix, "RankKMax", tex_num(k.max(), 0)),
        _macro(prefix, "FriedmanTests", tests),
    ]


OMNIBUS_NON_CONDITION = set(OMNIBUS_COLUMNS)


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


ROW_FIELDS = {"Diff": "mean_diff", "Lo": "ci_low", "Hi": "ci_high", "Sd": "sd_diff", "Pairs": "n_pairs"}


def row_macros(prefix: str, comp: pd.DataFrame, spec: dict[str, Any]) -> list[str]:
    """One set of macros per comparison row, so prose can cite any row's numbers:
    `\\<Study>Row<Conditions><A>Vs<B><Field>` with the varying condition values and the two policies in
    CamelCase (``exact,readout_output=ste`` -> ``ExactReadoutOutputSte``) and Field one of Diff, Lo, Hi
    (the 95% CI), Sd, Pairs, Abs (|Diff|, for prose that names the winner) and Verdict; e.g.
    `\\MechanismRowMnistFiveKAnalogExactVsSteDiff`."""
    if comp is None or comp.empty:
        return []
    out: list[str] = []
    seen: set[str] = set()
    for site in ("weight", "signal"):
        rows = comp[comp["site"].astype(str) == site]
        if rows.empty:
            continue
        cols = row_columns(rows, spec, site)
        cols = [c for c in cols if c in rows and rows[c].astype(str).nunique() > 1]
        for _, row in rows.iterrows():
            # an empty value (the compared factor's column in a `factor` comparison's rows) adds nothing
            key = "".join(camel(str(row[c])) for c in cols if str(row[c]) != "")
            key += f"{camel(str(row['policy_a']))}Vs{camel(str(row['policy_b']))}"
            if site == "weight":
                key = "Weight" + key
            if key in seen:
                continue
            seen.add(key)
            for field, column in ROW_FIELDS.items():
                digits = 0 if field == "Pairs" else 2
                out.append(_macro(prefix, f"Row{key}{field}", tex_num(row[column], digits)))
            out.append(_macro(prefix, f"Row{key}Abs", tex_num(abs(float(row["mean_diff"])))))  # "by X pp"
            out.append(_macro(prefix, f"Row{key}Verdict", str(row["verdict"])))
    return out


INTERACTION_FIELDS = {
    "": "interaction",
    "Lo": "ci_low",
    "Hi": "ci_high",
    "Additive": "additive_prediction",
    "AllSte": "all_ste_loss",
    "CostRestExact": "readout_cost_rest_exact",
    "CostRestSte": "readout_cost_rest_ste",
}


def interaction_macros(prefix: str, study_dir: Path) -> list[str]:
    """`\\<Study>Interaction<Conditions><Field>` per row of stats/interaction.csv (the signal policy's
    readout x rest interaction contrast, `study.analysis.stats.interaction`), conditions in CamelCase."""
    path = Path(study_dir) / "stats" / "interaction.csv"
    if not path.exists():
        return []
    table = read_csv(path, REDO_STATS, dtype=str, keep_default_na=False)
    fields = set(INTERACTION_FIELDS.values()) | {"n_seeds", "p_ttest"}
    cols = [c for c in table.columns if c not in fields and table[c].nunique() > 1]
    out = []
    for _, row in table.iterrows():
        key = "".join(camel(str(row[c])) for c in cols)
        for field, column in INTERACTION_FIELDS.items():
            out.append(_macro(prefix, f"Interaction{key}{field}", tex_num(row[column])))
    return out


def _thousands(n: Any) -> str:
    return f"{int(n):,}" if n is not None and math.isfinite(float(n)) else "--"


def _joined(values: list[str]) -> str:
    return values[0] if len(values) == 1 else ", ".join(values[:-1]) + " and " + values[-1]


def _lr_text(lr: float) -> str:
    """`\\ensuremath{10^{-3}}` for a power of ten, else the number."""
    exponent = math.log10(lr) if lr > 0 else math.nan
    if math.isfinite(exponent) and abs(exponent - round(exponent)) < 1e-9:
        return rf"\ensuremath{{10^{{{int(round(exponent))}}}}}"
    return f"{lr:g}"


def setup_macros(prefix: str, spec: dict[str, Any], runs: pd.DataFrame, study_dir: Path) -> list[str]:
    """The study's setup as the paper states it, from the spec (every cell's resolved `TrialConfig`),
    runs.csv, stats/duplicates.csv and run_summary.json: data sets and split sizes, steps per epoch,
    network, optimizer, learning rate, batch, epochs, seeds, trials and distinct runs, wall time.

    Per data set `\\<Study>TrainSize<Dataset>`, `...StepsPerEpoch<Dataset>`, `...Architecture<Dataset>`;
    the unsuffixed macros join every data set's value (`3,500 (\\texttt{mnist5k}) and ...`)."""
    factors, base = spec.get("factors") or {}, spec.get("base") or {}

    def values(field: str) -> list[Any]:
        """The field's values over the study: its factor levels, else the base value, else the default."""
        if field in factors:
            raw = list(factors[field])
        else:
            raw = [base[field] if field in base else TrialConfig.model_fields[field].default]
        return list(dict.fromkeys(tuple(v) if isinstance(v, list) else v for v in raw))

    out = []
    datasets = values("dataset")
    per: dict[str, dict[str, str]] = {"TrainSize": {}, "StepsPerEpoch": {}, "Architecture": {}}
    for name in datasets:
        sizes = split_sizes(name, values("n_samples")[0], values("data_dir")[0]) if name in FEATURES else None
        train = sizes[0] if sizes else None
        steps = [math.ceil(train / b) for b in values("batch_size")] if train else []
        hidden = _joined(["-".join(str(h) for h in v) for v in values("hidden")])
        arch = f"{FEATURES[name]}-{hidden}-10" if name in FEATURES else f"?-{hidden}-10"
        per["TrainSize"][name] = _thousands(train)
        per["StepsPerEpoch"][name] = ", ".join(str(x) for x in steps) or "--"
        per["Architecture"][name] = arch
        for key, table in per.items():
            out.append(_macro(prefix, f"{key}{camel(name)}", table[name]))
    for key, table in per.items():
        text = (
            next(iter(table.values()))
            if len(set(table.values())) == 1
            else _joined([rf"{v} (\texttt{{{latex_escape(k)}}})" for k, v in table.items()])
        )
        out.append(_macro(prefix, key, text))
    out.append(_macro(prefix, "Datasets", _joined([rf"\texttt{{{latex_escape(d)}}}" for d in datasets])))
    out.append(_macro(prefix, "DatasetCount", len(datasets)))
    optimizers = [
        "Adam" if o == "adam" else "SGD" + "".join(f" (momentum {m:g})" for m in values("momentum") if m)
        for o in values("optimizer")
    ]
    if "cosine" in values("schedule"):
        optimizers = [f"{o}, cosine schedule" for o in optimizers]
    epochs_run = pd.to_numeric(runs.get("epochs_run", pd.Series(dtype=float)), errors="coerce").dropna()
    seeds = spec.get("seeds", 1)
    seeds = seeds if isinstance(seeds, list) else list(range(int(seeds)))
    out += [
        _macro(prefix, "Optimizer", _joined(list(dict.fromkeys(optimizers)))),
        _macro(prefix, "Lr", _joined([_lr_text(v) for v in values("lr")])),
        _macro(prefix, "Batch", _joined([str(v) for v in values("batch_size")])),
        _macro(prefix, "Epochs", _joined([str(v) for v in values("epochs")])),
        _macro(
            prefix,
            "EpochsRun",
            "--"
            if epochs_run.empty
            else f"{int(epochs_run.min())}"
            if epochs_run.min() == epochs_run.max()
            else f"{int(epochs_run.min())}--{int(epochs_run.max())}",
        ),
        _macro(prefix, "Hidden", _joined(["-".join(str(h) for h in v) for v in values("hidden")])),
        _macro(prefix, "Seeds", len(seeds)),
        _macro(prefix, "Cells", len(cells(StudySpec.model_validate(spec)))),
    ]
    dup_path = study_dir / "stats" / "duplicates.csv"
    duplicates = read_csv(dup_path, REDO_STATS) if dup_path.exists() else pd.DataFrame()
    repeated = int(pd.to_numeric(duplicates.get("n_seeds", pd.Series(dtype=float))).sum())
    out += [
        _macro(prefix, "TrialsDistinct", _thousands(len(runs) - repeated)),
        _macro(prefix, "TrialsRepeated", _thousands(repeated)),
        _macro(prefix, "TrialsText", _thousands(len(runs))),
    ]
    summary_path = study_dir / "run_summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    wall = summary.get("wall_time_s_all_runs")
    seconds = pd.to_numeric(runs.get("wall_time_s", pd.Series(dtype=float)), errors="coerce").dropna()
    out += [
        _macro(prefix, "WallMinutes", tex_num(wall / 60, 0) if wall is not None else "--"),
        _macro(prefix, "Workers", summary.get("workers", "--")),
        _macro(prefix, "BundleSize", summary.get("bundle", "--")),
        _macro(prefix, "TrialSeconds", tex_num(seconds.median(), 1) if len(seconds) else "--"),
    ]
    if set(DRAW_METRICS) <= set(runs.columns):  # the final evaluation over noise draws (newer studies)
        out.append(_macro(prefix, "TestDraws", _joined([str(v) for v in values("test_draws")])))
    return out


def registration_macros(prefix: str, study_dir: Path) -> list[str]:
    """Deviations from the first registered version, from the run's logs: `...HypothesesChanges` and
    `...SpecChanges` (counts), `...Deviations` (each change with its date, and for the hypotheses its
    reason; `none logged` when there is none), and `...RegisteredCommit` (preregistration.json)."""
    hyp_log = read_jsonl(study_dir / HYPOTHESES_LOG)
    spec_log = read_jsonl(study_dir / SPEC_LOG)
    items = [
        f"{str(e.get('time', ''))[:10]}: hypotheses changed ({latex_escape(e.get('reason', ''))})"
        for e in hyp_log
    ]
    items += [
        f"{str(e.get('time', ''))[:10]}: spec changed "
        f"({latex_escape(', '.join(e.get('changed', [])) or 'no key')})"
        for e in spec_log
        if "hypotheses" not in (e.get("changed") or [])
    ]
    reg_path = study_dir / "preregistration.json"
    reg = json.loads(reg_path.read_text()) if reg_path.exists() else {}
    commit = str(reg.get("git_commit", ""))[:10] or "not recorded"
    return [
        _macro(prefix, "HypothesesChanges", len(hyp_log)),
        _macro(prefix, "SpecChanges", len(spec_log)),
        _macro(prefix, "Deviations", "; ".join(items) if items else "none logged"),
        _macro(prefix, "RegisteredCommit", latex_escape(commit)),
    ]


def _pct(x: Any, digits: int = 2) -> str:
    """A fraction as a percentage number for the paper (`--` for NaN)."""
    return tex_num(100 * float(x), digits) if x is not None and math.isfinite(float(x)) else "--"


def _saturation_tables(study_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame] | None:
    stats = Path(study_dir) / "stats"
    if not (stats / "saturation_model.csv").exists():
        return None
    names = ("saturation_regimes.csv", "saturation_model.csv", "saturation_onset.csv")
    regimes, model, onset = (read_csv(stats / n, REDO_STATS) for n in names)
    return regimes, model, onset


def saturation_macros(prefix: str, study_dir: Path) -> list[str]:
    """The weight-saturation covariate analysis (`stats.covariate`), for studies where it was fitted:
    per regime (`\\<Study>Sat<Regime>{Mean,Max,Diff,Abs,Sd,Lo,Hi,Verdict}`, saturation in %; Abs =
    |Diff|), the slopes per 10% saturated (`SatSlope*` signed, `SatAbsSlope*` absolute) and the onset
    (`SatOnset*`, in %)."""
    tables = _saturation_tables(study_dir)
    if tables is None:
        return []
    regimes, model, onset = tables
    out = [_macro(prefix, "SatRegimes", regimes["regime"].nunique())]
    for _, r in regimes.iterrows():
        key = f"Sat{camel(str(r['regime']))}"
        out += [
            _macro(prefix, f"{key}Mean", _pct(r["saturation_mean"])),
            _macro(prefix, f"{key}Max", _pct(r["saturation_max"])),
            _macro(prefix, f"{key}Diff", tex_num(r["diff_mean"])),
            _macro(prefix, f"{key}Sd", tex_num(r["sd_diff"])),
            _macro(prefix, f"{key}Abs", tex_num(abs(float(r["diff_mean"])))),
            _macro(prefix, f"{key}Lo", tex_num(r["ci_low"])),
            _macro(prefix, f"{key}Hi", tex_num(r["ci_high"])),
            _macro(prefix, f"{key}Verdict", str(r["verdict"])),
        ]
    for response, name in (("diff", "SatSlope"), ("abs_diff", "SatAbsSlope")):
        rows = model[(model["response"] == response) & (model["term"] == "saturation")]
        if rows.empty:
            continue
        r = rows.iloc[0]
        out += [
            _macro(prefix, name, tex_num(r["coef"] / 10)),
            _macro(prefix, f"{name}Lo", tex_num(r["ci_low"] / 10)),
            _macro(prefix, f"{name}Hi", tex_num(r["ci_high"] / 10)),
            _macro(prefix, f"{name}P", tex_p(r["p"])),
        ]
    out.append(_macro(prefix, "SatPairs", int(model["pairs"].max()) if len(model) else 0))
    if len(onset):
        r = onset.iloc[0]
        out += [
            _macro(prefix, "SatOnsetMargin", tex_num(r["margin"], 1)),
            _macro(prefix, "SatOnset", _pct(r["saturation_at_margin"])),
            _macro(prefix, "SatOnsetLo", _pct(r["ci_low"])),
            _macro(prefix, "SatOnsetHi", _pct(r["ci_high"])),
            _macro(prefix, "SatOnsetBounded", str(r["bounded"])),
        ]
    return out


def saturation_tex(study_dir: Path, unit: str) -> str | None:
    """Booktabs tabular: per regime, pairs, the saturated share of weights (mean and range, %), the mean
    paired difference with its 95% CI and the verdict; None where no covariate analysis was fitted."""
    tables = _saturation_tables(study_dir)
    if tables is None:
        return None
    regimes = tables[0]
    lines = [
        "% Generated by the normgrad statistics stage; do not edit.",
        r"\begin{tabular}{lrrrrl}",
        r"\toprule",
        rf"Regime & Pairs & Saturated (\%) & Range (\%) & Mean diff.\ ({unit}) [95\% CI] & Verdict \\",
        r"\midrule",
    ]
    for _, r in regimes.iterrows():
        diff = f"{tex_num(r['diff_mean'])} [{tex_num(r['ci_low'])}, {tex_num(r['ci_high'])}]"
        span = span_text(_pct(r["saturation_min"]), _pct(r["saturation_max"]), "--")
        cells = [latex_escape(str(r["regime"])), str(int(r["pairs"])), _pct(r["saturation_mean"]), span]
        lines.append(" & ".join([*cells, diff, str(r["verdict"])]) + r" \\")
    return "\n".join(lines + [r"\bottomrule", r"\end{tabular}"]) + "\n"


def term_key(term: str) -> str:
    """A model term as macro letters: `C(norm)[T.l2norm]` -> `NormLTwoNorm`, `leak_high` -> `LeakHigh`,
    interactions joined by `X`: `C(arch)[T.mlp]:C(norm)[T.l2norm]` -> `ArchMlpXNormLTwoNorm`."""
    parts = []
    for piece in term.split(":"):
        m = re.fullmatch(r"C\((\w+)\)\[T\.(.+)\]", piece)
        parts.append(camel(m.group(1)) + camel(m.group(2)) if m else camel(piece))
    return "X".join(parts)


def _effect_key(hyp: Hypotheses, label: str) -> str:
    """A comparison of the effect model in macro names: its site (`Weight`), and for a `factor`
    comparison the factor too (`WeightWeightBound`), so that it does not clash with the site's policy
    comparison."""
    site = label.split(":", 1)[0]
    factor = next((c.factor for c in hyp.comparisons if c.label == label), None)
    return camel(site) + (camel(factor) if factor else "")


def effects_macros(prefix: str, study_dir: Path, hyp: Hypotheses) -> list[str]:
    """The effect model per comparison site: marginal means per factor and level,
    `\\<Study>Emm<Site><Factor><Level>{,Lo,Hi}` (factor and level `all`: over every condition), and every
    coefficient, `\\<Study>Coef<Site><Term>{,Lo,Hi,P}` (`term_key`). Nothing without a model."""
    path = Path(study_dir) / "stats" / "effects_marginal.csv"
    if hyp.effect_model is None or not path.exists():
        return []
    marg = read_csv(path, REDO_STATS)
    out = []
    model_txt = Path(study_dir) / "stats" / "effects_model.txt"
    if model_txt.exists():  # per site: the residual SD of the condition means (the model's tau, pp)
        for block in re.split(r"^(?=comparison: )", model_txt.read_text(), flags=re.M):
            fit = re.match(
                r"comparison: (.+?): diff ~.*?residual SD of condition means: ([-\d.e+]+)", block, re.S
            )
            if fit is not None:
                site = _effect_key(hyp, fit.group(1))
                out.append(_macro(prefix, f"EffResidualSd{site}", tex_num(float(fit.group(2)), 1)))
    terms_path = Path(study_dir) / "stats" / "effects_terms.csv"
    if terms_path.exists():
        for _, r in read_csv(terms_path, REDO_STATS).iterrows():
            key = f"Coef{_effect_key(hyp, str(r['comparison']))}{term_key(str(r['term']))}"
            out += [
                _macro(prefix, key, tex_num(r["coef"])),
                _macro(prefix, f"{key}Lo", tex_num(r["ci_low"])),
                _macro(prefix, f"{key}Hi", tex_num(r["ci_high"])),
                _macro(prefix, f"{key}P", tex_p(r["p"])),
            ]
    for _, r in marg.iterrows():
        site = _effect_key(hyp, str(r["comparison"]))
        key = f"Emm{site}{camel(str(r['factor']))}{camel(str(r['level']))}"
        out += [
            _macro(prefix, key, tex_num(r["emm"])),
            _macro(prefix, f"{key}Lo", tex_num(r["ci_low"])),
            _macro(prefix, f"{key}Hi", tex_num(r["ci_high"])),
        ]
    return out


def screen_macros(prefix: str, study_dir: Path) -> list[str]:
    """The trainability screen: `\\<Study>ScreenConditions`, `...ScreenPassed`, `...ScreenOut`,
    `...ScreenThreshold`, and the sensitivity analysis's verdict counts per site over every condition,
    `\\<Study>All<Site><Verdict>` (stats_all/). Nothing for a study without a screen."""
    path = Path(study_dir) / SCREEN_TABLE
    if not path.exists():
        return []
    screen = read_csv(path, REDO_COLLECT, keep_default_na=False)
    passed = int(screen["passed"].map(lambda v: parse_bool(v) is True).sum())
    out = [
        _macro(prefix, "ScreenConditions", len(screen)),
        _macro(prefix, "ScreenPassed", passed),
        _macro(prefix, "ScreenOut", len(screen) - passed),
        _macro(
            prefix, "ScreenThreshold", tex_num(float(screen["threshold"].iloc[0]), 0) if len(screen) else "--"
        ),
    ]
    all_comp = Path(study_dir) / ALL_STATS / "comparisons.csv"
    if all_comp.exists():
        comp = read_csv(all_comp, REDO_STATS, keep_default_na=False)
        for site in ("weight", "signal"):
            rows = distinct(comp[comp["site"] == site]) if len(comp) else comp
            counts = rows["verdict"].value_counts() if len(rows) else pd.Series(dtype=int)
            out += [_macro(prefix, f"All{camel(site)}{camel(v)}", int(counts.get(v, 0))) for v in VERDICTS]
    return out


def lr_choice_macros(prefix: str, study_dir: Path) -> list[str]:
    """tune_lr: each cell's chosen learning rate, `\\<Study>TunedLr<cell values>` (e.g. `...TunedLrExact`
    for a cell whose only factor is weight_policy=exact)."""
    choice = read_csv(Path(study_dir) / "lr_choice.csv", REDO_STATS)
    cells = [c for c in choice.columns if c not in ("lr", "chosen") and not c.startswith("mean_")]
    chosen = choice[choice["chosen"].astype(str).str.lower() == "true"]
    return [
        _macro(prefix, "TunedLr" + "".join(camel(str(r[c])) for c in cells), f"{float(r['lr']):g}")
        for _, r in chosen.iterrows()
    ]


def sensitivity_macros(prefix: str, sens: pd.DataFrame) -> list[str]:
    """The planted-effect check (stats/sensitivity.csv) per site: rows used, and for the planted effects
    of one and two margins (both signs together) how many row-tests detected them; at zero, how many
    rows were wrongly called different and how many equivalent."""
    out = []
    for site in ("weight", "signal"):
        s = camel(site)
        rows = sens[sens["site"] == site] if len(sens) else sens
        n = int(rows["rows"].max()) if len(rows) else 0

        def count(multiples: tuple[int, ...], column: str = "detected", rows: pd.DataFrame = rows) -> int:
            sel = rows[rows["multiple"].isin(multiples)] if len(rows) else rows
            return int(pd.to_numeric(sel[column], errors="coerce").fillna(0).sum()) if len(sel) else 0

        out += [
            _macro(prefix, f"{s}PlantedRows", n),
            _macro(prefix, f"{s}PlantedOneDetected", count((-1, 1))),
            _macro(prefix, f"{s}PlantedOneTests", 2 * n),
            _macro(prefix, f"{s}PlantedTwoDetected", count((-2, 2))),
            _macro(prefix, f"{s}PlantedTwoTests", 2 * n),
            _macro(prefix, f"{s}PlantedNullFalse", count((0,))),
            _macro(prefix, f"{s}PlantedNullEquivalent", count((0,), "equivalent")),
        ]
    return out


def sensitivity_tex(sens: pd.DataFrame, unit: str) -> str:
    """Booktabs tabular of the planted-effect check: one line per comparison and planted shift."""
    lines = [
        "% Generated by the normgrad statistics stage; do not edit.",
        r"\begin{tabular}{lrrrrrr}",
        r"\toprule",
        rf"Comparison & Planted $\Delta$ ({unit}) & Rows & Detected & Rate & Equivalent & Inconclusive \\",
        r"\midrule",
    ]
    previous = None
    for _, r in sens.iterrows():
        if previous is not None and r["comparison"] != previous:
            lines.append(r"\midrule")
        previous = r["comparison"]
        rate = r["detection_rate"]
        lines.append(
            " & ".join(
                [
                    latex_escape(r["comparison"]),
                    tex_num(r["shift"], 2) if r["shift"] <= 0 else f"+{tex_num(r['shift'], 2)}",
                    str(int(r["rows"])),
                    str(int(r["detected"])) if int(r["rows"]) else "--",
                    tex_num(rate, 2) if pd.notna(rate) else "--",
                    str(int(r["equivalent"])) if pd.notna(r["equivalent"]) else "--",
                    str(int(r["inconclusive"])) if pd.notna(r["inconclusive"]) else "--",
                ]
            )
            + r" \\"
        )
    return "\n".join(lines + [r"\bottomrule", r"\end{tabular}"]) + "\n"


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
    """The positive control over its informative rows: a row whose other site is `zero` compares two
    untrained networks (zero vs zero), not a control; it is counted apart (`...ControlZeroRows`)."""
    rows = comp[(comp["site"] == site) & (comp["role"] == "positive_control")] if len(comp) else comp
    excluded = len(distinct(rows)) - len(distinct(other_site_informative(rows, site))) if len(rows) else 0
    rows = distinct(other_site_informative(rows, site)) if len(rows) else rows
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
        _macro(prefix, f"{s}ControlZeroRows", excluded),
    ]


def comparisons_tex(comp: pd.DataFrame, spec: dict[str, Any], site: str) -> str:
    """Booktabs tabular (no float) of one site's comparison rows."""
    rows = comp[comp["site"] == site] if len(comp) else comp
    cols = row_columns(rows, spec, site) if len(rows) else [SITE_COLUMN[OTHER_SITE[site]]]
    merged = bool(len(rows)) and (rows["same_data_as"].astype(str) != "").any()
    header = [
        "Comparison",
        *[latex_escape(factor_label(c)) for c in cols],
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
    lines += setup_macros(prefix, spec, runs, study_dir) + registration_macros(prefix, study_dir)
    sens = read_stats_csv(study_dir, "sensitivity.csv", spec)
    lines += sensitivity_macros(prefix, sens)
    lines += row_macros(prefix, comp, spec) + saturation_macros(prefix, study_dir)
    lines += effects_macros(prefix, study_dir, hyp) + screen_macros(prefix, study_dir)
    lines += interaction_macros(prefix, study_dir)
    tuned = Path(study_dir) / TUNED_STATS / "comparisons.csv"
    if tuned.exists():  # the same rows at each policy's own lr: \\<Study>TunedRow...
        lines += row_macros(
            f"{prefix}Tuned", read_stats_csv(study_dir, "comparisons.csv", spec, TUNED_STATS), spec
        )
        lines += lr_choice_macros(prefix, study_dir)
    write_text_atomic(out / "macros.tex", head + "\n".join(lines) + "\n")
    unit = "pp" if is_percent(hyp.metric) else "units"
    saturation = saturation_tex(study_dir, unit)
    if saturation is not None:
        write_text_atomic(out / "saturation.tex", saturation)
    write_text_atomic(out / "sensitivity.tex", sensitivity_tex(sens, unit))
    for site in ("weight", "signal"):
        write_text_atomic(out / f"comparisons_{site}.tex", comparisons_tex(comp, spec, site))
    return out
