"""Identifiers are text in every stage: a run_id or spec hash that reads as a number (`419e918184895191`,
`0123456789012345`) must never be parsed as one (it would no longer match the record it names)."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from study.analysis.publish import stats_stage
from study.sweep.spec import stored_spec_hash
from study.tables import ID_COLUMNS, load_runs, read_csv
from tests.test_stats import make_runs, make_spec, write_study

NUMERIC_LOOKING = re.compile(r"^(\d+|\d+e\d+)$")


def numeric_looking_spec() -> dict:
    """The synthetic spec with a description chosen so that its hash reads as a number."""
    for i in range(200_000):
        spec = make_spec()
        spec["description"] = f"synthetic {i}"
        if NUMERIC_LOOKING.match(stored_spec_hash(spec)):
            return spec
    raise AssertionError("no numeric-looking hash found")


def numeric_runs() -> pd.DataFrame:
    runs = make_runs()
    ids = ["419e918184895191", "0123456789012345", "1e10000000000000"]
    runs["run_id"] = [ids[i] if i < len(ids) else f"{i:016d}" for i in range(len(runs))]
    runs["git_commit"] = "1234567e89"
    return runs


def test_numeric_looking_hashes_run_through_stats(tmp_path: Path) -> None:
    spec = numeric_looking_spec()
    study = write_study(tmp_path / "core", numeric_runs(), spec)
    runs = load_runs(study)
    assert runs["run_id"].iloc[:3].tolist() == ["419e918184895191", "0123456789012345", "1e10000000000000"]
    assert runs["spec_hash"].iloc[0] == stored_spec_hash(spec)
    assert runs["git_commit"].iloc[0] == "1234567e89"
    out = stats_stage(study)  # refused before: the float-read hash matched no known spec
    assert (out / "comparisons.csv").exists()


def test_read_csv_keeps_identifier_columns_as_text(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    pd.DataFrame({c: ["0123456789012345"] for c in ID_COLUMNS} | {"value": [1.5]}).to_csv(path, index=False)
    frame = read_csv(path, "redo")
    assert all(frame[c].iloc[0] == "0123456789012345" for c in ID_COLUMNS)
    assert frame["value"].iloc[0] == 1.5
    only = read_csv(path, "redo", usecols=["run_id", "value"])
    assert only["run_id"].iloc[0] == "0123456789012345"
