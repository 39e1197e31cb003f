"""`python -m study advise`: the rule's diagnostic for a trial configuration, measured exactly as the
committed trials measured it (the same training path, `probe_epoch` epochs with ste at the site)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from analog.advise import Rule, SiteAdvice, advise_sites, site_policies
from study.training.config import TrialConfig


def probe_config(
    config: TrialConfig,
    rule: Rule,
    seeds: Sequence[int] = (0, 1),
    progress: Callable[[str], None] | None = None,
) -> list[SiteAdvice]:
    """Per site: train `config` for the rule's probe epoch(s) with ste at the site (the other exact) for
    each seed, read the epoch's gradient diagnostics and apply `rule`."""
    from study.training.trial import run_trial

    if config.digital:
        raise ValueError(
            "digital: the configuration trains a digital network; there is no normalization to advise on"
        )

    def probe_site(site: str, seed: int) -> list[dict]:
        weight, signal = site_policies(site)
        cfg = TrialConfig.parse(
            {
                **config.model_dump(),
                "weight_policy": weight,
                "signal_policy": signal,
                "seed": seed,
                "epochs": rule.probe_epoch,
                "diagnostics": True,
                "eval_test": False,
            }
        )
        rec = run_trial(cfg)
        return next(d for d in rec["diagnostics"] if d["epoch"] == rule.probe_epoch)["layers"]

    return advise_sites(probe_site, rule, seeds, progress)


def format_advice(advice: list[SiteAdvice], rule: Rule, total_s: float) -> str:
    """What `advise` prints: per site the advice and the measurements (per layer: the location view);
    the rule's probability only when the rule is used (it beat the site-only rule on held-out units),
    otherwise the site-only rule, said plainly, with the measurements as evidence."""
    lines = []
    for a in advice:
        if a.basis == "rule":
            p = "n/a" if math.isnan(a.probability) else f"{a.probability:.2f}"
            lines.append(f"{a.site} site: {a.advice.upper()}  (P[exact better by > {rule.delta:g} pp]: {p})")
        else:
            lines.append(f"{a.site} site: {a.advice.upper()}  (site-only rule: signals exact, weights ste)")
        lines.append(
            f"  {'measured' if a.basis == 'rule' else 'evidence (no probability),'} after epoch "
            f"{rule.probe_epoch}: gradient disagreement {a.disagreement:.3g}; largest saturation at the "
            f"site {100 * a.saturation:.1f}%; read-out saturation {100 * a.readout_saturation:.1f}%; "
            f"probe {a.seconds:.1f} s"
        )
        cos = ", ".join("n/a" if math.isnan(c) else f"{c:.3f}" for c in a.layer_cosines)
        lines.append(f"  per layer (input to readout), cosine ste vs exact: {cos}")
    if rule.useful:
        lines.append(
            f"rule: fitted on {rule.fitted_on} study conditions; uncertain within {rule.band:g} of p = 0.5; "
            f"validation in results/advisor/report.md; probe took {total_s:.1f} s"
        )
    else:
        lines.append(
            "advice: the site-only rule (signals: exact, weights: ste), not a fitted prediction: the rule "
            f"fitted on {rule.fitted_on} study conditions did not beat it on {rule.held_out_units} held-out "
            f"ones ({_pct(rule.held_out_accuracy)} right, abstentions counted, vs "
            f"{_pct(rule.site_only_accuracy)}; always exact {_pct(rule.always_exact_accuracy)}); "
            f"results/advisor/report.md; probe took {total_s:.1f} s"
        )
    return "\n".join(lines)


def _pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{100 * x:.0f}%"
