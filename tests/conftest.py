"""Shared tiny trial configurations and helpers for the training / study-running tests.

Every trial here is tiny (8x8 digits, one or two small hidden layers, 1-3 epochs, no diagnostics unless a
test is about them) so the suite stays fast on a loaded 2-core machine.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

TINY: dict[str, Any] = {
    "dataset": "digits",
    "hidden": [16],
    "epochs": 1,
    "batch_size": 64,
    "diagnostics": False,
    "probe_size": 32,
}


@pytest.fixture
def tiny() -> dict[str, Any]:
    """A fresh copy of the tiny trial configuration (a dict for TrialConfig.parse / spec `base`)."""
    return {**TINY, "hidden": list(TINY["hidden"])}


def write_spec(path: Path, spec: dict[str, Any]) -> Path:
    """Write a study spec as YAML and return its path."""
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def study_env() -> dict[str, str]:
    """Environment for `python -m study` subprocesses: one torch thread, no stray GPU or progress output."""
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        "CUDA_VISIBLE_DEVICES": "",
    }
