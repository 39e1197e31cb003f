"""Run a study: resumable trials across seeds, atomically claimed, on local processes or a Dask cluster.

Layout: ``OUT/<study>/spec.yaml`` and ``OUT/<study>/trials/<run_id>/`` holding ``config.json``, the
per-epoch CSV log and ``record.json`` — written to a temporary file and renamed into place last, so
a valid one means done (`load_record` checks it parses, is complete and belongs to the trial; an
invalid one is moved aside to ``record.json.corrupt-<time>`` and the trial run again). A trial that
raises leaves ``failed.json`` (with the traceback) instead.
A trial is claimed with an ``O_EXCL`` lock file (host, pid, owner id, heartbeat); a claim whose owner is
dead, or silent for longer than `STALE_AFTER_S`, is taken over, and a runner releases only its own claim.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from study.sweep.estimate import AUTO, auto_bundle
from study.sweep.records import (  # noqa: F401 - re-exported: the runner's record API
    CLAIM,
    CONFIG,
    FAILED,
    RECORD,
    RECORD_KEYS,
    InvalidRecord,
    load_record,
    record_problem,
    set_aside_invalid_record,
    status,
    study_dir,
    trial_dir,
    write_json_atomic,
)
from study.sweep.spec import StudySpec, Trial, check_grid_size, expand, import_plugins, spec_to_yaml
from study.tables import HYPOTHESES_LOG, RESTORE_SPEC, SPEC_LOG, read_jsonl, read_yaml

STALE_AFTER_S = 120.0
HEARTBEAT_S = 10.0
DEFAULT_BUNDLE = AUTO  # per condition, from its network's size (study.sweep.estimate.auto_bundle)


class HypothesesChanged(RuntimeError):
    """The pre-registered `hypotheses:` block differs from the one the existing trials were run under."""


class SpecNotCommitted(RuntimeError):
    """A canonical spec (study/specs/*.yaml) with uncommitted changes: its registration would not be
    the file anyone can check out."""


PREREGISTRATION = "preregistration.json"


def _git(args: list[str], cwd: Path) -> str | None:
    """stdout of `git ARGS` in `cwd`, None when git or the repository is not there."""
    import subprocess

    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def spec_git_state(spec_path: Path) -> dict[str, Any]:
    """{commit: HEAD of the spec file's repository, in_git: the file lies in a git work tree,
    committed: it is tracked and unchanged}."""
    spec_path = Path(spec_path).resolve()
    head = _git(["rev-parse", "HEAD"], spec_path.parent)
    tracked = _git(["ls-files", "--error-unmatch", spec_path.name], spec_path.parent)
    dirty = _git(["status", "--porcelain", "--", spec_path.name], spec_path.parent)
    return {
        "commit": head.strip() if head else "unknown",
        "in_git": head is not None,
        "committed": bool(head) and tracked is not None and dirty is not None and not dirty.strip(),
    }


def check_spec_committed(spec_path: Path | None, specs_dir: Path, allow_uncommitted: bool = False) -> None:
    """Refuse a canonical spec (a file directly in `specs_dir`) that git does not hold unchanged, unless
    `allow_uncommitted` (development). Specs elsewhere, and copies outside a git work tree (an unpacked
    release: nothing to compare with), are not checked."""
    if spec_path is None or allow_uncommitted:
        return
    spec_path = Path(spec_path).resolve()
    if spec_path.parent != Path(specs_dir).resolve():
        return
    state = spec_git_state(spec_path)
    if state["in_git"] and not state["committed"]:
        raise SpecNotCommitted(
            f"{spec_path} is a canonical spec with uncommitted changes (or not tracked by git): commit it "
            "first, so that the study's registration (preregistration.json: commit and spec hash) names "
            "a version anyone can check out; for development pass --allow-uncommitted-spec"
        )


def register(sdir: Path, spec: StudySpec, spec_path: Path | None) -> Path | None:
    """`preregistration.json` at the study's first trial: the spec's content hash, its hypotheses' hash,
    the git commit of the spec file (or of this code), whether the file was committed, and the time.
    Written once, before any trial exists; never rewritten (later changes go to the spec and hypotheses
    logs)."""
    path = sdir / PREREGISTRATION
    if path.exists() or any((sdir / "trials").glob(f"*/{RECORD}")):
        return None
    state = spec_git_state(spec_path) if spec_path is not None else {"commit": "unknown", "committed": False}
    state = {"commit": state["commit"], "committed": state["committed"]}
    if state["commit"] == "unknown":
        state["commit"] = _git(["rev-parse", "HEAD"], Path(__file__).resolve().parent) or "unknown"
        state["commit"] = state["commit"].strip()
    entry = {
        "study": spec.name,
        "spec_hash": spec.hash(),
        "hypotheses_hash": spec.hypotheses_hash(),
        "spec_file": Path(spec_path).name if spec_path is not None else "",
        "git_commit": state["commit"],
        "spec_committed": state["committed"],
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    # a temporary file per host, process and thread, then a hard link: of runners starting together
    # (processes or threads) exactly one registration lands, and none fails on another's temporary file
    tmp = sdir / f".{PREREGISTRATION}.{socket.gethostname()}.{os.getpid()}.{threading.get_ident()}.tmp"
    tmp.write_text(json.dumps(entry, indent=1, sort_keys=True) + "\n")
    try:
        os.link(tmp, path)
    except FileExistsError:
        return None  # another runner registered the study a moment earlier
    except OSError:  # a file system without hard links: the rename, which never fails on a unique tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# -- claims ----------------------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _claim_is_stale(path: Path) -> bool:
    try:
        age = time.time() - path.stat().st_mtime
    except OSError:
        return True  # it vanished
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        # empty or half-written: its owner is writing it right now (between O_EXCL and the dump) or died
        # mid-write; only the latter is stale, and such a claim stops being touched
        return age > STALE_AFTER_S
    if info.get("host") == socket.gethostname() and not _pid_alive(int(info.get("pid", -1))):
        return True
    return age > STALE_AFTER_S


def claim_owner(path: Path) -> str | None:
    """The owner id written in a claim file (None when it is absent, unreadable or has none)."""
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return info.get("owner") if isinstance(info, dict) else None


def try_claim(sdir: Path, run_id: str) -> str | None:
    """Atomically claim a trial (O_EXCL); takes over a stale claim. Returns the claim's owner id (a fresh
    uuid, needed to release it), or None if someone else holds it or the trial is done."""
    d = trial_dir(sdir, run_id)
    d.mkdir(parents=True, exist_ok=True)
    path = d / CLAIM
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if not _claim_is_stale(path):
                return None
            stale = path.with_name(f"{CLAIM}.stale.{os.getpid()}.{uuid.uuid4().hex}")
            try:
                os.replace(path, stale)  # only one taker wins the rename
                stale.unlink()
            except OSError:
                return None
            continue
        owner = uuid.uuid4().hex
        with os.fdopen(fd, "w") as fh:
            info = {"host": socket.gethostname(), "pid": os.getpid(), "time": time.time(), "owner": owner}
            json.dump(info, fh)
        if status(sdir, run_id) == "done":  # finished by another runner between our check and claim
            release(sdir, run_id, owner)
            return None
        return owner
    return None


def release(sdir: Path, run_id: str, owner: str) -> bool:
    """Remove the claim if it is still `owner`'s (True); a claim another runner has taken over (ours
    looked stale to it) is left alone, so that a third runner cannot start the same trial."""
    path = trial_dir(sdir, run_id) / CLAIM
    if claim_owner(path) != owner:
        return False
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


class Heartbeat:
    """Touches the claim files of the trials being run (every `HEARTBEAT_S`, from a daemon thread, so it
    goes on while the main thread trains), so other runners see they are alive. A claim another runner
    has taken over is not touched: its liveness is its new owner's to show."""

    def __init__(self, claims: dict[Path, str]) -> None:
        self.claims, self._stop = claims, threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name="claim-heartbeat")

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            for path, owner in self.claims.items():
                if claim_owner(path) == owner:
                    try:
                        os.utime(path)
                    except OSError:
                        pass

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()


# -- executing one unit (a bundle of seeds of one condition) ---------------------------------------


@dataclass(frozen=True)
class Unit:
    """A unit of work: trials of one condition that differ only in seed (trained as one bundle)."""

    study: str
    spec_hash: str
    trials: tuple[tuple[str, dict[str, Any], dict[str, Any]], ...]  # (run_id, factors, config dict)


def _write_history_csv(path: Path, history: list[dict[str, Any]]) -> None:
    if not history:
        return
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(history[0]))
        w.writeheader()
        w.writerows(history)


def execute_unit(
    sdir: str, unit: Unit, retry_failed: bool = False, n_threads: int = 1, plugins: tuple[str, ...] = ()
) -> list[dict[str, str]]:
    """Run the unit's trials that are not done (nor failed, unless `retry_failed`) and claimable.

    Returns one event per trial: {"run_id", "status": done|failed|skipped|busy, "wall_time_s"}. Every claim
    it took is released on the way out, however it leaves (an interrupt included); records are written
    atomically, so an interrupted unit leaves whole records or none. The spec's `plugins` are imported
    first (in a pool or Dask worker too), so the policies, normalizations and datasets they register exist.
    """
    import torch

    import_plugins(plugins)

    from study.training.bundle import run_bundle
    from study.training.config import TrialConfig
    from study.training.trial import run_trial

    global _IN_UNIT
    if _STOPPING:  # a pool worker told to stop must not start the next queued unit
        return []
    torch.set_num_threads(n_threads)
    root = Path(sdir)
    events: list[dict[str, Any]] = []
    todo = []
    owners: dict[str, str] = {}
    _IN_UNIT = True
    try:
        for run_id, factors, cfg in unit.trials:
            st = status(root, run_id)
            if st == "done" or (st == "failed" and not retry_failed):
                events.append({"run_id": run_id, "status": "skipped"})
            elif owner := try_claim(root, run_id):
                owners[run_id] = owner
                set_aside_invalid_record(root, run_id)
                for tmp in trial_dir(root, run_id).glob(".*.tmp"):  # left by a writer killed mid-write
                    tmp.unlink(missing_ok=True)
                todo.append((run_id, factors, cfg))
            else:
                events.append({"run_id": run_id, "status": "busy"})
        if not todo:
            return events
        claims = {trial_dir(root, r) / CLAIM: owners[r] for r, _, _ in todo}
        with Heartbeat(claims):
            for run_id, _, cfg in todo:
                (trial_dir(root, run_id) / FAILED).unlink(missing_ok=True)
                write_json_atomic(trial_dir(root, run_id) / CONFIG, cfg)
            configs = [TrialConfig.parse(cfg) for _, _, cfg in todo]
            try:
                if len(configs) == 1:
                    records = [run_trial(configs[0], out_dir=root / "trials")]
                else:
                    records = run_bundle(configs)
            except Exception:  # noqa: BLE001 - a failing trial must not stop the sweep
                tb = traceback.format_exc()
                for run_id, factors, _ in todo:
                    write_json_atomic(
                        trial_dir(root, run_id) / FAILED,
                        {
                            "run_id": run_id,
                            "study": unit.study,
                            "spec_hash": unit.spec_hash,
                            "factors": factors,
                            "traceback": tb,
                            "error": tb.strip().splitlines()[-1],
                        },
                    )
                    events.append({"run_id": run_id, "status": "failed"})
                return events
            for (run_id, factors, _), rec in zip(todo, records, strict=True):
                rec.update({"study": unit.study, "spec_hash": unit.spec_hash, "factors": factors})
                d = trial_dir(root, run_id)
                if len(configs) > 1:
                    _write_history_csv(d / "metrics.csv", rec["history"])
                write_json_atomic(d / RECORD, rec)
                events.append({"run_id": run_id, "status": "done", "wall_time_s": rec["wall_time_s"]})
    finally:
        for run_id, owner in owners.items():
            release(root, run_id, owner)
        _IN_UNIT = False
        if _STOPPING:
            os._exit(0)  # a pool worker told to stop: claims released, nothing more to do
    return events


# -- interruption (SIGINT, SIGTERM) and the lifetime of pool workers --------------------------------

PARENT_POLL_S = 0.2  # how often a pool worker checks that its parent (the runner) is alive
ORPHAN_GRACE_S = 2.0  # an orphaned worker unwinds its unit (claims released) for at most this long
STOP_GRACE_S = 15.0  # an interrupted runner waits this long for its workers to release claims, then kills

_IN_UNIT = False  # in a pool worker: whether execute_unit is running (SIGTERM then unwinds it)
_STOPPING = False  # in a pool worker: SIGTERM came (interrupt, or its runner died); start no more units


class _Stop(BaseException):
    """Raised by the runner's SIGINT/SIGTERM handlers. Deliberately not a KeyboardInterrupt: Lightning catches
    that inside `fit` and turns it into `sys.exit(1)`, which would lose the interrupt."""


class Interrupted(KeyboardInterrupt):
    """`run_study` was interrupted (SIGINT or SIGTERM); its workers are stopped and their claims released."""

    def __init__(self, finished: int, counts: dict[str, int], total: int) -> None:
        super().__init__(f"interrupted: {finished} trial(s) finished in this run")
        self.finished, self.counts, self.total = finished, counts, total


def _raise_stop(signum: int, frame: Any) -> None:
    # the first signal only: a user pressing Ctrl-C again must not break off the clean-up
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise _Stop(signum)


@contextmanager
def _stop_on_signals() -> Iterator[None]:
    """While running (main thread only): SIGINT and SIGTERM raise `_Stop`; then the old handlers return."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in old:
        signal.signal(sig, _raise_stop)
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def _worker_init(parent_pid: int) -> None:
    """Set-up of a pool worker: Ctrl-C is the runner's to handle (it stops the workers in order); SIGTERM
    unwinds a running unit, so its claims are released; and a worker whose runner died (SIGKILL) does
    not run on holding claims: it unwinds and exits (`_watch_parent`)."""
    if os.getppid() != parent_pid:  # the runner died while this worker was starting (importing torch)
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _worker_sigterm)
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True, name="watch-parent").start()


def _worker_sigterm(signum: int, frame: Any) -> None:
    global _STOPPING
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _STOPPING = True
    if _IN_UNIT:
        raise _Stop(signum)  # execute_unit's `finally` releases the claims
    os._exit(0)  # idle: nothing to clean up


def _watch_parent(parent_pid: int) -> None:
    # the parent's death re-parents this process, so getppid() changes (Linux and macOS alike)
    while os.getppid() == parent_pid:
        time.sleep(PARENT_POLL_S)
    os.kill(os.getpid(), signal.SIGTERM)  # unwind the running unit in the main thread...
    time.sleep(ORPHAN_GRACE_S)
    os._exit(1)  # ...and leave whatever happens to it


def _stop_pool(pool: Any) -> None:
    """Cancel what has not started, SIGTERM the workers (running units unwind, releasing their claims),
    wait up to STOP_GRACE_S for them, then kill any that is left."""
    procs = list((getattr(pool, "_processes", None) or {}).values())  # private, but stable since 3.2
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + STOP_GRACE_S
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join(5)


def release_dead_claims(sdir: Path) -> int:
    """Remove the study's claims held by dead processes of this host: workers stopped or killed after an
    interrupt, or a runner SIGKILLed after a trial's record was written but before its claim was released.
    Such a claim is stale already (a later runner would take it over); this leaves none lying about."""
    host, n = socket.gethostname(), 0
    for path in sdir.glob(f"trials/*/{CLAIM}"):
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(info, dict) and info.get("host") == host and not _pid_alive(int(info.get("pid", -1))):
            path.unlink(missing_ok=True)
            n += 1
    return n


# -- planning --------------------------------------------------------------------------------------


def make_units(spec: StudySpec, trials: list[Trial], bundle: int | str) -> list[Unit]:
    """Group trials by condition into bundles of up to `bundle` seeds (order: conditions as in the spec);
    `auto`: each condition's size from its network (:func:`study.sweep.estimate.auto_bundle`)."""
    if bundle != AUTO and (not isinstance(bundle, int) or bundle < 1):
        raise ValueError(f"--bundle: must be >= 1 or '{AUTO}', got {bundle}")
    groups: dict[str, list[Trial]] = {}
    for t in trials:
        groups.setdefault(t.condition_key, []).append(t)
    units = []
    for members in groups.values():
        size = auto_bundle(members[0].config) if bundle == AUTO else bundle
        for i in range(0, len(members), size):
            chunk = members[i : i + size]
            units.append(
                Unit(
                    spec.name, spec.hash(), tuple((t.run_id, t.factors, t.config.canonical()) for t in chunk)
                )
            )
    return units


RECORDED = "recorded"  # --bundle recorded: the bundle size the study's committed table was trained with


def recorded_bundle(sdir: Path) -> int | str | None:
    """`auto` when every run of the study was made with `--bundle auto` (its `run_log.jsonl` says so:
    each condition's size then follows from its network), else the largest `bundle_size` in the
    study's committed `runs.csv`, or None without one.

    A bundle's noise draws depend on its members, so re-running a committed study reproduces its
    numbers only with the bundles it was trained in: `make_units` chunks each condition's seeds in
    order, and at this size it rebuilds every committed study's bundles (a test checks each).
    """
    path = sdir / "runs.csv"
    try:
        with path.open(newline="") as f:
            sizes = [int(float(r["bundle_size"])) for r in csv.DictReader(f) if r.get("bundle_size")]
    except (OSError, KeyError, ValueError):
        return None
    if not sizes:
        return None
    runs = read_jsonl(sdir / "run_log.jsonl")
    if runs and all(str(r.get("bundle")) == AUTO for r in runs):
        return AUTO
    return max(sizes)


def resolve_bundle(value: int | str, sdir: Path) -> int | str:
    """`--bundle`: a number >= 1, `auto` (each condition's size from its network, the default), or
    `recorded` (:func:`recorded_bundle`); ValueError otherwise.

    A number or `auto` where a committed table records another size is allowed (a scratch run) but
    warned about on stderr: the new trials would not reproduce the committed numbers.
    """
    recorded = recorded_bundle(sdir)
    if value == AUTO:
        if recorded is not None and recorded != AUTO:
            _warn_bundle(AUTO, sdir, recorded)
        return AUTO
    if value == RECORDED:
        if recorded is None:
            raise ValueError(
                f"--bundle {RECORDED}: {sdir / 'runs.csv'} has no bundle sizes (no committed table); "
                "give a number of seeds per bundle (e.g. 8)"
            )
        return recorded
    try:
        bundle = int(value)
        if str(bundle) != str(value).strip():
            raise ValueError
    except (TypeError, ValueError):
        raise ValueError(
            f"--bundle: expected a number >= 1, '{AUTO}' or '{RECORDED}', got {value!r}"
        ) from None
    if bundle < 1:
        raise ValueError(f"--bundle: must be >= 1, got {bundle}")
    if recorded is not None and bundle != recorded:
        _warn_bundle(str(bundle), sdir, recorded)
    return bundle


def _warn_bundle(value: str, sdir: Path, recorded: int | str) -> None:
    import sys

    print(
        f"warning: --bundle {value}: {sdir / 'runs.csv'} was trained in bundles of up to {recorded} "
        f"seeds; a bundle's noise draws depend on its members, so new trials will not reproduce "
        f"those numbers (--bundle {RECORDED} uses {recorded})",
        file=sys.stderr,
    )


def prepare(
    spec: StudySpec,
    out: str | Path,
    hypotheses_change_reason: str | None = None,
    spec_path: Path | None = None,
) -> Path:
    """Create the study folder and store the spec; refuse if pre-registered hypotheses changed.

    Before the first trial it records the registration (`register`: spec hash, git commit).

    Once trials exist, every change of the stored spec is appended to `spec_log.jsonl` (old and new
    hash, the keys that changed), so later stages accept records run under an earlier version of it
    (e.g. before more seeds were added) and nothing else. A change of the `hypotheses:` block needs a
    reason, which goes to `hypotheses_log.jsonl` and into the report.
    """
    sdir = study_dir(out, spec)
    stored = sdir / "spec.yaml"
    if stored.exists():
        from study.sweep.spec import parse_spec

        old = parse_spec(read_yaml(stored, RESTORE_SPEC))
        trials_exist = any((sdir / "trials").glob(f"*/{RECORD}"))
        if old.hash() != spec.hash() and trials_exist:
            _log_spec_change(sdir, old, spec, hypotheses_change_reason)
    sdir.mkdir(parents=True, exist_ok=True)
    tmp = sdir / f".spec.yaml.{socket.gethostname()}.{os.getpid()}.{threading.get_ident()}.tmp"
    tmp.write_text(spec_to_yaml(spec))
    os.replace(tmp, stored)  # atomic: a runner starting at the same moment never reads a half-written spec
    register(sdir, spec, spec_path)
    return sdir


def _log_spec_change(sdir: Path, old: StudySpec, new: StudySpec, reason: str | None) -> None:
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    entry = {"time": now, "old_hash": old.hash(), "new_hash": new.hash()}
    if old.hypotheses_hash() != new.hypotheses_hash():
        if reason is None or not reason.strip():
            raise HypothesesChanged(
                f"the `hypotheses:` block of {new.name!r} differs from the one stored in "
                f"{sdir / 'spec.yaml'} and trials already exist: pre-registered hypotheses must not change "
                "after results exist. "
                "Restore the original block, use a new study name, or pass "
                "--allow-hypotheses-change REASON to record the change and its reason (shown in the report)."
            )
        hyp = {
            **entry,
            "reason": reason.strip(),
            "old": old.hypotheses.dump(),
            "new": new.hypotheses.dump(),
        }
        _append_jsonl(sdir / HYPOTHESES_LOG, hyp)
    before, after = old.model_dump(mode="json"), new.model_dump(mode="json")
    changed = sorted(k for k in after if before.get(k) != after.get(k))
    _append_jsonl(sdir / SPEC_LOG, {**entry, "changed": changed})


def _append_jsonl(path: Path, entry: dict[str, Any]) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(entry, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def summary_counts(sdir: Path, trials: Iterable[Trial]) -> dict[str, int]:
    counts = {"done": 0, "failed": 0, "todo": 0}
    for t in trials:
        counts[status(sdir, t.run_id)] += 1
    return counts


def counts_and_held(sdir: Path, trials: Iterable[Trial]) -> tuple[dict[str, int], int]:
    """`summary_counts` plus how many of the trials not done are claimed by a live runner (being run right
    now elsewhere), read in one pass. Per trial the claim is read before the status: a runner writes the
    record before it releases the claim, so a trial is never seen unclaimed and not done while another
    runner finishes it (reading the status first let a trial finished meanwhile count as 'to do', unheld)."""
    counts, held = {"done": 0, "failed": 0, "todo": 0}, 0
    for t in trials:
        claim = trial_dir(sdir, t.run_id) / CLAIM
        claimed = claim.exists() and not _claim_is_stale(claim)
        st = status(sdir, t.run_id)
        counts[st] += 1
        held += st == "todo" and claimed
    return counts, held


def unfinished_message(name: str, total: int, counts: dict[str, int], held: int = 0) -> str:
    """One line saying what is left of a study and how to finish it ('' when every trial is done)."""
    left = counts["failed"] + counts["todo"]
    if not left:
        return ""
    parts = [f"{counts['failed']} failed", f"{counts['todo']} to do"]
    if held:
        parts.append(f"{held} of them being run by another runner")
    hint = "run the same command again to resume"
    if counts["failed"]:
        hint += " (add --retry-failed to run the failed trials again)"
    return f"{name}: {left} of {total} trials not done ({', '.join(parts)}); {hint}"


# -- executors -------------------------------------------------------------------------------------


def _local_map(fn: Callable[..., Any], units: list[Unit], workers: int, args: tuple) -> Iterable[Any]:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    if workers == 1:
        for u in units:
            yield fn(args[0], u, *args[1:])
        return
    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=mp.get_context("spawn"),
        initializer=_worker_init,
        initargs=(os.getpid(),),
    )
    try:
        # submit() spawns the workers; with SIGINT blocked they start with it blocked, so a Ctrl-C in the
        # terminal (sent to the whole process group) reaches only the runner, which stops them in order
        # (a SIGINT that arrives meanwhile is delivered when it is unblocked)
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            futures = [pool.submit(fn, args[0], u, *args[1:]) for u in units]
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        for fut in as_completed(futures):
            yield fut.result()
    except BaseException:  # interrupted, closed early, or a worker died: stop the others in order
        _stop_pool(pool)
        raise
    pool.shutdown(wait=True)


# Dask's worker background services (a stack-sampling profiler every 10 ms, a 20 ms event-loop tick,
# system and memory monitors) compete for the GIL and the cores with Python-heavy training steps: on
# 2 cores they made each trial ~19% slower than in a plain process (benchmarks/README.md, bench_sweep).
# These settings turn the profiler off (the dashboard, off here anyway, loses its profile) and slow
# the others to intervals that cost nothing measurable. They apply to the LocalCluster the runner
# starts (its nannies pass them to the worker processes); workers started elsewhere read their own
# Dask configuration: see the README for the same values as DASK_* variables.
LEAN_WORKER_CONFIG: dict[str, Any] = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "1s",
    "distributed.admin.system-monitor.interval": "5s",
    "distributed.worker.memory.monitor-interval": "1s",
}


def local_cluster_security() -> Any:
    """`Security.temporary()`: a self-signed certificate made for this cluster, required by every peer."""
    from distributed.security import Security

    try:
        return Security.temporary()
    except ImportError as err:  # distributed needs the `cryptography` package to make the certificate
        raise ValueError(
            f"--executor dask: the LocalCluster runs with TLS, which needs the `cryptography` package "
            f"({err}); install it with `pip install -e '.[dask]'`"
        ) from None


def check_scheduler_address(address: str, tls: bool, insecure: bool = False) -> None:
    """Refuse (ValueError naming the option) a Dask scheduler address that would expose the study: a plain
    (unencrypted, unauthenticated) address off loopback unless `insecure`, TLS without a TLS setup, or TLS
    files given for a plain address (they would be ignored)."""
    text = address.strip()
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "tcp", text  # Dask's default protocol
    rest = rest.split("/")[0]
    if rest.startswith("["):  # [IPv6]:port
        host = rest[1 : rest.find("]")] if "]" in rest else ""
    else:
        host = rest.rsplit(":", 1)[0] if rest.count(":") == 1 else rest  # host:port, host, or bare IPv6
    if not text or not host:
        raise ValueError(f"--scheduler: no host in {address!r}; e.g. tls://head:8786")
    if scheme in ("tls", "wss"):
        if not tls:
            raise ValueError(
                f"--scheduler {address}: a TLS scheduler needs --tls-ca, --tls-cert and --tls-key"
            )
        return
    if scheme not in ("tcp", "ws", "ucx"):
        raise ValueError(
            f"--scheduler {address}: unknown protocol {scheme!r}; allowed: tls://HOST:PORT (with "
            "--tls-ca/--tls-cert/--tls-key), or tcp://HOST:PORT on loopback (elsewhere only with --insecure)"
        )
    if tls:
        raise ValueError(
            f"--tls-ca/--tls-cert/--tls-key: given with the plain address {address}, where they would be "
            "ignored; use tls://HOST:PORT"
        )
    if not _is_loopback(host) and not insecure:
        raise ValueError(
            f"--scheduler {address}: a plain {scheme}:// address off this machine is neither encrypted nor "
            "authenticated (anyone who reaches it can run code as you); use tls://HOST:PORT with "
            "--tls-ca/--tls-cert/--tls-key, or pass --insecure to accept that on a trusted network"
        )


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host.lower() in ("localhost", "localhost.localdomain", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _dask_map(
    fn: Callable[..., Any],
    units: list[Unit],
    workers: int,
    args: tuple,
    scheduler: str | None,
    security: Any = None,
) -> Iterable[Any]:
    import dask
    from dask.distributed import Client, LocalCluster, as_completed

    with dask.config.set(LEAN_WORKER_CONFIG):
        cluster = None
        if scheduler:
            client = Client(scheduler, security=security)
        else:
            # TLS with throw-away certificates, on loopback: another local user can neither connect to the
            # scheduler (which runs whatever it is sent) nor read the traffic
            cluster = LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                protocol="tls://",
                security=local_cluster_security(),
                dashboard_address=None,
            )
            client = Client(cluster)
        try:
            futures = client.map(
                fn, [args[0]] * len(units), units, *[[a] * len(units) for a in args[1:]], pure=False
            )
            for fut in as_completed(futures):
                yield fut.result()
        finally:
            client.close()
            if cluster is not None:
                cluster.close()


def run_study(
    spec: StudySpec,
    *,
    out: str | Path = "runs",
    workers: int | None = None,
    executor: str = "local",
    scheduler: str | None = None,
    retry_failed: bool = False,
    bundle: int | str = DEFAULT_BUNDLE,
    quiet: bool = False,
    hypotheses_change_reason: str | None = None,
    security: Any = None,
    insecure: bool = False,
    spec_path: Path | None = None,
    allow_uncommitted_spec: bool = False,
) -> dict[str, int]:
    """Run every trial of `spec` that is not done; returns the final counts (done/failed/todo).

    `spec_path` (the file the spec was read from) is checked (`check_spec_committed`: a canonical spec
    must be committed unless `allow_uncommitted_spec`) and registered at the first trial.

    A Dask `scheduler` must be TLS (with `security`) or on loopback, unless `insecure`."""
    from tqdm import tqdm

    if executor not in ("local", "dask"):
        raise ValueError(f"--executor: unknown {executor!r}; allowed: local, dask")
    if executor == "dask" and scheduler is not None:
        check_scheduler_address(scheduler, tls=security is not None, insecure=insecure)
    workers = workers or os.cpu_count() or 1
    check_grid_size(spec)
    from study.sweep.spec import SPECS_DIR

    check_spec_committed(spec_path, SPECS_DIR, allow_uncommitted_spec)
    sdir = prepare(spec, out, hypotheses_change_reason, spec_path)
    release_dead_claims(sdir)
    from study.sweep.tuning import study_trials

    trials = study_trials(spec, sdir)  # expand(spec), plus tune_lr's selection and own-lr trials
    states = {t.run_id: status(sdir, t.run_id) for t in trials}
    start_counts = {k: sum(1 for v in states.values() if v == k) for k in ("done", "failed", "todo")}
    pending = [
        t for t in trials if states[t.run_id] == "todo" or (retry_failed and states[t.run_id] == "failed")
    ]
    units = make_units(spec, pending, bundle)
    bar = tqdm(
        total=len(trials),
        initial=len(trials) - len(pending),
        desc=spec.name,
        unit="trial",
        disable=quiet,
        dynamic_ncols=True,
        smoothing=0.05,
    )
    failed = start_counts["failed"] if not retry_failed else 0
    finished = 0  # trials done in this run
    args = (str(sdir), retry_failed, 1, tuple(spec.plugins))
    mapper = (
        _local_map(execute_unit, units, workers, args)
        if executor == "local"
        else _dask_map(execute_unit, units, workers, args, scheduler, security)
    )
    t0 = time.perf_counter()
    interrupted = False
    with _stop_on_signals():
        try:
            for events in mapper:
                for ev in events:
                    if ev["status"] in ("done", "failed"):
                        bar.update(1)
                    failed += ev["status"] == "failed"
                    finished += ev["status"] == "done"
                bar.set_postfix(failed=failed)
        except (_Stop, KeyboardInterrupt):
            interrupted = True
            mapper.close()  # stops the workers (if the signal came while this frame, not the map, ran)
            release_dead_claims(sdir)
        finally:
            bar.close()
    counts = summary_counts(sdir, trials)
    elapsed = time.perf_counter() - t0
    summary = {
        "study": spec.name,
        "trials": len(trials),
        **counts,
        "wall_time_s": round(elapsed, 1),
        "workers": workers,
        "executor": executor,
        "bundle": bundle,
        **({"interrupted": True} if interrupted else {}),
    }
    run_log = sdir / "run_log.jsonl"
    with open(run_log, "a") as fh:
        fh.write(json.dumps(summary, sort_keys=True) + "\n")
    write_run_summary(sdir)
    if interrupted:
        raise Interrupted(finished, counts, len(trials))
    if len(study_trials(spec, sdir)) > len(trials):  # tune_lr: the selection chose lrs; run those trials
        again = {"workers": workers, "executor": executor, "scheduler": scheduler, "bundle": bundle}
        again |= {"retry_failed": retry_failed, "quiet": quiet, "security": security, "insecure": insecure}
        return run_study(spec, out=out, hypotheses_change_reason=hypotheses_change_reason, **again)
    print(
        f"{spec.name}: {counts['done']}/{len(trials)} done, {counts['failed']} failed, "
        f"{counts['todo']} to do; this run {elapsed:.0f} s -> {sdir}"
    )
    return counts


def write_run_summary(sdir: Path) -> Path:
    """`run_summary.json`: the latest run's counts plus the wall time summed over all (resumed) runs."""
    runs = [json.loads(ln) for ln in (sdir / "run_log.jsonl").read_text().splitlines() if ln.strip()]
    total = round(sum(r.get("wall_time_s", 0.0) for r in runs), 1)
    summary = {**runs[-1], "runs": len(runs), "wall_time_s_all_runs": total}
    write_json_atomic(sdir / "run_summary.json", summary)
    return sdir / "run_summary.json"


EVIDENCE = Path(__file__).resolve().parents[2] / "results"  # the committed studies the cost model learns from


def dry_run(
    spec: StudySpec, *, out: str | Path, workers: int | None, bundle: int | str, evidence: Path = EVIDENCE
) -> dict[str, Any]:
    """Trial counts and an estimated time, without running anything (an oversized grid is refused).

    The time is the cost model of :mod:`study.sweep.estimate` fitted on the committed studies in
    `evidence`, rescaled by this study's finished trials when there are any."""
    from study.sweep.estimate import committed_cost_model, estimate_seconds, finished_rows

    check_grid_size(spec)
    sdir = study_dir(out, spec)
    from study.sweep.tuning import study_trials

    trials = study_trials(spec, sdir)
    states = {t.run_id: status(sdir, t.run_id) if sdir.exists() else "todo" for t in trials}
    counts = {k: sum(v == k for v in states.values()) for k in ("done", "failed", "todo")}
    finished = finished_rows(sdir, [t for t in trials if states[t.run_id] == "done"])
    todo = [t for t in trials if states[t.run_id] == "todo"]
    configs = {t.run_id: t.config for t in todo}
    sizes = [(configs[r], len(u.trials)) for u in make_units(spec, todo, bundle) for r, _, _ in u.trials]
    estimate = estimate_seconds(sizes, committed_cost_model(evidence), finished)
    workers = workers or os.cpu_count() or 1
    eta = estimate["seconds"] / workers
    per_trial = estimate["seconds"] / len(todo) if todo else 0.0
    info = {
        "study": spec.name,
        "trials": len(trials),
        **counts,
        "cells": len({t.condition_key for t in expand(spec)}),  # the spec's cells (tune_lr's trials aside)
        "seeds": len(spec.seed_list),
        "bundle": bundle,
        "workers": workers,
        "est_seconds_per_trial": round(per_trial, 2),
        "est_total_seconds": round(eta),
        "est_basis": estimate["basis"],
    }
    print(
        f"{spec.name}: {len(trials)} trials ({info['cells']} cells x {info['seeds']} seeds"
        + (" and the lr selection" if spec.tune_lr is not None else "")
        + "); "
        f"{counts['done']} done, {counts['failed']} failed, {counts['todo']} to do; "
        f"estimated {eta / 60:.1f} min with {workers} workers at {per_trial:.1f} s/trial"
    )
    print(f"  estimate from {estimate['basis']}")
    if spec.tune_lr is not None:
        n_eval = len(expand(spec))
        print(
            f"  tune_lr: includes {len(trials) - n_eval} selection trials (lr grid {spec.tune_lr.grid} x "
            f"selection seeds {spec.tune_lr.selection_seeds}); up to {n_eval} more at the chosen lrs "
            "follow once the selection is done (none where a cell's choice is the shared lr)"
        )
    return info
