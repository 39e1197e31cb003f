"""The same small grid with 1 and 2 local workers and through Dask, side by side.

    python benchmarks/bench_sweep.py [--seeds 16] [--bundle 1]

Prints trials per minute, the parallel efficiency of 2 workers (speed-up / 2) and Dask's speed
relative to the local executor with the same number of workers. Worker start-up is included (it is
part of what a user waits for); each run starts from an empty output folder.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from study.sweep.runner import run_study
from study.sweep.spec import parse_spec

GRID = {
    "name": "benchsweep",
    "base": {"dataset": "digits", "hidden": [128, 64], "epochs": 8, "batch_size": 64, "diagnostics": False},
    "factors": {"weight_policy": ["ste", "exact"], "signal_policy": ["ste", "exact"]},
}


def timed(spec, executor: str, workers: int, bundle: int) -> tuple[float, float]:
    """Wall seconds of the whole sweep, and the mean wall time of one trial inside its worker."""
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        counts = run_study(spec, out=Path(out), workers=workers, executor=executor, bundle=bundle, quiet=True)
        seconds = time.perf_counter() - start
        assert counts["failed"] == 0 and counts["todo"] == 0, counts
        walls = [json.loads(p.read_text())["wall_time_s"] for p in Path(out).glob("*/trials/*/record.json")]
    return seconds, sum(walls) / len(walls)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--bundle", type=int, default=1)
    args = parser.parse_args()
    spec = parse_spec({**GRID, "seeds": args.seeds})
    n = 4 * args.seeds
    runs = [("local", 1), ("local", 2), ("dask", 2)]
    results = {r: timed(spec, *r, args.bundle) for r in runs}
    print(f"grid: {n} trials (digits, 64-128-64-10, 8 epochs), bundle {args.bundle}")
    print(f"{'executor':>9} {'workers':>8} {'seconds':>8} {'trials/min':>11} {'s/trial in worker':>18}")
    for (ex, w), (s, per_trial) in results.items():
        print(f"{ex:>9} {w:>8} {s:>8.1f} {60 * n / s:>11.1f} {per_trial:>18.3f}")
    results = {k: v[0] for k, v in results.items()}
    speedup = results[("local", 1)] / results[("local", 2)]
    print(f"2 workers vs 1: {speedup:.2f}x (parallel efficiency {speedup / 2:.0%}; target >= 1.7x)")
    print(
        f"dask vs local (2 workers): {results[('local', 2)] / results[('dask', 2)]:.2f}x the speed "
        f"(target: within 10%)"
    )


if __name__ == "__main__":
    main()
