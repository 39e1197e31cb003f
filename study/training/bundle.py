"""Seed-parallel training: K trials that differ only in seed, trained as one vectorised model.

Each member starts from the weights its seed gives in the sequential path (bit-identical), sees
the same data order its seed gives sequentially, draws its own noise (``vmap(randomness="different")``)
and has its own optimizer state (Adam and SGD with momentum over stacked parameters are element-wise,
and the learning-rate schedule is per epoch, shared; the loss is the sum of the members' losses, so
each member's gradient is its own). Divergence follows the sequential rule
(`study.training.module.AnalogClassifier`): a member whose loss is non-finite (that step is skipped for it) or
whose parameters are non-finite after a step is frozen as it stands, evaluated at the end of that
epoch, and leaves the bundle; the others go on.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from analog import set_noise
from analog.diagnostics import weight_saturation
from analog.layers import weight_bounds
from study.training.config import TrialConfig
from study.training.data import load_split, train_batches
from study.training.module import (
    STAGES,
    all_finite,
    build_network,
    final_evaluation,
    initial_weights,
    make_optimizer,
    probe_record,
)
from study.training.trial import eval_dataloaders, make_trainer, quiet_lightning, summarize


def check_bundle(configs: list[TrialConfig]) -> None:
    """All members must share every field but the seed, and seeds must be distinct."""
    if not configs:
        raise ValueError("bundle: needs at least one trial configuration")
    base = configs[0].model_copy(update={"seed": 0})
    for c in configs[1:]:
        if c.model_copy(update={"seed": 0}) != base:
            raise ValueError("bundle: member configurations must differ only in `seed`")
    seeds = [c.seed for c in configs]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"bundle: seeds must be distinct, got {seeds}")


def member_model(config: TrialConfig, n_features: int, n_classes: int) -> nn.Module:
    """The network the sequential path builds for `config` (seeded exactly as run_trial seeds it)."""
    L.seed_everything(config.seed, workers=True, verbose=False)
    return build_network(config, n_features, n_classes)


class _BundleBatches:
    """Per step, the members' batches stacked: x (K, B, F), y (K, B); member k follows its own seed."""

    def __init__(self, x: Tensor, y: Tensor, batch_size: int, seeds: list[int]) -> None:
        self.x, self.y, self.batch_size = x, y, batch_size
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]

    def __len__(self) -> int:
        return math.ceil(len(self.y) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        orders = [train_batches(len(self.y), self.batch_size, g) for g in self.generators]
        for step in zip(*orders, strict=True):
            idx = torch.stack(step)
            yield self.x[idx], self.y[idx]


class BundleClassifier(L.LightningModule):
    """K copies of one analog network as stacked parameters, trained with one vmapped forward."""

    def __init__(
        self,
        configs: list[TrialConfig],
        n_features: int,
        n_classes: int,
        probe: tuple[Tensor, Tensor] | None = None,
    ) -> None:
        super().__init__()
        check_bundle(configs)
        self.configs = configs
        self.config = configs[0]
        models = [member_model(c, n_features, n_classes) for c in configs]
        self.saturation_init = [initial_weights(m, c) for m, c in zip(models, configs, strict=True)]
        params, buffers = stack_module_state(models)
        self.names = list(params)
        bounds = weight_bounds(models[0])  # weight_bound 'project': (index in stacked, low, high)
        self._projected = [(i, *bounds[n]) for i, n in enumerate(self.names) if n in bounds]
        self.stacked = nn.ParameterList([nn.Parameter(params[n].detach().clone()) for n in self.names])
        self.buffers_ = buffers
        self.base = copy.deepcopy(models[0])  # the template called functionally (its own tensors unused)
        self.k = len(configs)
        self.n_classes = n_classes
        self.probe = probe
        self.alive = torch.ones(self.k, dtype=torch.bool)
        self.diverged_at: list[dict[str, int] | None] = [None] * self.k
        self._frozen: dict[int, list[Tensor]] = {}  # a diverged member's parameters, kept as they were
        self._frozen_buffers: dict[int, dict[str, Tensor]] = {}  # and its buffers (BatchNorm statistics)
        self.histories: list[list[dict[str, Any]]] = [[] for _ in configs]
        self.diagnostics: list[list[dict[str, Any]]] = [[] for _ in configs]
        self.saturation: list[list[dict[str, Any]]] = [[] for _ in configs]
        self._reset_sums()

    # -- vectorised forward --------------------------------------------------------------------------

    def _params(self) -> dict[str, Tensor]:
        return dict(zip(self.names, self.stacked, strict=True))

    def _call(self, params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(self.base, (params, buffers), (x,))

    def forward(self, x: Tensor, shared_input: bool = False) -> Tensor:
        """Logits (K, B, C); `x` is (K, B, F), or (B, F) shared by all members. Buffers (a user
        architecture's BatchNorm statistics) are stacked per member too, and updated in place."""
        return vmap(self._call, in_dims=(0, 0, None if shared_input else 0), randomness="different")(
            self._params(), self.buffers_, x
        )

    def configure_optimizers(self) -> dict[str, Any]:
        return make_optimizer(self.config, self.parameters())

    # -- metrics -------------------------------------------------------------------------------------

    def _reset_sums(self) -> None:
        self._loss = {s: torch.zeros(self.k, dtype=torch.float64) for s in STAGES}
        self._correct = {s: torch.zeros(self.k, dtype=torch.float64) for s in STAGES}
        self._n = {s: torch.zeros(self.k, dtype=torch.float64) for s in STAGES}

    def _accumulate(
        self, stage: str, logits: Tensor, y: Tensor, losses: Tensor, members: Tensor | None = None
    ) -> None:
        """Add a batch to the sums of `members` (a boolean mask; default all)."""
        y = y if y.dim() == 2 else y.expand(self.k, -1)
        w = torch.ones(self.k, dtype=torch.float64) if members is None else members.double()
        self._loss[stage] += torch.where(w > 0, losses.detach().double(), 0.0) * y.shape[1]
        self._correct[stage] += (logits.detach().argmax(-1) == y).sum(1).double() * w
        self._n[stage] += y.shape[1] * w

    @staticmethod
    def _member_losses(logits: Tensor, y: Tensor) -> Tensor:
        k, b, c = logits.shape
        y = y if y.dim() == 2 else y.expand(k, -1)
        return (
            F.cross_entropy(logits.reshape(k * b, c), y.reshape(-1), reduction="none").reshape(k, b).mean(1)
        )

    # -- training ------------------------------------------------------------------------------------

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor | None:
        x, y = batch
        logits = self(x)
        losses = self._member_losses(logits, y)
        for k in torch.nonzero(self.alive & ~torch.isfinite(losses.detach())).flatten().tolist():
            self._diverge(k)  # frozen before this step, which it skips
        if not bool(self.alive.any()):
            self.trainer.should_stop = True
            return None
        self._accumulate("train", logits, y, losses, self.alive)
        return losses[self.alive].sum()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        with torch.no_grad():
            for i, low, high in self._projected:  # every member back into the range after the step
                self.stacked[i].clamp_(low, high)
            for k, params in self._frozen.items():  # the optimizer's momentum would move a frozen member
                for p, kept in zip(self.stacked, params, strict=True):
                    p[k] = kept
            finite = all_finite(self.stacked, self.k)
        for k in torch.nonzero(self.alive & ~finite).flatten().tolist():
            self._diverge(k)
        if not bool(self.alive.any()):
            self.trainer.should_stop = True

    def _diverge(self, k: int) -> None:
        self.alive[k] = False
        self.diverged_at[k] = {"epoch": self.current_epoch + 1, "step": self.global_step}
        self._frozen[k] = [p[k].detach().clone() for p in self.stacked]
        self._frozen_buffers[k] = {n: b[k].clone() for n, b in self.buffers_.items()}

    def on_validation_epoch_start(self) -> None:
        with torch.no_grad():  # a diverged member is evaluated with the buffers it had when it stopped
            for k, kept in self._frozen_buffers.items():
                for n, b in self.buffers_.items():
                    b[k] = kept[n]
        if not self.config.noise_at_eval:
            set_noise(self.base, False)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y = batch
        logits = self(x, shared_input=True)
        self._accumulate("val" if dataloader_idx == 0 else "test", logits, y, self._member_losses(logits, y))

    def on_validation_epoch_end(self) -> None:
        set_noise(self.base, True)
        if self.trainer.sanity_checking:
            return
        epoch = self.current_epoch + 1
        for k in range(self.k):
            if self.diverged_at[k] is not None and self.diverged_at[k]["epoch"] < epoch:
                continue  # left the bundle in an earlier epoch
            row: dict[str, Any] = {"epoch": epoch}
            for s in STAGES:
                n = float(self._n[s][k])
                row[f"{s}_loss"] = float(self._loss[s][k]) / n if n else math.nan
                row[f"{s}_acc"] = round(100.0 * float(self._correct[s][k]) / n, 4) if n else math.nan
            self.histories[k].append(row)
            if self.config.diagnostics and self.probe is not None and not self.config.digital:
                self.diagnostics[k].append(self._probe(k, epoch))
            if not self.config.digital:
                self.saturation[k].append({"epoch": epoch, **weight_saturation(self.member_net(k))})
        self._reset_sums()

    def member_state(self, k: int) -> dict[str, Tensor]:
        """Member `k`'s parameters and buffers, as a state dict of the plain (unstacked) network."""
        state = {n: p[k].detach().clone() for n, p in zip(self.names, self.stacked, strict=True)}
        return {**state, **{n: b[k].clone() for n, b in self.buffers_.items()}}

    def member_net(self, k: int) -> nn.Module:
        """A plain network holding member `k`'s parameters."""
        net = copy.deepcopy(self.base)
        net.load_state_dict(self.member_state(k), strict=False)
        return net

    def _probe(self, k: int, epoch: int) -> dict[str, Any]:
        return probe_record(self.member_net(k), self.configs[k], *self.probe, epoch)


def run_bundle(configs: list[TrialConfig | dict[str, Any]]) -> list[dict[str, Any]]:
    """Train the trials `configs` (identical but for the seed) together; one record per member.

    Each record has the same format as :func:`study.training.trial.run_trial`'s; `wall_time_s` is the bundle's
    wall time divided by K, and `bundle_size` / `bundle_wall_time_s` say how it was trained.
    """
    configs = [c if isinstance(c, TrialConfig) else TrialConfig.parse(c) for c in configs]
    check_bundle(configs)
    quiet_lightning()
    start = time.perf_counter()
    c0 = configs[0]
    data = load_split(c0.dataset, c0.split_seed, data_dir=c0.data_dir, n_samples=c0.n_samples)
    probe = (data.train_x[: c0.probe_size], data.train_y[: c0.probe_size])
    module = BundleClassifier(configs, data.n_features, data.n_classes, probe)
    from study.training.data import AnalogDataModule

    dm = AnalogDataModule(c0.dataset, c0.batch_size, c0.seed, c0.split_seed, c0.data_dir, c0.n_samples)
    dm.setup("fit")
    train = _BundleBatches(data.train_x, data.train_y, c0.batch_size, [c.seed for c in configs])
    trainer = make_trainer(c0.epochs, logger=False)
    trainer.fit(module, train_dataloaders=train, val_dataloaders=eval_dataloaders(c0, dm))
    evaluations = [
        final_evaluation(module.member_net(k), cfg, data.test_x, data.test_y) for k, cfg in enumerate(configs)
    ]
    wall = time.perf_counter() - start
    records = []
    for k, cfg in enumerate(configs):
        rec = summarize(
            cfg,
            module.histories[k],
            module.diagnostics[k],
            module.diverged_at[k],
            wall / len(configs),
            module.saturation[k],
            evaluations[k],
            module.saturation_init[k],
        )
        rec["bundle_size"] = len(configs)
        rec["bundle_seeds"] = [c.seed for c in configs]
        rec["bundle_wall_time_s"] = wall
        records.append(rec)
    return records
