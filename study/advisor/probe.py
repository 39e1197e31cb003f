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
    """What `advise` prints: per site the advice, the probability, the diagnostics per layer (location)."""
    lines = []
    for a in advice:
        p = "n/a" if math.isnan(a.probability) else f"{a.probability:.2f}"
        lines.append(f"{a.site} site: {a.advice.upper()}  (P[exact better by > {rule.delta:g} pp]: {p})")
        lines.append(
            f"  gradient disagreement after epoch {rule.probe_epoch}: {a.disagreement:.3g}; "
            f"largest saturation "
            f"{100 * a.saturation:.1f}%; probe {a.seconds:.1f} s"
        )
        cos = ", ".join("n/a" if math.isnan(c) else f"{c:.3f}" for c in a.layer_cosines)
        lines.append(f"  per layer (input to readout), cosine ste vs exact: {cos}")
    lines.append(
        f"rule: fitted on {rule.fitted_on} study conditions; uncertain within {rule.band:g} of p = 0.5; "
        f"validation in results/advisor/report.md; probe took {total_s:.1f} s"
    )
    return "\n".join(lines)
