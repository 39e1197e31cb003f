"""Generate the two specs of the second factorial design (issue #28), reproducibly.

1. ``--lr-spec`` writes study/specs/factorial_v2_lr.yaml: learning-rate selection. Every (architecture,
   data set, normalization, optimizer) at the core noise setting (Gaussian, leakage 0.5, 16 levels,
   deterministic rounding) under each of the three policy arms, at every learning rate of its optimizer's
   grid, on seeds the evaluation never uses (900, 901), never evaluating the test split.
2. ``--spec`` reads results/factorial_v2_lr/runs.csv and writes study/specs/factorial_v2.yaml: each
   (architecture, data set, normalization, optimizer, arm) at the learning rate with the best mean
   validation accuracy over the selection seeds (ties: the smaller lr), for every noise kind.

Why this design (the spec's description says it in full): the first factorial (results/factorial) spent
half its conditions where nothing trained. The budget pilot (benchmarks/pilot_budget.py, committed in
benchmarks/README.md) showed: MNIST-1D's digital twin reaches 23-34 % validation accuracy after 20
epochs (4x the first design's budget) - far from the >90 % its authors report after much longer
training - so the level is dropped; plain row-wise `l2norm` leaves the CNN on mnist5k at chance after 20
epochs under both optimizers and the MLP with SGD at 12-47 %, so it is dropped (its max-normalised
variants `l2norm_m` and `l2norm_wm` stay); the digits CNN needs 20 epochs (digital twin 49 % after 5, 93 %
after 20 with Adam), so digits trains 20 epochs, mnist5k 5 (analog reference 78-84 % after 5).
Structural factors crossed in full: architecture (2) x data set (2) x normalization (3) x noise kind (5)
x optimizer (2) = 120 conditions; precision (4, 16, 64, full), rounding and leakage laid over them by
cyclic assignment (each precision 30 times, 10 times per normalization; see `conditions`).

    python benchmarks/design_factorial_v2.py --lr-spec
    python benchmarks/design_factorial_v2.py --spec [--seeds N]
    python benchmarks/design_factorial_v2.py --check    # exit 1 if a committed spec differs
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "study" / "specs"
LR_STUDY = "factorial_v2_lr"
STUDY = "factorial_v2"

ARCHS = ["mlp", "cnn"]
DATASETS = ["mnist5k", "digits"]
EPOCHS = {"mnist5k": 5, "digits": 20}  # budget pilot: what lets each data set's reference arm train
NORMS = ["clamp", "l2norm_m", "l2norm_wm"]
NOISES = ["none", "gaussian", "poisson", "laplacian", "uniform"]
PRECISIONS: list[int | None] = [4, 16, 64, None]
ROUNDINGS = ["reduce", "stochastic"]
LEAKAGES = [0.2, 0.5]
OPTIMIZERS = {"adam": 0.0, "sgd": 0.9}  # optimizer -> momentum
# first registered as Adam 3e-4..1e-2 and SGD 0.01..0.3 (4 points each); 48 of the 72 choices fell on an
# edge, so both grids were extended by one half-decade at each end; then 19 did (17 of them signal-ste
# arms at the low end: a collapsing arm loses least at the smallest lr), so once more by a half-decade at
# each end, before factorial_v2 was written
LR_GRID = {
    "adam": [0.00003, 0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1],
    "sgd": [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0],
}
ARMS = [("exact", "exact"), ("ste", "exact"), ("exact", "ste")]  # (weight_policy, signal_policy)
SELECTION_SEEDS = [900, 901]
SCREEN_SEEDS = [910, 911]
BASE = {"hidden": [256, 128], "activation": "gelu", "noise_precision": 16, "batch_size": 128}


def conditions() -> list[dict[str, Any]]:
    """The 120 conditions. Block b = (architecture, data set, optimizer) index (0..7); within it the 15
    (noise, norm) cells get precision PRECISIONS[(noise + norm + b) % 4] (over the 8 blocks every (noise,
    norm) pair meets each precision twice), rounding ROUNDINGS[(noise + b // 2) % 2] and, for the noisy
    kinds, leakage LEAKAGES[(norm + b) % 2]."""
    out = []
    b = 0
    for arch in ARCHS:
        for dataset in DATASETS:
            for opt, momentum in OPTIMIZERS.items():
                for k, noise in enumerate(NOISES):
                    for n, norm in enumerate(NORMS):
                        out.append(
                            {
                                "arch": arch,
                                "dataset": dataset,
                                "epochs": EPOCHS[dataset],
                                "norm": norm,
                                "precision": PRECISIONS[(k + n + b) % 4],
                                "noise": noise,
                                "leakage": LEAKAGES[(n + b) % 2] if noise != "none" else None,
                                "precision_class": ROUNDINGS[(k + b // 2) % 2],
                                "optimizer": opt,
                                "momentum": momentum,
                            }
                        )
                b += 1
    return out


def _factors(cells: list[dict[str, Any]]) -> dict[str, list[Any]]:
    names = list(cells[0])
    return {name: list(dict.fromkeys(c[name] for c in cells)) for name in names}


def lr_spec() -> dict[str, Any]:
    cells = []
    for arch in ARCHS:
        for dataset in DATASETS:
            for norm in NORMS:
                for opt, momentum in OPTIMIZERS.items():
                    for lr in LR_GRID[opt]:
                        for wp, sp in ARMS:
                            cells.append(
                                {
                                    "arch": arch,
                                    "dataset": dataset,
                                    "epochs": EPOCHS[dataset],
                                    "norm": norm,
                                    "optimizer": opt,
                                    "momentum": momentum,
                                    "lr": lr,
                                    "weight_policy": wp,
                                    "signal_policy": sp,
                                }
                            )
    factors = _factors(cells)
    return {
        "name": LR_STUDY,
        "description": (
            "Learning-rate selection for factorial_v2 (issue #28, item 6): each (architecture, data set, "
            "normalization, optimizer) x policy arm at every lr of its optimizer's grid (Adam "
            f"{LR_GRID['adam']}, SGD with momentum 0.9 {LR_GRID['sgd']}), at the core noise setting "
            "(Gaussian, leakage 0.5, 16 levels, deterministic rounding), on the selection seeds "
            f"{SELECTION_SEEDS} that factorial_v2 never evaluates; the test split is never evaluated "
            "(eval_test: false). benchmarks/design_factorial_v2.py --spec picks, per cell, the lr with the "
            "best mean final validation accuracy (ties: the smaller lr) and writes it into factorial_v2's "
            "cells. No hypotheses are tested on these trials. Generated by benchmarks/design_factorial_v2.py."
        ),
        "base": {
            **BASE,
            "precision": 16,
            "noise": "gaussian",
            "leakage": 0.5,
            "precision_class": "reduce",
            "eval_test": False,
            "diagnostics": False,
        },
        "factors": factors,
        "exclude": [{"arch": factors["arch"]}],
        "include": cells,
        "seeds": SELECTION_SEEDS,
        "hypotheses": {"metric": "val_acc", "comparisons": []},
    }


def choose_lrs(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (arch, dataset, norm, optimizer, arm): mean final val_acc per lr and the chosen lr (best mean;
    ties and non-finite means as in study.sweep.tuning: the first in grid order, NaN the worst)."""
    keys = ["arch", "dataset", "norm", "optimizer", "weight_policy", "signal_policy"]
    runs = runs.assign(lr=runs["lr"].astype(float), val_acc=pd.to_numeric(runs["val_acc"], errors="coerce"))
    means = runs.groupby([*keys, "lr"], sort=False)["val_acc"].agg(["mean", "count"]).reset_index()
    rows = []
    for key, g in means.groupby(keys, sort=False):
        g = g.sort_values("lr")
        best = g.loc[g["mean"].fillna(-1.0).idxmax()]
        grid = LR_GRID[key[3]]
        rows.append(
            dict(zip(keys, key, strict=True))
            | {f"val_acc@{lr:g}": m for lr, m in zip(g["lr"], g["mean"], strict=True)}
            | {"chosen_lr": float(best["lr"]), "at_edge": float(best["lr"]) in (grid[0], grid[-1])}
        )
    return pd.DataFrame(rows)


# -- seeds by power -------------------------------------------------------------------------------------
# Planning values on the logit scale from the first factorial (results/factorial/stats/differences.csv),
# over its conditions that a screen like this one would pass (either arm >= 30 %, not mnist1d, not plain
# l2norm; at the weight site its Lp conditions only): residual SD of the condition means after the main
# effects 0.54 (signal) and 0.27 (weight) at 6 seeds, within-condition SD of the per-seed logit differences
# 0.27-0.28; so tau (between conditions, left by the factors) = sqrt(0.54^2 - 0.27^2/6) = 0.53 (signal)
# and sqrt(0.27^2 - 0.28^2/6) = 0.25 (weight), sigma = 0.28.
PLANNING = {"signal": (0.53, 0.28), "weight": (0.25, 0.28)}  # (tau, sigma), logit units
EFFECT = 0.3  # logit: the stated factor effect (e.g. 70 % -> 76 %, 90 % -> 92.4 %)
MODEL_TERMS = (
    "C(arch) + C(dataset) + C(norm) + C(noise) + leak_high + C(precision) + stochastic_finite + C(optimizer)"
    " + C(arch):C(dataset) + C(arch):C(norm) + C(norm):C(optimizer) + C(dataset):C(optimizer)"
)
DERIVED = {
    "leak_high": "leakage == '0.5'",
    "stochastic_finite": "(precision_class == 'stochastic') & (precision != 'none')",
}


def design_frame() -> pd.DataFrame:
    """The conditions as runs.csv spells them (text), with the derived columns of the effect model."""
    from study.analysis.stats.table import cell_text

    rows = [{k: cell_text(v) for k, v in c.items()} for c in conditions()]
    frame = pd.DataFrame(rows, dtype=object)
    for name, expression in DERIVED.items():
        frame[name] = frame.eval(expression, engine="python").astype(float)
    return frame


def simulate_power(
    n_seeds: int, tau: float, sigma: float, effect: float = EFFECT, reps: int = 4000, seed: int = 28
) -> float:
    """Power of the effect model's test that the policy effect differs between SGD and Adam - the
    difference of the two estimated marginal means of the optimizer, averaged over the design as
    study.analysis.stats.effects computes them (alpha 0.05, two-sided t on the condition means) - when
    the optimizer changes the policy effect by `effect`: condition means d_c = effect * [sgd] + u_c + the
    mean of n N(0, sigma^2), u_c ~ N(0, tau^2)."""
    import numpy as np
    from patsy import build_design_matrices, dmatrix
    from scipy import stats as st

    frame = design_frame()
    x = dmatrix(MODEL_TERMS, frame)
    xm = np.asarray(x)
    level = {
        o: np.asarray(build_design_matrices([x.design_info], frame.assign(optimizer=o))[0]).mean(0)
        for o in OPTIMIZERS
    }
    contrast = level["sgd"] - level["adam"]
    xtx_inv = np.linalg.pinv(xm.T @ xm)
    df = len(xm) - np.linalg.matrix_rank(xm)
    crit = st.t.ppf(0.975, df)
    rng = np.random.default_rng(seed)
    sd = np.sqrt(tau**2 + sigma**2 / n_seeds)
    sgd = (frame["optimizer"] == "sgd").to_numpy(dtype=float)
    y = effect * sgd[:, None] + rng.normal(0.0, sd, (len(xm), reps))
    beta = xtx_inv @ xm.T @ y
    resid = y - xm @ beta
    s2 = (resid**2).sum(axis=0) / df
    t = (contrast @ beta) / np.sqrt(s2 * (contrast @ xtx_inv @ contrast))
    return float(np.mean(np.abs(t) > crit))


def power_table(seeds: range = range(2, 9)) -> pd.DataFrame:
    return pd.DataFrame(
        [{"seeds": n, **{site: simulate_power(n, *PLANNING[site]) for site in PLANNING}} for n in seeds]
    )


def seeds_by_power(table: pd.DataFrame, within: float = 0.02) -> int:
    """Fewest seeds whose power (both sites) is within `within` of the table's most seeds: past it, seeds
    buy almost nothing for the factor effects (the between-condition spread tau dominates)."""
    best = table.iloc[-1]
    ok = table[(best["signal"] - table["signal"] <= within) & (best["weight"] - table["weight"] <= within)]
    return int(ok["seeds"].min())


def lr_choice(runs_path: Path) -> pd.DataFrame:
    runs = pd.read_csv(runs_path, dtype=str, keep_default_na=False)
    if (runs["status"] != "done").any():
        raise SystemExit(
            f"{runs_path}: {int((runs['status'] != 'done').sum())} trials not done; finish the study"
        )
    return choose_lrs(runs)


def study_spec(choice: pd.DataFrame, seeds: int, power: pd.DataFrame) -> dict[str, Any]:
    """factorial_v2: every condition x arm at the arm's selected lr; screen, hypotheses, effect model."""
    key = ["arch", "dataset", "norm", "optimizer", "weight_policy", "signal_policy"]
    lr = {tuple(r[k] for k in key): float(r["chosen_lr"]) for _, r in choice.iterrows()}
    cells = []
    for cond in conditions():
        for wp, sp in ARMS:
            chosen = lr[(cond["arch"], cond["dataset"], cond["norm"], cond["optimizer"], wp, sp)]
            cells.append({**cond, "lr": chosen, "weight_policy": wp, "signal_policy": sp})
    factors = _factors(cells)
    factors["lr"] = sorted(factors["lr"])
    edge = choice[choice["at_edge"]]
    edges = (
        "none"
        if edge.empty
        else "; ".join(
            f"{r['arch']}/{r['dataset']}/{r['norm']}/{r['optimizer']}/"
            f"{r['weight_policy']}-{r['signal_policy']} at {r['chosen_lr']:g}"
            for _, r in edge.iterrows()
        )
    )
    pw = {int(r["seeds"]): (r["signal"], r["weight"]) for _, r in power.iterrows()}
    description = (
        "The second factorial design (issue #28): does the answer hold across architectures, data sets, "
        "L2 normalizations, precisions, noise kinds, rounding and optimizers - measured only where the "
        "networks train, each policy arm at its own learning rate? Generated by "
        "benchmarks/design_factorial_v2.py --spec (do not edit the include list by hand). "
        "Conditions (120): architecture (mlp: 784-256-128-10 or 64-256-128-10; cnn: two conv-GeLU-maxpool "
        "blocks of 4 and 8 channels, then the same dense layers) x data set (mnist5k, 5 epochs; digits "
        "8x8, 20 epochs) x normalization at both sites (clamp, l2norm_m, l2norm_wm) x noise kind (none, "
        "gaussian, poisson, laplacian, uniform) x optimizer (Adam; SGD with momentum 0.9) crossed in full; "
        "precision (4, 16, 64 levels, full), rounding (reduce, stochastic) and leakage (0.2, 0.5; noisy "
        "kinds) laid over them cyclically (each precision in 30 conditions, 10 per normalization). What the "
        "first design (results/factorial) taught, and what changed: 59 of its 120 conditions did not train "
        "(best arm < 20 %); a budget pilot (benchmarks/pilot_budget.py, 2 seeds, validation only) showed "
        "MNIST-1D's digital twin at 23-34 % after 20 epochs and plain row-wise l2norm's CNN at chance, so "
        "both levels are dropped; digits gets 20 epochs (its CNN's digital twin: 49 % after 5, 93 % after "
        "20). Trainability screen (pre-registered, `screen`): per condition the reference arm "
        "(weight/signal exact/exact, at its own lr) and its digital twin train on seeds 910 and 911 without "
        "touching the test split; the condition passes when the reference arm's mean final validation "
        "accuracy is >= chance + 20 pp = 30 %. The primary analysis (stats/) covers the conditions that "
        "pass; every condition's evaluation trials run anyway and the sensitivity analysis (stats_all/) "
        "covers all; screened-out conditions are listed with their screen accuracy. Learning rates: each "
        "(architecture, data set, normalization, optimizer) x policy arm at the lr with the best mean final "
        f"validation accuracy over seeds {SELECTION_SEEDS} (study factorial_v2_lr: Adam "
        f"{LR_GRID['adam']}, SGD {LR_GRID['sgd']}; the core noise setting), never the evaluation seeds or "
        f"the test split; `lr` is an arm factor (arm_factors), so arms pair across their own lrs; choices "
        f"at a grid edge: {edges}. Policy arms per condition: weight/signal exact/exact, ste/exact, "
        "exact/ste; each site's exact-vs-ste effect is a paired difference by seed. Pre-registered "
        "hypotheses, written before any trial of this study ran. Metric: test_acc_mean (mean of 5 noise "
        "draws). H1 (per condition, primary): at each site exact vs ste, paired t-test with its 95% t "
        "interval, TOST margin 0.5 pp, Holm within role, over the conditions that pass the screen. H2 "
        "(signal): the signal-site effect (exact - ste) is positive on average and within each "
        "architecture, data set and optimizer: the effect model's marginal means (logit scale) have 95% "
        "CIs above 0. H3 (weight): under clamp the two weight policies give bit-identical runs (equal "
        "checksums) wherever no weight reaches the bound; with the L2 norms the first design's +3.2 pp "
        "for exact came almost entirely from SGD at one shared lr (Adam +0.9 [-0.0, 1.8], SGD +7.7 "
        "[5.0, 10.5]): at each arm's own lr we test whether the weight-site marginal mean over the L2 "
        "conditions differs from 0 and whether it differs between SGD and Adam (optimizer marginal "
        "means); no direction is predicted. Effect model (hypotheses.effect_model, scale logit): per site, "
        "d = logit(a) - logit(b) per condition and seed, least squares on the condition means over the "
        f"formula, with empirical-Bayes partially pooled per-condition effects beside the raw verdicts. "
        f"Seeds by power (benchmarks/design_factorial_v2.py --power): simulating this design's effect "
        f"model with the first design's residual spreads (logit; signal tau 0.53, weight tau 0.25, "
        f"within-condition sigma 0.28), the power to detect a {EFFECT} logit difference of the policy "
        f"effect between SGD and Adam is {pw[2][0]:.2f}/{pw[2][1]:.2f} (signal/weight) at 2 seeds, "
        f"{pw[seeds][0]:.2f}/{pw[seeds][1]:.2f} at {seeds} and {pw[8][0]:.2f}/{pw[8][1]:.2f} at 8: the "
        "between-condition spread, not the seeds, limits it; "
        f"{seeds} seeds is the fewest within 2 pp of 8 seeds' power at both sites. Per-condition verdicts "
        f"at {seeds} seeds are coarse (t interval half-width ~1.6 within-condition SDs); the effect model "
        "is the primary generality result. Run order: conditions in spec order (cells listed in a seeded "
        "random order)."
    )
    import random

    random.Random(28).shuffle(cells)
    return {
        "name": STUDY,
        "description": description,
        "base": {**BASE},
        "factors": factors,
        "exclude": [{"arch": factors["arch"]}],
        "include": cells,
        "arm_factors": ["lr"],
        "seeds": seeds,
        "screen": {
            "seeds": SCREEN_SEEDS,
            "arm": {"weight_policy": "exact", "signal_policy": "exact"},
            "metric": "val_acc",
            "chance": 10.0,
            "min_above_chance": 20.0,
        },
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
                "marginal": ["arch", "dataset", "norm", "optimizer"],
                "scale": "logit",
            },
        },
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lr-spec", action="store_true")
    ap.add_argument("--power", action="store_true", help="print the power table and exit")
    ap.add_argument("--spec", action="store_true", help="write factorial_v2.yaml from the lr study")
    ap.add_argument("--check", action="store_true", help="exit 1 if a committed spec is not what it writes")
    ap.add_argument("--seeds", type=int, default=None, help="seeds per cell (default: by power)")
    args = ap.parse_args(argv)
    if args.power:
        print(f"power to detect a {EFFECT} logit difference of the policy effect between SGD and Adam:")
        print(power_table().to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        return 0
    if args.check:  # the committed specs are what this script writes from the committed selection
        lr_text = yaml.safe_dump(lr_spec(), sort_keys=False, width=110)
        stale = [] if (SPECS / f"{LR_STUDY}.yaml").read_text().endswith(lr_text) else [LR_STUDY]
        committed = yaml.safe_load((SPECS / f"{STUDY}.yaml").read_text())
        power = power_table()
        fresh = study_spec(lr_choice(ROOT / "results" / LR_STUDY / "runs.csv"), committed["seeds"], power)
        stale += [] if fresh == committed else [STUDY]
        print("specs up to date" if not stale else f"stale: {', '.join(stale)} (regenerate them)")
        return 1 if stale else 0
    if args.spec:
        power = power_table()
        seeds = args.seeds or seeds_by_power(power)
        choice = lr_choice(ROOT / "results" / LR_STUDY / "runs.csv")
        print(choice.to_string(index=False))
        path = SPECS / f"{STUDY}.yaml"
        text = "# Generated by benchmarks/design_factorial_v2.py --spec - regenerate, do not edit.\n"
        path.write_text(text + yaml.safe_dump(study_spec(choice, seeds, power), sort_keys=False, width=110))
        print(f"wrote {path} ({seeds} seeds)")
        return 0
    if args.lr_spec:
        path = SPECS / f"{LR_STUDY}.yaml"
        text = "# Generated by benchmarks/design_factorial_v2.py --lr-spec - regenerate, do not edit.\n"
        path.write_text(text + yaml.safe_dump(lr_spec(), sort_keys=False, width=110))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
