"""Reading the tidy tables a study writes, and naming their columns (shared by stats and figures)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import yaml

POLICY_COLUMNS = ("weight_policy", "signal_policy")
PRESET_COLUMN = "policies"
SITE_COLUMN = {"weight": "weight_policy", "signal": "signal_policy"}


def load_spec_dict(study_dir: Path) -> dict[str, Any]:
    """The spec the runner stored in `study_dir/spec.yaml`, as a plain dict (safe_load)."""
    path = Path(study_dir) / "spec.yaml"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run `python -m study run SPEC` first")
    with open(path) as fh:
        return yaml.safe_load(fh) or {}


def load_runs(study_dir: Path) -> pd.DataFrame:
    """`runs.csv` with factor columns read as strings so that `none` and numbers group alike."""
    path = Path(study_dir) / "runs.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run `python -m study collect DIR` first")
    spec = load_spec_dict(study_dir)
    factors = condition_columns(spec) + list(POLICY_COLUMNS) + [PRESET_COLUMN]
    dtypes = {c: str for c in factors}
    return pd.read_csv(path, dtype=dtypes, keep_default_na=False, na_values=[""])


def condition_columns(spec: dict[str, Any]) -> list[str]:
    """Factor columns that define a condition: every spec factor except the gradient policies."""
    skip = set(POLICY_COLUMNS) | {PRESET_COLUMN, "seed"}
    return [name for name in (spec.get("factors") or {}) if name not in skip]
