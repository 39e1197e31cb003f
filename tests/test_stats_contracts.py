"""Contracts of the statistics stage that mutation testing (benchmarks/mutation.py) found unguarded: how trial
flags and statuses are read, and the small helpers behind comparisons.csv. Expected values by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd

from study import stats as S


def _hyp(**kwargs) -> S.Hypotheses:
    return S.load_hypotheses({"hypotheses": kwargs})


# --- flags and statuses ------------------------------------------------------------------------------


def test_truthy_reads_the_usual_spellings_and_a_missing_column_as_false():
    frame = pd.DataFrame(
        {
            "flag": [
                "True",
                "1",
                "1.0",
                "yes",
                " YES ",
                "true",
                "0",
                "False",
                "",
                None,
                "no",
                1,
                0,
                True,
                False,
            ]
        },
        index=range(100, 115),
    )
    got = S._truthy(frame, "flag")
    assert got.tolist() == [True] * 6 + [False] * 5 + [True, False, True, False]
    assert got.index.equals(frame.index)
    missing = S._truthy(frame, "absent")
    assert missing.dtype == bool and not missing.any() and missing.index.equals(frame.index)


def test_trial_status_failed_diverged_ok():
    runs = pd.DataFrame(
        {
            "test_acc": [90.0, "n/a", 80.0, 85.0, None],
            "failed": [False, False, True, False, False],
            "diverged": [False, False, False, "true", False],
        },
        index=[7, 3, 9, 1, 5],
    )
    excluded = S.trial_status(runs, _hyp(diverged="exclude"))
    assert excluded.name == "status" and excluded.index.equals(runs.index)
    assert excluded.tolist() == ["ok", "failed", "failed", "diverged", "failed"]
    included = S.trial_status(runs, _hyp())  # diverged: include (the default) keeps the trial as data
    assert included.tolist() == ["ok", "failed", "failed", "ok", "failed"]
    no_flags = S.trial_status(runs[["test_acc"]], _hyp(diverged="exclude"))
    assert no_flags.tolist() == ["ok", "failed", "ok", "ok", "failed"]


def test_trial_table_keeps_the_status_and_value_of_each_trial():
    runs = pd.DataFrame(
        {
            "run_id": ["b", "a", "c"],
            "weight_policy": ["ste", "ste", "exact"],
            "signal_policy": ["exact", "exact", "exact"],
            "seed": [0, 1, 0],
            "test_acc": [90.0, np.nan, 70.0],
            "failed": [False, True, False],
        },
        index=[30, 10, 20],
    )
    spec = {"factors": {"weight_policy": ["exact", "ste"], "signal_policy": ["exact"]}}
    table = S.trial_table(runs, spec, _hyp())
    rows = {(r.weight_policy, r.seed): (r.value, r.status) for r in table.itertuples()}
    assert rows[("ste", 0)] == (90.0, "ok") and rows[("exact", 0)] == (70.0, "ok")
    assert rows[("ste", 1)][1] == "failed" and np.isnan(rows[("ste", 1)][0])
