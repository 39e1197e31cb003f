"""Location non-additivity of the signal policy: a 2 x 2 interaction contrast (issue #30).

Where a study ran the signal policy as a 2 x 2 factorial over two locations - the readout's output and
every other signal position ("rest") - its four cells are all-exact ``exact``, ``exact,readout_output=ste``
(ste at the readout only), ``ste,readout_output=exact`` (exact at the readout only) and all-ste ``ste``.
Per condition and seed the contrast

    I = (EE - ES) - (SE - SS)   (first letter: rest, second: readout; E exact, S ste)

is what ste at the readout costs with the rest exact minus what it costs with the rest ste; equivalently
the additive prediction of the all-ste loss, (EE - ES) + (EE - SE), minus the observed loss EE - SS. I = 0
means the two locations' effects add; its paired t interval over the seeds says by how much they do not.
Seeds are paired across the four cells (one seed trains all four from the same initialisation).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sst

from study.analysis.stats.paired import CI_LEVEL
from study.tables import condition_columns

CELLS = {  # (rest, readout) -> the signal_policy value runs.csv holds
    ("E", "E"): "exact",
    ("E", "S"): "exact,readout_output=ste",
    ("S", "E"): "ste,readout_output=exact",
    ("S", "S"): "ste",
}
INTERACTION_COLUMNS = [
    "n_seeds",
    "readout_cost_rest_exact",
    "readout_cost_rest_ste",
    "all_ste_loss",
    "additive_prediction",
    "interaction",
    "ci_low",
    "ci_high",
    "p_ttest",
]


def interaction_table(table: pd.DataFrame, spec: dict[str, Any]) -> pd.DataFrame | None:
    """One row per condition (and weight policy) that has all four cells with usable trials on common
    seeds: the mean of each cost, the interaction contrast with its paired t interval and p-value; None
    when no condition has the 2 x 2 (the study did not run it)."""
    if not set(CELLS.values()) <= set(table["signal_policy"]):
        return None
    conds = condition_columns(spec) + ["weight_policy"]
    usable = table[(table["status"] == "ok") & table["signal_policy"].isin(list(CELLS.values()))]
    rows = []
    for values, group in usable.groupby(conds, dropna=False, sort=True):
        wide = group.pivot_table(index="seed", columns="signal_policy", values="value", aggfunc="first")
        if not set(CELLS.values()) <= set(wide.columns):
            continue
        wide = wide[list(CELLS.values())].dropna()
        if len(wide) < 2:
            continue
        ee, es, se, ss = (wide[CELLS[k]].to_numpy(dtype=float) for k in CELLS)
        contrast = (ee - es) - (se - ss)
        if np.ptp(contrast) == 0:
            low = high = float(contrast[0])
            p = float("nan")
        else:
            res = sst.ttest_1samp(contrast, 0.0)
            low, high = res.confidence_interval(confidence_level=CI_LEVEL)
            p = float(res.pvalue)
        rows.append(
            dict(zip(conds, values, strict=True))
            | {
                "n_seeds": len(wide),
                "readout_cost_rest_exact": float(np.mean(ee - es)),
                "readout_cost_rest_ste": float(np.mean(se - ss)),
                "all_ste_loss": float(np.mean(ee - ss)),
                "additive_prediction": float(np.mean((ee - es) + (ee - se))),
                "interaction": float(np.mean(contrast)),
                "ci_low": float(low),
                "ci_high": float(high),
                "p_ttest": p,
            }
        )
    if not rows:
        return None
    return pd.DataFrame(rows, columns=conds + INTERACTION_COLUMNS)
