"""Trial folders and records: where a trial lives, what a valid record is, and a trial's status.

Shared by the runner (which writes records) and by the stages that read them (collect, lr tuning),
so that none of those needs the runner itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from study.sweep.spec import StudySpec
from study.tables import METRICS

RECORD, FAILED, CLAIM, CONFIG = "record.json", "failed.json", "claim.lock", "config.json"


# -- layout and status -----------------------------------------------------------------------------


def study_dir(out: str | Path, spec: StudySpec) -> Path:
    return Path(out) / spec.name


def trial_dir(sdir: Path, run_id: str) -> Path:
    return sdir / "trials" / run_id


# what every record holds (study.training.trial.summarize writes the first group, the runner adds the second)
RECORD_KEYS = (
    "run_id",
    "config",
    *METRICS,
    "best_epoch",
    "epochs_run",
    "diverged",
    "wall_time_s",
    "history",
    "diagnostics",
    "versions",
    "study",
    "spec_hash",
    "factors",
)
_NUMBER_KEYS = (*METRICS, "wall_time_s")


class InvalidRecord(ValueError):
    """A `record.json` that is not a complete record of its trial (unreadable, incomplete or foreign)."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


def _config_hash(config: dict[str, Any]) -> str:
    # the same hash as TrialConfig.run_id, computed from the stored dict (no re-validation, so a record
    # stays readable when TrialConfig later gains fields)
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def record_problem(rec: Any, run_id: str) -> str | None:
    """Why `rec` (a parsed record.json) is not a complete record of trial `run_id`; None if it is."""
    if not isinstance(rec, dict):
        return f"not a JSON object (a {type(rec).__name__})"
    missing = [k for k in RECORD_KEYS if k not in rec]
    if missing:
        return f"incomplete: missing {', '.join(missing)}"
    if rec["run_id"] != run_id:
        return f"foreign: run_id {rec['run_id']!r}, but the trial is {run_id!r}"
    if not isinstance(rec["config"], dict) or _config_hash(rec["config"]) != run_id:
        return f"foreign: its config is not the configuration of trial {run_id!r}"
    for key in ("history", "diagnostics"):
        if not isinstance(rec[key], list):
            return f"bad {key}: a list expected, got {type(rec[key]).__name__}"
    for key in _NUMBER_KEYS:
        v = rec[key]
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            return f"bad {key}: a number expected, got {v!r}"
    return None


def load_record(path: Path, run_id: str) -> dict[str, Any] | None:
    """The record at `path` (None if there is none); `InvalidRecord` if it is not a record of `run_id`."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as err:
        raise InvalidRecord(path, f"unreadable ({err})") from None
    if not text.strip():
        raise InvalidRecord(path, "empty")
    try:
        rec = json.loads(text)
    except ValueError as err:
        raise InvalidRecord(path, f"not valid JSON, truncated or corrupt ({err})") from None
    problem = record_problem(rec, run_id)
    if problem:
        raise InvalidRecord(path, problem)
    return rec


def status(sdir: Path, run_id: str) -> str:
    """'done', 'failed' or 'todo' for one trial. An invalid record does not count as done: the trial is
    'todo' (or 'failed'), and the runner sets the record aside (`set_aside_invalid_record`) when it
    claims the trial."""
    d = trial_dir(sdir, run_id)
    try:
        if load_record(d / RECORD, run_id) is not None:
            return "done"
    except InvalidRecord:
        pass
    if (d / FAILED).exists():
        return "failed"
    return "todo"


def set_aside_invalid_record(sdir: Path, run_id: str) -> Path | None:
    """Move an invalid record.json to `record.json.corrupt-<UTC time>` (kept for inspection, never deleted);
    returns the new path, or None when the record is valid or absent. Call it only while holding the claim."""
    path = trial_dir(sdir, run_id) / RECORD
    try:
        load_record(path, run_id)
        return None
    except InvalidRecord as err:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        dest = path.with_name(f"{RECORD}.corrupt-{stamp}")
        os.replace(path, dest)
        print(f"warning: {err}; moved to {dest.name}, the trial is run again", file=sys.stderr, flush=True)
        return dest


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to a temporary file and rename it into place (presence = complete)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # unique per host, process and thread: two writers of one file never share a temporary file
    tmp = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
