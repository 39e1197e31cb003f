"""How long will a study take? A cost model of trial wall time, fitted on committed studies.

A trial's seconds are modelled as a non-negative combination of the work its configuration implies
(counted, not timed: from the network's shape, the split sizes, epochs, batch and bundle size):

    train_macs     epochs x training examples x multiply-accumulates per example in matrix products
    conv_macs      the same in convolutions (slower per MAC on a CPU)
    train_values   epochs x training examples x analog signal values per example (normalized,
                   quantised, noised: the element-wise pipeline; 0 for a digital network)
    weight_values  optimizer steps x weight values (the weight pipeline runs once per step)
    steps          optimizer steps (per-step overhead; the committed studies all ran in bundles, so the
                   model cannot tell how much of it a bundle shares: it assumes none)
    eval_work      evaluated examples (validation and test each epoch, the final evaluation's
                   `test_draws` + 1 passes) x (MACs + analog values) per example
    probe_work     the per-epoch diagnostics: 2 passes over the probe batch, x (MACs + values)
    fixed          1 / bundle size (set-up a bundle shares: data, Lightning, record)

The coefficients are fitted by non-negative least squares on relative error over every committed
trial (each study weighted equally), from its `runs.csv` (`wall_time_s`, `bundle_size`) and the trial
configurations its stored spec expands to. They carry the speed of the machine the studies ran on; the
runner's dry run rescales them by the trials of the study already finished on this machine.
"""

from __future__ import annotations

import csv
import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from study.training.config import TrialConfig

AUTO = "auto"  # --bundle auto: the bundle size from the network's size (auto_bundle)
LARGE_BUNDLE = 32  # seeds per bundle where bundling pays (small networks: 2.8x at 32 for 64-64-32-10)
AUTO_VALUES_LIMIT = 150_000
"""Analog signal values per member and step (batch x values per example) from which a seed bundle
trains slower than its members one by one on the development machine (benchmarks/README.md, bundle
section: 108k at 1.19x for K = 8 and 1.47x for 32, 200k at 0.93x / 0.94x, 862k (a CNN on 28x28 images)
at 0.68x): the stacked element-wise work then leaves the CPU caches."""

FEATURES = (
    "train_macs",
    "conv_macs",
    "train_values",
    "weight_values",
    "steps",
    "eval_work",
    "probe_work",
    "fixed",
)
_SCALE = {"steps": 1e-3, "fixed": 1.0}  # the rest in units of 1e9


@dataclass(frozen=True)
class CostModel:
    """Seconds per trial = coefficients . features(config, bundle); fitted on `trials` of `studies`."""

    coefficients: tuple[float, ...]
    trials: int
    studies: tuple[str, ...]

    def seconds(self, config: TrialConfig, bundle: int) -> float | None:
        """Predicted wall seconds of one trial (its share of its bundle), or None when its work cannot
        be counted (a dataset whose sizes only its files know)."""
        f = trial_features(config, bundle)
        return None if f is None else float(np.dot(self.coefficients, f))


@functools.lru_cache(maxsize=256)
def _network_work(key: tuple) -> tuple[float, float, float, float]:
    """(MACs per example, of them in convolutions, analog signal values per example, weight values) of
    the network `key` names."""
    import torch

    from analog.layers import AnalogLayer
    from study.training.data import FEATURES as N_FEATURES
    from study.training.data import N_CLASSES
    from study.training.module import build_network

    config = TrialConfig.parse(dict(key))
    net = build_network(config, N_FEATURES[config.dataset], N_CLASSES)
    counts = {"macs": 0.0, "conv": 0.0, "values": 0.0, "weights": 0.0}

    def hook(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.dim() < 2:
            return
        positions = output.numel() / weight.shape[0]  # output positions per output channel (batch of 1)
        counts["macs"] += weight.numel() * positions
        if weight.dim() > 2:
            counts["conv"] += weight.numel() * positions
        if isinstance(module, AnalogLayer):
            counts["values"] += inputs[0].numel() + output.numel()
            bias = getattr(module, "bias", None)
            counts["weights"] += weight.numel() + (0 if bias is None else bias.numel())

    leaves = [m for m in net.modules() if isinstance(m, AnalogLayer) or not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad():
            net(torch.zeros(1, N_FEATURES[config.dataset]))
    finally:
        for h in handles:
            h.remove()
    return counts["macs"], counts["conv"], counts["values"], counts["weights"]


def auto_bundle(config: TrialConfig) -> int:
    """Seeds per bundle for `config` under `--bundle auto`: 1 (one by one) for networks whose analog
    values per step reach AUTO_VALUES_LIMIT, else LARGE_BUNDLE."""
    work = _work(config)
    if work is None or config.digital:
        return LARGE_BUNDLE
    return 1 if config.batch_size * work[2] >= AUTO_VALUES_LIMIT else LARGE_BUNDLE


def _work(config: TrialConfig) -> tuple[float, float, float, float] | None:
    from study.training.data import FEATURES as N_FEATURES

    if config.dataset not in N_FEATURES:
        return None
    key = tuple(
        (k, tuple(v) if isinstance(v, list) else v) for k, v in config.canonical().items() if k in _STRUCTURE
    )
    return _network_work(key)


_STRUCTURE = ("dataset", "arch", "hidden", "channels", "kernel_size", "digital", "activation", "readout")


def trial_features(config: TrialConfig, bundle: int) -> np.ndarray | None:
    """The work counts of one trial (see the module docstring), scaled, in FEATURES order."""
    from study.training.data import split_sizes

    sizes = split_sizes(config.dataset, config.n_samples, config.data_dir)
    work = _work(config)
    if sizes is None or work is None:
        return None
    n_train, n_val, n_test = sizes
    macs, conv, values, weights = work
    if config.digital:
        values = weights = 0.0
    epochs = config.epochs
    steps = epochs * math.ceil(n_train / config.batch_size)
    evaluated = epochs * n_val
    if config.eval_test:
        evaluated += epochs * n_test + (config.test_draws + 1) * n_test
    probe = 2 * epochs * config.probe_size if config.diagnostics and not config.digital else 0
    raw = {
        "train_macs": epochs * n_train * (macs - conv),
        "conv_macs": epochs * n_train * conv,
        "train_values": epochs * n_train * values,
        "weight_values": steps * weights,
        "steps": steps,
        "eval_work": evaluated * (macs + values),
        "probe_work": probe * (macs + values),
        "fixed": 1.0 / bundle,
    }
    return np.array([raw[f] * _SCALE.get(f, 1e-9) for f in FEATURES])


def committed_rows(sdir: Path) -> list[tuple[TrialConfig, int, float]]:
    """(config, bundle size, wall seconds) of every finished trial in a study folder's `runs.csv`."""
    from study.sweep.spec import parse_spec
    from study.sweep.tuning import study_trials
    from study.tables import RESTORE_SPEC, read_yaml

    spec = parse_spec(read_yaml(sdir / "spec.yaml", RESTORE_SPEC))
    configs = {t.run_id: t.config for t in study_trials(spec, sdir)}
    rows = []
    with (sdir / "runs.csv").open(newline="") as f:
        for r in csv.DictReader(f):
            config = configs.get(r["run_id"])
            try:
                wall, bundle = float(r["wall_time_s"]), int(float(r.get("bundle_size") or 1))
            except (TypeError, ValueError):
                continue
            if config is not None and math.isfinite(wall) and wall > 0 and r.get("status", "done") == "done":
                rows.append((config, bundle, wall))
    return rows


def fit_cost_model(studies: dict[str, list[tuple[TrialConfig, int, float]]]) -> CostModel | None:
    """Non-negative least squares of wall seconds on the work counts, on relative error, each study
    weighted equally; None when no trial's work can be counted."""
    from scipy.optimize import nnls

    xs, ys, ws, used = [], [], [], []
    for name, rows in studies.items():
        feats = [(trial_features(c, b), wall) for c, b, wall in rows]
        feats = [(f, wall) for f, wall in feats if f is not None]
        if not feats:
            continue
        used.append(name)
        for f, wall in feats:
            w = 1.0 / math.sqrt(len(feats))  # squared: each study's weights sum to 1
            xs.append(f / wall * w)
            ys.append(w)
            ws.append(w)
    if not xs:
        return None
    coef, _ = nnls(np.array(xs), np.array(ys))
    return CostModel(tuple(float(c) for c in coef), len(xs), tuple(used))


def finished_rows(sdir: Path, trials: list[Any]) -> list[tuple[TrialConfig, int, float]]:
    """(config, bundle size, wall seconds) of the trials of `trials` whose records exist in `sdir`."""
    from study.sweep.records import RECORD, InvalidRecord, load_record, trial_dir

    rows = []
    for t in trials:
        try:
            rec = load_record(trial_dir(sdir, t.run_id) / RECORD, t.run_id)
        except InvalidRecord:
            continue
        wall = (rec or {}).get("wall_time_s")
        if isinstance(wall, int | float) and math.isfinite(wall) and wall > 0:
            rows.append((t.config, int(rec.get("bundle_size") or 1), float(wall)))
    return rows


def committed_cost_model(results: Path, exclude: tuple[str, ...] = ()) -> CostModel | None:
    """The cost model fitted on every study folder under `results` with a runs.csv (but `exclude`);
    fitted once per process for the same files."""
    tables = tuple(
        (str(p), p.stat().st_mtime_ns, p.stat().st_size)
        for p in sorted(results.glob("*/runs.csv"))
        if p.parent.name not in exclude
    )
    return _fit_tables(tables)


@functools.lru_cache(maxsize=8)
def _fit_tables(tables: tuple[tuple[str, int, int], ...]) -> CostModel | None:
    studies = {}
    for path, _, _ in tables:
        runs = Path(path)
        name = runs.parent.name
        if not (runs.parent / "spec.yaml").is_file():
            continue
        try:
            studies[name] = committed_rows(runs.parent)
        except (OSError, ValueError, KeyError):
            continue  # a folder that is not a study is no evidence
    return fit_cost_model(studies)


def estimate_seconds(
    trials: list[tuple[TrialConfig, int]],
    model: CostModel | None,
    finished: list[tuple[TrialConfig, int, float]],
) -> dict[str, Any]:
    """Predicted seconds of `trials`, (config, size of its bundle) pairs, summed over trials (before
    dividing by workers).

    `finished` (config, bundle, wall) are trials of the same study already run here: their measured
    time over the model's prediction rescales it to this machine. Without a model, or for trials whose
    work cannot be counted, the mean wall of `finished` stands in (10 s without any).
    """
    predicted = [None if model is None else model.seconds(c, k) for c, k in trials]
    scale, basis = 1.0, "the cost model alone (the speed of the machine the committed studies ran on)"
    if model is not None and finished:
        pairs = [(model.seconds(c, b), wall) for c, b, wall in finished]
        pairs = [(p, w) for p, w in pairs if p]
        if pairs:
            scale = sum(w for _, w in pairs) / sum(p for p, _ in pairs)
            basis = f"the cost model rescaled by {len(pairs)} finished trials (x{scale:.2f})"
    mean = sum(w for _, _, w in finished) / len(finished) if finished else 10.0
    seconds = [mean if p is None else p * scale for p in predicted]
    if not trials:
        basis = "nothing left to do"
    elif model is None or all(p is None for p in predicted):
        basis = f"the mean of {len(finished)} finished trials" if finished else "10 s per trial (no data)"
    return {"seconds": float(sum(seconds)), "per_trial": seconds, "basis": basis}
