"""Size and time the `mechanism` study (study/specs/mechanism.yaml) before running it.

    python benchmarks/size_mechanism.py                      # seeds from results/core, trial counts
    python benchmarks/size_mechanism.py --time --trials 2    # also measure s/trial (bundle 8 and 1)

Seeds: the smallest n whose 95% t-interval of a mean paired difference has half-width <= `--half-width`
(0.5 pp) at the largest paired-difference SD of the core study's primary comparisons that are not
identical (results/core/stats/comparisons.csv: signal exact vs ste, SD 2.443 pp). The statistics stage
reports BCa bootstrap intervals, which for n ~ 100 paired differences are as wide as the t-interval
to within a few percent.

Time: `--time` trains, with one torch thread as the study runner does, one bundle of 8 seeds and
`--trials` trials one by one, in the costliest cell of each data set (the spec's cells and base: for
each data set, the cell listed as `costliest` below), and prints s/trial; the wall time of the study
is then (trials of each data set x its s/trial at bundle 8) / workers.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import pandas as pd
from scipy import stats as sst

ROOT = Path(__file__).resolve().parent.parent
CORE_COMPARISONS = ROOT / "results" / "core" / "stats" / "comparisons.csv"
COSTLIEST = {"signal_policy": "ste", "readout": "analog"}  # all-ste: the core study's slowest cell


def half_width(sd: float, n: int, confidence: float = 0.95) -> float:
    """Half-width of the t-interval of a mean of `n` paired differences with SD `sd`."""
    return float(sst.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)


def seeds_for_half_width(sd: float, target: float = 0.5, confidence: float = 0.95) -> int:
    """Smallest n >= 2 with half_width(sd, n) <= target."""
    if not (sd >= 0 and target > 0):
        raise ValueError(f"need sd >= 0 and target > 0, got sd={sd!r}, target={target!r}")
    n = 2
    while half_width(sd, n, confidence) > target:
        n += 1
    return n


def core_primary_sd(path: Path = CORE_COMPARISONS) -> tuple[float, str]:
    """The largest SD of paired differences among the core study's non-identical primary rows."""
    table = pd.read_csv(path)
    rows = table[(table["role"] == "primary") & (table["verdict"] != "identical")]
    best = rows.loc[rows["sd_diff"].idxmax()]
    return float(best["sd_diff"]), str(best["comparison"])


def trial_counts(spec_name: str = "mechanism") -> dict[str, int]:
    """Trials per data set of the spec (cells x seeds, after its exclude rules)."""
    from study.sweep.spec import cells, load_spec

    spec = load_spec(spec_name)
    counts: dict[str, int] = {}
    for cell in cells(spec):
        dataset = cell.get("dataset", spec.base.get("dataset", "mnist5k"))
        counts[dataset] = counts.get(dataset, 0) + len(spec.seed_list)
    return counts


def time_cell(dataset: str, bundle: int, trials: int, spec_name: str = "mechanism") -> float:
    """Seconds per trial of the costliest cell of `dataset`: `trials` seeds, in bundles of `bundle`."""
    import torch

    from study.sweep.spec import load_spec, resolve_config
    from study.training.bundle import run_bundle
    from study.training.data import load_split
    from study.training.trial import run_trial

    torch.set_num_threads(1)
    spec = load_spec(spec_name)
    cell = {**COSTLIEST, "dataset": dataset}
    configs = [resolve_config(spec.base, cell, seed) for seed in range(trials)]
    load_split(dataset)  # data loading (cached) is not what is measured
    start = time.perf_counter()
    if bundle == 1:
        for c in configs:
            run_trial(c)
    else:
        for i in range(0, len(configs), bundle):
            run_bundle(configs[i : i + bundle])
    return (time.perf_counter() - start) / len(configs)


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--half-width", type=float, default=0.5, help="target CI half-width, pp")
    parser.add_argument("--time", action="store_true", help="measure s/trial (bundle 8 and 1)")
    parser.add_argument("--trials", type=int, default=2, help="trials timed one by one")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    sd, comparison = core_primary_sd()
    n = seeds_for_half_width(sd, args.half_width)
    out: dict = {
        "core_sd_pp": sd,
        "core_comparison": comparison,
        "seeds_needed": n,
        "half_width_at_seeds": round(half_width(sd, n), 4),
        "trials": trial_counts(),
    }
    if args.time:
        timing = {}
        for dataset in out["trials"]:
            timing[dataset] = {
                "bundle_8": round(time_cell(dataset, 8, 8), 2),
                "bundle_1": round(time_cell(dataset, 1, args.trials), 2),
            }
        out["s_per_trial"] = timing
        total = sum(out["trials"][d] * timing[d]["bundle_8"] for d in timing)
        out["estimated_minutes"] = round(total / args.workers / 60, 1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
