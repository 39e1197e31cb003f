"""Fit the advisor's rule on the units that are not held out and validate it on those that are.

Writes ``results/advisor/``: ``spec.yaml`` (the pre-registration as fitted), ``preregistration.json``
(its git commit), ``units.csv`` (every unit with its probability and advice), ``rule.json`` (what
``analog.Rule.load`` reads), ``stats/validation.csv``, ``stats/calibration.csv``, ``stats/failures.csv``,
``stats/latex/macros.tex`` and ``validation.tex``, ``figures/advisor.{pdf,png}`` with ``index.md``, and
``report.md``. Everything is computed from ``results/<source>/`` alone.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analog.advise import ADVICE, DISAGREEMENT_FLOOR, Rule
from study.advisor.spec import ADVISOR_SPEC, AdvisorSpec, load_advisor_spec
from study.advisor.units import build_units
from study.analysis.report.latex import latex_escape, tex_num
from study.tables import format_number, tidy_number, write_table, write_text_atomic

CALIBRATION_BINS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
FITTED, HELD_OUT = "#3b6ea8", "#c0392b"  # figure: units in the fit (open circles) and held out (crosses)
FORMULA = "positive ~ log_disagreement + signal_site"


def design(units: pd.DataFrame) -> pd.DataFrame:
    """The model's columns: log10 disagreement (floored) and the signal-site indicator."""
    return pd.DataFrame(
        {
            "positive": units["positive"].astype(float),
            "log_disagreement": np.log10(np.maximum(units["disagreement"].astype(float), DISAGREEMENT_FLOOR)),
            "signal_site": (units["site"] == "signal").astype(float),
        },
        index=units.index,
    )


def fit_rule(fit_units: pd.DataFrame, spec: AdvisorSpec) -> tuple[Rule, dict[str, Any]]:
    """Binomial GLM (statsmodels) of `positive` on log disagreement and site; (rule, fit summary)."""
    import statsmodels.api as sm
    import statsmodels.formula.api as smf
    from statsmodels.tools.sm_exceptions import PerfectSeparationWarning

    data = design(fit_units)
    if data["positive"].nunique() < 2:
        raise ValueError(
            f"advisor: every fitting unit is {'positive' if data['positive'].any() else 'negative'}; "
            "no rule can be fitted"
        )
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PerfectSeparationWarning)
        result = smf.glm(FORMULA, data, family=sm.families.Binomial()).fit()
    separated = any(issubclass(w.category, PerfectSeparationWarning) for w in caught)
    # a site whose fitting units all share one outcome: its term is not a finite estimate (quasi-separation)
    one_outcome = {
        site: bool(grp["positive"].iloc[0])
        for site, grp in fit_units.assign(positive=data["positive"]).groupby("site")
        if grp["positive"].nunique() == 1
    }
    params, ci = result.params, result.conf_int()
    rule = Rule(
        intercept=float(params["Intercept"]),
        slope=float(params["log_disagreement"]),
        signal=float(params["signal_site"]),
        delta=spec.delta,
        band=spec.band,
        fitted_on=len(fit_units),
        probe_epoch=spec.probe_epoch,
    )
    summary = {
        "formula": FORMULA,
        "n": len(fit_units),
        "positives": int(data["positive"].sum()),
        "perfect_separation": separated,
        "one_outcome_sites": one_outcome,
        "coefficients": {
            name: {
                "estimate": float(params[name]),
                "ci_low": float(ci.loc[name, 0]),
                "ci_high": float(ci.loc[name, 1]),
            }
            for name in params.index
        },
    }
    return rule, summary


def apply_rule(units: pd.DataFrame, rule: Rule) -> pd.DataFrame:
    """`units` with the rule's probability, advice and whether the advice is right (None: uncertain)."""
    out = units.copy()
    out["probability"] = [
        rule.probability(d, s) for d, s in zip(out["disagreement"], out["site"], strict=True)
    ]
    out["advice"] = [rule.advice(p) for p in out["probability"]]
    out["correct"] = [
        None if a == ADVICE[2] else (a == ADVICE[0]) == bool(pos)
        for a, pos in zip(out["advice"], out["positive"], strict=True)
    ]
    return out


def wilson(k: int, n: int) -> tuple[float, float]:
    """95% Wilson interval of k/n (statsmodels); nan when n is 0."""
    from statsmodels.stats.proportion import proportion_confint

    if n == 0:
        return float("nan"), float("nan")
    lo, hi = proportion_confint(k, n, alpha=0.05, method="wilson")
    return float(lo), float(hi)


def validation_row(group: str, rows: pd.DataFrame) -> dict[str, Any]:
    """The pre-registered evaluation on `rows`: decided accuracy (Wilson CI), share decided, Brier score,
    and the baseline 'always use the true derivative' (its accuracy is the share of positive units)."""
    decided = rows[rows["correct"].notna()]
    k, n = int(decided["correct"].astype(bool).sum()), len(decided)
    lo, hi = wilson(k, n)
    p = rows["probability"].astype(float)
    ok = p.notna()
    base_k = int(rows["positive"].astype(bool).sum())
    base_lo, base_hi = wilson(base_k, len(rows))
    return {
        "group": group,
        "units": len(rows),
        "positives": base_k,
        "decided": n,
        "decided_share": n / len(rows) if len(rows) else float("nan"),
        "correct": k,
        "accuracy": k / n if n else float("nan"),
        "accuracy_ci_low": lo,
        "accuracy_ci_high": hi,
        "brier": float(((p[ok] - rows.loc[ok, "positive"].astype(float)) ** 2).mean())
        if ok.any()
        else float("nan"),
        "baseline_accuracy": base_k / len(rows) if len(rows) else float("nan"),
        "baseline_ci_low": base_lo,
        "baseline_ci_high": base_hi,
    }


def validation_table(scored: pd.DataFrame, spec: AdvisorSpec) -> pd.DataFrame:
    """Rows: fitting units (in-sample), all held-out units, each held-out entry, and each site held out."""
    held = scored[scored["held_out"]]
    rows = [
        validation_row("fitted (in-sample)", scored[~scored["held_out"]]),
        validation_row("held out", held),
    ]
    for key, values in spec.held_out.items():
        for v in values:
            fields = ("weight_norm", "signal_norm") if key == "norm" else (key,)
            mask = np.zeros(len(held), dtype=bool)
            for f in fields:
                mask |= (held[f] == str(v)).to_numpy()
            rows.append(validation_row(f"held out: {key} {v}", held[mask]))
    for site in ("weight", "signal"):
        rows.append(validation_row(f"held out: {site} site", held[held["site"] == site]))
    return pd.DataFrame(rows)


def calibration_table(scored: pd.DataFrame) -> pd.DataFrame:
    """Held-out units by predicted-probability bin: mean probability vs observed share positive."""
    held = scored[scored["held_out"] & scored["probability"].notna()]
    edges = CALIBRATION_BINS
    labels = [
        f"[{lo:.1f}, {hi:.1f}{']' if hi == edges[-1] else ')'}"
        for lo, hi in zip(edges, edges[1:], strict=False)
    ]
    index = np.clip(
        np.searchsorted(edges, held["probability"].to_numpy(), side="right") - 1, 0, len(labels) - 1
    )
    rows = []
    for i, label in enumerate(labels):
        grp = held[index == i]
        rows.append(
            {
                "bin": label,
                "units": len(grp),
                "mean_probability": float(grp["probability"].mean()) if len(grp) else float("nan"),
                "observed_positive": float(grp["positive"].astype(float).mean())
                if len(grp)
                else float("nan"),
            }
        )
    return pd.DataFrame(rows)


def _pct(x: float) -> str:
    return "--" if not math.isfinite(x) else f"{100 * x:.0f}"


def macros(val: pd.DataFrame, summary: dict[str, Any], rule: Rule, useful: bool) -> str:
    held = val.set_index("group").loc["held out"]
    fitted = val.set_index("group").loc["fitted (in-sample)"]
    coef = summary["coefficients"]
    lines = [
        "% written by `python -m study advisor`; do not edit",
        rf"\newcommand{{\AdvisorDelta}}{{{format_number(rule.delta)}}}",
        rf"\newcommand{{\AdvisorBand}}{{{format_number(rule.band)}}}",
        rf"\newcommand{{\AdvisorFitUnits}}{{{int(fitted['units'])}}}",
        rf"\newcommand{{\AdvisorFitPositives}}{{{int(fitted['positives'])}}}",
        rf"\newcommand{{\AdvisorFitAcc}}{{{_pct(fitted['accuracy'])}}}",
        rf"\newcommand{{\AdvisorHeldUnits}}{{{int(held['units'])}}}",
        rf"\newcommand{{\AdvisorHeldPositives}}{{{int(held['positives'])}}}",
        rf"\newcommand{{\AdvisorHeldDecided}}{{{int(held['decided'])}}}",
        rf"\newcommand{{\AdvisorHeldAcc}}{{{_pct(held['accuracy'])}}}",
        rf"\newcommand{{\AdvisorHeldAccLo}}{{{_pct(held['accuracy_ci_low'])}}}",
        rf"\newcommand{{\AdvisorHeldAccHi}}{{{_pct(held['accuracy_ci_high'])}}}",
        rf"\newcommand{{\AdvisorHeldBrier}}{{{tex_num(tidy_number(held['brier']), 3)}}}",
        rf"\newcommand{{\AdvisorBaseAcc}}{{{_pct(held['baseline_accuracy'])}}}",
        rf"\newcommand{{\AdvisorUseful}}{{{'yes' if useful else 'no'}}}",
        rf"\newcommand{{\AdvisorSlope}}{{{tex_num(tidy_number(coef['log_disagreement']['estimate']), 2)}}}",
        rf"\newcommand{{\AdvisorSlopeLo}}{{{tex_num(tidy_number(coef['log_disagreement']['ci_low']), 2)}}}",
        rf"\newcommand{{\AdvisorSlopeHi}}{{{tex_num(tidy_number(coef['log_disagreement']['ci_high']), 2)}}}",
        rf"\newcommand{{\AdvisorSignal}}{{{tex_num(tidy_number(coef['signal_site']['estimate']), 2)}}}",
        rf"\newcommand{{\AdvisorSeparated}}{{{'yes' if summary['perfect_separation'] else 'no'}}}",
        rf"\newcommand{{\AdvisorOneOutcomeSites}}{{{', '.join(summary['one_outcome_sites']) or 'none'}}}",
    ]
    return "\n".join(lines) + "\n"


def _accuracy_text(r: pd.Series, percent: str) -> str:
    """`66% [56, 74]` for a validation row (`percent`: how the table writes %), `--` when none decided."""
    if not r["decided"]:
        return "--"
    return f"{_pct(r['accuracy'])}{percent} [{_pct(r['accuracy_ci_low'])}, {_pct(r['accuracy_ci_high'])}]"


def validation_tex(val: pd.DataFrame) -> str:
    """The paper's validation table (booktabs rows)."""
    lines = [
        r"\begin{tabular}{lrrrrr}",
        r"\toprule",
        r"units & $n$ & positive & decided & accuracy [95\% CI] & always exact \\",
        r"\midrule",
    ]
    for _, r in val.iterrows():
        acc = _accuracy_text(r, "\\,\\%")
        lines.append(
            f"{latex_escape(r['group'])} & {int(r['units'])} & {int(r['positives'])} & {int(r['decided'])} & "
            f"{acc} & "
            f"{_pct(r['baseline_accuracy'])}\\,\\% \\\\"
        )
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def report(
    val: pd.DataFrame,
    cal: pd.DataFrame,
    failures: pd.DataFrame,
    summary: dict[str, Any],
    rule: Rule,
    useful: bool,
    spec: AdvisorSpec,
) -> str:
    coef = summary["coefficients"]
    held = val.set_index("group").loc["held out"]
    lines = [
        "# Advisor: can the straight-through gradient be used here?",
        "",
        f"Rule (`{summary['formula']}`, binomial GLM, fitted on {summary['n']} units of which "
        f"{summary['positives']} positive: exact ends more than {format_number(rule.delta)} pp above ste):",
        "",
        "| term | estimate | 95% CI |",
        "| --- | --- | --- |",
    ]
    for name, c in coef.items():
        lines.append(
            f"| {name} | {format_number(c['estimate'])} | [{format_number(c['ci_low'])}, "
            f"{format_number(c['ci_high'])}] |"
        )
    for site, positive in summary["one_outcome_sites"].items():
        lines += [
            "",
            f"Every fitting unit at the {site} site is {'positive' if positive else 'negative'}: the site "
            "term is not a finite estimate (quasi-separation; its CI is meaningless), and there the rule "
            f"says '{ADVICE[0] if positive else ADVICE[1]}' whatever the disagreement.",
        ]
    if summary["perfect_separation"]:
        lines += [
            "",
            "The fitting units are perfectly separated: the coefficients and their CIs are not finite "
            "estimates; the rule is a threshold.",
        ]
    lines += [
        "",
        f"Advice: 'use the true derivative' when p >= {format_number(0.5 + rule.band)}, "
        f"'straight-through is safe' when p <= {format_number(0.5 - rule.band)}, 'uncertain' between.",
        "",
        "## Validation (held-out units never entered the fit; pre-registered in study/advisor/advisor.yaml)",
        "",
        "| units | n | positive | decided | accuracy [95% CI] | Brier | always exact |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for _, r in val.iterrows():
        acc = _accuracy_text(r, "%")
        lines.append(
            f"| {r['group']} | {int(r['units'])} | {int(r['positives'])} | {int(r['decided'])} | {acc} | "
            f"{format_number(r['brier'])} | {_pct(r['baseline_accuracy'])}% |"
        )
    lines += [
        "",
        f"Pre-registered criterion (the held-out accuracy's CI lies above the baseline's point accuracy, "
        f"{_pct(held['baseline_accuracy'])}%): **{'met' if useful else 'not met'}**.",
        "",
        "## Calibration (held-out units)",
        "",
        "| predicted p | units | mean p | observed share positive |",
        "| --- | --- | --- | --- |",
    ]
    for _, r in cal.iterrows():
        lines.append(
            f"| {r['bin']} | {int(r['units'])} | {format_number(r['mean_probability'])} | "
            f"{format_number(r['observed_positive'])} |"
        )
    lines += [
        "",
        f"## Where it fails ({len(failures)} held-out units advised wrongly; stats/failures.csv)",
        "",
    ]
    if len(failures):
        lines += [
            "| study | site | arch | dataset | norm (w/s) | exact - ste (pp) | disagreement | p | advice |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for _, r in failures.head(30).iterrows():
            lines.append(
                f"| {r['study']} | {r['site']} | {r['arch']} | {r['dataset']} | {r['weight_norm']}/"
                f"{r['signal_norm']} | {format_number(r['mean_diff'])} | "
                f"{format_number(r['disagreement'])} | "
                f"{format_number(r['probability'])} | {r['advice']} |"
            )
        if len(failures) > 30:
            lines.append(f"\n({len(failures) - 30} more in stats/failures.csv)")
    lines += ["", "Sources: " + ", ".join(f"results/{s}" for s in spec.sources) + "."]
    return "\n".join(lines) + "\n"


def figure(scored: pd.DataFrame, rule: Rule, directory: Path) -> None:
    """Outcome (exact - ste, pp) against the disagreement, fitted vs held-out, with the rule's p = 0.5
    boundary per site."""
    from study.analysis.figures.style import new_figure, save_figure, style

    with style():
        fig = new_figure(6.8, 2.8)
        axes = fig.subplots(1, 2, sharey=True)
        for ax, site in zip(axes, ("weight", "signal"), strict=True):
            rows = scored[scored["site"] == site]
            x = np.maximum(rows["disagreement"].astype(float).to_numpy(), DISAGREEMENT_FLOOR)
            y = rows["mean_diff"].astype(float).to_numpy()
            held = rows["held_out"].astype(bool).to_numpy()
            ax.scatter(
                x[~held],
                y[~held],
                marker="o",
                s=14,
                facecolors="none",
                edgecolors=FITTED,
                lw=0.8,
                label="fitted",
            )
            ax.scatter(x[held], y[held], marker="x", s=14, color=HELD_OUT, lw=0.8, label="held out")
            z = -(rule.intercept + rule.signal * (site == "signal"))
            if rule.slope != 0 and abs(z / rule.slope) < 12:
                ax.axvline(10 ** (z / rule.slope), color="0.4", lw=0.8, ls="--", label="p = 0.5")
            ax.axhline(rule.delta, color="0.6", lw=0.6, ls=":")
            ax.set_xscale("log")
            ax.set_yscale("symlog", linthresh=2)
            ax.set_title(f"{site} site")
            ax.set_xlabel("gradient disagreement after epoch 1")
        axes[0].set_ylabel("exact - ste (pp)")
        axes[1].legend(fontsize=7, loc="lower right")
    save_figure(fig, directory, "advisor")


def preregistration(spec_path: Path, record: Path, allow_uncommitted: bool) -> dict[str, Any]:
    """Written once (the first fit): the spec's sha256, the commit that last changed it and whether it
    was committed. A later fit under a changed spec is refused; an uncommitted spec too, unless
    `allow_uncommitted` (tests, development)."""
    import hashlib

    from study.sweep.runner import _git, spec_git_state

    digest = hashlib.sha256(Path(spec_path).read_bytes()).hexdigest()
    if record.exists():  # registered at the first fit: a refit anywhere must match it
        old = json.loads(record.read_text())
        if old.get("spec_sha256") != digest:
            raise ValueError(
                f"{spec_path}: differs from the pre-registration the rule was fitted under "
                f"({record}); restore it, or fit into a new --out"
            )
        return old
    state = spec_git_state(Path(spec_path))
    if not state["committed"] and not allow_uncommitted:
        raise ValueError(
            f"{spec_path}: not committed; the advisor's pre-registration must be committed before "
            "the first fit (commit it, or pass --allow-uncommitted-spec for development)"
        )
    last = _git(["log", "-1", "--format=%H", "--", Path(spec_path).name], Path(spec_path).resolve().parent)
    entry = {
        "spec_sha256": digest,
        "spec_commit": (last or "").strip() or "uncommitted",
        "committed": state["committed"],
    }
    write_text_atomic(record, json.dumps(entry, indent=1, sort_keys=True) + "\n")
    return entry


def fit_advisor(
    results: Path = Path("results"),
    spec_path: Path = ADVISOR_SPEC,
    out: Path | None = None,
    allow_uncommitted_spec: bool = False,
) -> Path:
    """Fit, validate and write ``results/advisor/`` (or `out`)."""
    spec = load_advisor_spec(spec_path)
    out = Path(out) if out is not None else Path(results) / spec.name
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a folder")
    if out.resolve() in {(Path(results) / s).resolve() for s in spec.sources} | {Path(results).resolve()}:
        raise ValueError(
            f"--out {out}: is the results folder or a source study's folder; the advisor writes its own"
        )
    if out.is_dir() and any(out.iterdir()) and not (out / "preregistration.json").exists():
        raise ValueError(
            f"--out {out}: a non-empty folder that is not an advisor's; give a new or an advisor folder"
        )
    units = build_units(Path(results), spec)
    usable = units[units["disagreement"].notna()]
    fit_units = usable[~usable["held_out"]]
    if usable["held_out"].sum() == 0:
        raise ValueError("advisor: no held-out unit in the sources; the validation would be empty")
    rule, summary = fit_rule(fit_units, spec)
    scored = apply_rule(units, rule)
    val = validation_table(scored, spec)
    cal = calibration_table(scored)
    held = val.set_index("group").loc["held out"]
    useful = bool(held["accuracy_ci_low"] > held["baseline_accuracy"])
    failures = scored[scored["held_out"] & (scored["correct"] == False)]  # noqa: E712 - None is not a failure
    stats = out / "stats"
    (stats / "latex").mkdir(parents=True, exist_ok=True)
    preregistration(Path(spec_path), out / "preregistration.json", allow_uncommitted_spec)
    shutil.copyfile(spec_path, out / "spec.yaml")
    write_table(scored, out / "units.csv")
    write_text_atomic(
        out / "rule.json", json.dumps({**rule.to_dict(), "fit": summary}, indent=1, sort_keys=True) + "\n"
    )
    write_table(val, stats / "validation.csv")
    write_table(cal, stats / "calibration.csv")
    write_table(failures, stats / "failures.csv")
    write_text_atomic(stats / "latex" / "macros.tex", macros(val, summary, rule, useful))
    write_text_atomic(stats / "latex" / "validation.tex", validation_tex(val))
    text = report(val, cal, failures, summary, rule, useful, spec)
    write_text_atomic(stats / "report.md", text)
    figure(scored, rule, out / "figures")
    caption = (
        "Exact minus straight-through (pp, symmetric log scale) against the gradient disagreement after "
        "one epoch, per committed condition and site; circles entered the fit, crosses were held out; "
        "dashed: the rule's p = 0.5 boundary; dotted: delta."
    )
    write_text_atomic(out / "figures" / "index.md", f"## advisor\n\n![advisor](advisor.png)\n\n{caption}\n")
    write_text_atomic(out / "report.md", text + f"\n![advisor](figures/advisor.png)\n\n{caption}\n")
    print(
        f"advisor: fitted on {summary['n']} units, held out {int(held['units'])}; accuracy "
        f"{_pct(held['accuracy'])}% [{_pct(held['accuracy_ci_low'])}, {_pct(held['accuracy_ci_high'])}] on "
        f"{int(held['decided'])} decided; always exact {_pct(held['baseline_accuracy'])}% -> {out}"
    )
    return out
