"""One definition of divergence, applied identically by the sequential and the bundled path (#13.3)."""

from __future__ import annotations

from typing import Any

import pytest

from study.training.bundle import run_bundle
from study.training.trial import run_trial

# a digital network at lr 1e30: the first Adam step sends every weight to ±1e30 and the loss to inf
DIVERGES = {"dataset": "digits", "hidden": [16], "epochs": 3, "batch_size": 64, "diagnostics": False}
DIVERGES |= {"digital": True, "lr": 1e30}
COMPARED = ("diverged", "diverged_at", "epochs_run", "best_epoch", "test_acc", "val_acc", "train_acc")


def _history(rec: dict[str, Any]) -> list[tuple]:
    return [(h["epoch"], round(h["train_loss"], 3), h["test_acc"], h["val_acc"]) for h in rec["history"]]


@pytest.mark.slow
def test_a_diverging_configuration_gives_equal_records_bundled_and_sequentially() -> None:
    seeds = (0, 1)
    sequential = [run_trial({**DIVERGES, "seed": s}) for s in seeds]
    bundled = run_bundle([{**DIVERGES, "seed": s} for s in seeds])
    for seq, bun in zip(sequential, bundled, strict=True):
        assert seq["diverged"] and seq["diverged_at"] == {"epoch": 1, "step": 1}
        assert {k: seq[k] for k in COMPARED} == {k: bun[k] for k in COMPARED}
        assert _history(seq) == _history(bun)
        assert seq["test_acc"] == seq["test_acc"]  # a number, not NaN: the diverged network was evaluated


def test_a_finite_run_records_no_divergence() -> None:
    rec = run_trial({**DIVERGES, "lr": 1e-3, "epochs": 1})
    assert rec["diverged"] is False and rec["diverged_at"] is None and rec["epochs_run"] == 1


def test_a_member_that_diverges_leaves_the_bundle_and_the_others_are_untouched(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from study.training import bundle

    config = {**DIVERGES, "digital": False, "lr": 1e-3, "epochs": 2}
    clean = run_bundle([{**config, "seed": s} for s in (0, 1)])
    original = bundle.BundleClassifier._member_losses

    def poisoned(self: Any, logits: Any, y: Any) -> Any:
        losses = original(logits, y)
        if self.training and self.global_step == 4:  # member 1's loss is NaN at its fifth step
            losses = losses.clone()
            losses[1] = float("nan")
        return losses

    monkeypatch.setattr(bundle.BundleClassifier, "_member_losses", poisoned)
    hit = run_bundle([{**config, "seed": s} for s in (0, 1)])
    assert hit[1]["diverged_at"] == {"epoch": 1, "step": 4} and hit[1]["epochs_run"] == 1
    assert hit[0]["diverged_at"] is None and _history(hit[0]) == _history(clean[0])


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf"), None])
def test_all_finite_agrees_with_isfinite_per_tensor_and_per_bundle_member(bad: float | None) -> None:
    import torch

    from study.training.module import all_finite

    torch.manual_seed(0)
    tensors = [torch.randn(3, 5, 4), torch.randn(3, 7), torch.randn(3, 0)]  # 3 bundle members
    if bad is not None:
        tensors[1][2, 4] = bad  # member 2 only
    old = all(bool(torch.isfinite(t).all()) for t in tensors)  # the definition it replaces
    assert all_finite(tensors) is old
    per_member = torch.stack([torch.isfinite(t.reshape(3, -1)).all(1) for t in tensors]).all(0)
    assert torch.equal(all_finite(tensors, 3), per_member)
    assert all_finite([]) is True and torch.equal(all_finite([], 2), torch.ones(2, dtype=torch.bool))
