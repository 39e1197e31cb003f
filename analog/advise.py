""" "Can I ignore this gradient?": the advisor's probe and rule for a user's own analog network.

The probe trains a copy of the network briefly with the straight-through gradient at one site (the
other site exact) and then measures, on a probe batch, how far its parameter gradients are from the
true-derivative ones (`gradient_disagreement`), and the saturation at the site and at the read-out
clamp: the features the rule was fitted on (see ``study/advisor/advisor_v2.yaml``). The rule (a logistic
regression fitted by ``python -m study advisor`` on the committed studies, stored as JSON) turns them
into the probability that the true derivative ends more than ``delta`` pp better, and that into advice
-- but only when it beat the site-only rule ("signals: exact, weights: ste", `SITE_ONLY`) on held-out
conditions (`Rule.useful`). Otherwise the advice is the site-only rule, with the measurements as
evidence and no probability.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import MISSING, asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from analog.diagnostics import probe
from analog.layers import analog_layers

SITES: tuple[str, ...] = ("weight", "signal")
DISAGREEMENT_FLOOR = 1e-6  # log10 scale: identical gradients (cosine 1) sit at -6
ADVICE: tuple[str, ...] = ("use the true derivative", "straight-through is safe", "uncertain")
# AnalogVNN's default, no probe needed: what `advise` says when the fitted rule did not beat it
SITE_ONLY: dict[str, str] = {"weight": ADVICE[1], "signal": ADVICE[0]}


def gradient_disagreement(cosines: Iterable[float]) -> float:
    """1 - the smallest per-layer cosine between straight-through and true-derivative parameter
    gradients (layers without a defined cosine are skipped; nan when none has one)."""
    finite = [c for c in cosines if not math.isnan(c)]
    return max(0.0, 1.0 - min(finite)) if finite else float("nan")  # rounding puts cosines a hair above 1


def site_policies(site: str) -> tuple[str, str]:
    """(weight_policy, signal_policy) with the straight-through gradient at `site`, the other exact."""
    if site not in SITES:
        raise ValueError(f"site: unknown {site!r}; allowed: {', '.join(SITES)}")
    return ("ste", "exact") if site == "weight" else ("exact", "ste")


@dataclass(frozen=True)
class Rule:
    """P(exact ends more than `delta` pp above ste) = sigmoid(intercept + slope * log10(disagreement)
    + signal * [site is signal] + saturation * site saturation + readout * read-out saturation); advice
    by `band` around 0.5. `useful`: whether it beat the site-only rule on held-out conditions (its
    pre-registered criterion); when not, `advise` gives `SITE_ONLY` instead."""

    intercept: float
    slope: float
    signal: float
    delta: float
    band: float
    fitted_on: int = 0
    probe_epoch: int = 1  # the diagnostics' epoch the rule was fitted on
    saturation: float = 0.0  # v2: the site's largest per-layer saturation fraction
    readout: float = 0.0  # v2: the read-out clamp's saturation fraction
    useful: bool = True
    held_out_accuracy: float = float("nan")  # share right of the held-out units, abstentions not right
    site_only_accuracy: float = float("nan")  # the site-only rule's on the same units
    always_exact_accuracy: float = float("nan")  # always the true derivative, on the same units
    held_out_units: int = 0

    def probability(
        self, disagreement: float, site: str, saturation: float = 0.0, readout: float = 0.0
    ) -> float:
        """The rule's probability for one site's measurements (nan when one of them is missing)."""
        site_policies(site)  # names a bad site
        if any(math.isnan(v) for v in (disagreement, saturation, readout)):
            return float("nan")
        x = math.log10(max(disagreement, DISAGREEMENT_FLOOR))
        z = (
            self.intercept
            + self.slope * x
            + self.signal * (site == "signal")
            + self.saturation * saturation
            + self.readout * readout
        )
        return 1.0 / (1.0 + math.exp(-z)) if z > -700 else 0.0

    def advice(self, p: float) -> str:
        """The advice for probability `p` (uncertain within `band` of 0.5, or when p is nan)."""
        if math.isnan(p) or abs(p - 0.5) < self.band:
            return ADVICE[2]
        return ADVICE[0] if p > 0.5 else ADVICE[1]

    @classmethod
    def load(cls, path: str | Path) -> Rule:
        """The rule `python -m study advisor` wrote (results/advisor/rule.json)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no advisor rule there; fit it with `python -m study advisor`")
        try:
            data = json.loads(path.read_text())
            return cls(
                **{
                    k: data[k]
                    for k, f in cls.__dataclass_fields__.items()
                    if k in data or f.default is MISSING  # a v1 rule has no v2 fields
                }
            )
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(
                f"{path}: not an advisor rule ({err}); fit it again with `python -m study advisor`"
            ) from None

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class SiteAdvice:
    """The probe's measurement at one site and what the rule makes of it."""

    site: str
    disagreement: float  # mean over probe seeds
    layer_cosines: list[float]  # per analog layer, mean over probe seeds (the location view)
    saturation: float  # the site's largest per-layer saturation fraction on the probe batch
    probability: float  # nan when the rule is not used (site-only advice)
    advice: str
    seconds: float
    readout_saturation: float = float("nan")  # the read-out clamp's saturation fraction
    basis: str = "rule"  # "rule" or "site-only" (the rule did not beat the site-only rule)


def _train_briefly(
    model: nn.Module,
    batches: Sequence[tuple[Tensor, Tensor]],
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    lr: float,
) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for x, y in batches:
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()


def advise_sites(
    probe_site: Callable[[str, int], list[dict]],
    rule: Rule,
    seeds: Sequence[int],
    progress: Callable[[str], None] | None = None,
) -> list[SiteAdvice]:
    """The advice per site from `probe_site(site, seed)`, which trains a copy with the straight-through
    gradient at `site` and returns its probe's per-layer entries (`analog.diagnostics.LayerMismatch`
    fields as a dict): disagreement, per-layer cosines and saturations averaged over `seeds`, then `rule`
    when it is `useful`, else the site-only rule (no probability). Shared by `advise` (a user's module)
    and ``python -m study advise`` (a trial configuration)."""
    if not seeds:
        raise ValueError("seeds: empty; give at least one probe seed")
    out = []
    for site in SITES:
        start = time.perf_counter()
        key = "sat_weight" if site == "weight" else "sat_signal_out"
        dis, cosines, sats, readouts = [], [], [], []
        for seed in seeds:
            layers = probe_site(site, seed)
            layer_cos = [float(m["cosine"]) for m in layers]
            dis.append(gradient_disagreement(layer_cos))
            cosines.append(layer_cos)
            finite = [float(m[key]) for m in layers if m[key] is not None and not math.isnan(float(m[key]))]
            sats.append(max(finite, default=0.0))
            last = layers[-1]["sat_signal_out"] if layers else None
            readouts.append(0.0 if last is None or math.isnan(float(last)) else float(last))
            if progress:
                progress(
                    f"  {site} site, seed {seed}: disagreement {dis[-1]:.3g} "
                    f"({time.perf_counter() - start:.1f} s so far)"
                )
        d, sat, readout = (sum(v) / len(v) for v in (dis, sats, readouts))
        p = rule.probability(d, site, sat, readout) if rule.useful else float("nan")
        out.append(
            SiteAdvice(
                site=site,
                disagreement=d,
                layer_cosines=[sum(c) / len(c) for c in zip(*cosines, strict=True)],
                saturation=sat,
                probability=p,
                advice=rule.advice(p) if rule.useful else SITE_ONLY[site],
                seconds=time.perf_counter() - start,
                readout_saturation=readout,
                basis="rule" if rule.useful else "site-only",
            )
        )
    return out


def advise(
    model: nn.Module,
    batches: Sequence[tuple[Tensor, Tensor]],
    rule: Rule,
    *,
    seeds: Sequence[int] = (0, 1),
    lr: float = 1e-3,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
    progress: Callable[[str], None] | None = None,
) -> list[SiteAdvice]:
    """Probe `model` (built from `analog` layers; left untouched) at each site and apply `rule`.

    Per site and seed, a copy of the model trains one pass over `batches` (Adam, `lr`) with the
    straight-through gradient at that site, then its gradients on the last batch are compared with the
    true-derivative ones. `batches` should be about one epoch of the user's training data, as the rule's
    feature was measured after one epoch."""
    if not batches:
        raise ValueError("batches: empty; give (inputs, targets) batches of about one epoch")
    if not analog_layers(model):
        raise ValueError("model: has no analog layers (build it from analog.AnalogLinear/AnalogConv)")

    def probe_site(site: str, seed: int) -> list[dict]:
        policies = site_policies(site)
        net = copy.deepcopy(model)
        for layer in analog_layers(net):
            layer.weight_policy, layer.signal_policy = policies
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            _train_briefly(net, batches[:-1] or batches, loss_fn, lr)
        x, y = batches[-1]
        return [vars(m) for m in probe(net, x, y, policies, seed=seed, loss_fn=loss_fn).layers]

    return advise_sites(probe_site, rule, seeds, progress)
