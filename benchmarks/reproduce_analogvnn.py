"""Reproduce AnalogVNN: its sample model and ours, same setting, several seeds each, side by side.

    python benchmarks/reproduce_analogvnn.py [--seeds 5] [--epochs 10]

Setting (AnalogVNN's sample code): 784-256-128-10 with GeLU after every layer, Clamp, ReducePrecision
with 2**4 levels, Gaussian noise of leakage 0.5 on signals and weights, Adam (lr 1e-3), batch 128, on
the `mnist5k` split (3,500 train / 1,000 test images). (a) AnalogVNN 1.0.8 trained with its own
`train_on` / `test_on`; (b) ours, `study.training.trial.run_trial` with the `analogvnn` policies (weights ste,
signals exact). Prints mean ± sd of the final test accuracy of both, the difference (b − a) with a
95% Welch CI, and the time per trial. Known semantic difference: AnalogVNN 1.0.8's GeLU backward is
wrong (see tests/test_parity_analogvnn.py); ours uses the true derivative.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))


def fix_analogvnn_gelu() -> None:
    """Replace AnalogVNN 1.0.8's GeLU backward by the true derivative 0.5(1 + erf(x/√2)) + x φ(x)."""
    import math

    from analogvnn.nn.activation.Gaussian import GeLU

    def backward(self, grad_output):  # noqa: ANN001, ANN202 - AnalogVNN's signature
        x = self.inputs
        grad = 0.5 * (1 + torch.erf(x / math.sqrt(2))) + x * torch.exp(-(x**2) / 2) / math.sqrt(2 * math.pi)
        return grad_output * grad

    GeLU.backward = backward


def analogvnn_trial(seed: int, epochs: int) -> float:
    import bench_step

    from study.training.data import load_split

    data = load_split("mnist5k")
    torch.manual_seed(seed)
    train_epoch = bench_step.build_analogvnn()
    train = DataLoader(
        TensorDataset(data.train_x, data.train_y),
        batch_size=128,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    test = DataLoader(TensorDataset(data.test_x, data.test_y), batch_size=1000)
    for e in range(epochs):
        train_epoch(train, e)
    with contextlib.redirect_stdout(io.StringIO()):
        _, acc = train_epoch.model.test_on(test, epoch=epochs)
    return 100.0 * acc


def ours_trial(seed: int, epochs: int) -> float:
    from study.training.trial import run_trial

    rec = run_trial({"dataset": "mnist5k", "epochs": epochs, "seed": seed, "diagnostics": False})
    return rec["test_acc"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument(
        "--fix-gelu",
        action="store_true",
        help="give AnalogVNN's GeLU its true derivative (isolates that known difference)",
    )
    args = parser.parse_args()
    if args.fix_gelu:
        fix_analogvnn_gelu()
    if args.seeds < 2:
        parser.error("--seeds: at least 2 (a standard deviation needs two)")
    torch.set_num_threads(1)
    results: dict[str, list[float]] = {"AnalogVNN 1.0.8": [], "normgrad analog/": []}
    times: dict[str, list[float]] = {k: [] for k in results}
    for seed in range(args.seeds):
        for name, fn in (("AnalogVNN 1.0.8", analogvnn_trial), ("normgrad analog/", ours_trial)):
            start = time.perf_counter()
            results[name].append(fn(seed, args.epochs))
            times[name].append(time.perf_counter() - start)
            print(f"  seed {seed} {name}: {results[name][-1]:.2f}%", file=sys.stderr)
    print(
        f"mnist5k, {args.epochs} epochs, {args.seeds} seeds each, 1 torch thread"
        f"{', AnalogVNN GeLU backward corrected' if args.fix_gelu else ''}"
    )
    print(f"{'model':<18} {'test acc mean ± sd (%)':>24} {'s/trial':>8}")
    for name, accs in results.items():
        print(
            f"{name:<18} {statistics.mean(accs):>15.2f} ± {statistics.stdev(accs):<6.2f} "
            f"{statistics.mean(times[name]):>8.1f}"
        )
    a, b = np.array(results["AnalogVNN 1.0.8"]), np.array(results["normgrad analog/"])
    res = stats.ttest_ind(b, a, equal_var=False)
    ci = res.confidence_interval(0.95)
    print(
        f"difference (ours - AnalogVNN): {b.mean() - a.mean():+.2f} pp, 95% Welch CI "
        f"[{ci.low:+.2f}, {ci.high:+.2f}], p = {res.pvalue:.3f}; within 2 pp: {abs(b.mean() - a.mean()) <= 2}"
    )


if __name__ == "__main__":
    main()
