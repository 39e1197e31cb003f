"""Training-budget pilot for `factorial_v2` (issue #28, item 2): validation accuracy per epoch of the
digital twin and of the reference analog arm (weight/signal exact/exact) for every (arch, dataset, norm,
optimizer) of the first factorial design, on seeds the study never evaluates (1000, 1001). The test
split is never evaluated. Prints one row per setting with the validation accuracy after 5, 10 and 20
epochs, so that the study's epochs (or the dropping of a level) can be chosen from it.

    python benchmarks/pilot_budget.py [--epochs 20] [--workers 2] [--out pilot.csv]
"""

from __future__ import annotations

import argparse
import itertools
import os
from concurrent.futures import ProcessPoolExecutor

import pandas as pd

BASE = dict(
    hidden=(256, 128),
    activation="gelu",
    noise_precision=16,
    batch_size=128,
    eval_test=False,
    diagnostics=False,
    precision=16,
    noise="gaussian",
    leakage=0.5,
    weight_policy="exact",
    signal_policy="exact",
)
OPTIMIZERS = {"adam": dict(optimizer="adam", lr=1e-3), "sgd": dict(optimizer="sgd", momentum=0.9, lr=0.05)}
SEEDS = (1000, 1001)


def _run(job: dict) -> dict:
    import torch

    torch.set_num_threads(1)
    from study.training.trial import run_trial

    rec = run_trial(job["config"])
    out = {k: v for k, v in job.items() if k != "config"}
    for row in rec["history"]:
        out[f"val_acc@{row['epoch'] + 1}"] = row["val_acc"]
    out["wall_s"] = rec["wall_time_s"]
    return out


def jobs(epochs: int) -> list[dict]:
    out = []
    for arch, dataset, (opt, o), seed in itertools.product(
        ("mlp", "cnn"), ("mnist5k", "digits", "mnist1d"), OPTIMIZERS.items(), SEEDS
    ):
        settings = [("digital", "clamp", {"digital": True})]
        settings += [
            (f"analog {n}", n, {"weight_norm": n, "signal_norm": n})
            for n in ("clamp", "l2norm", "l2norm_m", "l2norm_wm")
        ]
        for arm, norm, extra in settings:
            cfg = {**BASE, **o, **extra, "arch": arch, "dataset": dataset, "epochs": epochs, "seed": seed}
            out.append(
                dict(arch=arch, dataset=dataset, optimizer=opt, arm=arm, norm=norm, seed=seed, config=cfg)
            )
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    with ProcessPoolExecutor(args.workers) as pool:
        rows = list(pool.map(_run, jobs(args.epochs)))
    frame = pd.DataFrame(rows)
    if args.out:
        frame.to_csv(args.out, index=False)
    cols = [c for c in (f"val_acc@{e}" for e in (1, 5, 10, 20, args.epochs)) if c in frame]
    table = frame.groupby(["arch", "dataset", "optimizer", "arm"], sort=False)[
        [*dict.fromkeys(cols), "wall_s"]
    ]
    print(table.mean().round(1).to_string())


if __name__ == "__main__":
    main()
