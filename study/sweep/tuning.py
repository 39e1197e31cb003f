"""Per-cell learning-rate selection on validation data (a spec's `tune_lr` block).

A study with ``tune_lr: {grid: [...], selection_seeds: [...]}`` has three kinds of trials:

* evaluation at the shared lr: the spec's own trials (`study.sweep.spec.expand`), as in any study;
* selection: every cell at every grid lr on the selection seeds, with ``eval_test: false`` (the test
  split is never evaluated: their test metrics are NaN);
* evaluation at the cell's own lr: the cell's evaluation seeds at the lr whose mean validation metric
  over the selection seeds is best (ties: the first in grid order; a non-finite metric, e.g. of a
  diverged trial, counts as the worst). Where that is the shared lr, these are the shared trials.

Selection seeds must be disjoint from the evaluation seeds (`study.sweep.spec` refuses an overlap), so the
choice depends on neither the evaluation runs nor any test data. The own-lr trials exist once every
selection trial of their cell is done; the runner runs them in a second pass.

`collect` writes `runs.csv` (shared lr, what the statistics read) as for any study, and beside it
`runs_tuned.csv` (the same columns, each cell at its own lr), `lr_selection.csv` (the selection
trials: validation metrics only) and `lr_choice.csv` (per cell and grid lr: the mean metric and the
choice). Both comparisons, at a shared lr and at each policy's own lr, pair trials by cell and seed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from study.sweep.records import RECORD, load_record, status, trial_dir
from study.sweep.spec import StudySpec, Trial, cells, expand, resolve_config

SELECTION_COLUMNS = ("val_acc", "val_loss", "best_val_acc", "best_epoch", "epochs_run", "diverged")


def cell_key(cell: dict[str, Any]) -> str:
    """A cell's identity as text (its factor values, sorted by name)."""
    return json.dumps(cell, sort_keys=True, default=str)


def selection_trials(spec: StudySpec) -> list[Trial]:
    """Every cell at every grid lr on every selection seed, never evaluating the test split."""
    if spec.tune_lr is None:
        return []
    trials = []
    for cell in cells(spec):
        for lr in spec.tune_lr.grid:
            for seed in spec.tune_lr.selection_seeds:
                config = resolve_config(spec.base, {**cell, "lr": lr, "eval_test": False}, seed)
                trials.append(Trial(factors={**cell, "lr": lr}, config=config))
    return trials


def selection_table(spec: StudySpec, sdir: Path) -> list[dict[str, Any]]:
    """One row per selection trial: cell, lr, seed, status and its validation metrics (nothing else of
    the record is read)."""
    rows = []
    for t in selection_trials(spec):
        rec = load_record(trial_dir(sdir, t.run_id) / RECORD, t.run_id)
        row = {**t.factors, "seed": t.config.seed, "run_id": t.run_id, "status": status(sdir, t.run_id)}
        row.update({k: (rec or {}).get(k) for k in SELECTION_COLUMNS})
        rows.append(row)
    return rows


def choose_lrs(spec: StudySpec, rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per cell (`cell_key`): the mean selection metric at each grid lr and the chosen lr (None until
    every selection trial of the cell is done)."""
    assert spec.tune_lr is not None
    metric, grid = spec.tune_lr.metric, spec.tune_lr.grid
    out: dict[str, dict[str, Any]] = {}
    for cell in cells(spec):
        key = cell_key(cell)
        mine = [r for r in rows if cell_key({k: r[k] for k in cell}) == key]
        means: dict[float, float] = {}
        complete = True
        for lr in grid:
            at = [r for r in mine if r["lr"] == lr]
            complete = complete and len(at) == len(spec.tune_lr.selection_seeds)
            complete = complete and all(r["status"] == "done" for r in at)
            values = [_finite(r[metric]) for r in at]
            means[lr] = sum(values) / len(values) if values else -math.inf
        chosen = max(grid, key=lambda lr: (means[lr], -grid.index(lr))) if complete else None
        out[key] = {"cell": cell, "means": means, "chosen": chosen}
    return out


def _finite(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else -math.inf


def tuned_trials(spec: StudySpec, sdir: Path) -> list[Trial]:
    """Each cell whose selection is complete, at its own lr on the evaluation seeds."""
    if spec.tune_lr is None:
        return []
    choices = choose_lrs(spec, selection_table(spec, sdir))
    trials = []
    for choice in choices.values():
        if choice["chosen"] is None:
            continue
        cell = choice["cell"]
        for seed in spec.seed_list:
            config = resolve_config(spec.base, {**cell, "lr": choice["chosen"]}, seed)
            trials.append(Trial(factors=dict(cell), config=config))
    return trials


def study_trials(spec: StudySpec, sdir: Path) -> list[Trial]:
    """What the runner runs now: the screen trials (`study.sweep.screen`), the spec's trials, the
    selection trials, and the own-lr trials whose selection is complete (each run_id once, in that order)."""
    from study.sweep.screening import screen_trials

    trials = expand(spec)
    if spec.tune_lr is None and spec.screen is None:
        return trials
    screen = screen_trials(spec)  # first: every condition's screen is known early
    seen = {t.run_id for t in screen}
    trials = [*screen, *(t for t in trials if t.run_id not in seen)]
    seen |= {t.run_id for t in trials}
    if spec.tune_lr is None:
        return trials
    for t in [*selection_trials(spec), *tuned_trials(spec, sdir)]:
        if t.run_id not in seen:
            seen.add(t.run_id)
            trials.append(t)
    return trials


def write_tables(spec: StudySpec, sdir: Path, row_of: Any) -> list[Path]:
    """`lr_selection.csv`, `lr_choice.csv` and `runs_tuned.csv` (rows made by `row_of(trial)`, the
    runs.csv row maker, plus the cell's `lr`); nothing for a study without `tune_lr`."""
    import pandas as pd

    from study.tables import write_table

    if spec.tune_lr is None:
        return []
    rows = selection_table(spec, sdir)
    choices = choose_lrs(spec, rows)
    choice_rows = []
    for c in choices.values():
        for lr, mean in c["means"].items():
            value = mean if math.isfinite(mean) else None
            choice_rows.append(
                {**c["cell"], "lr": lr, f"mean_{spec.tune_lr.metric}": value, "chosen": c["chosen"] == lr}
            )
    tuned = [{**row_of(t), "lr": t.config.lr} for t in tuned_trials(spec, sdir)]
    paths = [sdir / "lr_selection.csv", sdir / "lr_choice.csv", sdir / "runs_tuned.csv"]
    for frame, path in zip((rows, choice_rows, tuned), paths, strict=True):
        write_table(pd.DataFrame(frame), path, raw=True)
    pending = [c["cell"] for c in choices.values() if c["chosen"] is None]
    if pending:
        print(f"  tune_lr: {len(pending)} cell(s) without a chosen lr (selection not done): {pending}")
    return paths
