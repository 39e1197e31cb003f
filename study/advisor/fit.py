"""Fit the advisor's rule on the labelled units that are not held out and validate it on those that are.

Writes ``results/advisor/``: ``spec.yaml`` (the pre-registration as fitted), ``preregistration.json``
(its git commit), ``units.csv`` (every unit with its features, label status, probability and advice),
``rule.json`` (what ``analog.Rule.load`` reads), ``stats/validation.csv`` (the rule and every baseline on
the same units), ``stats/calibration.csv``, ``stats/failures.csv``, ``stats/latex/macros.tex`` and
``validation.tex``, ``figures/advisor.{pdf,png}`` with ``index.md``, and ``report.md``. Everything is
computed from ``results/<source>/`` alone.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analog.advise import ADVICE, DISAGREEMENT_FLOOR, SITE_ONLY, Rule
from study.advisor.spec import ADVISOR_SPEC, AdvisorSpec, load_advisor_spec
from study.advisor.units import build_units
from study.analysis.report.latex import latex_escape, tex_num
from study.tables import format_number, tidy_number, write_table, write_text_atomic

CALIBRATION_BINS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
FITTED, HELD_OUT = "#3b6ea8", "#c0392b"  # figure: units in the fit (open circles) and held out (crosses)
# a formula term -> the Rule field holding its coefficient
RULE_FIELDS = {
    "log_disagreement": "slope",
    "signal_site": "signal",
    "site_saturation": "saturation",
    "readout_saturation": "readout",
}
# the baselines: each decides every unit; right when its advice matches the label
BASELINES: dict[str, str] = {
    "always_exact": "always exact",
    "always_ste": "always ste",
    "site_only": "site-only (signals exact, weights ste)",
}
PRIMARY = "held out"
SENSITIVITY = "held out, untrainable included"


def design(units: pd.DataFrame) -> pd.DataFrame:
    """The model's columns: log10 disagreement (floored), the signal-site indicator and the saturations."""
    return pd.DataFrame(
        {
            "positive": units["positive"].astype(float),
            "log_disagreement": np.log10(np.maximum(units["disagreement"].astype(float), DISAGREEMENT_FLOOR)),
            "signal_site": (units["site"] == "signal").astype(float),
            "site_saturation": units["site_saturation"].astype(float),
            "readout_saturation": units["readout_saturation"].astype(float),
        },
        index=units.index,
    )


def fit_rule(fit_units: pd.DataFrame, spec: AdvisorSpec) -> tuple[Rule, dict[str, Any]]:
    """Binomial GLM (statsmodels) of `positive` on the spec's formula; (rule, fit summary)."""
    import warnings

    import statsmodels.api as sm
    import statsmodels.formula.api as smf
    from statsmodels.tools.sm_exceptions import PerfectSeparationWarning

    data = design(fit_units)
    if data["positive"].nunique() < 2:
        raise ValueError(
            f"advisor: every fitting unit is {'positive' if data['positive'].any() else 'negative'}; "
            "no rule can be fitted"
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PerfectSeparationWarning)
        result = smf.glm(spec.formula, data, family=sm.families.Binomial()).fit()
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
        delta=spec.delta,
        band=spec.band,
        fitted_on=len(fit_units),
        probe_epoch=spec.probe_epoch,
        **{
            field: float(params[term]) if term in params.index else 0.0 for term, field in RULE_FIELDS.items()
        },
    )
    summary = {
        "formula": spec.formula,
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
    """`units` with the rule's probability, advice and whether it is right (None: uncertain), and
    whether each baseline is right."""
    out = units.copy()
    sat = out["site_saturation"] if "site_saturation" in out else pd.Series(0.0, index=out.index)
    readout = out["readout_saturation"] if "readout_saturation" in out else pd.Series(0.0, index=out.index)
    out["probability"] = [
        rule.probability(d, s, a, r)
        for d, s, a, r in zip(out["disagreement"], out["site"], sat, readout, strict=True)
    ]
    out["advice"] = [rule.advice(p) for p in out["probability"]]
    positive = out["positive"].astype(bool)
    out["correct"] = [
        None if a == ADVICE[2] else (a == ADVICE[0]) == bool(pos)
        for a, pos in zip(out["advice"], positive, strict=True)
    ]
    out["always_exact_correct"] = positive
    out["always_ste_correct"] = ~positive
    out["site_only_correct"] = [
        (SITE_ONLY[s] == ADVICE[0]) == bool(pos) for s, pos in zip(out["site"], positive, strict=True)
    ]
    return out


def wilson(k: int, n: int) -> tuple[float, float]:
    """95% Wilson interval of k/n (statsmodels); nan when n is 0."""
    from statsmodels.stats.proportion import proportion_confint

    if n == 0:
        return float("nan"), float("nan")
    lo, hi = proportion_confint(k, n, alpha=0.05, method="wilson")
    return float(lo), float(hi)


def _share(prefix: str, k: int, n: int) -> dict[str, float]:
    lo, hi = wilson(k, n)
    return {prefix: k / n if n else float("nan"), f"{prefix}_ci_low": lo, f"{prefix}_ci_high": hi}


def validation_row(group: str, rows: pd.DataFrame) -> dict[str, Any]:
    """The pre-registered evaluation on `rows`: coverage (share decided), accuracy over all of them with
    an abstention counted as not right, accuracy among those decided (each with a Wilson 95% CI), the
    Brier score, and the accuracy of each baseline on the same units (always exact, always ste, the
    site-only rule; `baseline_accuracy` is always exact's, as in v1)."""
    n = len(rows)
    decided = rows[rows["correct"].notna()]
    k = int(decided["correct"].astype(bool).sum())
    p = rows["probability"].astype(float)
    ok = p.notna()
    positives = int(rows["positive"].astype(bool).sum())
    out: dict[str, Any] = {
        "group": group,
        "units": n,
        "positives": positives,
        "decided": len(decided),
        "correct": k,
        **_share("coverage", len(decided), n),
        **_share("accuracy_all", k, n),
        **_share("accuracy", k, len(decided)),
        "brier": float(((p[ok] - rows.loc[ok, "positive"].astype(float)) ** 2).mean())
        if ok.any()
        else float("nan"),
    }
    for name in BASELINES:
        out.update(_share(f"{name}_accuracy", int(rows[f"{name}_correct"].astype(bool).sum()), n))
    out["baseline_accuracy"] = out["always_exact_accuracy"]
    out["baseline_ci_low"] = out["always_exact_accuracy_ci_low"]
    out["baseline_ci_high"] = out["always_exact_accuracy_ci_high"]
    return out


def validation_table(scored: pd.DataFrame, spec: AdvisorSpec) -> pd.DataFrame:
    """Rows over labelled units: fitting units (in-sample), all held-out units (the primary row), each
    held-out entry, each site held out; then the sensitivity row (held-out units that are not trivial,
    trainable or not)."""
    labelled = scored[scored["labelled"].astype(bool)]
    held = labelled[labelled["held_out"].astype(bool)]
    rows = [
        validation_row("fitted (in-sample)", labelled[~labelled["held_out"].astype(bool)]),
        validation_row(PRIMARY, held),
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
    trivial = scored["trivial"].astype(bool) if spec.drop_identical else False
    rows.append(validation_row(SENSITIVITY, scored[scored["held_out"].astype(bool) & ~trivial]))
    return pd.DataFrame(rows)


def calibration_table(scored: pd.DataFrame) -> pd.DataFrame:
    """Labelled held-out units by predicted-probability bin: mean probability vs observed share positive."""
    held = scored[
        scored["held_out"].astype(bool) & scored["labelled"].astype(bool) & scored["probability"].notna()
    ]
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


def _pct_text(x: float, percent: str) -> str:
    """`66%` (`percent`: how the table writes %), `--` when there is no number."""
    return f"{_pct(x)}{percent}" if math.isfinite(x) else "--"


def _coef(summary: dict[str, Any], term: str, key: str) -> str:
    c = summary["coefficients"].get(term)
    return "--" if c is None else tex_num(tidy_number(c[key]), 2)


def macros(val: pd.DataFrame, summary: dict[str, Any], rule: Rule, useful: bool) -> str:
    """The paper's numbers (v1's names kept with v1's meanings; v2's added)."""
    held = val.set_index("group").loc[PRIMARY]
    fitted = val.set_index("group").loc["fitted (in-sample)"]
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
        rf"\newcommand{{\AdvisorHeldAccAll}}{{{_pct(held['accuracy_all'])}}}",
        rf"\newcommand{{\AdvisorHeldAccAllLo}}{{{_pct(held['accuracy_all_ci_low'])}}}",
        rf"\newcommand{{\AdvisorHeldAccAllHi}}{{{_pct(held['accuracy_all_ci_high'])}}}",
        rf"\newcommand{{\AdvisorHeldCoverage}}{{{_pct(held['coverage'])}}}",
        rf"\newcommand{{\AdvisorHeldBrier}}{{{tex_num(tidy_number(held['brier']), 3)}}}",
        rf"\newcommand{{\AdvisorBaseAcc}}{{{_pct(held['baseline_accuracy'])}}}",
        rf"\newcommand{{\AdvisorSteAcc}}{{{_pct(held['always_ste_accuracy'])}}}",
        rf"\newcommand{{\AdvisorSiteOnlyAcc}}{{{_pct(held['site_only_accuracy'])}}}",
        rf"\newcommand{{\AdvisorSiteOnlyAccLo}}{{{_pct(held['site_only_accuracy_ci_low'])}}}",
        rf"\newcommand{{\AdvisorSiteOnlyAccHi}}{{{_pct(held['site_only_accuracy_ci_high'])}}}",
        rf"\newcommand{{\AdvisorUseful}}{{{'yes' if useful else 'no'}}}",
        rf"\newcommand{{\AdvisorSlope}}{{{_coef(summary, 'log_disagreement', 'estimate')}}}",
        rf"\newcommand{{\AdvisorSlopeLo}}{{{_coef(summary, 'log_disagreement', 'ci_low')}}}",
        rf"\newcommand{{\AdvisorSlopeHi}}{{{_coef(summary, 'log_disagreement', 'ci_high')}}}",
        rf"\newcommand{{\AdvisorSignal}}{{{_coef(summary, 'signal_site', 'estimate')}}}",
        rf"\newcommand{{\AdvisorSeparated}}{{{'yes' if summary['perfect_separation'] else 'no'}}}",
        rf"\newcommand{{\AdvisorOneOutcomeSites}}{{{', '.join(summary['one_outcome_sites']) or 'none'}}}",
    ]
    return "\n".join(lines) + "\n"


def _ci_text(r: pd.Series, prefix: str, percent: str) -> str:
    """`66% [56, 74]` for a share in a validation row (`percent`: how the table writes %), `--` if none."""
    if not math.isfinite(r[prefix]):
        return "--"
    return f"{_pct(r[prefix])}{percent} [{_pct(r[f'{prefix}_ci_low'])}, {_pct(r[f'{prefix}_ci_high'])}]"


def validation_tex(val: pd.DataFrame) -> str:
    """The paper's validation table (booktabs rows): the rule and the three baselines on the same units."""
    lines = [
        r"\begin{tabular}{lrrrrrrr}",
        r"\toprule",
        r"units & $n$ & positive & decided & rule, all units [95\% CI] & always exact & always ste & "
        r"site-only \\",
        r"\midrule",
    ]
    for _, r in val.iterrows():
        lines.append(
            f"{latex_escape(r['group'])} & {int(r['units'])} & {int(r['positives'])} & {int(r['decided'])} & "
            f"{_ci_text(r, 'accuracy_all', chr(92) + ',' + chr(92) + '%')} & "
            + " & ".join(_pct_text(r[f"{b}_accuracy"], "\\,\\%") for b in BASELINES)
            + r" \\"
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
    scored: pd.DataFrame,
) -> str:
    """report.md: the rule, the validation with every baseline, the criterion, calibration, failures."""
    coef = summary["coefficients"]
    held = val.set_index("group").loc[PRIMARY]
    trainable = spec.trainable
    n_trivial = int(scored["trivial"].astype(bool).sum()) if spec.drop_identical else 0
    n_untrainable = int((~scored["trainable"].astype(bool)).sum())
    lines = [
        f"# Advisor (pre-registration v{spec.version}): can the straight-through gradient be used here?",
        "",
        f"Units: {len(scored)} (study condition x site) from "
        + ", ".join(f"results/{s}" for s in spec.sources)
        + f"; {int(scored['labelled'].astype(bool).sum())} have a label"
        + (
            f" ({n_untrainable} do not train: the better arm's mean below "
            f"{format_number(trainable.threshold)} %; {n_trivial} are trivial: every seed pair identical)"
            if trainable is not None
            else ""
        )
        + ".",
        "",
        f"Rule (`{summary['formula']}`, binomial GLM, fitted on {summary['n']} labelled units of which "
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
            "term is not a finite estimate (quasi-separation; its CI is meaningless).",
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
        f"'straight-through is safe' when p <= {format_number(0.5 - rule.band)}, 'uncertain' "
        "(an abstention) between.",
        "",
        "## Validation (held-out units never entered the fit; pre-registered in "
        "study/advisor/advisor_v2.yaml)",
        "",
        "Accuracy over all units of a row counts an abstention as not right; every baseline decides every "
        "unit. Labelled units only, except the last row.",
        "",
        "| units | n | positive | coverage | rule: accuracy, all units [95% CI] | rule: accuracy, decided "
        "[95% CI] | always exact | always ste | site-only [95% CI] | Brier |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for _, r in val.iterrows():
        lines.append(
            f"| {r['group']} | {int(r['units'])} | {int(r['positives'])} | "
            f"{int(r['decided'])} ({_pct(r['coverage'])}%) | {_ci_text(r, 'accuracy_all', '%')} | "
            f"{_ci_text(r, 'accuracy', '%')} | {_pct_text(r['always_exact_accuracy'], '%')} | "
            f"{_pct_text(r['always_ste_accuracy'], '%')} | {_ci_text(r, 'site_only_accuracy', '%')} | "
            f"{format_number(r['brier'])} |"
        )
    lines += [
        "",
        "Pre-registered criterion (the held-out accuracy over all units, abstentions counted, has a 95% CI "
        f"whose lower bound lies above the site-only rule's {_pct(held['site_only_accuracy'])}%): "
        f"{_pct(held['accuracy_all'])}% [{_pct(held['accuracy_all_ci_low'])}, "
        f"{_pct(held['accuracy_all_ci_high'])}]: **{'met' if useful else 'not met'}**. Not part of the "
        f"criterion: on the same units always exact is right on {_pct(held['always_exact_accuracy'])}% "
        f"[{_pct(held['always_exact_accuracy_ci_low'])}, {_pct(held['always_exact_accuracy_ci_high'])}], "
        f"always ste on {_pct(held['always_ste_accuracy'])}%.",
        "",
        (
            "The rule is used for advice (`python -m study advise` prints its probability)."
            if useful
            else "The rule is **not** used for advice: `python -m study advise` and `analog.advise` give the "
            "site-only rule (signals: exact, weights: ste) and print the probe's measurements as evidence, "
            "without a probability."
        ),
        "",
        "## Calibration (labelled held-out units)",
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
        f"## Where it fails ({len(failures)} labelled held-out units advised wrongly; stats/failures.csv)",
        "",
    ]
    if len(failures):
        lines += [
            "| study | site | arch | dataset | norm (w/s) | exact - ste (pp) | disagreement | site sat. | "
            "read-out sat. | p | advice |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for _, r in failures.head(30).iterrows():
            lines.append(
                f"| {r['study']} | {r['site']} | {r['arch']} | {r['dataset']} | {r['weight_norm']}/"
                f"{r['signal_norm']} | {format_number(r['mean_diff'])} | "
                f"{format_number(r['disagreement'])} | {format_number(r['site_saturation'])} | "
                f"{format_number(r['readout_saturation'])} | {format_number(r['probability'])} | "
                f"{r['advice']} |"
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
            labelled = rows["labelled"].astype(bool).to_numpy()
            ax.scatter(x[~labelled], y[~labelled], marker=".", s=8, color="0.75", lw=0, label="no label")
            held, x, y = held[labelled], x[labelled], y[labelled]
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
            saturations = rule.saturation != 0 or rule.readout != 0  # no single boundary in x alone
            if not saturations and rule.slope != 0 and abs(z / rule.slope) < 12:
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
    features = [t for t in spec.terms if t != "signal_site"]
    usable = units[units["labelled"] & design(units)[features].notna().all(axis=1)]
    fit_units = usable[~usable["held_out"]]
    if usable["held_out"].sum() == 0:
        raise ValueError("advisor: no labelled held-out unit in the sources; the validation would be empty")
    rule, summary = fit_rule(fit_units, spec)
    scored = apply_rule(units, rule)
    val = validation_table(scored, spec)
    cal = calibration_table(scored)
    held = val.set_index("group").loc[PRIMARY]
    if spec.version >= 2:  # v2: above the site-only rule, abstentions counted as not right
        useful = bool(held["accuracy_all_ci_low"] > held["site_only_accuracy"])
    else:  # v1's criterion: the decided accuracy's CI above always-exact
        useful = bool(held["accuracy_ci_low"] > held["baseline_accuracy"])
    rule = replace(
        rule,
        useful=useful,
        held_out_accuracy=float(held["accuracy_all"]),
        site_only_accuracy=float(held["site_only_accuracy"]),
        always_exact_accuracy=float(held["always_exact_accuracy"]),
        held_out_units=int(held["units"]),
    )
    failures = scored[
        scored["held_out"] & scored["labelled"] & (scored["correct"] == False)  # noqa: E712 - None is not a failure
    ]
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
    text = report(val, cal, failures, summary, rule, useful, spec, scored)
    write_text_atomic(stats / "report.md", text)
    figure(scored, rule, out / "figures")
    caption = (
        "Exact minus straight-through (pp, symmetric log scale) against the gradient disagreement after "
        "one epoch, per committed condition and site; circles entered the fit, crosses were held out, grey "
        "dots have no label (nothing trains, or the two arms are identical); dotted: delta."
    )
    write_text_atomic(out / "figures" / "index.md", f"## advisor\n\n![advisor](advisor.png)\n\n{caption}\n")
    write_text_atomic(out / "report.md", text + f"\n![advisor](figures/advisor.png)\n\n{caption}\n")
    print(
        f"advisor: fitted on {summary['n']} units, held out {int(held['units'])}; accuracy "
        f"{_pct(held['accuracy_all'])}% [{_pct(held['accuracy_all_ci_low'])}, "
        f"{_pct(held['accuracy_all_ci_high'])}] over all ({int(held['decided'])} decided); site-only "
        f"{_pct(held['site_only_accuracy'])}%, always exact {_pct(held['always_exact_accuracy'])}%, "
        f"always ste {_pct(held['always_ste_accuracy'])}%; criterion "
        f"{'met' if useful else 'not met'} -> {out}"
    )
    return out
