"""Generate study/specs/factorial.yaml: the factorial generality design (issue 19), reproducibly.

Design (why, in short; the spec's description says it in full): the four "structural" factors
architecture (2) x dataset (3) x normalization (4) x noise kind (5) are crossed in full (120
conditions), so every two-way interaction among them - and each with the policy - is estimable. The
remaining factors are laid over that grid with mutually orthogonal Latin squares of order 4 (GF(4)):
within each (architecture, dataset, noise kind) block the four normalizations get the four precisions
(square 1), the four (rounding, optimizer) pairs (square 2) and two leakages each (square 3, noisy
kinds only); the square's row per block is drawn, seeded, from a balanced list. Hence precision,
rounding, optimizer and leakage are balanced within every block and orthogonal to one another within
each row. Every condition is run under three policy arms (weight/signal: exact/exact, ste/exact,
exact/ste), so each site's exact-vs-ste effect is a paired difference in every condition. The cells are
listed in a seeded random order (the runner runs conditions in spec order: this randomises the run order).

Seeds per cell follow from the across-condition model (see `seeds_for_power`). Run:

    python benchmarks/design_factorial.py            # writes study/specs/factorial.yaml
    python benchmarks/design_factorial.py --check    # exit 1 if the committed spec differs
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from scipy import stats

from study.training.config import TrialConfig

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "study" / "specs" / "factorial.yaml"
SEED = 19  # the design's random choices (square rows per block, run order)

ARCHS = ["mlp", "cnn"]
DATASETS = ["mnist5k", "digits", "mnist1d"]
NORMS = ["clamp", "l2norm", "l2norm_m", "l2norm_wm"]  # the L2 family as in the generality study
NOISES = ["none", "gaussian", "poisson", "laplacian", "uniform"]
PRECISIONS: list[int | None] = [4, 16, 64, None]
LEAKAGES = [0.2, 0.5]
ROUNDINGS = ["reduce", "stochastic"]
OPTIMIZERS = [  # (optimizer, momentum, lr): each optimizer at its usual setting for this network
    ("adam", 0.0, 0.001),
    ("sgd", 0.9, 0.05),
]
ARMS = [("exact", "exact"), ("ste", "exact"), ("exact", "ste")]  # (weight_policy, signal_policy)

# GF(4) = {0, 1, a, a+1} coded 0..3: addition is XOR; multiplication table
_GF4_MUL = [[0, 0, 0, 0], [0, 1, 2, 3], [0, 2, 3, 1], [0, 3, 1, 2]]


def latin(m: int, row: int, col: int) -> int:
    """Entry (row, col) of the m-th (m = 1, 2, 3) of the three mutually orthogonal Latin squares of order
    4: m * row + col over GF(4)."""
    return _GF4_MUL[m][row] ^ col


# -- power: seeds per cell for the across-condition model ------------------------------------------
SD_WITHIN = 3.1  # pp: median SD of the paired weight-site differences in results/generality (Lp rows)
TAU_RESIDUAL = 2.0  # pp: assumed between-condition SD of the effect left after the factors (see spec)
SEED_NOISE_SHARE = 0.2  # seeds must add at most 20% to the across-condition model's MDE


def seeds_for_power(
    sd_within: float = SD_WITHIN, tau: float = TAU_RESIDUAL, share: float = SEED_NOISE_SHARE
) -> int:
    """Smallest n with MDE(n) <= (1 + share) MDE(infinity) for a coefficient of the across-condition
    model: Var(condition mean difference) = tau^2 + sd_within^2 / n, so MDE(n)/MDE(inf) =
    sqrt(1 + sd_within^2 / (n tau^2)). More seeds beyond it buy little; more conditions buy more."""
    return math.ceil(sd_within**2 / (tau**2 * ((1 + share) ** 2 - 1)))


BUDGET_HOURS = 2.0  # the 2-core session budget of the study run


def seeds_within_budget(rates: dict[tuple[str, str], float], cells: list[dict[str, Any]], epochs: int) -> int:
    """Most seeds per cell whose measured cost fits `BUDGET_HOURS` on `WORKERS` workers."""
    per_seed = sum(rates[(c["arch"], c["dataset"])] * epochs for c in cells)
    return int(BUDGET_HOURS * 3600 * WORKERS // per_seed)


def mde_inflation(n_seeds: int, sd_within: float = SD_WITHIN, tau: float = TAU_RESIDUAL) -> float:
    """MDE(n)/MDE(infinity) of a coefficient of the across-condition model (see `seeds_for_power`)."""
    return math.sqrt(1 + sd_within**2 / (n_seeds * tau**2))


def mde_two_level(n_seeds: int, n_conditions: int, alpha: float, power: float = 0.8) -> float:
    """MDE (pp) of a balanced two-level factor's effect on the paired difference, normal approximation."""
    var = TAU_RESIDUAL**2 + SD_WITHIN**2 / n_seeds
    se = math.sqrt(var * 4 / n_conditions)
    return (stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)) * se


# -- the design -------------------------------------------------------------------------------------


def conditions(rng: np.random.Generator) -> list[dict[str, Any]]:
    """The 120 conditions (factor values without the policy arms)."""
    blocks = [(a, d, k) for a in range(len(ARCHS)) for d in range(len(DATASETS)) for k in range(len(NOISES))]
    balanced = (list(range(4)) * math.ceil(len(blocks) / 4))[: len(blocks)]
    # one row of each square per block, drawn independently: with one shared row, (norm, precision) would
    # determine the row and with it the (rounding, optimizer) pair, aliasing them with norm x precision
    rows = [[int(r) for r in rng.permutation(balanced)] for _ in range(3)]
    out = []
    for b, (a, d, k) in enumerate(blocks):
        r1, r2, r3 = (rows[m][b] for m in range(3))
        for n in range(len(NORMS)):
            prec = PRECISIONS[latin(1, r1, n)]
            pair = latin(2, r2, n)
            rounding, (opt, momentum, lr) = ROUNDINGS[pair & 1], OPTIMIZERS[pair >> 1]
            noisy = NOISES[k] != "none"
            out.append(
                {
                    "arch": ARCHS[a],
                    "dataset": DATASETS[d],
                    "norm": NORMS[n],
                    "precision": prec,
                    "noise": NOISES[k],
                    "leakage": LEAKAGES[latin(3, r3, n) & 1] if noisy else None,
                    "precision_class": rounding,
                    "optimizer": opt,
                    "momentum": momentum,
                    "lr": lr,
                }
            )
    return out


MODEL_TERMS = (
    "C(arch) + C(dataset) + C(norm) + C(noise) + leak_high + C(precision) + stochastic_finite + C(optimizer)"
    " + C(arch):C(dataset) + C(arch):C(norm) + C(arch):C(noise) + C(norm):C(precision) + C(norm):C(noise)"
)


# the model's derived columns, as expressions over runs.csv's text (study.analysis.stats.effects)
DERIVED = {
    "leak_high": "leakage == '0.5'",  # leakage nested in the noisy kinds
    "stochastic_finite": "(precision_class == 'stochastic') & (precision != 'none')",
}


def model_diagnostics(conds: list[dict[str, Any]]) -> dict[str, float]:
    """Rank, columns and the largest variance inflation of the across-condition model on this design."""
    import pandas as pd
    from patsy import dmatrix

    df = pd.DataFrame(conds)
    df["precision"] = df["precision"].fillna(0).astype(int).astype(str)  # 0 = full precision
    df["leak_high"] = (df["leakage"] == 0.5).astype(float)  # leakage nested in the noisy kinds
    df["stochastic_finite"] = ((df["precision_class"] == "stochastic") & (df["precision"] != "0")).astype(
        float
    )
    x = np.asarray(dmatrix(MODEL_TERMS, df))
    rank = int(np.linalg.matrix_rank(x))
    xc = x[:, 1:] - x[:, 1:].mean(0)
    inv = np.linalg.pinv(xc.T @ xc)
    vif = np.diag(inv) * (xc**2).sum(0)
    return {"n": len(df), "columns": x.shape[1], "rank": rank, "max_vif": float(vif.max())}


def spec(seed: int = SEED) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    conds = conditions(rng)
    diag = model_diagnostics(conds)
    if diag["rank"] != diag["columns"]:
        raise SystemExit(f"the model is not estimable on this design: {diag}")
    cells = [{**c, "weight_policy": w, "signal_policy": s} for c in conds for w, s in ARMS]
    order = rng.permutation(len(cells))
    cells = [cells[int(i)] for i in order]
    base = {
        "hidden": [256, 128],
        "activation": "gelu",
        "noise_precision": 16,
        "batch_size": 128,
        "epochs": 5,
    }
    n_power = seeds_for_power()
    n_budget = seeds_within_budget(MEASURED_S_PER_EPOCH, cells, base["epochs"])
    n_seeds = min(n_power, n_budget)
    mde = mde_two_level(n_seeds, len(conds), 0.05 / 8)
    cost = {
        name: sum(r[(c["arch"], c["dataset"])] for c in cells)
        for name, r in (("measure", MEASURE_ESTIMATE), ("run", MEASURED_S_PER_EPOCH))
    }
    factors = {
        "arch": ARCHS,
        "dataset": DATASETS,
        "norm": NORMS,
        "precision": PRECISIONS,
        "noise": NOISES,
        "leakage": [None, *LEAKAGES],
        "precision_class": ROUNDINGS,
        "optimizer": [o for o, _, _ in OPTIMIZERS],
        "momentum": sorted({m for _, m, _ in OPTIMIZERS}),
        "lr": sorted({lr for _, _, lr in OPTIMIZERS}),
        "weight_policy": ["exact", "ste"],
        "signal_policy": ["exact", "ste"],
    }
    description = " ".join(DESCRIPTION.split()).format(
        n_cond=len(conds),
        n_cells=len(cells),
        n_seeds=n_seeds,
        last_seed=n_seeds - 1,
        n_trials=len(cells) * n_seeds,
        seed=SEED,
        cols=diag["columns"],
        vif=diag["max_vif"],
        sd=SD_WITHIN,
        tau=TAU_RESIDUAL,
        share=round(100 * SEED_NOISE_SHARE),
        n_power=n_power,
        n_budget=n_budget,
        first=FIRST_SEEDS,
        mde_first=mde_two_level(FIRST_SEEDS, len(conds), 0.05 / 8),
        over=cost["measure"] / cost["run"],
        workers=WORKERS,
        budget=BUDGET_HOURS,
        mde=mde,
        ch=" and ".join(map(str, TrialConfig.model_fields["channels"].default)),
        model=MODEL_TERMS,
    )
    return {
        "name": "factorial",
        "description": description,
        "base": base,
        "factors": factors,
        "exclude": [{"arch": ARCHS}],  # the grid is only the frame: the design is the include list
        "include": cells,
        "seeds": n_seeds,
        "hypotheses": {
            "metric": "test_acc_mean",
            "margin": 0.5,
            "alpha": 0.05,
            "correction": "holm",
            "family": "role",
            "diverged": "include",
            "comparisons": [
                {"site": "weight", "a": "exact", "b": "ste", "role": "primary"},
                {"site": "signal", "a": "exact", "b": "ste", "role": "primary"},
            ],
            "effect_model": {
                "formula": MODEL_TERMS,
                "derived": DERIVED,
                "marginal": ["arch", "dataset", "norm"],
            },
        },
    }


DESCRIPTION = """\
Does the answer generalise - across architectures, data sets, normalizations, precisions, noise
kinds, rounding and optimizers - and where does it change? A factorial design generated by
benchmarks/design_factorial.py (seed {seed}; do not edit the include list by hand, regenerate it).
Conditions ({n_cond}): architecture (mlp: AnalogVNN's 784-256-128-10 sample model; cnn: two
conv-GeLU-maxpool blocks of {ch} channels, kernel 3, then the same 256-128 dense layers and the
readout; 1-D convolutions on mnist1d) x data set (mnist5k, digits 8x8, mnist1d) x normalization at both
sites (clamp, l2norm, l2norm_m, l2norm_wm) x noise kind (none, gaussian, poisson, laplacian, uniform)
crossed in full; over that grid three mutually orthogonal Latin squares of order 4 assign, within each
(architecture, data set, noise kind) block, the four precisions (4, 16, 64 levels, full) and the four
(rounding, optimizer) pairs to the four normalizations, and leakage 0.2 or 0.5 to two of them each
(noisy kinds; noise strength refers to 16 levels throughout, noise_precision). Rounding is reduce
(deterministic) or stochastic; optimizer Adam (lr 1e-3) or SGD with momentum 0.9 (lr 0.05).
Why this design: a two-level resolution-IV fraction would have to recode precision (4 levels) and
noise kind (5) into pseudo-factors and lose their levels; the crossed structural factors keep every
level and every two-way interaction among them estimable, and the orthogonal squares keep the other
factors balanced at {n_cond} conditions (the minimum of the issue is 96). Each condition has three
policy arms (weight/signal exact/exact, ste/exact, exact/ste), so each site's exact-vs-ste effect is a
paired difference (by seed) in every condition: {n_cells} cells.
Pre-registered hypotheses, written before any run of this study.
Test accuracy is the mean over 5 independent draws of the analog noise on the test split after training
(test_acc_mean; the noise-off accuracy is recorded beside it).
H1 (primary, per condition): at each site, exact vs ste on test_acc_mean, paired by seed, margin 0.5 pp,
Holm within role (the comparisons below; per-condition verdicts).
H2 (across conditions): the signal-site effect (exact minus ste) is positive on average and within each
architecture and each data set: the model's marginal means over those factors have 95% CIs above 0.
H3: the weight-site effect is 0 under clamp (identical runs, no saturation) and depends on the
normalization under the L2 family: the norm coefficients of the weight-site model differ from 0.
Analysis model (pre-registered, hypotheses.effect_model): per site, the condition's paired differences d
(exact - ste, per seed) in a linear mixed model d ~ {model} with a random intercept per condition and per
seed (blocking by seed: every condition runs the same seeds 0..{last_seed}, so seed is a block crossed with
condition), fitted as least squares on the condition means of d, which gives the same fixed effects and
standard errors when every condition has all its seeds (weighted by pairs otherwise); marginal means of
d per architecture, data set and normalization with 95% CIs;
leak_high is leakage 0.5 within the noisy kinds and stochastic_finite is stochastic rounding at finite
precision (rounding does nothing at full precision). {cols} model columns, full rank on this design; largest
variance inflation {vif:.2f}. Main effects of every factor on the effect are the factor-by-policy
interactions; the listed factor-by-factor terms are the three-way interactions with the policy that the
design also estimates. Seeds: {n_seeds} per cell. Power says {n_power}: with a paired SD of {sd} pp
within a condition (median of the Lp weight-site rows of results/generality) and an assumed residual
between-condition SD of {tau} pp, {n_power} seeds add at most {share}% to the minimum detectable effect of
a coefficient (more seeds buy little; more conditions buy more); at {n_seeds} seeds a balanced two-level
factor's effect on d is detectable from {mde:.2f} pp (80% power, alpha 0.05/8). Budget ({budget:g} h on
{workers} workers): the seeds were first registered at {first}, because the rates `--measure` gave
(one-epoch bundles at the costliest setting) held only {first} (MDE {mde_first:.2f} pp); they were {over:.1f}
times the rates the study then ran at, and the wall times of that {first}-seed run (rates at the end of
this file) put {n_budget} seeds within the budget, so, before any analysis, the seeds were raised to
{n_seeds} (spec_log.jsonl records the change). Per-condition verdicts with {n_seeds} seeds are coarse; the
model is the primary generality result.
Order: the cells are listed in a seeded random order and the runner runs conditions in spec order,
so the run order is randomised (the runner has no shuffle of its own). {n_trials} trials.
"""


def render(data: dict[str, Any]) -> str:
    header = (
        "# Generated by benchmarks/design_factorial.py - regenerate, do not edit by hand.\n"
        "# Budget: see the comment block at the end of this file.\n"
    )
    return header + yaml.safe_dump(data, sort_keys=False, width=110) + budget(data)


# s per trial-epoch by (arch, dataset) that `--measure` gave (1-epoch bundles of 3 at the costliest
# setting, idle machine): the rates the seeds were first registered with (FIRST_SEEDS)
MEASURE_ESTIMATE = {
    ("cnn", "mnist5k"): 6.8,
    ("mlp", "mnist5k"): 2.37,
    ("cnn", "mnist1d"): 1.49,
    ("mlp", "mnist1d"): 1.28,
    ("cnn", "digits"): 0.63,
    ("mlp", "digits"): 0.41,
}
FIRST_SEEDS = 3
# s per trial-epoch measured from the study's first run (FIRST_SEEDS seeds, all 1,080 trials, bundles of
# 3 on 2 workers): `python benchmarks/design_factorial.py --rates-from <out>/factorial`
MEASURED_S_PER_EPOCH = {
    ("cnn", "digits"): 0.28,
    ("cnn", "mnist1d"): 0.68,
    ("cnn", "mnist5k"): 2.72,
    ("mlp", "digits"): 0.17,
    ("mlp", "mnist1d"): 0.38,
    ("mlp", "mnist5k"): 0.75,
}
WORKERS = 2
MEASURE_BUNDLE = 3  # seeds trained together in `--measure` (as the runner bundles a cell's seeds)

BUDGET = """\
# Budget: seconds per trial-epoch measured from the wall times of the study's first run ({first} seeds,
# bundles of {first} on {workers} workers; `--rates-from`):
#   {measured}
# The design balances the six (arch, dataset) pairs: {trials:,} trials x {epochs} epochs at these rates =
# {worker_s:,.0f} worker-s = about {hours:.1f} h on {workers} workers (run with --workers {workers});
# the cnn mnist5k cells take {share:.0%} of it.
"""


def budget(data: dict[str, Any]) -> str:
    """The budget comment: the measured rates applied to the design's cells."""
    epochs = data["base"]["epochs"]
    per_cell = [MEASURED_S_PER_EPOCH[(c["arch"], c["dataset"])] * epochs for c in data["include"]]
    worker_s = sum(per_cell) * data["seeds"]
    big = sum(
        t
        for t, c in zip(per_cell, data["include"], strict=True)
        if (c["arch"], c["dataset"]) == ("cnn", "mnist5k")
    )
    return BUDGET.format(
        first=FIRST_SEEDS,
        measured="   ".join(f"{a} {d} {v}" for (a, d), v in MEASURED_S_PER_EPOCH.items()),
        trials=len(data["include"]) * data["seeds"],
        epochs=epochs,
        worker_s=worker_s,
        hours=worker_s / WORKERS / 3600,
        workers=WORKERS,
        share=big * data["seeds"] / worker_s,
    )


def measure(bundle: int = MEASURE_BUNDLE, epochs: int = 1) -> dict[tuple[str, str], float]:
    """Seconds per trial-epoch for each (arch, dataset): one bundle of `bundle` seeds trained `epochs`
    epochs in this process (1 torch thread) at the costliest settings of the design (poisson noise,
    stochastic rounding, l2norm_m, 16 levels, diagnostics on), as the runner would train a cell."""
    import time

    import torch

    from study.training.bundle import run_bundle

    torch.set_num_threads(1)
    data = spec()
    out = {}
    for arch in ARCHS:
        for dataset in DATASETS:
            config = {
                **data["base"],
                "arch": arch,
                "dataset": dataset,
                "weight_norm": "l2norm_m",
                "signal_norm": "l2norm_m",
                "precision": 16,
                "noise": "poisson",
                "leakage": 0.5,
                "precision_class": "stochastic",
                "epochs": epochs,
            }
            start = time.perf_counter()
            run_bundle([{**config, "seed": s} for s in range(bundle)])
            out[(arch, dataset)] = round((time.perf_counter() - start) / bundle / epochs, 2)
            print(f"{arch} {dataset}: {out[(arch, dataset)]} s per trial-epoch", flush=True)
    return out


def rates_from_records(study_dir: Path) -> dict[tuple[str, str], float]:
    """Seconds per trial-epoch for each (arch, dataset), from a run of this study: the mean of each
    record's `wall_time_s` (a bundle's wall time shared by its members) over its epochs."""
    import json

    walls: dict[tuple[str, str], list[float]] = {}
    for path in sorted(Path(study_dir).glob("trials/*/record.json")):
        rec = json.loads(path.read_text())
        key = (rec["factors"]["arch"], rec["factors"]["dataset"])
        walls.setdefault(key, []).append(rec["wall_time_s"] / max(rec["epochs_run"], 1))
    if not walls:
        raise SystemExit(f"{study_dir}: no trial records")
    return {k: round(sum(v) / len(v), 2) for k, v in sorted(walls.items())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed spec differs")
    parser.add_argument(
        "--measure",
        action="store_true",
        help="time one 1-epoch bundle per (arch, dataset) and print the rates",
    )
    parser.add_argument(
        "--rates-from",
        type=Path,
        metavar="DIR",
        help="print the rates measured by a run of this study (its trials/*/record.json)",
    )
    args = parser.parse_args(argv)
    if args.rates_from:
        rates = rates_from_records(args.rates_from)
        for (arch, dataset), v in rates.items():
            print(f"{arch} {dataset}: {v} s per trial-epoch")
        return 0
    if args.measure:
        rates = measure()
        per_cell = [rates[(c["arch"], c["dataset"])] * spec()["base"]["epochs"] for c in spec()["include"]]
        total = sum(per_cell) * spec()["seeds"]
        print(f"design: {total:,.0f} worker-s = {total / WORKERS / 3600:.2f} h on {WORKERS} workers")
        return 0
    text = render(spec())
    if args.check:
        same = SPEC.exists() and SPEC.read_text() == text
        print("up to date" if same else f"{SPEC} differs from the generator's output")
        return 0 if same else 1
    SPEC.write_text(text)
    print(f"wrote {SPEC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
