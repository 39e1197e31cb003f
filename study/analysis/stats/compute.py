"""Statistics stage: paired policy comparisons, equivalence tests, omnibus tests and a mixed model.

`compute_stats(DIR)` reads `DIR/spec.yaml` and `DIR/runs.csv` and writes `DIR/stats/`
(`comparisons.csv`, `differences.csv`, `missing.csv`, `skipped.csv`, `bayes.csv`, `omnibus.csv`,
`posthoc.csv`, `model.csv`, `model.txt`, `duplicates.csv`, `sensitivity.csv`, and the `saturation_*`
tables where weight saturation can be a covariate (`covariate`), the `effects_*` tables of a
pre-registered across-condition model (`effects`), `interaction.csv` where the signal policy ran as a
2 x 2 over the readout and the other locations (`interaction`); the report stage adds
`report.md` and `latex/` from them).
Every output is a deterministic function of the two inputs: rows are sorted by stable keys, floats
follow the number policy of `study.tables` (the same digits on every machine)
and every resampling (bootstrap, permutation, posterior) is seeded by
`hypotheses.bootstrap_seed`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from study.analysis.stats.bayes import POSTERIOR_COLUMNS, bayes_table
from study.analysis.stats.covariate import fittable, regime_table, saturation_models, saturation_pairs
from study.analysis.stats.duplicates import DUPLICATE_COLUMNS, combo_groups, duplicate_table
from study.analysis.stats.effects import effect_tables
from study.analysis.stats.families import compare
from study.analysis.stats.interaction import interaction_table
from study.analysis.stats.mixed_model import fit_mixed_model
from study.analysis.stats.omnibus import omnibus
from study.analysis.stats.paired import STAT_COLUMNS, skipped_table
from study.analysis.stats.sensitivity import sensitivity_table
from study.analysis.stats.table import (
    MISSING_STATUS,
    ROW_KEYS,
    cell_text,
    check_coverage,
    key_columns,
    load_hypotheses,
    sort_rows,
    trial_table,
    value_orders,
)
from study.sweep.screen import SCREEN_TABLE
from study.sweep.spec import stored_spec_hash
from study.tables import (
    REDO_COLLECT,
    check_spec_hashes,
    condition_columns,
    load_runs,
    load_spec_dict,
    parse_bool,
    read_csv,
    write_table,
    write_text_atomic,
)


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    """Deterministic CSV at the number policy of `study.tables`, written atomically."""
    write_table(frame, path)


def _finish(frame: pd.DataFrame, columns: list[str], by: list[str], orders: dict) -> pd.DataFrame:
    if frame.empty:
        return pd.DataFrame(columns=columns)
    return sort_rows(frame, by, orders)[columns]


def screened_runs(runs: pd.DataFrame, spec: dict[str, Any], study_dir: Path) -> pd.DataFrame:
    """The trials of the conditions that pass the study's trainability screen (`screen.csv`, written by
    collect; `study.sweep.screen`); a condition not yet screened counts as not passing."""
    path = study_dir / SCREEN_TABLE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: the spec has a screen; {REDO_COLLECT}")
    screen = read_csv(path, REDO_COLLECT, dtype=str, keep_default_na=False)
    conds = [c for c in condition_columns(spec) if c in screen]

    def key(frame: pd.DataFrame) -> pd.Series:
        return frame[conds].apply(lambda r: tuple(cell_text(v) for v in r), axis=1)

    passed = set(key(screen[screen["passed"].map(lambda v: parse_bool(v) is True)]))
    return runs[key(runs).isin(passed)].reset_index(drop=True) if len(runs) else runs


def compute_stats(
    study_dir: Path, runs_name: str = "runs.csv", out_name: str = "stats", screened: bool = True
) -> Path:
    """The statistics tables of `study_dir` (needs spec.yaml and runs.csv) in `study_dir/stats`; returns it.
    `runs_name`/`out_name` analyse another table of the study's trials the same way (TUNED_RUNS ->
    TUNED_STATS: each cell at its own selected learning rate). With a trainability screen in the spec,
    only the conditions that pass it are analysed unless `screened` is false (the sensitivity analysis).

    Writes tables only; the statistics report and LaTeX are written from them by
    `study.analysis.report` (`python -m study stats` runs both: `study.analysis.publish.stats_stage`).
    """
    study_dir = Path(study_dir)
    spec = load_spec_dict(study_dir)
    hyp = load_hypotheses(spec)
    runs = load_runs(study_dir, runs_name)
    if "spec_hash" in runs:
        current = stored_spec_hash(spec)
        check_spec_hashes(
            study_dir, current, dict(zip(runs["run_id"], runs["spec_hash"].fillna(""), strict=True))
        )
    check_coverage(runs, spec, study_dir)
    if screened and spec.get("screen"):  # the primary analysis: conditions that pass the screen
        runs = screened_runs(runs, spec, study_dir)
    table = trial_table(runs, spec, hyp)
    orders = value_orders(spec, table)
    out = study_dir / out_name
    out.mkdir(parents=True, exist_ok=True)

    keys = key_columns(spec)
    by = ["_index"] + keys
    comparisons, diffs, missing = compare(table, spec, hyp)
    if comparisons.empty:
        comparisons = pd.DataFrame(columns=ROW_KEYS + keys + STAT_COLUMNS + POSTERIOR_COLUMNS + ["_index"])
    write_csv(comparisons[ROW_KEYS + keys + STAT_COLUMNS], out / "comparisons.csv")
    diff_cols = ROW_KEYS + keys + ["seed", "value_a", "value_b", "diff"]
    # per-seed measurements and their exact differences: data, not estimates (`RAW_FLOAT_FORMAT`)
    diffs = _finish(diffs, diff_cols + ["_index"], by + ["seed"], orders)[diff_cols]
    write_table(diffs, out / "differences.csv", raw=True)
    miss_cols = ROW_KEYS + keys + ["seed"] + MISSING_STATUS
    write_csv(_finish(missing, miss_cols + ["_index"], by + ["seed"], orders)[miss_cols], out / "missing.csv")
    write_csv(bayes_table(comparisons, spec, hyp), out / "bayes.csv")

    groups = combo_groups(sort_rows(table, keys + ["seed"], orders), spec)
    write_csv(duplicate_table(groups)[condition_columns(spec) + DUPLICATE_COLUMNS], out / "duplicates.csv")

    omni, post = omnibus(table, spec, hyp, orders)
    write_csv(omni, out / "omnibus.csv")
    write_csv(post, out / "posthoc.csv")

    text, model = fit_mixed_model(table, spec, hyp)
    write_text_atomic(out / "model.txt", text)
    write_csv(model, out / "model.csv")

    pairs = saturation_pairs(table, runs, spec, hyp)
    if fittable(pairs):  # the weight-site difference against weight saturation (covariate.py)
        write_table(pairs, out / "saturation_pairs.csv", raw=True)
        write_csv(regime_table(pairs, comparisons, condition_columns(spec)), out / "saturation_regimes.csv")
        model, onset, text = saturation_models(pairs, hyp.margin)
        write_csv(model, out / "saturation_model.csv")
        write_csv(onset, out / "saturation_onset.csv")
        write_text_atomic(out / "saturation_model.txt", text)

    effects = effect_tables(table, spec, hyp)
    if effects is not None:  # the pre-registered across-condition model (effects.py)
        terms, marginal, text, pooled = effects
        write_csv(terms, out / "effects_terms.csv")
        write_csv(marginal, out / "effects_marginal.csv")
        write_csv(pooled, out / "effects_conditions.csv")
        write_text_atomic(out / "effects_model.txt", text)

    interaction = interaction_table(table, spec)
    if interaction is not None:  # the signal policy's location non-additivity (interaction.py)
        write_csv(interaction, out / "interaction.csv")

    write_csv(skipped_table(table, spec, hyp), out / "skipped.csv")
    write_csv(sensitivity_table(table, comparisons, spec, hyp), out / "sensitivity.csv")
    return out
