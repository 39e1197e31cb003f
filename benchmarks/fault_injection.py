"""Fault injection: how reliably the runner survives kills, refuses bad specs and repairs corrupt records.

    python benchmarks/fault_injection.py [--kills 6] [--seed 0]

1. Kills: a tiny 24-trial study (digits, hidden [16], 5 epochs, --workers 2 --bundle 1) is started and
   SIGKILLed at a random moment once its workers train, `--kills` times (at random either the runner
   alone, leaving its pool workers orphaned, or its whole process group), then resumed to the end with
   the same command (fewer kills if the study finishes first). Counts trials lost (no valid record at
   the end), duplicated (a record written again after it existed), redone (a trial started more than
   once: killed mid-trial, then run again), workers still alive 30 s after their runner was killed (and
   the slowest exit), and claims or temporary files left at the end.
2. Bad specs: each must end in an error naming the problem (exit 2), with no trial run.
3. Corrupt records: empty, truncated, foreign (another trial's) and non-JSON record.json files in the
   finished study; one more run must re-run exactly those trials, keep the bad files aside, and leave
   every other record byte-for-byte and mtime untouched.

Everything happens in a temporary folder; about 2-4 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SPEC = {
    "name": "faults",
    "base": {"dataset": "digits", "hidden": [16], "epochs": 5, "batch_size": 64, "diagnostics": False},
    "factors": {"weight_policy": ["ste", "exact", "zero"], "signal_policy": ["ste", "exact"]},
    "seeds": 4,
}
# the runner, with each trial start logged as "<pid> <run_id>" (pool workers import this as __mp_main__)
WRAPPER = """\
import os, sys
import study.training.trial as T
_real = T.run_trial
def run_trial(config, out_dir=None):
    with open(os.environ["NG_TRIAL_LOG"], "a") as fh:
        fh.write(f"{os.getpid()} {config.run_id}\\n")
    return _real(config, out_dir)
T.run_trial = run_trial
if __name__ == "__main__":
    from study.cli import main
    sys.exit(main(sys.argv[1:]))
"""


def env(log: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "NG_TRIAL_LOG": str(log),
    }


def fingerprints(sdir: Path) -> dict[str, tuple[int, int, bytes]]:
    out = {}
    for p in sdir.glob("trials/*/record.json"):
        st = p.stat()
        out[p.parent.name] = (st.st_ino, st.st_mtime_ns, p.read_bytes())
    return out


def descendants(pid: int) -> list[int]:
    """Child processes of `pid`, recursively (Linux /proc)."""
    kids: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        kids.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in kids.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


ORPHAN_WAIT_S = 30.0  # how long the workers of a killed runner get to notice and exit


def n_started(log: Path) -> int:
    return log.read_text().count("\n") if log.exists() else 0


def kills(work: Path, n: int, rng: random.Random) -> dict[str, float]:
    spec_path = work / "faults.yaml"
    spec_path.write_text(yaml.safe_dump(SPEC))
    wrapper = work / "study_logged.py"
    wrapper.write_text(WRAPPER)
    log = work / "trials.log"
    cmd = [sys.executable, str(wrapper), "run", str(spec_path), "--out", str(work / "out")]
    cmd += ["--workers", "2", "--bundle", "1", "--quiet"]
    sdir = work / "out" / "faults"
    rewritten: set[str] = set()
    orphans, slowest_exit, made = 0, 0.0, 0
    seen = fingerprints(sdir)
    for i in range(n):
        p = subprocess.Popen(
            cmd, env=env(log), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        started = n_started(log)
        t0 = time.monotonic()
        while n_started(log) == started and p.poll() is None and time.monotonic() < t0 + 120:
            time.sleep(0.05)  # until this run's workers train (start-up takes seconds)
        delay = rng.uniform(0.0, 3.0)  # then a random moment, mostly mid-trial
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.05)
        whole_group = rng.random() < 0.5
        children = descendants(p.pid)
        if p.poll() is not None:  # it finished the study before the kill
            print(f"  run {i + 1} finished the study before its kill: no more kills", flush=True)
            break
        if whole_group:
            os.killpg(p.pid, signal.SIGKILL)
        else:
            os.kill(p.pid, signal.SIGKILL)
        p.wait()
        made += 1
        t_kill = time.monotonic()
        while any(alive(c) for c in children) and time.monotonic() < t_kill + ORPHAN_WAIT_S:
            time.sleep(0.05)
        slowest_exit = max(slowest_exit, time.monotonic() - t_kill)
        left = [c for c in children if alive(c)]
        orphans += len(left)
        for c in left:
            os.kill(c, signal.SIGKILL)
        now = fingerprints(sdir)
        rewritten |= {rid for rid, fp in seen.items() if now.get(rid) != fp}
        seen.update(now)
        how = "process group" if whole_group else "runner only"
        print(f"  kill {i + 1}/{n}, {delay:3.1f} s into training ({how}): {len(now)}/24 records", flush=True)
    final = subprocess.run(cmd, env=env(log), capture_output=True, text=True)
    now = fingerprints(sdir)
    rewritten |= {rid for rid, fp in seen.items() if now.get(rid) != fp}
    starts = Counter(rid for _, rid in (ln.split() for ln in log.read_text().splitlines() if ln.strip()))
    from study.sweep.runner import InvalidRecord, load_record

    valid = 0
    for rid in now:
        try:
            valid += load_record(sdir / "trials" / rid / "record.json", rid) is not None
        except InvalidRecord:
            pass
    return {
        "kills": made,
        "resume exit code": final.returncode,
        "trials": 24,
        "lost (no valid record)": 24 - valid,
        "duplicated (record rewritten)": len(rewritten),
        "redone (started more than once)": sum(c - 1 for c in starts.values()),
        f"workers alive {ORPHAN_WAIT_S:.0f} s after the kill": orphans,
        "slowest exit of a killed runner's workers (s)": round(slowest_exit, 1),
        "claims left": len(list(sdir.glob("trials/*/claim.lock*"))),
        "temporary files left": len(list(sdir.glob("trials/*/.*.tmp"))),
    }


BAD_SPECS = {  # name: (spec change, words the error must contain)
    "typo in a factor name": ({"factors": {"weight_polcy": ["ste"]}}, ["weight_polcy", "unknown factor"]),
    "infinite lr": ({"base": {**SPEC["base"], "lr": float("inf")}}, ["lr"]),
    "negative seed": ({"seeds": [-1, 0]}, ["seed"]),
    "seeds: 0": ({"seeds": 0}, ["seeds"]),
    "bad include key": ({"include": [{"weight_polcy": "ste"}]}, ["include", "weight_polcy"]),
    "bad exclude key": ({"exclude": [{"weight_polcy": "ste"}]}, ["exclude", "weight_polcy"]),
    "unknown policy value": ({"factors": {"weight_policy": ["stee"]}}, ["stee"]),
    "unknown base field": ({"base": {**SPEC["base"], "epoch": 3}}, ["epoch"]),
    "not YAML": ("name: x\nfactors: {weight_policy: [ste}\n", ["bad.yaml:2: YAML syntax error"]),
    "not a mapping": ("- just\n- a list\n", ["mapping"]),
    "oversized grid": (
        {"factors": {"lr": [i / 1e4 for i in range(1, 401)], "batch_size": list(range(1, 401))}},
        ["too large"],
    ),
}


def bad_specs(work: Path) -> list[tuple[str, int, bool, int, str]]:
    """Per bad spec: (name, exit code, error specific, trial folders created, first error line)."""
    import contextlib
    import io

    from study.cli import main

    rows = []
    for name, (change, words) in BAD_SPECS.items():
        path = work / "bad.yaml"
        text = change if isinstance(change, str) else yaml.safe_dump({**SPEC, **change}, allow_unicode=True)
        path.write_text(text)
        out = work / "bad_out"
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = main(["run", str(path), "--out", str(out), "--workers", "1", "--quiet"])
            except BaseException as exc:  # noqa: BLE001 - a crash is what this measures
                code = -1
                err.write(f"CRASH {type(exc).__name__}: {exc}")
        message = err.getvalue()
        trials = len(list(out.glob("*/trials/*"))) if out.exists() else 0
        specific = code == 2 and all(w in message for w in words)
        first = next((ln for ln in message.splitlines()[1:] if ln.strip()), message.strip())[:80]
        rows.append((name, code, specific, trials, first.strip()))
        if out.exists():
            import shutil

            shutil.rmtree(out)
    return rows


def corrupt_records(work: Path) -> dict[str, int]:
    from study.sweep.runner import RECORD, InvalidRecord, load_record

    sdir = work / "out" / "faults"
    rids = sorted(p.parent.name for p in sdir.glob(f"trials/*/{RECORD}"))
    victims = rids[:4]
    good = sdir / "trials" / rids[4] / RECORD
    bad = {
        victims[0]: b"",
        victims[1]: good.read_bytes()[: len(good.read_bytes()) // 2],
        victims[2]: good.read_bytes(),  # foreign: another trial's record
        victims[3]: b"{not json",
    }
    for rid, data in bad.items():
        (sdir / "trials" / rid / RECORD).write_bytes(data)
    others = {
        p: (p.stat().st_mtime_ns, p.read_bytes())
        for p in sdir.glob("trials/*/*")
        if p.is_file() and p.parent.name not in bad
    }
    log = work / "trials.log"
    before = log.read_text().count("\n")
    spec_path, wrapper = work / "faults.yaml", work / "study_logged.py"
    cmd = [sys.executable, str(wrapper), "run", str(spec_path), "--out", str(work / "out")]
    run = subprocess.run(
        [*cmd, "--workers", "2", "--bundle", "1", "--quiet"], env=env(log), capture_output=True, text=True
    )
    rerun = [ln.split()[1] for ln in log.read_text().splitlines()[before:]]
    kept_aside = sum(
        len(list((sdir / "trials" / rid).glob(f"{RECORD}.corrupt-*"))) == 1
        and next((sdir / "trials" / rid).glob(f"{RECORD}.corrupt-*")).read_bytes() == data
        for rid, data in bad.items()
    )
    repaired = 0
    for rid in bad:
        try:
            repaired += load_record(sdir / "trials" / rid / RECORD, rid) is not None
        except InvalidRecord:
            pass
    touched = sum(
        1 for p, (mtime, data) in others.items() if (p.stat().st_mtime_ns, p.read_bytes()) != (mtime, data)
    )
    return {
        "corrupted": len(bad),
        "run exit code": run.returncode,
        "re-run": len(rerun),
        "re-run that were not corrupt": len(set(rerun) - set(bad)),
        "repaired (valid record again)": repaired,
        "bad files kept aside intact": kept_aside,
        "other files touched": touched,
        "other files checked": len(others),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kills", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="normgrad-faults-") as tmp:
        work = Path(tmp)
        print(f"1. {args.kills} random SIGKILLs of a 24-trial study (--workers 2), then resumed:")
        for k, v in kills(work, args.kills, rng).items():
            print(f"  {k:>36}: {v}")
        print("2. bad specs (each: exit 2, an error naming the problem, no trial run):")
        rows = bad_specs(work)
        for name, code, specific, trials, first in rows:
            verdict = "yes" if specific else "NO "
            print(f"  {name:>22}: exit {code}, specific {verdict}, {trials} trials | {first}")
        ok = sum(1 for _, code, specific, trials, _ in rows if specific and trials == 0)
        print(f"  {'refused as expected':>22}: {ok}/{len(rows)}")
        print("3. corrupt records in the finished study, then one more run:")
        for k, v in corrupt_records(work).items():
            print(f"  {k:>36}: {v}")
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
