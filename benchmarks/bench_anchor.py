"""aihwkit-lightning 2.1.0 as a measured anchor: the same networks and data, trained with IBM's
hardware-aware training toolkit and with normgrad (analog and digital), side by side in one run.

Networks: the core MLP (784-256-128-10, GeLU after every layer) and the small CNN (``build_cnn`` with
channels 4, 8); data: ``mnist5k`` (study.training.data, split seed 0: 3,500 / 500 / 1,000); Adam lr 1e-3,
batch 128. normgrad trains through ``run_trial`` (AnalogVNN's protocol: clamp, 2**4 levels, Gaussian
leakage 0.5; and its digital twin). aihwkit-lightning trains the digital twin converted by its
``convert_to_analog`` with the settings of its own hardware-aware training recipe (``RPU`` below:
learned input ranges initialised from data with decay, 8-bit inputs, per-layer Gaussian weight clipping
after each step, weight noise and output noise in training, an output bound), with its
``AnalogOptimizer``; each epoch it evaluates the validation and test splits too, as run_trial does.
Repeats are interleaved (repeat r: every model once, seed r); ratios are per repeat, median (min-max).

aihwkit-lightning is an optional extra (``pip install -e '.[anchors]'``); it is imported lazily, so
nothing else needs it:

    python benchmarks/bench_anchor.py                 # --repeats 3 --epochs 2 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ARCHS = ("mlp", "cnn")
IMPLS = ("normgrad analog", "normgrad digital", "aihwkit-lightning")


def _aihwkit() -> Any:
    """The aihwkit_lightning package, or exit with a message saying how to install it."""
    try:
        import aihwkit_lightning  # noqa: F401
    except ImportError:
        sys.exit(
            "bench_anchor: aihwkit-lightning is not installed; install the optional extra with "
            "pip install -e '.[anchors]' (aihwkit-lightning==2.1.0, pins torch==2.13.0)"
        )
    return aihwkit_lightning


def rpu_config() -> Any:
    """aihwkit-lightning's hardware-aware training settings (TorchInferenceRPUConfig)."""
    from aihwkit_lightning.simulator.configs import (
        TorchInferenceRPUConfig,
        WeightClipType,
        WeightNoiseInjectionType,
    )

    rpu = TorchInferenceRPUConfig()
    rpu.forward.inp_res = 2**8 - 2  # 8-bit DAC on the (learned-range) inputs
    rpu.forward.out_noise = 0.04  # Gaussian output noise, relative to the input range x max|W|
    rpu.forward.out_bound = 10.0  # ADC bound, relative to the input range x max|W|
    rpu.clip.type = WeightClipType.LAYER_GAUSSIAN  # clip to +-2.5 std after every optimizer step
    rpu.clip.sigma = 2.5
    rpu.modifier.noise_type = WeightNoiseInjectionType.ADD_NORMAL  # weight noise in training
    rpu.modifier.std_dev = 0.1
    ir = rpu.pre_post.input_range
    ir.enable, ir.learn_input_range = True, True
    ir.init_from_data, ir.init_std_alpha = 100, 3.0  # first 100 batches: running mean of 3 std(x)
    ir.decay, ir.input_min_percentage = 0.001, 0.95
    return rpu


def _digital_twin(arch: str, seed: int) -> nn.Module:
    from analog.models import build_classifier, build_cnn

    torch.manual_seed(seed)
    if arch == "mlp":
        return build_classifier(784, 10, (256, 128), "gelu", digital=True)
    return build_cnn((1, 28, 28), 10, channels=(4, 8), digital=True)


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        acc = 100.0 * float((model(x).argmax(1) == y).float().mean())
    model.train()
    return acc


def train_aihwkit(arch: str, seed: int, epochs: int, data: Any) -> tuple[float, float]:
    """(test accuracy %, seconds per epoch incl. the per-epoch val and test evaluation)."""
    from aihwkit_lightning.nn.conversion import convert_to_analog
    from aihwkit_lightning.optim import AnalogOptimizer

    model = convert_to_analog(_digital_twin(arch, seed), rpu_config())
    model.train()
    opt = AnalogOptimizer(torch.optim.Adam, model.analog_layers, model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for _ in range(epochs):
        for idx in torch.randperm(len(data.train_y), generator=gen).split(128):
            loss = F.cross_entropy(model(data.train_x[idx]), data.train_y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        _accuracy(model, data.val_x, data.val_y)
        test = _accuracy(model, data.test_x, data.test_y)
    return test, (time.perf_counter() - start) / epochs


def train_normgrad(arch: str, seed: int, epochs: int, digital: bool) -> tuple[float, float]:
    """(test accuracy %, wall seconds of run_trial per epoch); analog: noise on at evaluation."""
    from study.training.config import TrialConfig
    from study.training.trial import run_trial

    cfg = TrialConfig(
        dataset="mnist5k",
        arch=arch,
        epochs=epochs,
        seed=seed,
        digital=digital,
        diagnostics=False,
        test_draws=1,
    )
    rec = run_trial(cfg)
    return float(rec["test_acc"]), float(rec["wall_time_s"]) / epochs


def _span(values: list[float], fmt: str = "{:.2f}") -> str:
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def main(argv: list[str] | None = None) -> int:
    """Train every (arch, implementation) `--repeats` times, interleaved; print accuracies, times, ratios."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--archs", default=",".join(ARCHS))
    args = p.parse_args(argv)
    aihwkit = _aihwkit()
    import logging
    import warnings

    from study.training.data import load_split

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    data = load_split("mnist5k")
    archs = [a for a in args.archs.split(",") if a]
    runners: dict[str, Callable[[str, int], tuple[float, float]]] = {
        "normgrad analog": lambda a, s: train_normgrad(a, s, args.epochs, False),
        "normgrad digital": lambda a, s: train_normgrad(a, s, args.epochs, True),
        "aihwkit-lightning": lambda a, s: train_aihwkit(a, s, args.epochs, data),
    }
    acc: dict[tuple[str, str], list[float]] = {}
    sec: dict[tuple[str, str], list[float]] = {}
    for r in range(args.repeats):
        for arch in archs:
            for impl in IMPLS:
                a, s = runners[impl](arch, r)
                acc.setdefault((arch, impl), []).append(a)
                sec.setdefault((arch, impl), []).append(s)
                print(f"repeat {r} {arch:4s} {impl:18s} test acc {a:6.2f} %  {s:6.2f} s/epoch", flush=True)
    print(
        f"\ntorch {torch.__version__}, aihwkit-lightning {aihwkit.__version__}, {args.threads} thread(s), "
        f"mnist5k, {args.epochs} epochs, {args.repeats} repeats (seeds 0..{args.repeats - 1})\n"
    )
    head = ("arch", "implementation", "test acc % median (min-max)", "s/epoch median (min-max)")
    print(f"{head[0]:4s}  {head[1]:18s}  {head[2]:>28s}  {head[3]:>25s}")
    for arch in archs:
        for impl in IMPLS:
            k = (arch, impl)
            print(f"{arch:4s}  {impl:18s}  {_span(acc[k], '{:.1f}'):>28s}  {_span(sec[k]):>25s}")
    print("\nratios per repeat, median (min-max):")
    for arch in archs:
        t = {i: sec[(arch, i)] for i in IMPLS}
        ratio_ibm = [x / y for x, y in zip(t["aihwkit-lightning"], t["normgrad analog"], strict=True)]
        ratio_dig = [x / y for x, y in zip(t["normgrad analog"], t["normgrad digital"], strict=True)]
        gap = [
            x - y
            for x, y in zip(acc[(arch, "aihwkit-lightning")], acc[(arch, "normgrad analog")], strict=True)
        ]
        print(f"  {arch}: aihwkit-lightning / normgrad analog s/epoch = {_span(ratio_ibm)}")
        print(f"  {arch}: normgrad analog / normgrad digital s/epoch = {_span(ratio_dig)}")
        print(f"  {arch}: test acc aihwkit-lightning - normgrad analog = {_span(gap, '{:+.1f}')} pp")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
