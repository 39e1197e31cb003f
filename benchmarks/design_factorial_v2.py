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
LR_GRID = {"adam": [0.0003, 0.001, 0.003, 0.01], "sgd": [0.01, 0.03, 0.1, 0.3]}
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
        "base": {**BASE, "precision": 16, "noise": "gaussian", "leakage": 0.5, "precision_class": "reduce",
                 "eval_test": False, "diagnostics": False},
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lr-spec", action="store_true")
    args = ap.parse_args(argv)
    if args.lr_spec:
        path = SPECS / f"{LR_STUDY}.yaml"
        text = "# Generated by benchmarks/design_factorial_v2.py --lr-spec - regenerate, do not edit.\n"
        path.write_text(text + yaml.safe_dump(lr_spec(), sort_keys=False, width=110))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
