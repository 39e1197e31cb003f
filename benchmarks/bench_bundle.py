"""Seed bundles vs one-by-one training, in the `core` study's setting: trials per minute and peak memory.

Each K runs in its own subprocess (1 torch thread) so its peak RSS is its own:

    python benchmarks/bench_bundle.py [--epochs 2] [--ks 1,4,8,16,32] [--setting core|small]

K = 1 is the sequential path (`run_trial`); K > 1 trains K seeds as one vectorised model
(`run_bundle`). Each K runs `--repeats` times (default 3, in interleaved rounds); the table shows
the median trials/min with its range, the speed-up over K = 1 and the largest peak RSS, then a
least-squares line through the bundles' times, seconds = fixed + marginal * K: `marginal` is what one
more member costs inside a bundle, so (K = 1 seconds) / marginal is the speed-up no bundle size can
exceed (Amdahl's law for the part of a trial that bundling shares).

`core` is the core study's setting; `small` is the same analog network shrunk to the size where a
step is dominated by per-operation overhead (8x8 digits, 64-32-10), for comparison.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

CORE = {
    "dataset": "mnist5k",
    "hidden": [256, 128],
    "activation": "gelu",
    "weight_norm": "clamp",
    "signal_norm": "clamp",
    "precision": 16,
    "noise": "gaussian",
    "leakage": 0.5,
    "weight_policy": "ste",
    "signal_policy": "exact",
    "diagnostics": True,
}
SETTINGS = {
    "core": CORE,
    "small": {**CORE, "dataset": "digits", "hidden": [64, 32], "batch_size": 64},
    "medium": {**CORE, "dataset": "digits", "hidden": [256, 128]},
    "cnn": {**CORE, "dataset": "digits", "arch": "cnn", "channels": [4, 8], "hidden": [32]},
    "cnn_mnist": {**CORE, "arch": "cnn", "channels": [4, 8], "hidden": [32]},
}
DESCRIPTION = {
    "core": "mnist5k, 784-256-128-10",
    "small": "digits, 64-64-32-10",
    "medium": "digits, 64-256-128-10",
    "cnn": "digits, CNN 4-8 channels, 32 hidden",
    "cnn_mnist": "mnist5k, CNN 4-8 channels, 32 hidden",
}


def one(k: int, epochs: int, setting: str) -> dict:
    import torch

    torch.set_num_threads(1)
    from study.training.bundle import run_bundle
    from study.training.data import load_split
    from study.training.trial import run_trial

    base = SETTINGS[setting]
    load_split(base["dataset"])  # data loading is not what is measured
    configs = [{**base, "epochs": epochs, "seed": s} for s in range(k)]
    start = time.perf_counter()
    if k == 1:
        run_trial(configs[0])
    else:
        run_bundle(configs)
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"k": k, "seconds": seconds, "trials_per_min": 60 * k / seconds, "peak_rss_mb": peak_mb}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--ks", default="1,4,8,16,32")
    parser.add_argument("--setting", choices=sorted(SETTINGS), default="core")
    parser.add_argument("--repeats", type=int, default=3, help="runs per K; the table shows the median")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(one(args.one, args.epochs, args.setting)))
        return
    rows = []
    ks = list(map(int, args.ks.split(",")))
    # rounds interleave the Ks so that a slow spell of the machine hits every K alike
    runs: dict[int, list[dict]] = {k: [] for k in ks}
    for rnd in range(args.repeats):
        for k in ks:
            cmd = [sys.executable, __file__, "--one", str(k), "--epochs", str(args.epochs)]
            out = subprocess.run(
                [*cmd, "--setting", args.setting], capture_output=True, text=True, check=True
            )
            runs[k].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"  round {rnd + 1}/{args.repeats}: K={k} done", file=sys.stderr)
    for k in ks:
        seconds = statistics.median(r["seconds"] for r in runs[k])
        rows.append(
            {
                "k": k,
                "seconds": seconds,
                "trials_per_min": 60 * k / seconds,
                "range": (
                    min(60 * k / r["seconds"] for r in runs[k]),
                    max(60 * k / r["seconds"] for r in runs[k]),
                ),
                "peak_rss_mb": max(r["peak_rss_mb"] for r in runs[k]),
            }
        )
    base = next(r for r in rows if r["k"] == 1)["trials_per_min"] if any(r["k"] == 1 for r in rows) else None
    print(
        f"{args.setting} setting ({DESCRIPTION[args.setting]}, clamp, 2**4 levels, Gaussian leakage 0.5), "
        f"{args.epochs} epochs per trial, 1 torch thread, median of {args.repeats} runs per K"
    )
    print(f"{'K':>4} {'seconds':>9} {'trials/min':>11} {'(min-max)':>15} {'vs K=1':>7} {'peak RSS MiB':>13}")
    for r in rows:
        ratio = f"{r['trials_per_min'] / base:.2f}x" if base else "-"
        spread = f"({r['range'][0]:.0f}-{r['range'][1]:.0f})"
        print(
            f"{r['k']:>4} {r['seconds']:>9.1f} {r['trials_per_min']:>11.2f} {spread:>15} {ratio:>7} "
            f"{r['peak_rss_mb']:>13.0f}"
        )
    bundles = [r for r in rows if r["k"] > 1]
    if base and len(bundles) >= 2:
        ks = [r["k"] for r in bundles]
        secs = [r["seconds"] for r in bundles]
        marginal, fixed = statistics.linear_regression(ks, secs)
        k1 = next(r for r in rows if r["k"] == 1)["seconds"]
        print(
            f"bundle seconds ~ {fixed:.2f} + {marginal:.3f} * K; one trial alone {k1:.2f} s; "
            f"ceiling on the speed-up (K -> inf): {k1 / marginal:.2f}x"
        )


if __name__ == "__main__":
    main()
