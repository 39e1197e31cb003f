"""Would a fused element-wise path make the analog step faster? Candidates measured side by side.

    python benchmarks/bench_fusion.py [--rounds 15] [--steps 20] [--compile]

One training step of the core model (784-256-128-10, GeLU, clamp on weights and signals, 2**4 levels,
Gaussian noise of leakage 0.5, weights ste / signals exact, batch 128, Adam), 1 torch thread:

  reference   `analog/` as it is: the exact clamp by autograd (torch's ClampBackward), the
              straight-through stages after it fused into one autograd node
  fused-site  one custom autograd Function per site: clamp, precision and noise in its forward, the
              clamp's saturation mask saved for its backward (one node instead of two)
  digital     the digital twin (the floor every analog path is compared with)

With `--compile`, also the site chain (clamp -> precision -> noise) compiled by torch.compile with
`fallback_random` (the same random stream), timed per call on the first layer's input; compilation
time is printed. Each candidate is checked first: after 5 steps from the same state and seed, its
parameters must equal the reference's bit for bit, else it is reported as not equivalent.
Rounds interleave the candidates; each reports the median ms/step with its range, and the ratio to
the reference per round.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import analog  # noqa: E402
from analog import AnalogConfig  # noqa: E402
from analog.layers import AnalogLayer, _compose  # noqa: E402
from analog.normalize import _clamp  # noqa: E402

CONFIG = AnalogConfig(
    weight_norm="clamp", weight_policy="ste", signal_norm="clamp", signal_policy="exact", precision=16
)


class _ClampSite(torch.autograd.Function):
    """pre (straight-through) -> clamp to [-1, 1] (true derivative) -> post (straight-through)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, pre, post):  # noqa: ANN001, ANN205
        t = x if pre is None else pre(x)
        mask = (t >= -1).logical_and_(t <= 1)
        y = torch.clamp(t, -1, 1)
        return (y if post is None else post(y)), mask

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # noqa: ANN001
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(output[1])

    @staticmethod
    def backward(ctx, grad, _):  # noqa: ANN001, ANN205
        (mask,) = ctx.saved_tensors
        return torch.where(mask, grad, 0.0), None, None


_reference_run = AnalogLayer._run_stages


def _fused_run(self, stages, x, site, norm_kind):  # noqa: ANN001, ANN202
    kinds = [s[0] for s in stages]
    if self.saturation is None and "norm" in kinds:
        i = kinds.index("norm")
        if stages[i][2] == "exact" and stages[i][1] is _clamp:
            pre = _compose([s[1] for s in stages[:i]]) if i else None
            post = _compose([s[1] for s in stages[i + 1 :]]) if i + 1 < len(stages) else None
            return _ClampSite.apply(x, pre, post)[0]
    return _reference_run(self, stages, x, site, norm_kind)


PATHS = {"reference": _reference_run, "fused-site": _fused_run}


def make_step(net: torch.nn.Module, path, x: torch.Tensor, y: torch.Tensor):  # noqa: ANN001, ANN201
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)

    def step() -> None:
        AnalogLayer._run_stages = path
        try:
            optimizer.zero_grad()
            F.cross_entropy(net(x), y).backward()
            optimizer.step()
        finally:
            AnalogLayer._run_stages = _reference_run

    return step


def equivalent(base: torch.nn.Module, path, x: torch.Tensor, y: torch.Tensor) -> bool:  # noqa: ANN001
    nets = []
    for p in (_reference_run, path):
        net = copy.deepcopy(base)
        step = make_step(net, p, x, y)
        torch.manual_seed(7)
        for _ in range(5):
            step()
        nets.append(net)
    return all(torch.equal(a, b) for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True))


def compiled_chain(x: torch.Tensor, rounds: int) -> None:
    import torch._inductor.config as inductor

    inductor.fallback_random = True
    layer = analog.analog_layers(analog.build_classifier(784, 10, (256, 128), "gelu", CONFIG))[0]
    stages = layer._stages(("norm", "precision", "noise"), layer._snorm, "clamp", "exact")
    chain = _compose([s[1] for s in stages])
    start = time.perf_counter()
    compiled = torch.compile(chain, dynamic=False)
    compiled(x)
    print(f"torch.compile of the site chain: {time.perf_counter() - start:.1f} s to compile one shape")
    torch.manual_seed(1)
    a = chain(x)
    torch.manual_seed(1)
    b = compiled(x)
    times = {"eager": [], "compiled": []}
    for _ in range(rounds):
        for name, fn in (("eager", chain), ("compiled", compiled)):
            t = time.perf_counter()
            for _ in range(50):
                fn(x)
            times[name].append((time.perf_counter() - t) / 50 * 1e6)
    e, c = (statistics.median(times[k]) for k in ("eager", "compiled"))
    same = torch.equal(a, b)
    print(f"  bit-identical: {same}; eager {e:.0f} us/call, compiled {c:.0f} us/call ({e / c:.2f}x)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=20, help="steps per round and candidate")
    parser.add_argument("--compile", action="store_true", help="also time the torch.compile'd site chain")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.steps < 1:
        parser.error("--rounds and --steps must be >= 1")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x, y = torch.rand(128, 784), torch.randint(0, 10, (128,))
    base = analog.build_classifier(784, 10, (256, 128), "gelu", CONFIG)
    digital = analog.build_classifier(784, 10, (256, 128), "gelu", CONFIG, digital=True)
    steps = {name: make_step(copy.deepcopy(base), path, x, y) for name, path in PATHS.items()}
    steps["digital"] = make_step(digital, _reference_run, x, y)
    for name, path in PATHS.items():
        if path is not _reference_run:
            print(f"{name}: parameters after 5 steps equal the reference's: {equivalent(base, path, x, y)}")
    times: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(args.rounds + 1):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            if r:  # round 0 warms up
                times[name].append((time.perf_counter() - start) / args.steps * 1e3)
    ref = times["reference"]
    print(f"{'path':<12} {'ms/step median (min-max)':>26} {'/ reference per round':>24}")
    for name, ts in times.items():
        ratios = [t / r for t, r in zip(ts, ref, strict=True)]
        spread = f"{statistics.median(ts):.2f} ({min(ts):.2f}-{max(ts):.2f})"
        rel = f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"
        print(f"{name:<12} {spread:>26} {rel:>24}")
    if args.compile:
        compiled_chain(torch.rand(128, 784) * 2 - 0.5, args.rounds)


if __name__ == "__main__":
    main()
