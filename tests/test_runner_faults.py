"""Faults a long study meets: corrupt records, stale and stolen claims, unfinished runs, killed parents,
Ctrl-C, oversized grids and insecure Dask addresses. Training is replaced by a stub wherever the test is
about the runner rather than the training, so these tests stay fast."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import TINY, write_spec

import study.sweep.runner as R
import study.training.trial as trial_mod
from study.cli import main
from study.sweep.collect import collect
from study.sweep.spec import expand, load_spec


def _spec(name: str, seeds: int, factors: dict[str, list], **base: Any) -> dict[str, Any]:
    return {"name": name, "base": {**TINY, **base}, "factors": factors, "seeds": seeds}


def _fingerprint(path: Path) -> tuple[int, int, bytes]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns, path.read_bytes()


def _stub_trials(monkeypatch: pytest.MonkeyPatch, calls: list[str], seconds: float = 0.0) -> None:
    """Replace training by a stub that returns a complete record (after `seconds`) and logs its run_id."""

    def run_trial(config, out_dir=None):
        calls.append(config.run_id)
        time.sleep(seconds)
        row = {
            "epoch": 1,
            **{f"{s}_{m}": 50.0 for s in ("train", "val", "test") for m in ("acc", "loss")},
        }
        return trial_mod.summarize(config, [row], [], False, seconds)

    monkeypatch.setattr(trial_mod, "run_trial", run_trial)


def _run(spec_path: Path, out: Path, *extra: str) -> int:
    args = ["--workers", "1", "--bundle", "1", "--quiet", *extra]
    return main(["run", str(spec_path), "--out", str(out), *args])


# ------------------------------------------------------------------------------ item 5: invalid records


@pytest.fixture
def stub_study(tmp_path, monkeypatch) -> tuple[Path, Path, list[str], list[str]]:
    """A finished 6-trial study run with the stub: (spec path, study dir, run_ids, stub call log)."""
    calls: list[str] = []
    _stub_trials(monkeypatch, calls)
    spec_path = write_spec(tmp_path / "recs.yaml", _spec("recs", 3, {"weight_policy": ["ste", "exact"]}))
    assert _run(spec_path, tmp_path / "out") == 0
    run_ids = [t.run_id for t in expand(load_spec(spec_path))]
    assert sorted(calls) == sorted(run_ids)
    calls.clear()
    return spec_path, tmp_path / "out" / "recs", run_ids, calls


def _corrupt(sdir: Path, run_ids: list[str]) -> dict[str, bytes]:
    """Five kinds of bad record.json on the first five trials; returns the bad bytes written."""
    path = {rid: R.trial_dir(sdir, rid) / R.RECORD for rid in run_ids}
    good = path[run_ids[0]].read_bytes()
    incomplete = json.loads(path[run_ids[4]].read_text())
    del incomplete["history"]
    bad = {
        run_ids[0]: b"",  # empty
        run_ids[1]: path[run_ids[1]].read_bytes()[: len(good) // 2],  # truncated
        run_ids[2]: path[run_ids[3]].read_bytes(),  # foreign: another trial's record
        run_ids[3]: b"\x00\xffnot json at all",  # not JSON (not even UTF-8)
        run_ids[4]: json.dumps(incomplete).encode(),  # a key missing
    }
    for rid, data in bad.items():
        path[rid].write_bytes(data)
    return bad


def test_invalid_records_are_set_aside_and_rerun(stub_study, tmp_path, capsys):
    """Empty, truncated, foreign, non-JSON and incomplete records are not 'done': the next run moves each to
    record.json.corrupt-<time> (bytes kept) and re-runs exactly those trials; the valid trial is untouched."""
    spec_path, sdir, run_ids, calls = stub_study
    bad = _corrupt(sdir, run_ids)
    keep = run_ids[5]
    kept_files = {p: _fingerprint(p) for p in R.trial_dir(sdir, keep).rglob("*") if p.is_file()}
    assert {R.status(sdir, rid) for rid in bad} == {"todo"} and R.status(sdir, keep) == "done"

    # a dry run counts them as to do and touches nothing
    before = {p: _fingerprint(p) for p in sdir.rglob("*") if p.is_file()}
    assert main(["run", str(spec_path), "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    assert "1 done, 0 failed, 5 to do" in capsys.readouterr().out
    assert {p: _fingerprint(p) for p in sdir.rglob("*") if p.is_file()} == before

    assert _run(spec_path, tmp_path / "out") == 0
    assert sorted(calls) == sorted(bad)
    err = capsys.readouterr().err
    for rid, data in bad.items():
        d = R.trial_dir(sdir, rid)
        aside = list(d.glob(f"{R.RECORD}.corrupt-*"))
        assert len(aside) == 1 and aside[0].read_bytes() == data, rid
        assert aside[0].name in err
        assert R.load_record(d / R.RECORD, rid)["run_id"] == rid  # a valid record again
    assert {p: _fingerprint(p) for p in R.trial_dir(sdir, keep).rglob("*") if p.is_file()} == kept_files
    assert not list(sdir.glob(f"trials/*/{R.CLAIM}"))


def test_collect_names_every_invalid_record(stub_study, capsys):
    """collect refuses a study with invalid records in one message that names each bad file and why."""
    _, sdir, run_ids, _ = stub_study
    bad = _corrupt(sdir, run_ids)
    with pytest.raises(ValueError, match="5 invalid record") as info:
        collect(sdir)
    msg = str(info.value)
    for rid in bad:
        assert str(R.trial_dir(sdir, rid) / R.RECORD) in msg
    for reason in ("empty", "not valid JSON", "foreign", "missing history"):
        assert reason in msg
    assert not (sdir / "runs.csv").exists()
    assert main(["collect", str(sdir)]) == 2
    err = capsys.readouterr().err
    assert all(rid in err for rid in bad)


def test_load_record_accepts_real_records_and_rejects_a_changed_config(stub_study):
    _, sdir, run_ids, _ = stub_study
    path = R.trial_dir(sdir, run_ids[0]) / R.RECORD
    rec = R.load_record(path, run_ids[0])
    assert rec is not None and R.record_problem(rec, run_ids[0]) is None
    assert R.load_record(path.with_name("absent.json"), run_ids[0]) is None
    rec["config"]["lr"] = 0.5  # the run_id is right but the configuration is not this trial's
    assert "foreign" in R.record_problem(rec, run_ids[0])
    assert "not a JSON object" in R.record_problem([1, 2], run_ids[0])
    rec = R.load_record(path, run_ids[0])
    rec["test_acc"] = "high"
    assert "bad test_acc" in R.record_problem(rec, run_ids[0])


# ---------------------------------------------------------------------- item 7: live and stolen claims


def _torch_work(seconds: float) -> None:
    import torch

    a = torch.randn(128, 128)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        a = torch.tanh(a @ a.T / 128)


@pytest.mark.parametrize("work", ["sleep", "torch"])
def test_live_claim_never_goes_stale_during_a_long_trial(tmp_path, monkeypatch, work):
    """A trial 2.5 times longer than STALE_AFTER_S (training in the main thread, torch holding the core):
    the heartbeat keeps its claim fresh, so no other runner may take it over at any moment."""
    monkeypatch.setattr(R, "STALE_AFTER_S", 1.0)
    monkeypatch.setattr(R, "HEARTBEAT_S", 0.05)
    calls: list[str] = []
    _stub_trials(monkeypatch, calls)
    stub = trial_mod.run_trial

    def long_trial(config, out_dir=None):
        time.sleep(2.5) if work == "sleep" else _torch_work(2.5)
        return stub(config, out_dir)

    monkeypatch.setattr(trial_mod, "run_trial", long_trial)
    spec = load_spec(write_spec(tmp_path / "long.yaml", _spec("long", 1, {"weight_policy": ["ste"]})))
    (rid,) = [t.run_id for t in expand(spec)]
    claim = R.trial_dir(tmp_path / "out" / "long", rid) / R.CLAIM
    seen, stolen, stop = [], [], threading.Event()

    def other_runner() -> None:  # polls as a second runner would
        while not stop.is_set():
            if claim.exists():
                seen.append(R._claim_is_stale(claim))
                if R.try_claim(claim.parent.parent.parent, rid):
                    stolen.append(time.monotonic())
            time.sleep(0.02)

    watcher = threading.Thread(target=other_runner)
    watcher.start()
    try:
        counts = R.run_study(spec, out=tmp_path / "out", workers=1, bundle=1, quiet=True)
    finally:
        stop.set()
        watcher.join()
    assert counts["done"] == 1 and calls == [rid]
    assert len(seen) > 10 and not any(seen) and not stolen


def test_release_spares_a_claim_taken_over_by_another_runner(tmp_path, monkeypatch):
    """Runner A's claim is taken over mid-trial (A looked stale to runner B): when A finishes it must neither
    delete nor touch B's claim, or a third runner would start the trial B is running."""
    monkeypatch.setattr(R, "HEARTBEAT_S", 0.02)
    calls: list[str] = []
    _stub_trials(monkeypatch, calls)
    stub = trial_mod.run_trial
    theirs = {"host": "elsewhere.invalid", "pid": 1, "time": time.time(), "owner": "runner-b"}

    def taken_over(config, out_dir=None):
        claim = Path(out_dir) / config.run_id / R.CLAIM
        assert json.loads(claim.read_text())["pid"] == os.getpid()  # A holds it while it trains
        claim.write_text(json.dumps(theirs))  # B's takeover (rename + O_EXCL, here at once)
        t = time.time() - 5
        os.utime(claim, (t, t))
        time.sleep(0.2)  # A's heartbeat beats ~10 times meanwhile
        return stub(config, out_dir)

    monkeypatch.setattr(trial_mod, "run_trial", taken_over)
    spec = load_spec(write_spec(tmp_path / "steal.yaml", _spec("steal", 1, {"weight_policy": ["ste"]})))
    (rid,) = [t.run_id for t in expand(spec)]
    R.run_study(spec, out=tmp_path / "out", workers=1, bundle=1, quiet=True)
    claim = R.trial_dir(tmp_path / "out" / "steal", rid) / R.CLAIM
    assert claim.exists(), "runner A deleted runner B's claim"
    assert json.loads(claim.read_text()) == theirs
    assert time.time() - claim.stat().st_mtime > 4, "runner A's heartbeat kept touching B's claim"


# ------------------------------------------------------------------ item 8: exit 1 when anything is left


def test_run_exits_nonzero_when_trials_are_left(tmp_path, monkeypatch, capsys):
    """A trial held by another live runner is left to do: `run` exits 1 with the counts, not 0."""
    import socket

    calls: list[str] = []
    _stub_trials(monkeypatch, calls)
    spec_path = write_spec(tmp_path / "left.yaml", _spec("left", 2, {"weight_policy": ["ste"]}))
    held, free = [t.run_id for t in expand(load_spec(spec_path))]
    claim = R.trial_dir(tmp_path / "out" / "left", held) / R.CLAIM
    claim.parent.mkdir(parents=True)
    claim.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "owner": "other"}))
    assert _run(spec_path, tmp_path / "out") == 1
    assert calls == [free]
    err = capsys.readouterr().err
    assert "left: 1 of 2 trials not done (0 failed, 1 to do, 1 of them being run by another runner)" in err
    assert "run the same command again" in err and "--retry-failed" not in err
    claim.unlink()  # the other runner gave up: the next run finishes the study
    assert _run(spec_path, tmp_path / "out") == 0
    assert calls == [free, held]


def test_run_exits_zero_when_the_other_runner_finishes_after_the_count(tmp_path, monkeypatch, capsys):
    """The race CI met: this runner found a trial busy and counted it 'to do'; the other runner then wrote
    its record and released its claim before the exit message was made. The study is complete: exit 0, and
    a trial that is still held at the recount is reported as held, never as plainly 'to do'."""
    import socket

    calls: list[str] = []
    _stub_trials(monkeypatch, calls)
    spec_path = write_spec(tmp_path / "race.yaml", _spec("race", 2, {"weight_policy": ["ste"]}))
    spec = load_spec(spec_path)
    trials = expand(spec)
    held_trial = trials[0]
    held = held_trial.run_id
    sdir = tmp_path / "out" / "race"
    claim = R.trial_dir(sdir, held) / R.CLAIM
    claim.parent.mkdir(parents=True)
    claim.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "owner": "other"}))
    real_run_study = R.run_study

    def run_then_other_finishes(*a, **k):
        counts = real_run_study(*a, **k)
        assert counts["todo"] == 1  # counted while the other runner held it
        finished = trial_mod.run_trial(held_trial.config, None)
        finished.update({"study": "race", "spec_hash": spec.hash(), "factors": held_trial.factors})
        R.write_json_atomic(R.trial_dir(sdir, held) / R.RECORD, finished)  # the other runner's record,
        claim.unlink()  # then its release
        return counts

    monkeypatch.setattr(R, "run_study", run_then_other_finishes)
    assert _run(spec_path, tmp_path / "out") == 0, capsys.readouterr().err
    counts, n_held = R.counts_and_held(sdir, trials)
    assert counts == {"done": 2, "failed": 0, "todo": 0} and n_held == 0


def test_run_all_stops_with_the_message_when_a_study_is_unfinished(tmp_path):
    """run_all.sh (set -e) stops at an unfinished study with its own line after the runner's counts, and
    collects nothing; `python` is a stand-in here that logs its arguments."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "python"
    fake.write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> {tmp_path / "calls.log"}\n'
        'if [ "$3" = run ]; then echo "error: smoke: 3 of 36 trials not done (3 failed, 0 to do)" >&2; '
        "exit 1; fi\n"
    )
    fake.chmod(0o755)
    env = {
        **os.environ,
        "NORMGRAD_NO_SETUP": "1",
        "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}",
        "SMOKE_DIR": str(tmp_path / "smoke"),
        "WORKERS": "2",
    }
    out = subprocess.run(
        ["bash", str(root / "run_all.sh"), "--smoke"], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 1, out.stderr
    assert "3 of 36 trials not done" in out.stderr
    assert "run_all.sh: stopped" in out.stderr and "again to resume" in out.stderr
    calls = (tmp_path / "calls.log").read_text().splitlines()
    assert len(calls) == 1 and calls[0].startswith("-m study run smoke")  # no collect, no analysis


# ----------------------------------------------------------------------------- item 12: oversized grids


def test_count_cells_equals_the_built_grid():
    """count_cells == len(cells) on random small grids with exclude rules (also naming non-factors, lists,
    empty rules) and include cells (in the grid, excluded, partial, repeated)."""
    import random

    from study.sweep.spec import StudySpec, cells, count_cells

    rng = random.Random(0)

    def rule(keys: list[str]) -> dict:
        chosen = rng.sample(keys, rng.randint(0, min(2, len(keys))))
        return {k: rng.choice([rng.randint(0, 3), [rng.randint(0, 3), None], None]) for k in chosen}

    def cell(names: list[str], keys: list[str]) -> dict:
        chosen = names if rng.random() < 0.7 else rng.sample(keys, rng.randint(0, len(keys)))
        return {k: rng.randint(0, 3) for k in chosen}

    for _ in range(300):
        names = rng.sample("abcd", rng.randint(0, 3))
        factors = {n: [rng.randint(0, 3) for _ in range(rng.randint(1, 4))] for n in names}
        keys = [*names, "z"]
        spec = StudySpec.model_validate(
            {
                "name": "g",
                "factors": factors,
                "exclude": [rule(keys) for _ in range(rng.randint(0, 3))],
                "include": [cell(names, keys) for _ in range(rng.randint(0, 3))],
                "seeds": 1,
            }
        )
        assert count_cells(spec) == len(cells(spec)), spec


def test_oversized_grid_is_refused_without_building_it(tmp_path, monkeypatch, capsys):
    """A 3.2-million-cell grid: `run` and `run --dry-run` exit 2 naming the count and the limit, and never
    build the grid (cells() is made to fail on anything large)."""
    import math

    import study.sweep.spec as spec_mod

    real_cells = spec_mod.cells

    def small_cells_only(spec):
        assert math.prod(map(len, spec.factors.values())) <= 1000, "the oversized grid was built"
        return real_cells(spec)

    monkeypatch.setattr(spec_mod, "cells", small_cells_only)
    twenty = list(range(1, 21))
    factors = {
        "lr": [i / 1000 for i in twenty],
        "batch_size": twenty,
        "epochs": twenty,
        "probe_size": twenty,
        "split_seed": twenty,
    }
    huge = write_spec(tmp_path / "huge.yaml", _spec("huge", 3, factors))
    for extra in (["--dry-run"], []):
        assert main(["run", str(huge), "--out", str(tmp_path / "out"), *extra]) == 2
        err = capsys.readouterr().err
        assert "3,200,000 grid cells x 3 seeds = 9,600,000 trials" in err and "100,000 cells" in err
    assert not (tmp_path / "out").exists()

    many_seeds = write_spec(tmp_path / "seeds.yaml", _spec("seeds", 1_000_001, {"lr": [0.01]}))
    assert main(["run", str(many_seeds), "--out", str(tmp_path / "out"), "--dry-run"]) == 2
    assert "1,000,001 trials" in capsys.readouterr().err and not (tmp_path / "out").exists()

    # within the limits the count is exact and cheap, exclude rules included
    spec = spec_mod.StudySpec.model_validate(
        {"name": "x", "factors": factors, "exclude": [{"lr": 0.001}, {"epochs": [1, 2]}], "seeds": 1}
    )
    assert spec_mod.count_cells(spec) == 19 * 20 * 18 * 20 * 20
    with pytest.raises(spec_mod.ConfigError, match="2,736,000 grid cells"):
        R.dry_run(spec, out=tmp_path / "out", workers=1, bundle=1)


# ------------------------------------------------------------------ item 15: Dask addresses and options


@pytest.fixture
def tls_files(tmp_path) -> dict[str, str]:
    files = {}
    for name in ("ca", "cert", "key"):
        (tmp_path / f"{name}.pem").write_text("not checked before connecting")
        files[name] = str(tmp_path / f"{name}.pem")
    return files


REFUSED = [  # (options, words the error must contain)
    (
        ["--executor", "dask", "--scheduler", "tcp://head.invalid:8786"],
        ["--scheduler", "--insecure", "tls://"],
    ),
    (["--executor", "dask", "--scheduler", "192.0.2.10:8786"], ["--scheduler", "--insecure"]),
    (["--executor", "dask", "--scheduler", "ws://head.invalid:8786"], ["--insecure"]),
    (["--executor", "dask", "--scheduler", "tls://head.invalid:8786"], ["needs --tls-ca, --tls-cert"]),
    (["--executor", "dask", "--scheduler", "http://head.invalid"], ["unknown protocol 'http'", "allowed"]),
    (["--executor", "dask", "--scheduler", ""], ["--scheduler: no host"]),
    (["--executor", "dask", "--scheduler", "tcp://:8786"], ["--scheduler: no host"]),
    (
        [
            "--executor",
            "dask",
            "--scheduler",
            "tls://h.invalid:1",
            "--tls-cert",
            "{cert}",
            "--tls-key",
            "{key}",
        ],
        ["--tls-cert, --tls-key without --tls-ca"],
    ),
    (
        ["--executor", "dask", "--scheduler", "tls://h.invalid:1", "--tls-ca", "{ca}"],
        ["--tls-ca without --tls-cert, --tls-key"],
    ),
    (
        ["--executor", "dask", "--tls-ca", "{ca}", "--tls-cert", "{cert}", "--tls-key", "{key}"],
        ["only with --scheduler tls://"],
    ),
    (
        [
            "--executor",
            "dask",
            "--scheduler",
            "tcp://127.0.0.1:1",
            "--tls-ca",
            "{ca}",
            "--tls-cert",
            "{cert}",
            "--tls-key",
            "{key}",
        ],
        ["ignored", "tls://"],
    ),
    (
        [
            "--executor",
            "dask",
            "--scheduler",
            "tls://h.invalid:1",
            "--tls-ca",
            "missing.pem",
            "--tls-cert",
            "{cert}",
            "--tls-key",
            "{key}",
        ],
        ["--tls-ca missing.pem: no such file"],
    ),
    (
        [
            "--executor",
            "dask",
            "--scheduler",
            "tls://h.invalid:1",
            "--tls-ca",
            ".",
            "--tls-cert",
            "{cert}",
            "--tls-key",
            "{key}",
        ],
        ["--tls-ca .: is a folder"],
    ),
    (["--scheduler", "tcp://127.0.0.1:8786"], ["--scheduler: only with --executor dask"]),
    (["--tls-ca", "{ca}"], ["--tls-ca: only with --executor dask"]),
    (["--executor", "dask", "--insecure"], ["--insecure: only with a plain --scheduler"]),
    (["--workers", "0"], ["--workers: must be >= 1"]),
    (["--workers", "-2"], ["--workers: must be >= 1"]),
    (["--bundle", "0"], ["--bundle: must be >= 1"]),
    (["--out", "{ca}"], ["exists and is not a folder"]),
    (["--out", ""], ["--out: empty"]),
]


@pytest.mark.parametrize(("options", "words"), REFUSED, ids=[" ".join(o) for o, _ in REFUSED])
def test_run_refuses_insecure_or_incomplete_options(tmp_path, monkeypatch, capsys, tls_files, options, words):
    """Each refusal exits 2 before anything runs or connects (run_study is a tripwire here), with a message
    naming the option and what is allowed; --dry-run refuses the same."""
    ran: list[Any] = []
    monkeypatch.setattr(R, "run_study", lambda *a, **k: ran.append(a) or {"done": 1, "failed": 0, "todo": 0})
    spec_path = write_spec(tmp_path / "opts.yaml", _spec("opts", 1, {"weight_policy": ["ste"]}))
    opts = [o.format(**tls_files) for o in options]
    out = ["--out", str(tmp_path / "out")] if "--out" not in opts else []
    for dry in ([], ["--dry-run"]):
        assert main(["run", str(spec_path), *out, *opts, *dry]) == 2
        err = capsys.readouterr().err
        for w in words:
            assert w in err, (w, err)
    assert not ran and not (tmp_path / "out").exists()


def test_scheduler_addresses_that_are_accepted(tls_files):
    for address in ("tcp://127.0.0.1:8786", "127.0.0.2:8786", "tcp://[::1]:8786", "localhost:8786"):
        R.check_scheduler_address(address, tls=False)  # loopback: other hosts cannot reach it
    R.check_scheduler_address("tcp://192.0.2.10:8786", tls=False, insecure=True)  # the user's explicit choice
    R.check_scheduler_address("tls://head.invalid:8786", tls=True)
    with pytest.raises(ValueError, match="--insecure"):
        R.run_study(None, executor="dask", scheduler="tcp://192.0.2.10:8786")  # the Python API refuses too


# ------------------------------------------------- items 11 and 14: a killed or interrupted runner


# `python -m study` with training replaced by a stub in the runner and in its spawned pool workers (they
# import this file as __mp_main__); each call appends "<pid> <run_id>" to $NG_TRIAL_LOG, then sleeps
# $NG_TRIAL_SECONDS; NG_REAL_TRIALS=1 keeps the real training
STUB_WRAPPER = """\
import os, sys, time
import study.training.trial as T
_real = T.run_trial
def run_trial(config, out_dir=None):
    with open(os.environ["NG_TRIAL_LOG"], "a") as fh:
        fh.write(f"{os.getpid()} {config.run_id}\\n")
    if os.environ.get("NG_REAL_TRIALS"):
        return _real(config, out_dir)
    time.sleep(float(os.environ.get("NG_TRIAL_SECONDS", "0")))
    row = {"epoch": 1, **{f"{s}_{m}": 50.0 for s in ("train", "val", "test") for m in ("acc", "loss")}}
    return T.summarize(config, [row], [], False, 0.0)
T.run_trial = run_trial
if __name__ == "__main__":
    from study.cli import main
    sys.exit(main(sys.argv[1:]))
"""


def _start(tmp_path: Path, spec_path: Path, workers: int, log: Path, **env: str):
    import subprocess
    import sys

    from conftest import study_env

    wrapper = tmp_path / "stub_study.py"
    wrapper.write_text(STUB_WRAPPER)
    cmd = [sys.executable, str(wrapper), "run", str(spec_path), "--out", str(tmp_path / "out")]
    cmd += ["--workers", str(workers), "--bundle", "1", "--quiet"]
    # output to files, not pipes: orphaned workers would hold a pipe open and a reader would wait forever
    with open(tmp_path / "runner.out", "w") as out, open(tmp_path / "runner.err", "w") as err:
        return subprocess.Popen(
            cmd,
            cwd=tmp_path,
            env={**study_env(), "NG_TRIAL_LOG": str(log), **env},
            stdout=out,
            stderr=err,
            text=True,
            start_new_session=True,
        )


def _output(tmp_path: Path) -> tuple[str, str]:
    return (tmp_path / "runner.out").read_text(), (tmp_path / "runner.err").read_text()


def _wait_for(condition, proc, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc is None or proc.poll() is None, proc.returncode
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _alive(pids: list[int]) -> list[int]:
    psutil = pytest.importorskip("psutil")
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def _log(path: Path) -> list[tuple[int, str]]:
    if not path.exists():
        return []
    return [(int(p), r) for p, r in (ln.split() for ln in path.read_text().splitlines() if ln.strip())]


def _assert_clean(sdir: Path) -> None:
    """No claim, no temporary file, no half-written record: every record.json is a valid record."""
    assert not list(sdir.glob(f"trials/*/{R.CLAIM}*")), "claims left behind"
    assert not list(sdir.glob("trials/*/.*.tmp")), "temporary files left behind"
    for path in sdir.glob(f"trials/*/{R.RECORD}"):
        R.load_record(path, path.parent.name)


@pytest.mark.slow
def test_pool_workers_exit_when_the_runner_is_killed(tmp_path, monkeypatch):
    """SIGKILL of the runner (its process only) while 2 spawned workers train: the workers notice, release
    their claims and exit within seconds instead of running on; rerunning finishes the study with every
    trial recorded exactly once, the records written before the kill untouched."""
    psutil = pytest.importorskip("psutil")
    spec_path = write_spec(tmp_path / "kill.yaml", _spec("kill", 2, {"weight_policy": ["ste", "exact"]}))
    run_ids = {t.run_id for t in expand(load_spec(spec_path))}
    sdir, log1 = tmp_path / "out" / "kill", tmp_path / "phase1.log"
    p = _start(tmp_path, spec_path, 2, log1, NG_TRIAL_SECONDS="2")
    workers: list[int] = []
    try:
        _wait_for(lambda: len(_log(log1)) >= 2, p, "both workers to start a trial")
        workers = [c.pid for c in psutil.Process(p.pid).children(recursive=True)]
        assert {pid for pid, _ in _log(log1)} <= set(workers)
        os.kill(p.pid, 9)
        p.wait()
        _wait_for(lambda: not _alive(workers), None, "the orphaned workers to exit", timeout=30)
    finally:
        for pid in _alive([p.pid, *workers]):
            os.kill(pid, 9)
    killed_at = len(_log(log1))
    _assert_clean(sdir)  # the orphans released their claims on the way out
    before = {path.parent.name: _fingerprint(path) for path in sdir.glob(f"trials/*/{R.RECORD}")}
    assert len(before) < len(run_ids)

    calls: list[str] = []
    _stub_trials(monkeypatch, calls)  # the rerun, in this process
    assert _run(spec_path, tmp_path / "out") == 0
    after = {path.parent.name: path for path in sdir.glob(f"trials/*/{R.RECORD}")}
    assert set(after) == run_ids and not list(sdir.glob(f"trials/*/{R.RECORD}.corrupt-*"))
    assert {rid: _fingerprint(after[rid]) for rid in before} == before
    assert sorted(calls) == sorted(run_ids - set(before))  # each remaining trial run once
    assert len(_log(log1)) == killed_at, "an orphaned worker went on training after its runner died"
    _assert_clean(sdir)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_ctrl_c_stops_cleanly_and_says_how_to_resume(tmp_path, capsys, workers):
    """SIGINT mid-trial: exit 130, the number of trials finished in this run and the exact command to resume,
    no traceback, no claim, no half-written record. One worker: real training (Lightning turns a
    KeyboardInterrupt inside fit into sys.exit(1)); two workers: the whole process group gets the
    signal, as from a terminal, and the runner stops its workers."""
    import shlex
    import signal

    epochs = 25 if workers == 1 else 1
    spec_path = write_spec(
        tmp_path / "intr.yaml", _spec("intr", 2, {"weight_policy": ["ste"]}, epochs=epochs)
    )
    sdir, log = tmp_path / "out" / "intr", tmp_path / "trials.log"
    env = {"NG_REAL_TRIALS": "1"} if workers == 1 else {"NG_TRIAL_SECONDS": "30"}
    p = _start(tmp_path, spec_path, workers, log, **env)
    try:
        _wait_for(lambda: len(_log(log)) >= workers, p, "trials to start")
        if workers == 1:  # Lightning writes metrics.csv after the first epoch: inside `fit`
            _wait_for(lambda: any(sdir.glob("trials/*/metrics.csv")), p, "the first epoch")
        else:
            time.sleep(0.5)  # into the (stub) trials
        if workers == 1:
            p.send_signal(signal.SIGINT)
        else:
            os.killpg(p.pid, signal.SIGINT)
        p.wait(timeout=60)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, 9)
    out, err = _output(tmp_path)
    assert p.returncode == 130, (out, err)
    assert "Traceback" not in err, err
    assert "trial(s) finished in this run" in err and "no claim is left" in err
    command = err.split("Resume with:\n", 1)[1].strip().splitlines()[0]
    assert command.startswith("python -m study run ") and str(spec_path) in command
    _assert_clean(sdir)
    assert json.loads((sdir / "run_log.jsonl").read_text().splitlines()[-1])["interrupted"] is True
    if workers == 1:  # the printed command resumes and finishes the study (run here in this process)
        argv = shlex.split(command)
        assert argv[:3] == ["python", "-m", "study"]
        assert main(argv[3:]) == 0
        assert "2/2 done" in capsys.readouterr().out
        _assert_clean(sdir)


def test_run_reports_bad_yaml_and_missing_specs(tmp_path, capsys):
    (tmp_path / "broken.yaml").write_text("name: broken\nfactors: {weight_policy: [ste, exact}\n")
    assert main(["run", str(tmp_path / "broken.yaml"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "broken.yaml:2: YAML syntax error" in err and "Traceback" not in err
    for bad in (".", "..", str(tmp_path), "no_such_spec"):
        assert main(["run", bad, "--out", str(tmp_path / "out"), "--dry-run"]) == 2
        assert "shipped specs:" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_run_clears_claims_of_dead_local_processes(stub_study, tmp_path):
    """A runner SIGKILLed between writing a record and releasing its claim leaves a claim on a done trial;
    the next run removes it (its owner is a dead process of this host), and leaves live or remote ones."""
    import socket
    import subprocess
    import sys

    spec_path, sdir, run_ids, calls = stub_study
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    claims = {}
    for rid, host, pid in (
        (run_ids[0], socket.gethostname(), int(dead.stdout)),  # dead, here: removed
        (run_ids[1], socket.gethostname(), os.getpid()),  # alive, here: kept
        (run_ids[2], "elsewhere.invalid", int(dead.stdout)),  # another host's: kept
    ):
        claims[rid] = R.trial_dir(sdir, rid) / R.CLAIM
        claims[rid].write_text(json.dumps({"host": host, "pid": pid, "owner": "x"}))
    assert _run(spec_path, tmp_path / "out") == 0 and calls == []
    assert [claims[rid].exists() for rid in run_ids[:3]] == [False, True, True]
