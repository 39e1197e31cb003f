"""AnalogClassifier: the LightningModule that trains one analog network from a TrialConfig."""

from __future__ import annotations

import contextlib
import hashlib
import math
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy

from analog import build_classifier, build_cnn, fixed_weights, probe, project_weights, set_noise
from analog.diagnostics import weight_saturation
from analog.layers import analog_layers
from analog.models import init_in_range_
from study.training.archs import BUILTIN_ARCHS, build_registered
from study.training.config import TrialConfig

STAGES = ("train", "val", "test")


def build_network(config: TrialConfig, n_features: int, n_classes: int) -> torch.nn.Module:
    """The analog (or digital) MLP, CNN or registered architecture `config` describes; the one place a
    trial's network is built, so the sequential and the bundled paths draw the same initial weights from
    the same seed."""
    if config.arch not in BUILTIN_ARCHS:
        return build_registered(config, n_features, n_classes)
    if config.arch == "cnn":
        shape = config.input_shape()
        if math.prod(shape) != n_features:
            raise ValueError(
                f"dataset {config.dataset!r}: {n_features} features per example, but its registered "
                f"input shape {shape} has {math.prod(shape)}"
            )
        return build_cnn(
            shape,
            n_classes,
            config.channels,
            config.kernel_size,
            config.hidden,
            config.activation,
            None if config.digital else config.analog_config(),
            config.digital,
            config.final_activation,
            config.readout,
        )
    return build_classifier(
        n_features,
        n_classes,
        config.hidden,
        config.activation,
        None if config.digital else config.analog_config(),
        config.digital,
        config.final_activation,
        config.readout,
    )


def make_optimizer(config: TrialConfig, params: Any) -> dict[str, Any]:
    """The optimizer and learning-rate schedule `config` names, as `configure_optimizers` returns them
    (one definition for the sequential and the bundled paths; both optimizers act element-wise, so a
    bundle's stacked parameters are updated exactly as each member's alone)."""
    if config.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum)
    else:
        opt = torch.optim.Adam(params, lr=config.lr)
    out: dict[str, Any] = {"optimizer": opt}
    if config.schedule == "cosine":  # stepped once per epoch (Lightning's default interval)
        out["lr_scheduler"] = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.epochs)
    return out


def initial_weights(net: torch.nn.Module, config: TrialConfig) -> dict[str, Any] | None:
    """The share of weight-site parameters beyond their range at initialisation (the record's
    `weight_saturation_init`, as `analog.diagnostics.weight_saturation` counts it; None for a digital
    network); then, for ``weight_bound: project``, the initial weights clipped into the range (the first
    forward pass sees bounded weights). Shared by the sequential and the bundled paths."""
    if config.digital:
        return None
    for layer in analog_layers(net):  # built-in archs have done it (idempotent); a registered one may not
        init_in_range_(layer)
    saturation = weight_saturation(net)
    project_weights(net)
    return saturation


def probe_record(
    net: torch.nn.Module, config: TrialConfig, x: Tensor, y: Tensor, epoch: int
) -> dict[str, Any]:
    """One epoch's diagnostics entry (shared by the sequential and bundled paths): per analog layer the
    gradient agreement of the trial's policies with all-exact (parameters, and the signal at each
    position), saturation per site; and the logits' range with the cross-entropy floor it implies."""
    with torch.enable_grad():
        result = probe(net, x, y, (config.weight_policy, config.signal_policy), seed=config.seed)
    return {"epoch": epoch, "layers": [vars(m) for m in result.layers], "logits": vars(result.logits)}


@torch.no_grad()
def all_finite(tensors: list[Tensor], members: int | None = None) -> Tensor | bool:
    """Whether every element of `tensors` is finite; with `members`, per member of a seed bundle (each
    tensor's first dimension), as a bool tensor.

    One pass per tensor (its min and max: NaN propagates to both, +inf reaches the max, -inf the min),
    ~7x cheaper than ``isfinite(p).all()`` per tensor, which cost ~0.6 ms of a ~7 ms core training step
    (and ~5 ms of a bundle's step); a bundle is split by member only when something is not finite.
    """
    bounds = [v for t in tensors if t.numel() for v in torch.aminmax(t)]
    finite = bool(torch.isfinite(torch.stack(bounds)).all()) if bounds else True
    if members is None:
        return finite
    if finite:
        return torch.ones(members, dtype=torch.bool)
    rows = [t.reshape(members, -1) for t in tensors if t.numel()]
    return torch.stack([torch.isfinite(r).all(1) for r in rows]).all(0)


EVAL_SEED_OFFSET = 0x5EED  # the final evaluation's noise stream: the trial seed + this, apart from training's
EVAL_BATCH = 1000


@torch.no_grad()
def _accuracy(net: torch.nn.Module, x: Tensor, y: Tensor, digest: Any = None) -> float:
    """Test accuracy in percent; every logit computed is fed to `digest` (a hashlib object) if given."""
    correct = 0
    for i in range(0, len(y), EVAL_BATCH):
        logits = net(x[i : i + EVAL_BATCH])
        if digest is not None:
            digest.update(logits.detach().contiguous().numpy().tobytes())
        correct += int((logits.argmax(-1) == y[i : i + EVAL_BATCH]).sum())
    return round(100.0 * correct / len(y), 4)


def params_checksum(net: torch.nn.Module) -> str:
    """sha256 of every tensor of the network's state (names, dtypes, shapes and bytes, in state order):
    two trials with equal checksums ended with bit-identical parameters and buffers."""
    digest = hashlib.sha256()
    for name, tensor in net.state_dict().items():
        t = tensor.detach().contiguous().cpu()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.numpy().tobytes())
    return digest.hexdigest()


def final_evaluation(net: torch.nn.Module, config: TrialConfig, x: Tensor, y: Tensor) -> dict[str, Any]:
    """The trained network's test accuracy under `config.test_draws` independent draws of the analog
    noise (their mean is `test_acc_mean`; one draw is as noisy as the per-epoch `test_acc`), and with
    the noise off (`test_acc_noise_off`). The draws come from a generator state seeded from the trial
    seed alone, so they do not depend on how the network was trained (alone or in a bundle), and the
    training stream is left untouched. `params_sha256` and `logits_sha256` (of every logit of the draws
    and the noise-off pass) make "identical runs" checkable bit for bit; without `eval_test` only the
    parameters' checksum (the test split is never evaluated)."""
    params = params_checksum(net)
    if not config.eval_test:
        return {"params_sha256": params}
    logits = hashlib.sha256()
    with fixed_weights(net):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed + EVAL_SEED_OFFSET)
            draws = [_accuracy(net, x, y, logits) for _ in range(config.test_draws)]
        set_noise(net, False)  # outside the forked stream, as the records have it (stochastic rounding
        try:  # still draws, from the trial's own stream after training)
            noise_off = _accuracy(net, x, y, logits)
        finally:
            set_noise(net, True)
    return {
        "test_acc_draws": draws,
        "test_acc_mean": round(sum(draws) / len(draws), 4),
        "test_acc_noise_off": noise_off,
        "params_sha256": params,
        "logits_sha256": logits.hexdigest(),
    }


class AnalogClassifier(L.LightningModule):
    """Cross-entropy classifier over an `analog` network; Adam or SGD; accuracy per split (torchmetrics).

    Validation runs two dataloaders each epoch (0 = validation, 1 = test), so the record holds
    per-epoch test metrics too. Evaluation keeps the analog noise on unless `noise_at_eval` is false.
    Divergence (one definition, shared with the bundled path): a non-finite training loss (that step
    is skipped) or non-finite parameters after an optimizer step. Training stops; the network as it
    stands is evaluated at the end of that epoch, which closes the history; `diverged_at` records
    the epoch and the optimizer step. `saturation` holds, per epoch, the fraction of weight-site
    parameters beyond their range (`analog.diagnostics.weight_saturation`), for analog networks.
    """

    def __init__(
        self, config: TrialConfig, n_features: int, n_classes: int, probe: tuple[Tensor, Tensor] | None = None
    ) -> None:
        super().__init__()
        self.config = config
        self.net = build_network(config, n_features, n_classes)
        self.saturation_init = initial_weights(self.net, config)
        self.acc = torch.nn.ModuleDict(
            {f"{s}_acc": MulticlassAccuracy(n_classes, average="micro") for s in STAGES}
        )
        self.probe = probe
        self.diverged = False
        self.diverged_at: dict[str, int] | None = None
        self.history: list[dict[str, Any]] = []
        self.diagnostics: list[dict[str, Any]] = []
        self.saturation: list[dict[str, Any]] = []
        self._loss_sum = {s: 0.0 for s in STAGES}
        self._loss_n = {s: 0 for s in STAGES}

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def configure_optimizers(self) -> dict[str, Any]:
        return make_optimizer(self.config, self.parameters())

    def _accumulate(self, stage: str, logits: Tensor, y: Tensor, loss: Tensor) -> None:
        self.acc[f"{stage}_acc"].update(logits.detach(), y)
        self._loss_sum[stage] += float(loss.detach()) * len(y)
        self._loss_n[stage] += len(y)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor | None:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        if not torch.isfinite(loss):
            self._diverge()
            return None
        self._accumulate("train", logits, y, loss)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        project_weights(self.net)  # weight_bound 'project': back into the range after the step
        if not self.diverged and not all_finite(list(self.parameters())):
            self._diverge()

    def _diverge(self) -> None:
        self.diverged = True
        self.diverged_at = {"epoch": self.current_epoch + 1, "step": self.global_step}
        self.trainer.should_stop = True

    def on_validation_epoch_start(self) -> None:
        self._close_eval_scope()
        self._eval_scope = contextlib.ExitStack()
        self._eval_scope.enter_context(fixed_weights(self.net))  # weights do not change while evaluating
        if not self.config.noise_at_eval:
            set_noise(self.net, False)

    def _close_eval_scope(self) -> None:
        scope, self._eval_scope = getattr(self, "_eval_scope", None), None
        if scope is not None:
            scope.close()

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y = batch
        logits = self(x)
        self._accumulate("val" if dataloader_idx == 0 else "test", logits, y, F.cross_entropy(logits, y))

    def on_validation_epoch_end(self) -> None:
        self._close_eval_scope()
        set_noise(self.net, True)
        if self.trainer.sanity_checking:
            return
        row: dict[str, Any] = {"epoch": self.current_epoch + 1}
        for stage in STAGES:
            n = self._loss_n[stage]
            row[f"{stage}_loss"] = self._loss_sum[stage] / n if n else math.nan
            row[f"{stage}_acc"] = (
                round(100.0 * float(self.acc[f"{stage}_acc"].compute()), 4) if n else math.nan
            )
            self.acc[f"{stage}_acc"].reset()
            self._loss_sum[stage], self._loss_n[stage] = 0.0, 0
        self.history.append(row)
        if self.logger:
            self.log_dict({k: v for k, v in row.items() if k != "epoch"}, logger=True, on_epoch=True)
        if self.config.diagnostics and self.probe is not None and not self.config.digital:
            self.diagnostics.append(probe_record(self.net, self.config, *self.probe, row["epoch"]))
        if not self.config.digital:
            self.saturation.append({"epoch": row["epoch"], **weight_saturation(self.net)})
