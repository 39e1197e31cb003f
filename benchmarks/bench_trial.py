"""A whole trial (`run_trial`) against the bare training loop of the same steps: what the trial adds.

    python benchmarks/bench_trial.py [--setting core|small|medium|cnn|cnn_mnist] [--epochs 10] [--repeats 5]

The bare loop trains the same network (same seed, init, data order, optimizer, steps) with nothing
else: no Lightning, no per-epoch evaluation, no diagnostics, no final evaluation, no record. Between
the two, the trial runs with parts switched off, so that each line adds one thing:

  bare            the training steps alone (a plain PyTorch loop)
  +lightning+val  run_trial with diagnostics off and eval_test off: Lightning's loop, the divergence
                  check, metrics, and the validation split evaluated each epoch
  +test           ... and the test split each epoch plus the final evaluation over `test_draws` noise
                  draws and with the noise off
  trial           the full trial: ... and the per-epoch gradient diagnostics (the probe)

All variants run in one process (1 torch thread) in interleaved rounds after one warm-up round; the
table shows the median seconds with the range and the ratio to the bare loop's median. The target
of issue #16 is trial / bare <= 1.25.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_bundle import SETTINGS  # noqa: E402 - the same settings (core = the core study's ste/exact cell)

from study.training.config import TrialConfig  # noqa: E402
from study.training.data import AnalogDataModule  # noqa: E402
from study.training.module import build_network, make_optimizer  # noqa: E402
from study.training.trial import run_trial, seed_all  # noqa: E402

VARIANTS = {
    "+lightning+val": {"diagnostics": False, "eval_test": False},
    "+test": {"diagnostics": False},
    "trial": {},
}


def bare_loop(config: TrialConfig) -> float:
    """Seconds for the trial's training steps alone, built as run_trial builds them."""
    start = time.perf_counter()
    data = AnalogDataModule(
        config.dataset, config.batch_size, config.seed, config.split_seed, config.data_dir, config.n_samples
    )
    data.setup("fit")
    seed_all(config.seed)
    net = build_network(config, data.n_features, data.n_classes)
    optimizer = make_optimizer(config, net.parameters())["optimizer"]
    net.train()
    for _ in range(config.epochs):
        for x, y in data.train_dataloader():
            optimizer.zero_grad()
            F.cross_entropy(net(x), y).backward()
            optimizer.step()
    return time.perf_counter() - start


def measure(setting: str, epochs: int, repeats: int, seed: int) -> dict[str, list[float]]:
    base = {**SETTINGS[setting], "epochs": epochs, "seed": seed}
    runs: dict[str, Any] = {"bare": lambda: bare_loop(TrialConfig.parse(base))}
    for name, change in VARIANTS.items():
        runs[name] = lambda change=change: run_trial({**base, **change})["wall_time_s"]
    times: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(repeats + 1):  # round 0 warms up (imports, data cache, allocator)
        for name, run in runs.items():
            t = run()
            if r:
                times[name].append(t)
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setting", choices=sorted(SETTINGS), default="core")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.repeats < 1:
        parser.error("--epochs and --repeats must be >= 1")
    torch.set_num_threads(1)
    times = measure(args.setting, args.epochs, args.repeats, args.seed)
    bare = statistics.median(times["bare"])
    print(
        f"setting {args.setting}: {SETTINGS[args.setting]['dataset']}, {args.epochs} epochs, "
        f"1 torch thread, median of {args.repeats} interleaved rounds (after 1 warm-up round)"
    )
    print(f"{'variant':<16} {'seconds':>8} {'(min-max)':>14} {'/ bare':>7}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:<16} {med:>8.3f} {f'({min(ts):.2f}-{max(ts):.2f})':>14} {med / bare:>6.2f}x")
    print(f"trial / bare = {statistics.median(times['trial']) / bare:.2f} (target <= 1.25)")


if __name__ == "__main__":
    main()
