"""Re-train a random sample of a finished study's trials and check that their records match."""

from __future__ import annotations

import math
import platform
import random
from pathlib import Path
from typing import Any

from study.sweep.runner import RECORD, load_record, trial_dir, write_json_atomic
from study.sweep.runner import status as trial_status
from study.sweep.spec import expand, parse_spec
from study.tables import DRAW_METRICS, METRICS, RESTORE_SPEC, read_yaml

COMPARED = (*METRICS, "epochs_run", "diverged")  # the record fields runs.csv reports
COMPARED_IF_RECORDED = (*DRAW_METRICS, "test_acc_draws")  # by records that have them


def retrain(record: dict[str, Any]) -> dict[str, Any]:
    """Train the trial of `record` again the way it was trained (alone, or in its original seed bundle)."""
    from study.training.bundle import run_bundle
    from study.training.config import TrialConfig
    from study.training.trial import run_trial

    config = TrialConfig.parse(record["config"])
    seeds = record.get("bundle_seeds")
    if not seeds or len(seeds) == 1:
        return run_trial(config)
    members = [config.model_copy(update={"seed": s}) for s in seeds]
    return run_bundle(members)[seeds.index(config.seed)]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b


def compare(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Names of the metrics (final and per epoch) that differ between two records of one trial."""
    keys = [*COMPARED, *(k for k in COMPARED_IF_RECORDED if k in old)]
    diffs = [k for k in keys if not _same(old.get(k), new.get(k))]
    for h_old, h_new in zip(old.get("history", []), new.get("history", []), strict=False):
        for k, v in h_old.items():
            if not _same(v, h_new.get(k)):
                diffs.append(f"history[{h_old['epoch']}].{k}")
    return diffs


def verify(sdir: str | Path, sample: int = 5, seed: int = 0) -> dict[str, Any]:
    """Re-train `sample` randomly chosen finished trials; write and return `sdir/verify.json`."""
    import torch

    torch.set_num_threads(1)
    sdir = Path(sdir)
    spec = parse_spec(read_yaml(sdir / "spec.yaml", RESTORE_SPEC))
    done = [t.run_id for t in expand(spec) if trial_status(sdir, t.run_id) == "done"]  # valid records only
    if sample < 1:
        raise ValueError(f"--sample: must be >= 1, got {sample}")
    chosen = sorted(random.Random(seed).sample(done, min(sample, len(done))))
    mismatches = []
    for i, run_id in enumerate(chosen, 1):
        old = load_record(trial_dir(sdir, run_id) / RECORD, run_id)
        assert old is not None
        diffs = compare(old, retrain(old))
        status = "match" if not diffs else f"MISMATCH in {', '.join(diffs[:5])}"
        print(f"[{i}/{len(chosen)}] {run_id} (seed {old['config']['seed']}): {status}")
        if diffs:
            mismatches.append({"run_id": run_id, "fields": diffs})
    result = {
        "checked": len(chosen),
        "matched": len(chosen) - len(mismatches),
        "mismatches": mismatches,
        "run_ids": chosen,
        "sample_seed": seed,
        "platform": platform.platform(),
        "torch": torch.__version__,
    }
    write_json_atomic(sdir / "verify.json", result)
    print(
        f"verify: {result['matched']}/{result['checked']} re-trained records identical "
        f"-> {sdir / 'verify.json'}"
    )
    return result
