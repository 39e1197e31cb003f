"""run_trial: train one network from a TrialConfig and return its record (a JSON-ready dict)."""

from __future__ import annotations

import functools
import logging
import math
import os
import platform
import subprocess
import time
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import lightning as L
import torch

from study.training.config import TrialConfig
from study.training.data import AnalogDataModule
from study.training.module import AnalogClassifier, final_evaluation

RECORD_FILE = "record.json"
CONFIG_FILE = "config.json"


def library_versions() -> dict[str, str]:
    """Versions of the libraries a result depends on, and the git commit of this checkout."""
    out = {"python": platform.python_version()}
    for name in ("torch", "lightning", "torchmetrics", "normgrad"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "unknown"
    out["git_commit"] = git_commit()
    return out


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """HEAD of the repository this code runs from, read once per process ('unknown' outside git)."""
    try:
        root = Path(__file__).resolve().parent.parent
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def quiet_lightning() -> None:
    """Silence Lightning's per-trial banners (GPU available, etc.)."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")


def make_trainer(epochs: int, logger: Any) -> L.Trainer:
    """A lean deterministic CPU Trainer: no checkpoints, progress bar, summary or sanity steps.

    Deterministic algorithms stay on; their NaN-filling of every fresh allocation
    (``torch.utils.deterministic.fill_uninitialized_memory``) is turned off: nothing here reads memory it
    has not written (records are bit-identical with and without it, tested), and the fill cost ~11 % of a
    seed bundle's time (each step's noise buffers and gradient accumulators, written twice).
    """
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        deterministic=True,
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        benchmark=False,
    )
    torch.utils.deterministic.fill_uninitialized_memory = False
    return trainer


def summarize(
    config: TrialConfig,
    history: list[dict[str, Any]],
    diagnostics: list[dict[str, Any]],
    diverged_at: dict[str, int] | None,
    wall: float,
    saturation: list[dict[str, Any]] | None = None,
    evaluation: dict[str, Any] | None = None,
    saturation_init: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The record: configuration, final and best-validation metrics, per-epoch history, provenance;
    `weight_saturation` per epoch (see `analog.diagnostics.weight_saturation`) and at initialisation
    (`weight_saturation_init`, None for a digital network); the final evaluation over noise draws
    (`study.training.module.final_evaluation`)."""
    last = history[-1] if history else {}
    nan = math.nan
    best = max(history, key=lambda r: (r["val_acc"], -r["epoch"])) if history else {}
    return {
        "run_id": config.run_id,
        "config": config.canonical(),
        "test_acc": last.get("test_acc", nan),
        "test_loss": last.get("test_loss", nan),
        "val_acc": last.get("val_acc", nan),
        "val_loss": last.get("val_loss", nan),
        "train_acc": last.get("train_acc", nan),
        "train_loss": last.get("train_loss", nan),
        "best_val_acc": best.get("val_acc", nan),
        "best_epoch": best.get("epoch"),
        "test_acc_at_best_val": best.get("test_acc", nan),
        **(evaluation or {}),
        "epochs_run": len(history),
        "diverged": diverged_at is not None,
        "diverged_at": diverged_at,
        "wall_time_s": wall,
        "history": history,
        "diagnostics": diagnostics,
        "weight_saturation": saturation or [],
        "weight_saturation_init": saturation_init,
        "versions": library_versions(),
    }


def seed_all(seed: int) -> None:
    """Seed python, numpy and torch from the trial seed (Lightning's seed_everything, quietly)."""
    os.environ.setdefault("PL_GLOBAL_SEED", str(seed))
    L.seed_everything(seed, workers=True, verbose=False)


def run_trial(config: TrialConfig | dict[str, Any], out_dir: str | Path | None = None) -> dict[str, Any]:
    """Train one network and return its record. With `out_dir`, Lightning's CSV log goes to
    `out_dir/<run_id>/` (the trial's folder). Init, data order and noise all follow `config.seed`."""
    if not isinstance(config, TrialConfig):
        config = TrialConfig.parse(config)
    quiet_lightning()
    start = time.perf_counter()
    data = AnalogDataModule(
        config.dataset, config.batch_size, config.seed, config.split_seed, config.data_dir, config.n_samples
    )
    data.setup("fit")
    probe = (data.data.train_x[: config.probe_size], data.data.train_y[: config.probe_size])
    seed_all(config.seed)  # the model's init is the first draw from the seeded generator
    module = AnalogClassifier(config, data.n_features, data.n_classes, probe)
    logger: Any = False
    if out_dir is not None:
        logger = L.pytorch.loggers.CSVLogger(save_dir=str(out_dir), name="", version=config.run_id)
    trainer = make_trainer(config.epochs, logger)
    trainer.fit(
        module, train_dataloaders=data.train_dataloader(), val_dataloaders=eval_dataloaders(config, data)
    )
    evaluation = final_evaluation(module.net, config, data.data.test_x, data.data.test_y)
    wall = time.perf_counter() - start
    return summarize(
        config,
        module.history,
        module.diagnostics,
        module.diverged_at,
        wall,
        module.saturation,
        evaluation,
        module.saturation_init,
    )


def eval_dataloaders(config: TrialConfig, data: Any) -> list[Any]:
    """The evaluation loaders of each epoch: validation (index 0), then test unless `eval_test` is off
    (learning-rate selection trials never see the test split; their test metrics are NaN)."""
    return [data.val_dataloader(), data.test_dataloader()] if config.eval_test else [data.val_dataloader()]
