"""Reading and writing the tidy tables a study writes, and naming their columns (shared by all stages).

Number policy of every generated table (the statistics, and what reports, macros and figures read from
them): floats are written with `SIG_DIGITS` significant digits, and values whose magnitude is below
`ZERO_TOL` are written as 0, except in p-value columns. Estimates computed by different machines
(BLAS, SIMD widths, libm) differ in their last bits; an effect that is exactly zero comes out as
±1e-13 with machine-dependent digits. Four digits are more than any estimate here supports (the
narrowest confidence interval of a committed study is ~0.5 pp wide around effects of ~74 pp), and
1e-9 is far below any effect a study can resolve (one test image out of 10,000 is 0.01 pp), so the
written tables are the same on every machine. Raw per-trial measurements (`runs.csv`,
`curves.csv.gz`) keep `RAW_FLOAT_FORMAT`: they are data, not estimates, and are not regenerated.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import socket
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from analog.policies import ANALOGVNN, OTHER_SITE

SIG_DIGITS = 4
ZERO_TOL = 1e-9
FLOAT_FORMAT = f"%.{SIG_DIGITS}g"
RAW_FLOAT_FORMAT = "%.6g"
_P_COLUMN = re.compile(r"(^p$|^p_|_p$)")
# per-trial metrics of a record, as columns of runs.csv (what `hypotheses.metric` may name)
METRICS = (
    "test_acc",
    "test_loss",
    "val_acc",
    "val_loss",
    "train_acc",
    "train_loss",
    "best_val_acc",
    "test_acc_at_best_val",
)
# metrics of the final evaluation over noise draws (`study.training.module.final_evaluation`): columns of
# runs.csv only where the study's records have them (the studies committed before them do not)
DRAW_METRICS = ("test_acc_mean", "test_acc_noise_off")
ALL_METRICS = (*METRICS, *DRAW_METRICS)
# sha256 of the final parameters and of every final test logit (`study.training.module.final_evaluation`):
# columns of runs.csv where the records have them; `identical` runs need equal checksums
CHECKSUM_COLUMNS = ("params_sha256", "logits_sha256")
# what to do when a stage's input is damaged (the messages of read_yaml / read_csv)
REDO_STATS = "run `python -m study stats` on the study again"
REDO_COLLECT = "run `python -m study collect` on the study again"
RESTORE_SPEC = "restore it from the spec file the study was run with"
STUDY_NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]*$"

POLICY_COLUMNS = ("weight_policy", "signal_policy")
# identifiers: always text, whatever they look like (a hash such as `419e918184895191` or `0123456789012345`
# would otherwise be read as a number and no longer match the record it names)
ID_COLUMNS = (
    "study",
    "run_id",
    "spec_hash",
    "git_commit",
    "params_sha256",
    "logits_sha256",
    "torch_version",
    "lightning_version",
    "normgrad_version",
)


def id_dtypes(columns: Any = None) -> dict[str, type]:
    """`dtype=` for `pd.read_csv` that reads every identifier column (of `columns`, if given) as text."""
    names = ID_COLUMNS if columns is None else [c for c in ID_COLUMNS if c in set(columns)]
    return {c: str for c in names}


# human names of the factor columns: figure axes, table headers, captions
FACTOR_LABELS = {
    "dataset": "Dataset",
    "weight_norm": "Weight normalization",
    "signal_norm": "Signal normalization",
    "norm": "Normalization (weights and signals)",
    "precision": "Precision (levels)",
    "leakage": "Leakage",
    "weight_policy": "Weight-site policy",
    "signal_policy": "Signal-site policy",
}


def factor_label(column: str) -> str:
    """Human name of a factor column ("Signal normalization"); unknown columns spelled out."""
    return FACTOR_LABELS.get(column, column.replace("_", " ").capitalize())


PRESET_COLUMN = "policies"
SITE_COLUMN = {"weight": "weight_policy", "signal": "signal_policy"}
PRESET_FLAG = ANALOGVNN  # column of stats tables marking the `analogvnn` preset cell of a condition

_TRUE_TEXTS = ("true", "yes", "1", "1.0")
_FALSE_TEXTS = ("false", "no", "0", "0.0")


def parse_bool(value: Any, numeric: bool = True) -> bool | None:
    """True or False for the spellings of a boolean in tables and on the command line, else None.

    `true`/`yes` and `false`/`no` in any case, surrounding space ignored; with `numeric` also
    `1`/`1.0` and `0`/`0.0` (how a boolean column reads back from CSV; a command-line `1` is a number).
    """
    text = str(value).strip().lower()
    for texts, result in ((_TRUE_TEXTS, True), (_FALSE_TEXTS, False)):
        if text in (texts if numeric else texts[:2]):
            return result
    return None


def truthy(frame: pd.DataFrame, column: str) -> pd.Series:
    """Boolean column `column` of a table read back from CSV (False where absent or not a true spelling)."""
    if column not in frame:
        return pd.Series(False, index=frame.index)
    return frame[column].map(lambda v: parse_bool(v) is True).astype(bool)


def span(low: str, high: str, sep: str = "–") -> str:
    """`low–high`, or `low` alone when both ends are written the same (no "8–8 seeds")."""
    return str(low) if str(low) == str(high) else f"{low}{sep}{high}"


def is_percent(metric: str) -> bool:
    """Whether a metric is an accuracy in percent (its differences are percentage points)."""
    return metric.endswith("_acc") or "_acc_" in metric


def diff_unit(metric: str) -> str:
    """Unit suffix of a paired difference of `metric`: " pp" for accuracies, "" otherwise."""
    return " pp" if is_percent(metric) else ""


def diff_unit_name(metric: str, other: str = "units") -> str:
    """Unit of a paired difference in words: `percentage points` for accuracies, else `other`."""
    return "percentage points" if is_percent(metric) else other


def other_site_informative(rows: pd.DataFrame, site: str) -> pd.DataFrame:
    """Comparison rows of `site` without those whose other site's policy is `zero`.

    With `zero` at either site no gradient reaches any parameter (the network stays at its
    initialisation), so such rows compare two untrained networks and say nothing about `site`. A row of
    a `factor` comparison holds both sites' policies (a policy comparison's own policy column is
    empty): it is left out when either is `zero`.
    """
    other, own = SITE_COLUMN[OTHER_SITE[site]], SITE_COLUMN[site]
    if other not in rows:
        return rows
    keep = rows[other].astype(str) != "zero"
    if own in rows:
        keep &= rows[own].astype(str) != "zero"
    return rows[keep]


def cell_text(value: Any) -> str:
    """A factor value as runs.csv spells it, numbers normalised (16, 16.0 and '16' alike)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value)
    try:
        return f"{float(value):.6g}"
    except (TypeError, ValueError):
        return str(value).strip()


def require_study_dir(path: str | Path, needs: tuple[str, ...] = ("spec.yaml",)) -> Path:
    """`path` if it is a study folder (its name a valid study name, holding `needs`), else a ValueError.

    Later stages write and delete below folders named after the study, so `.`, `..`, `/` or a folder
    that is not a study must never pass for one.
    """
    p = Path(path)
    name = p.resolve().name
    if not re.match(STUDY_NAME_PATTERN, name) or p.name in ("", ".", ".."):
        raise ValueError(
            f"{str(path)!r} is not a study folder: give OUT/<study>, whose name starts with a letter and "
            "holds only letters, digits, '_' and '-' (e.g. results/core)"
        )
    missing = [n for n in needs if not (p / n).exists()]
    if missing:
        raise ValueError(f"{path} is not a study folder with results: {', '.join(missing)} missing")
    return p


class UnreadableFile(ValueError):
    """A file a stage needs is there but cannot be used; the message names it and what to do."""


def read_yaml(path: str | Path, what_to_do: str = "fix it") -> Any:
    """`yaml.safe_load` of a file; a syntax error names the file and line, a read error the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) else "not UTF-8 text"
        raise UnreadableFile(f"{path}: cannot read it ({reason}); {what_to_do}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UnreadableFile(f"{where}: YAML syntax error ({problem}); {what_to_do}") from None


def read_csv(path: str | Path, what_to_do: str, **kwargs: Any) -> pd.DataFrame:
    """`pd.read_csv` of a table a stage wrote, identifier columns (`ID_COLUMNS`) as text; a damaged file
    (bad gzip, truncated) names the file."""
    path = Path(path)
    dtype = kwargs.pop("dtype", None)
    if not isinstance(dtype, dict) and dtype is not None:  # one dtype for every column (e.g. str)
        kwargs["dtype"] = dtype
    else:  # identifiers stay text in every table a stage reads
        kwargs["dtype"] = {**id_dtypes(), **(dtype or {})}
    try:
        return pd.read_csv(path, **kwargs)
    except FileNotFoundError:
        raise
    except (OSError, EOFError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        reason = getattr(err, "strerror", None) or str(err).splitlines()[0] or type(err).__name__
        raise UnreadableFile(f"{path}: damaged or unreadable ({reason}); {what_to_do}") from None


def load_spec_dict(study_dir: Path) -> dict[str, Any]:
    """The spec the runner stored in `study_dir/spec.yaml`, as a plain dict (safe_load)."""
    path = Path(study_dir) / "spec.yaml"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run `python -m study run SPEC` first")
    data = read_yaml(path, RESTORE_SPEC)
    if not isinstance(data, dict):
        raise UnreadableFile(f"{path}: not a study spec (a YAML mapping); restore it")
    return data


TUNED_RUNS = "runs_tuned.csv"  # each cell at its own selected lr (study.sweep.tuning)
TUNED_STATS = "stats_tuned"  # the statistics of TUNED_RUNS


def load_runs(study_dir: Path, name: str = "runs.csv") -> pd.DataFrame:
    """`runs.csv` (or another table of trials, e.g. TUNED_RUNS) with factor columns read as strings so
    that `none` and numbers group alike."""
    path = Path(study_dir) / name
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run `python -m study collect DIR` first")
    spec = load_spec_dict(study_dir)
    factors = condition_columns(spec) + list(POLICY_COLUMNS) + [PRESET_COLUMN]
    dtypes = {**id_dtypes(), **{c: str for c in factors}}
    redo = f"run `python -m study collect {Path(study_dir)}` again"
    return read_csv(path, redo, dtype=dtypes, keep_default_na=False, na_values=[""])


def condition_columns(spec: dict[str, Any]) -> list[str]:
    """Factor columns that define a condition: every spec factor except the gradient policies and the
    spec's `arm_factors` (settings chosen per policy arm, such as each arm's own learning rate)."""
    skip = set(POLICY_COLUMNS) | {PRESET_COLUMN, "seed"} | set(spec.get("arm_factors") or [])
    return [name for name in (spec.get("factors") or {}) if name not in skip]


def is_p_column(name: str) -> bool:
    """p-value columns (`p`, `p_*`, `*_p`): tiny values there are results, not noise around zero."""
    return bool(_P_COLUMN.search(str(name)))


def tidy_number(x: float, keep_tiny: bool = False) -> float:
    """`x` as the number policy writes it: 0 below `ZERO_TOL` (unless `keep_tiny`), else `SIG_DIGITS`."""
    if not np.isfinite(x):
        return x
    if x == 0 or (abs(x) < ZERO_TOL and not keep_tiny):
        return 0.0
    return float(FLOAT_FORMAT % x) + 0.0  # + 0.0 turns -0.0 into 0.0


def format_number(x: float, keep_tiny: bool = False) -> str:
    """One number as the tables write it."""
    return FLOAT_FORMAT % tidy_number(x, keep_tiny)


def tidy_floats(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of `frame` with every float column rounded by the number policy (see module docstring)."""
    out = frame.copy()
    for col in out.columns:
        if pd.api.types.is_float_dtype(out[col]):
            keep = is_p_column(col)
            out[col] = [tidy_number(v, keep) if pd.notna(v) else v for v in out[col]]
    return out


def replace_atomically(path: Path, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, fsync, and rename it into place.

    A crash or a full disk leaves the old file (or none), never a truncated one that the next stage reads.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    """`replace_atomically` for text (UTF-8)."""
    replace_atomically(path, text.encode())


def write_table(frame: pd.DataFrame, path: Path, raw: bool = False) -> None:
    """Deterministic CSV, written atomically: no index, `\\n` line endings, gzip (mtime 0) for `.gz`.

    Generated tables follow the number policy; `raw=True` (per-trial measurements) writes `RAW_FLOAT_FORMAT`.
    """
    path = Path(path)
    buf = io.StringIO()
    data = frame if raw else tidy_floats(frame)
    data.to_csv(buf, index=False, float_format=RAW_FLOAT_FORMAT if raw else FLOAT_FORMAT, lineterminator="\n")
    payload = buf.getvalue().encode()
    if path.suffix == ".gz":
        raw_buf = io.BytesIO()
        with gzip.GzipFile(fileobj=raw_buf, mode="wb", mtime=0, filename="") as gz:
            gz.write(payload)
        payload = raw_buf.getvalue()
    replace_atomically(path, payload)


# -- the study's spec lineage ----------------------------------------------------------------------

SPEC_LOG = "spec_log.jsonl"  # every change of the stored spec after trials existed (old -> new hash)
HYPOTHESES_LOG = "hypotheses_log.jsonl"  # every change of the pre-registered hypotheses, with its reason


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The entries of a JSON-lines log (none when the file does not exist)."""
    import json

    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def known_spec_hashes(study_dir: Path, current: str) -> set[str]:
    """`current` and every earlier hash of the stored spec that the runner logged as a change."""
    return {current} | {e["old_hash"] for e in read_jsonl(Path(study_dir) / SPEC_LOG)}


def check_spec_hashes(study_dir: Path, current: str, trials: dict[str, str]) -> None:
    """Refuse trials (run_id -> spec hash) run under a spec that is neither the stored one nor logged.

    That happens when `spec.yaml` was edited by hand, or records were copied in from another study:
    their results would be analysed under a spec they were not run with.
    """
    known = known_spec_hashes(study_dir, current)
    bad = sorted((rid, h) for rid, h in trials.items() if h and h not in known)
    if bad:
        shown = ", ".join(f"{rid} (spec {h})" for rid, h in bad[:10]) + (" ..." if len(bad) > 10 else "")
        raise ValueError(
            f"{study_dir}: {len(bad)} trial(s) were run under a spec whose hash is neither the stored "
            f"spec's ({current}) nor one logged in {SPEC_LOG}: {shown}. The stored spec.yaml was edited "
            "outside the runner, or records come from another study: restore spec.yaml, or run the "
            "changed spec with `python -m study run` (which logs the change) and re-run those trials"
        )
