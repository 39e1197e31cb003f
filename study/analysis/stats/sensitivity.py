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
(two untrained networks) are left out; rows repeating another row's paired runs count once. A `factor`
comparison is checked the same way: value a's trials are moved within each of its rows (a combination
of the other condition factors and both sites' policies), rows with `zero` at either site left out.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from study.analysis.stats.families import compare
from study.analysis.stats.paired import side_mask
from study.analysis.stats.table import higher_is_better
from study.sweep.hypotheses import Comparison, Hypotheses
from study.tables import SITE_COLUMN, condition_columns, other_site_informative

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
    """Rows of one comparison that carry a test: not identical, no site's policy `zero`
    (`other_site_informative`: the other site's; a `factor` comparison's rows hold both)."""
    rows = comp[(comp["comparison"] == label) & (comp["verdict"] != "identical")]
    return other_site_informative(rows, site)


def plant(
    table: pd.DataFrame,
    rows: pd.DataFrame,
    spec: dict[str, Any],
    site: str,
    a: str,
    shift: float,
    factor: str | None = None,
) -> pd.DataFrame:
    """A copy of the trial table in which each of `rows`' conditions has policy `a`'s values moved by
    `shift - mean_diff` (the row's observed mean paired difference): its new mean difference is `shift`.
    With `factor`, `a` is that factor's value and a row's condition includes both sites' policies."""
    out = table.copy()
    comp = Comparison.model_construct(site=site, factor=factor, a=a, b="")  # a's side only
    keys = comp.held_columns(condition_columns(spec))
    for _, row in rows.iterrows():
        mask = side_mask(out, comp, a)
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
        label = comp.label
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
                plant(table, rows, spec, comp.site, comp.a, shift, comp.factor), spec, hyp, planning=False
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
