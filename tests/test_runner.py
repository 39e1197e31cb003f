"""Running a study: resume after SIGKILL, concurrent runners, claims, the Dask executor, failing trials,
dry runs, pre-registered hypotheses, collect and verify."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import TINY, study_env, write_spec

import study.sweep.runner as R
import study.training.bundle as bundle_mod
import study.training.trial as trial_mod
from study.cli import main
from study.sweep.collect import collect
from study.sweep.spec import expand, load_spec, parse_spec
from study.sweep.verify import verify

DOCUMENTED_RUNS_COLUMNS = [
    "study",
    "run_id",
    "spec_hash",
    "weight_policy",
    "signal_policy",
    "seed",
    "test_acc",
    "test_loss",
    "val_acc",
    "val_loss",
    "train_acc",
    "train_loss",
    "best_val_acc",
    "test_acc_at_best_val",
    "epochs_run",
    "diverged",
    "failed",
    "wall_time_s",
    "torch_version",
    "lightning_version",
    "normgrad_version",
    "git_commit",
]

# `python -m study` with run_trial wrapped so that each call appends "<pid> <run_id>" to $NG_TRIAL_LOG
WRAPPER = """\
import os, sys
import study.training.trial as T
_run_trial = T.run_trial
def run_trial(config, out_dir=None):
    with open(os.environ["NG_TRIAL_LOG"], "a") as fh:
        fh.write(f"{os.getpid()} {config.run_id}\\n")
    return _run_trial(config, out_dir)
T.run_trial = run_trial
from study.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _spec(name: str, seeds: int | list[int], factors: dict[str, list], **base: Any) -> dict[str, Any]:
    return {"name": name, "base": {**TINY, **base}, "factors": factors, "seeds": seeds}


def _records(sdir: Path) -> dict[str, Path]:
    return {p.parent.name: p for p in (sdir / "trials").glob(f"*/{R.RECORD}")}


def _fingerprint(path: Path) -> tuple[int, int, bytes]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns, path.read_bytes()


def _log_lines(path: Path) -> list[tuple[str, str]]:
    if not path.exists():
        return []
    return [tuple(line.split()) for line in path.read_text().splitlines() if line.strip()]


def _start_runner(wrapper: Path, spec: Path, out: Path, log: Path, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            str(wrapper),
            "run",
            str(spec),
            "--out",
            str(out),
            "--workers",
            "1",
            "--bundle",
            "1",
            "--quiet",
        ],
        cwd=cwd,
        env={**study_env(), "NG_TRIAL_LOG": str(log)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


# ------------------------------------------------------------------------------- resume and concurrency


def test_sigkill_resume_with_two_concurrent_runners(tmp_path):
    """A runner killed (SIGKILL, whole process group) mid-sweep, then two runners started at once on the
    same study: every trial ends with exactly one record, each remaining trial is trained exactly once, and
    the trials finished before the kill are not re-run (record.json inode, mtime and bytes untouched)."""
    wrapper = tmp_path / "wrapped_study.py"
    wrapper.write_text(WRAPPER)
    spec_path = write_spec(
        tmp_path / "resume.yaml", _spec("resume", 5, {"weight_policy": ["ste", "exact"]}, epochs=2)
    )
    out, log1, log2 = tmp_path / "out", tmp_path / "phase1.log", tmp_path / "phase2.log"
    sdir = out / "resume"
    run_ids = {t.run_id for t in expand(load_spec(spec_path))}
    assert len(run_ids) == 10

    p = _start_runner(wrapper, spec_path, out, log1, tmp_path)
    deadline = time.monotonic() + 300
    try:
        while len(_records(sdir)) < 2:
            assert p.poll() is None, p.communicate()
            assert time.monotonic() < deadline, "the runner never finished two trials"
            time.sleep(0.05)
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
    assert p.returncode == -signal.SIGKILL
    before = {rid: _fingerprint(path) for rid, path in _records(sdir).items()}
    assert 2 <= len(before) < len(run_ids), "the runner finished everything before it was killed"

    runners = [_start_runner(wrapper, spec_path, out, log2, tmp_path) for _ in range(2)]
    outputs = [r.communicate(timeout=600) for r in runners]
    # a runner skips trials the other one holds, so only the runner that finishes last sees all 10 done;
    # the other exits 1, saying the trials it left are being run by the other runner
    for r, (_, stderr) in zip(runners, outputs, strict=True):
        assert r.returncode == 0 or (r.returncode == 1 and "being run by another runner" in stderr), stderr
    assert any("10/10 done" in stdout for stdout, _ in outputs), outputs

    after = _records(sdir)
    assert set(after) == run_ids  # exactly one record per trial (one folder per run_id)
    for rid, fp in before.items():
        assert _fingerprint(after[rid]) == fp, f"{rid} was re-run"
    for rid, path in after.items():
        rec = json.loads(path.read_text())
        assert rec["run_id"] == rid and rec["study"] == "resume" and rec["epochs_run"] == 2
    assert not list(sdir.glob(f"trials/*/{R.CLAIM}")), "claims left behind"
    assert not list(sdir.glob(f"trials/*/{R.FAILED}"))
    assert not list(sdir.glob("trials/*/.*.tmp"))

    second = [rid for _, rid in _log_lines(log2)]
    assert sorted(second) == sorted(run_ids - set(before)), "a trial ran twice, or a finished one ran again"
    summaries = [json.loads(line) for line in (sdir / "run_log.jsonl").read_text().splitlines()]
    assert len(summaries) == 2 and max(s["done"] for s in summaries) == 10


def _in_threads(fn: Any, n: int, timeout: float) -> tuple[list[Any], list[str]]:
    """Run `fn` in `n` threads at once; (its results, the tracebacks of those that raised)."""
    results: list[Any] = []
    errors: list[str] = []

    def go() -> None:
        try:
            results.append(fn())
        except Exception:  # noqa: BLE001 - returned to the test, which asserts there are none
            errors.append(traceback.format_exc())

    threads = [threading.Thread(target=go) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    return results, errors


def _fake_run_trial(calls: list[str], workers: set[int], lock: threading.Lock):
    def run_trial(config, out_dir=None):
        with lock:
            calls.append(config.run_id)
            workers.add(threading.get_ident())
        time.sleep(0.02)
        row = {"epoch": 1, **{f"{s}_{m}": 50.0 for s in ("train", "val", "test") for m in ("acc", "loss")}}
        return trial_mod.summarize(config, [row], [], False, 0.02)  # a complete record

    return run_trial


def test_two_runners_in_threads_run_each_trial_once(tmp_path, monkeypatch):
    """Many claims contended at once (training replaced by a 20 ms stub): each trial runs exactly once."""
    calls: list[str] = []
    workers: set[int] = set()
    monkeypatch.setattr(trial_mod, "run_trial", _fake_run_trial(calls, workers, threading.Lock()))
    spec = load_spec(
        write_spec(
            tmp_path / "threads.yaml", _spec("threads", 10, {"weight_policy": ["ste", "exact", "zero"]})
        )
    )
    results, errors = _in_threads(
        lambda: R.run_study(spec, out=tmp_path / "out", workers=1, bundle=1, quiet=True), 3, 120
    )
    assert not errors, errors
    run_ids = [t.run_id for t in expand(spec)]
    assert sorted(calls) == sorted(run_ids)
    assert len(workers) >= 2  # the runners really shared the work
    assert len(_records(tmp_path / "out" / "threads")) == 30
    assert len(results) == 3 and max(r["done"] for r in results) == 30  # the last runner to finish sees all


# ---------------------------------------------------------------------------------------------- claims


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _write_claim(sdir: Path, run_id: str, info: dict[str, Any] | None, age_s: float = 0.0) -> Path:
    path = R.trial_dir(sdir, run_id) / R.CLAIM
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("" if info is None else json.dumps(info))
    t = time.time() - age_s
    os.utime(path, (t, t))
    return path


def test_try_claim(tmp_path):
    import socket

    host = socket.gethostname()
    owner = R.try_claim(tmp_path, "a")
    assert owner
    claim = json.loads((R.trial_dir(tmp_path, "a") / R.CLAIM).read_text())
    assert claim["pid"] == os.getpid() and claim["host"] == host and claim["owner"] == owner
    assert not R.try_claim(tmp_path, "a")  # held by a live process (this one)
    assert not R.release(tmp_path, "a", "someone-else")  # only the owner releases it
    assert R.release(tmp_path, "a", owner)
    assert R.try_claim(tmp_path, "a")  # free again

    _write_claim(tmp_path, "dead", {"host": host, "pid": _dead_pid(), "time": time.time()})
    assert R.try_claim(tmp_path, "dead")  # owner on this host is dead: taken over
    assert json.loads((R.trial_dir(tmp_path, "dead") / R.CLAIM).read_text())["pid"] == os.getpid()

    remote = {"host": "elsewhere.invalid", "pid": 1, "time": time.time()}
    _write_claim(tmp_path, "remote", remote)
    assert not R.try_claim(tmp_path, "remote")  # another host's live claim: its heartbeat is recent
    _write_claim(tmp_path, "silent", remote, age_s=R.STALE_AFTER_S + 30)
    assert R.try_claim(tmp_path, "silent")  # silent for longer than STALE_AFTER_S: taken over

    _write_claim(tmp_path, "writing", None)
    assert not R.try_claim(tmp_path, "writing")  # empty: its owner is between O_EXCL and writing it
    _write_claim(tmp_path, "crashed", None, age_s=R.STALE_AFTER_S + 30)
    assert R.try_claim(tmp_path, "crashed")  # empty and old: its writer died mid-write

    config = trial_mod.TrialConfig.parse(TINY)
    row = {"epoch": 1, **{f"{s}_{m}": 50.0 for s in ("train", "val", "test") for m in ("acc", "loss")}}
    rec = {
        **trial_mod.summarize(config, [row], [], False, 0.1),
        "study": "s",
        "spec_hash": "h",
        "factors": {},
    }
    done = R.trial_dir(tmp_path, config.run_id)
    R.write_json_atomic(done / R.RECORD, rec)
    assert not R.try_claim(tmp_path, config.run_id)  # a valid record: done
    assert not (done / R.CLAIM).exists()
    (done / R.RECORD).write_text("{}")
    assert R.try_claim(tmp_path, config.run_id)  # an invalid record is not done


def test_heartbeat_touches_claims(tmp_path, monkeypatch):
    monkeypatch.setattr(R, "HEARTBEAT_S", 0.05)
    path = _write_claim(tmp_path, "beat", {"host": "h", "pid": 1, "time": 0, "owner": "me"}, age_s=1000)
    old = path.stat().st_mtime
    with R.Heartbeat({path: "me"}):
        time.sleep(0.3)
    assert path.stat().st_mtime > old + 900


# ------------------------------------------------------------------------------------------------ dask


@pytest.mark.slow
def test_dask_local_cluster_gives_the_local_records(tmp_path):
    """A real LocalCluster (scheduler and 2 worker processes over loopback) runs a small spec; its records
    carry the same metrics as the local executor's, trial by trial."""
    spec = load_spec(
        write_spec(tmp_path / "dask.yaml", _spec("dasky", 2, {"weight_policy": ["ste", "exact"]}))
    )
    counts = R.run_study(spec, out=tmp_path / "dask", workers=2, executor="dask", bundle=1, quiet=True)
    assert counts == {"done": 4, "failed": 0, "todo": 0}
    R.run_study(spec, out=tmp_path / "local", workers=1, executor="local", bundle=1, quiet=True)
    dask_recs = {rid: json.loads(p.read_text()) for rid, p in _records(tmp_path / "dask" / "dasky").items()}
    local_recs = {rid: json.loads(p.read_text()) for rid, p in _records(tmp_path / "local" / "dasky").items()}
    assert set(dask_recs) == set(local_recs) == {t.run_id for t in expand(spec)}
    for rid, rec in dask_recs.items():
        assert rec["test_acc"] == local_recs[rid]["test_acc"]
        assert rec["history"] == local_recs[rid]["history"]
    summary = json.loads((tmp_path / "dask" / "dasky" / "run_log.jsonl").read_text().splitlines()[-1])
    assert summary["executor"] == "dask" and summary["done"] == 4


def _probe_worker(keys: list[str]) -> tuple[dict[str, Any], str, str]:
    from distributed import get_worker

    worker = get_worker()
    return {k: __import__("dask").config.get(k) for k in keys}, worker.address, worker.scheduler.address


@pytest.mark.slow
def test_dask_local_cluster_workers_run_with_the_lean_config_over_tls():
    """The worker processes of the runner's LocalCluster get LEAN_WORKER_CONFIG (profiler off, slow ticks),
    the caller's Dask configuration is restored afterwards, and the cluster speaks TLS on loopback only
    (temporary certificates: other local users can neither connect nor listen)."""
    import dask
    import distributed  # noqa: F401 - registers the distributed.* configuration defaults

    keys = list(R.LEAN_WORKER_CONFIG)
    before = {k: dask.config.get(k) for k in keys}
    probe = lambda sdir, unit, *rest: _probe_worker(keys)  # noqa: E731
    seen = list(R._dask_map(probe, ["u1", "u2"], 1, ("sdir",), None))
    assert [config for config, _, _ in seen] == [R.LEAN_WORKER_CONFIG, R.LEAN_WORKER_CONFIG]
    for _, worker, scheduler in seen:
        assert worker.startswith("tls://127.0.0.1:") and scheduler.startswith("tls://127.0.0.1:")
    assert {k: dask.config.get(k) for k in keys} == before
    assert before["distributed.worker.profile.enabled"] is True  # the library default was overridden


# ------------------------------------------------------------------------------------ failing trials


def test_failing_trials_are_reported_and_retried(tmp_path, monkeypatch, capsys):
    spec_path = write_spec(
        tmp_path / "fail.yaml",
        _spec("faily", 2, {"dataset": ["digits", "mnist"]}, data_dir=str(tmp_path / "no_idx")),
    )
    out = tmp_path / "out"
    sdir = out / "faily"
    trials = expand(load_spec(spec_path))
    bad = {t.run_id for t in trials if t.config.dataset == "mnist"}
    good = {t.run_id for t in trials} - bad
    assert len(bad) == len(good) == 2

    assert main(["run", str(spec_path), "--out", str(out), "--workers", "1", "--bundle", "1", "--quiet"]) == 1
    assert "2/4 done, 2 failed" in capsys.readouterr().out
    assert set(_records(sdir)) == good
    for rid in bad:
        fail = json.loads((R.trial_dir(sdir, rid) / R.FAILED).read_text())
        assert fail["run_id"] == rid and fail["factors"] == {"dataset": "mnist"}
        assert "Traceback" in fail["traceback"] and "FileNotFoundError" in fail["traceback"]
        assert "FileNotFoundError" in fail["error"] and "no_idx" in fail["error"]
        assert not (R.trial_dir(sdir, rid) / R.RECORD).exists()
    assert not list(sdir.glob(f"trials/*/{R.CLAIM}"))

    collect(sdir)
    runs = pd.read_csv(sdir / "runs.csv")
    assert len(runs) == 4
    failed = runs[runs["run_id"].isin(bad)]
    assert failed["failed"].all() and (failed["status"] == "failed").all()
    assert failed["error"].str.contains("FileNotFoundError").all() and failed["test_acc"].isna().all()
    ok = runs[runs["run_id"].isin(good)]
    assert (~ok["failed"]).all() and (ok["status"] == "done").all() and ok["test_acc"].notna().all()

    good_files = {
        p: _fingerprint(p) for rid in good for p in R.trial_dir(sdir, rid).rglob("*") if p.is_file()
    }
    bad_fail = {rid: _fingerprint(R.trial_dir(sdir, rid) / R.FAILED) for rid in bad}
    calls: list[str] = []
    real_trial, real_bundle = trial_mod.run_trial, bundle_mod.run_bundle

    def counting_trial(config, out_dir=None):
        calls.append(config.run_id)
        return real_trial(config, out_dir)

    def counting_bundle(configs):
        calls.extend(c.run_id for c in configs)
        return real_bundle(configs)

    monkeypatch.setattr(trial_mod, "run_trial", counting_trial)
    monkeypatch.setattr(bundle_mod, "run_bundle", counting_bundle)
    # without --retry-failed nothing is rerun
    assert main(["run", str(spec_path), "--out", str(out), "--workers", "1", "--quiet"]) == 1
    assert calls == []
    # --retry-failed reruns exactly the failed trials (here as one bundle of 2); they fail again
    assert (
        main(
            [
                "run",
                str(spec_path),
                "--out",
                str(out),
                "--workers",
                "1",
                "--bundle",
                "2",
                "--retry-failed",
                "--quiet",
            ]
        )
        == 1
    )
    assert sorted(calls) == sorted(bad)
    for p, fp in good_files.items():
        assert _fingerprint(p) == fp, p
    for rid in bad:
        path = R.trial_dir(sdir, rid) / R.FAILED
        assert _fingerprint(path) != bad_fail[rid]  # written anew by the retry
        assert "FileNotFoundError" in json.loads(path.read_text())["traceback"]


# ---------------------------------------------------- a finished tiny study: collect, verify, dry run


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """2 conditions (a `policies` factor) x 3 seeds, diagnostics on, run with --bundle 2: per condition one
    bundle of 2 seeds and one trial alone."""
    root = tmp_path_factory.mktemp("finished")
    spec_path = write_spec(
        root / "fin.yaml",
        _spec("fin", 3, {"policies": ["analogvnn", "exact/exact"]}, epochs=2, diagnostics=True),
    )
    counts = R.run_study(load_spec(spec_path), out=root / "out", workers=1, bundle=2, quiet=True)
    assert counts == {"done": 6, "failed": 0, "todo": 0}
    return root / "out" / "fin"


def test_collect_tables(finished, tmp_path):
    sdir = Path(shutil.copytree(finished, tmp_path / "fin"))
    runs_path, curves_path = collect(sdir)
    runs = pd.read_csv(runs_path)
    assert set(DOCUMENTED_RUNS_COLUMNS) <= set(runs.columns), set(DOCUMENTED_RUNS_COLUMNS) - set(runs.columns)
    assert (
        "policies" in runs.columns and "status" in runs.columns
    )  # the factor column, as written in the spec
    assert len(runs) == 6 and runs["run_id"].is_unique
    assert (runs["status"] == "done").all() and not runs["failed"].any() and not runs["diverged"].any()
    assert set(runs["policies"]) == {"analogvnn", "exact/exact"}
    resolved = runs.groupby("policies")[["weight_policy", "signal_policy"]].first()
    assert tuple(resolved.loc["analogvnn"]) == ("ste", "exact")
    assert tuple(resolved.loc["exact/exact"]) == ("exact", "exact")
    assert sorted(runs["seed"]) == [0, 0, 1, 1, 2, 2]
    assert runs["spec_hash"].nunique() == 1 and (runs["study"] == "fin").all()
    assert (runs["epochs_run"] == 2).all() and runs["test_acc"].between(0, 100).all()
    assert sorted(runs["bundle_size"]) == [1, 1, 2, 2, 2, 2]
    for _, row in runs.iterrows():  # rows agree with the records
        rec = json.loads((R.trial_dir(sdir, row["run_id"]) / R.RECORD).read_text())
        assert row["test_acc"] == pytest.approx(rec["test_acc"], abs=1e-3)

    with gzip.open(curves_path, "rt") as fh:
        curves = pd.read_csv(fh)
    assert list(curves.columns) == ["run_id", "epoch", "metric", "layer", "value"]
    assert set(curves["run_id"]) == set(runs["run_id"])
    whole = curves[curves["layer"].isna()]
    history = {"train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc"}
    logits = {"logit_min", "logit_max", "ce_floor", "probe_loss"}  # per epoch, from the probe
    assert set(whole["metric"]) == history | logits | {"weight_saturation"}  # saturation: pooled
    assert len(whole) == 6 * 2 * (6 + 4 + 1)  # trials x epochs x metrics
    floor = whole[whole["metric"] == "ce_floor"].set_index(["run_id", "epoch"])["value"]
    spread = whole.pivot_table(index=["run_id", "epoch"], columns="metric", values="value")
    expected = np.log1p(9 * np.exp(-(spread["logit_max"] - spread["logit_min"])))  # digits: 10 classes
    assert np.allclose(floor.sort_index(), expected.sort_index(), rtol=1e-5)
    sat = curves[curves["metric"] == "weight_saturation"]
    assert len(sat) == 6 * 2 * 3 and sat["value"].between(0, 1).all()  # 2 layers and pooled
    cos = curves[curves["metric"] == "grad_cosine"]
    assert len(cos) == 6 * 2 * 2  # trials x epochs x analog layers (hidden [16]: 2 layers)
    assert set(cos["layer"]) == {0, 1} and set(cos["epoch"]) == {1, 2}
    assert cos["value"].between(-1.0001, 1.0001).all()
    exact_ids = set(runs.loc[runs["policies"] == "exact/exact", "run_id"])
    assert cos[cos["run_id"].isin(exact_ids)]["value"].sub(1).abs().max() < 1e-4  # exact vs exact: cosine 1
    per_layer = ("grad_norm_ratio", "sat_weight", "sat_signal_in", "sat_signal_out", "grad_cosine_signal_out")
    for metric in per_layer:
        assert (curves["metric"] == metric).sum() == 6 * 2 * 2, metric


def test_verify_sample_of_bundled_and_unbundled_trials(finished, tmp_path, capsys):
    import random

    sdir = Path(shutil.copytree(finished, tmp_path / "fin"))
    spec = load_spec(sdir / "spec.yaml")
    done = [t.run_id for t in expand(spec)]
    sizes = {
        rid: json.loads((R.trial_dir(sdir, rid) / R.RECORD).read_text()).get("bundle_size", 1) for rid in done
    }
    # choose the sample seed so that the 2 re-trained trials are one bundled, one trained alone
    seed = next(s for s in range(100) if {sizes[r] for r in random.Random(s).sample(done, 2)} == {1, 2})
    assert main(["verify", str(sdir), "--sample", "2", "--seed", str(seed)]) == 0
    assert "2/2 re-trained records identical" in capsys.readouterr().out
    result = json.loads((sdir / "verify.json").read_text())
    assert result["checked"] == 2 and result["matched"] == 2 and result["mismatches"] == []
    assert {sizes[r] for r in result["run_ids"]} == {1, 2}


def test_verify_detects_a_tampered_record(finished, tmp_path):
    sdir = Path(shutil.copytree(finished, tmp_path / "fin"))
    spec = load_spec(sdir / "spec.yaml")
    alone = next(
        t.run_id
        for t in expand(spec)
        if "bundle_size" not in json.loads((R.trial_dir(sdir, t.run_id) / R.RECORD).read_text())
    )
    for t in expand(spec):  # keep only that trial's record so the sample is it
        if t.run_id != alone:
            (R.trial_dir(sdir, t.run_id) / R.RECORD).unlink()
    path = R.trial_dir(sdir, alone) / R.RECORD
    rec = json.loads(path.read_text())
    rec["history"][0]["val_loss"] += 1e-6
    path.write_text(json.dumps(rec))
    result = verify(sdir, sample=1)
    assert result["matched"] == 0 and result["mismatches"][0]["fields"] == ["history[1].val_loss"]


def test_dry_run_counts_and_estimates_without_running(finished, tmp_path, capsys):
    sdir = Path(shutil.copytree(finished, tmp_path / "fin"))
    spec_file = tmp_path / "fin.yaml"
    spec = yaml.safe_load((sdir / "spec.yaml").read_text())
    spec["seeds"] = 5  # 4 more trials to do
    write_spec(spec_file, spec)
    for rid in list(_records(sdir))[:1]:  # and one finished trial made to look failed
        shutil.move(R.trial_dir(sdir, rid) / R.RECORD, R.trial_dir(sdir, rid) / R.FAILED)
    files_before = {p: _fingerprint(p) for p in sdir.rglob("*") if p.is_file()}
    assert main(["run", str(spec_file), "--out", str(tmp_path), "--dry-run", "--workers", "2"]) == 0
    text = capsys.readouterr().out
    assert "10 trials (2 cells x 5 seeds)" in text
    assert "5 done, 1 failed, 4 to do" in text
    assert "estimated" in text and "min" in text and "2 workers" in text
    assert {p: _fingerprint(p) for p in sdir.rglob("*") if p.is_file()} == files_before  # nothing ran
    records = [json.loads(p.read_text()) for p in _records(sdir).values()]
    per_trial = sum(r["wall_time_s"] for r in records) / 5
    info = R.dry_run(load_spec(spec_file), out=tmp_path, workers=2, bundle=2)  # the committed studies' model
    assert "rescaled by 5 finished trials" in info["est_basis"]
    assert info["est_total_seconds"] == pytest.approx(4 * info["est_seconds_per_trial"] / 2, abs=1)
    # without committed evidence: the finished trials' mean; with no data at all: 10 s per trial
    info = R.dry_run(load_spec(spec_file), out=tmp_path, workers=2, bundle=2, evidence=tmp_path / "none")
    assert info["est_basis"] == "the mean of 5 finished trials"
    assert info["est_seconds_per_trial"] == pytest.approx(per_trial, abs=0.01)
    assert info["est_total_seconds"] == pytest.approx(4 * per_trial / 2, abs=1)
    none = R.dry_run(load_spec(spec_file), out=tmp_path / "f", workers=1, bundle=1, evidence=tmp_path / "x")
    assert none["est_basis"] == "10 s per trial (no data)" and none["est_total_seconds"] == 100

    fresh = tmp_path / "fresh"
    assert main(["run", str(spec_file), "--out", str(fresh), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "10 trials" in text and "0 done, 0 failed, 10 to do" in text
    assert not fresh.exists()


def test_changed_hypotheses_are_refused(finished, tmp_path, capsys):
    sdir = Path(shutil.copytree(finished, tmp_path / "fin"))
    stored = (sdir / "spec.yaml").read_text()
    spec = yaml.safe_load(stored)
    spec["hypotheses"]["margin"] = 2.0
    spec_file = write_spec(tmp_path / "changed.yaml", spec)
    with pytest.raises(R.HypothesesChanged, match="hypotheses"):
        R.run_study(load_spec(spec_file), out=tmp_path, workers=1, quiet=True)
    assert main(["run", str(spec_file), "--out", str(tmp_path), "--workers", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "hypotheses" in err and "--allow-hypotheses-change" in err
    assert (sdir / "spec.yaml").read_text() == stored  # the stored spec is kept

    # with the flag the change goes through and is recorded in the stored spec
    assert (
        main(
            [
                "run",
                str(spec_file),
                "--out",
                str(tmp_path),
                "--workers",
                "1",
                "--quiet",
                "--allow-hypotheses-change",
                "margin too narrow for the observed SD",
            ]
        )
        == 0
    )
    assert yaml.safe_load((sdir / "spec.yaml").read_text())["hypotheses"]["margin"] == 2.0
    (logged,) = [json.loads(ln) for ln in (sdir / "hypotheses_log.jsonl").read_text().splitlines()]
    assert logged["reason"] == "margin too narrow for the observed SD"
    assert (logged["old"]["margin"], logged["new"]["margin"]) == (0.5, 2.0)


def test_changed_hypotheses_allowed_before_any_result(tmp_path):
    spec = _spec("early", 1, {"weight_policy": ["ste"]})
    R.prepare(load_spec(write_spec(tmp_path / "a.yaml", spec)), tmp_path / "out")
    spec["hypotheses"] = {"margin": 1.5}
    sdir = R.prepare(load_spec(write_spec(tmp_path / "b.yaml", spec)), tmp_path / "out")
    assert yaml.safe_load((sdir / "spec.yaml").read_text())["hypotheses"]["margin"] == 1.5


# --- pre-registration you can check (issue #21) -------------------------------------------------------


def _git_repo(root: Path) -> Path:
    import subprocess

    specs = root / "specs"
    specs.mkdir(parents=True)
    env = {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }

    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, env={**os.environ, **env})

    git("init", "-q")
    (specs / "mine.yaml").write_text(
        "name: mine\nbase: {dataset: digits, hidden: [8], epochs: 1}\nseeds: 1\n"
    )
    git("add", "specs/mine.yaml")
    git("commit", "-qm", "spec")
    return specs / "mine.yaml"


def test_canonical_spec_must_be_committed(tmp_path: Path) -> None:
    from study.sweep.runner import SpecNotCommitted, check_spec_committed, spec_git_state

    path = _git_repo(tmp_path / "repo")
    specs = path.parent
    state = spec_git_state(path)
    assert state["committed"] and state["in_git"] and len(state["commit"]) == 40
    check_spec_committed(path, specs)  # clean: accepted
    path.write_text(path.read_text() + "# edited\n")
    with pytest.raises(SpecNotCommitted, match="uncommitted changes.*--allow-uncommitted-spec"):
        check_spec_committed(path, specs)
    check_spec_committed(path, specs, allow_uncommitted=True)  # the development override
    check_spec_committed(path, tmp_path / "elsewhere")  # not a canonical spec: not checked
    untracked = specs / "new.yaml"
    untracked.write_text("name: new\n")
    with pytest.raises(SpecNotCommitted):
        check_spec_committed(untracked, specs)
    outside = tmp_path / "plain" / "specs"
    outside.mkdir(parents=True)
    (outside / "x.yaml").write_text("name: x\n")
    check_spec_committed(outside / "x.yaml", outside)  # no git work tree: nothing to compare with


def test_registration_written_once_at_the_first_trial(tmp_path: Path) -> None:
    from study.sweep.runner import PREREGISTRATION, prepare

    path = _git_repo(tmp_path / "repo")
    spec = parse_spec(yaml.safe_load(path.read_text()))
    sdir = prepare(spec, tmp_path / "out", spec_path=path)
    entry = json.loads((sdir / PREREGISTRATION).read_text())
    assert entry["spec_hash"] == spec.hash() and entry["hypotheses_hash"] == spec.hypotheses_hash()
    assert entry["spec_committed"] is True and len(entry["git_commit"]) == 40
    assert entry["spec_file"] == "mine.yaml" and entry["study"] == "mine"
    before = (sdir / PREREGISTRATION).read_text()
    changed = parse_spec(yaml.safe_load(path.read_text().replace("seeds: 1", "seeds: 2")))
    prepare(changed, tmp_path / "out", spec_path=path)
    assert (sdir / PREREGISTRATION).read_text() == before  # the first registration stays


def test_runners_starting_together_register_once_without_error(tmp_path: Path) -> None:
    """The CI race: runner threads of one process registering at the same moment shared a temporary
    file name, and one rename failed. Now every writer has its own, and exactly one registration lands."""
    from study.sweep.runner import PREREGISTRATION, register

    path = _git_repo(tmp_path / "repo")
    spec = parse_spec(yaml.safe_load(path.read_text()))
    sdir = tmp_path / "out" / "mine"
    sdir.mkdir(parents=True)
    barrier = threading.Barrier(8)

    def go() -> Path | None:
        barrier.wait()  # all at the same moment
        return register(sdir, spec, path)

    results, errors = _in_threads(go, 8, 60)
    assert not errors, errors
    assert sum(r is not None for r in results) == 1 and len(results) == 8
    assert json.loads((sdir / PREREGISTRATION).read_text())["spec_hash"] == spec.hash()
    assert not list(sdir.glob(f".{PREREGISTRATION}*"))  # no temporary file left


# --- bundles of committed studies -----------------------------------------------------------------

_ROOT = Path(__file__).resolve().parents[1]
_COMMITTED = sorted(p.parent.name for p in (_ROOT / "results").glob("*/runs.csv"))


@pytest.mark.parametrize("name", _COMMITTED)
def test_recorded_bundle_rebuilds_every_committed_study_s_bundles(name: str) -> None:
    """`--bundle recorded` (what run_all.sh passes) chunks each condition's seeds into exactly the bundle
    sizes the committed table records; a fixed size would not (the factorial study ran in bundles of 3,
    so --bundle 8 would put its 6 seeds in one bundle and draw other noise)."""
    from study.sweep.spec import parse_spec
    from study.sweep.tuning import study_trials
    from study.tables import RESTORE_SPEC, read_yaml

    sdir = _ROOT / "results" / name
    spec = parse_spec(read_yaml(sdir / "spec.yaml", RESTORE_SPEC))
    size = R.resolve_bundle(R.RECORDED, sdir)
    recorded = pd.read_csv(sdir / "runs.csv").set_index("run_id")["bundle_size"]
    units = R.make_units(spec, study_trials(spec, sdir), size)
    built = {run_id: len(u.trials) for u in units for run_id, _, _ in u.trials}
    assert {r: built[r] for r in recorded.index} == recorded.to_dict()


def test_bundle_option_takes_a_number_or_recorded_and_warns_when_it_differs(tmp_path, capsys) -> None:
    sdir = tmp_path / "s"
    sdir.mkdir()
    with pytest.raises(ValueError, match="--bundle recorded: .* no bundle sizes"):
        R.resolve_bundle(R.RECORDED, sdir)
    for bad in ("0", "-1", "eight", "8.5", "", "recorde", "nan"):
        with pytest.raises(ValueError, match="--bundle"):
            R.resolve_bundle(bad, sdir)
    assert R.resolve_bundle("8", sdir) == 8 and capsys.readouterr().err == ""
    pd.DataFrame({"run_id": ["a", "b", "c"], "bundle_size": [3, 3, 2]}).to_csv(sdir / "runs.csv", index=False)
    assert R.resolve_bundle(R.RECORDED, sdir) == 3
    assert R.resolve_bundle("3", sdir) == 3 and capsys.readouterr().err == ""
    assert R.resolve_bundle("8", sdir) == 8
    assert "bundles of up to 3" in capsys.readouterr().err
