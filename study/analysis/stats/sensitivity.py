"""Sensitivity control: can the analysis detect an effect of the size of the margin in *these* data?

A planted-effect check on the real trial table. For one primary comparison (site, a vs b) at a time, a
copy of the table has policy a's values in every tested row's condition moved so that the row's mean
paired difference becomes exactly `shift` while every per-seed deviation (the real noise, its spread
and shape) is kept: a_i' = a_i - mean(d) + shift. The whole comparison analysis (`families.compare`:
tests, Holm within the family, verdicts) is run again on the copy; a row *detects* the planted
effect when its verdict is `different` or `trivial` in the planted direction. At shift 0 the same
count is the false-positive rate of the rule on these data, and `equivalent` rows show how often
equivalence is established when the true difference is zero.

Rows that are `identical` (no spread: there is nothing to test) and rows whose other site is `zero`
(two untrained networks) are left out; rows repeating another row's paired runs count once.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from analog.policies import OTHER_SITE
from study.analysis.stats.families import compare
from study.analysis.stats.table import higher_is_better
from study.sweep.hypotheses import Hypotheses
from study.tables import SITE_COLUMN, condition_columns

# planted shifts, in units of the margin delta (0: the null, for the false-positive rate)
PLANTED_MULTIPLES = (-2, -1, 0, 1, 2)

SENSITIVITY_COLUMNS = [
    "comparison",
    "site",
    "policy_a",
    "policy_b",
    "multiple",
    "shift",
    "rows",
    "detected",
    "detection_rate",
    "equivalent",
    "inconclusive",
    "wrong_direction",
]


def _tested_rows(comp: pd.DataFrame, label: str, site: str) -> pd.DataFrame:
    """Rows of one comparison that carry a test: not identical, other site not `zero`."""
    other = SITE_COLUMN[OTHER_SITE[site]]
    rows = comp[(comp["comparison"] == label) & (comp["verdict"] != "identical")]
    return rows[rows[other].astype(str) != "zero"]


def plant(
    table: pd.DataFrame, rows: pd.DataFrame, spec: dict[str, Any], site: str, a: str, shift: float
) -> pd.DataFrame:
    """A copy of the trial table in which each of `rows`' conditions has policy `a`'s values moved by
    `shift - mean_diff` (the row's observed mean paired difference): its new mean difference is `shift`."""
    out = table.copy()
    keys = condition_columns(spec) + [SITE_COLUMN[OTHER_SITE[site]]]
    own = SITE_COLUMN[site]
    for _, row in rows.iterrows():
        mask = out[own] == a
        for key in keys:
            mask &= out[key] == str(row[key])
        out.loc[mask, "value"] = out.loc[mask, "value"] + (shift - float(row["mean_diff"]))
    return out


def sensitivity_table(
    table: pd.DataFrame, comparisons: pd.DataFrame, spec: dict[str, Any], hyp: Hypotheses
) -> pd.DataFrame:
    """Detection of planted effects of `PLANTED_MULTIPLES` x margin, per primary comparison (module doc)."""
    higher = higher_is_better(hyp.metric)
    out = []
    for comp in hyp.comparisons:
        if comp.role != "primary":
            continue
        label = f"{comp.site}: {comp.a} vs {comp.b}"
        rows = _tested_rows(comparisons, label, comp.site) if len(comparisons) else comparisons
        counted = rows[rows["same_data_as"].astype(str) == ""] if len(rows) else rows
        for multiple in PLANTED_MULTIPLES:
            shift = multiple * hyp.margin
            record = {
                "comparison": label,
                "site": comp.site,
                "policy_a": comp.a,
                "policy_b": comp.b,
                "multiple": multiple,
                "shift": shift,
                "rows": len(counted),
            }
            if not len(counted):
                out.append(record | dict.fromkeys(SENSITIVITY_COLUMNS[7:], np.nan) | {"detected": 0})
                continue
            planted, _, _ = compare(
                plant(table, rows, spec, comp.site, comp.a, shift), spec, hyp, planning=False
            )
            got = planted.merge(counted[["comparison", *condition_columns(spec), *SITE_COLUMN.values()]])
            got = got[got["same_data_as"].astype(str) == ""]
            significant = got["verdict"].isin(["different", "trivial"])
            want = "" if multiple == 0 else ("a" if (shift > 0) == higher else "b")
            right = significant & (got["better"] == want) if want else significant
            out.append(
                record
                | {
                    "detected": int(right.sum()),
                    "detection_rate": float(right.mean()),
                    "equivalent": int((got["verdict"] == "equivalent").sum()),
                    "inconclusive": int((got["verdict"] == "inconclusive").sum()),
                    "wrong_direction": int((significant & ~right).sum()) if want else 0,
                }
            )
    return pd.DataFrame(out, columns=SENSITIVITY_COLUMNS)
