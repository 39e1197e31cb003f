"""Figure of studies where weight saturation is a covariate of the weight-site difference
(`study.analysis.stats.covariate`): the paired difference against the saturated share of weights, per
regime, with the fitted line and the onset, beside the saturation over training per regime.

Drawn only where the statistics stage wrote `stats/saturation_*.csv`; other studies skip it.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from study.analysis.figures import style as st
from study.analysis.figures.common import Made, Output, Skip, StudyContext, register_figure
from study.tables import diff_unit_name, span

SATURATION_FIGURE = "weight_saturation"
MAX_KEYED_REGIMES = 8  # one colour each (REGIME_COLORS); more regimes are drawn without a key
REGIME_COLORS = (
    st.OKABE_ITO["blue"],
    st.OKABE_ITO["vermillion"],
    st.OKABE_ITO["green"],
    st.OKABE_ITO["orange"],
    st.OKABE_ITO["purple"],
    st.OKABE_ITO["sky_blue"],
    st.OKABE_ITO["yellow"],
    "0.3",
)


@register_figure(SATURATION_FIGURE)
def fig_weight_saturation(ctx: StudyContext) -> Iterator[Output]:
    """Left: each seed's paired weight-site difference against its pair's saturated share of weights,
    one colour per regime, the mixed model's fitted line, ±δ and the Fieller interval of the onset.
    Right: the pooled saturated share per epoch, mean over seeds, per regime and weight policy."""
    pairs, model, onset = (ctx.table(n) for n in ("saturation_pairs", "saturation_model", "saturation_onset"))
    if pairs is None or model is None or onset is None or pairs.empty:
        yield Skip(
            SATURATION_FIGURE, "no weight-saturation covariate analysis in stats/ (see stats.covariate)"
        )
        return
    comparison = str(pairs["comparison"].iloc[0])
    pairs = pairs[pairs["comparison"].astype(str) == comparison]
    order = list(pairs.groupby("regime")["saturation"].mean().sort_values(kind="stable").index)
    colors = {r: REGIME_COLORS[i % len(REGIME_COLORS)] for i, r in enumerate(order)}
    fig = st.new_figure(st.TWO_COLUMN, 2.9)
    left, right = fig.subplots(1, 2)
    left.axhspan(-ctx.margin, ctx.margin, color=st.BAND_COLOR, lw=0)
    left.axhline(0, color=st.REFERENCE_COLOR, lw=0.6, ls="--")
    for regime in order:
        part = pairs[pairs["regime"] == regime]
        left.plot(
            100 * part["saturation"], part["diff"], "o", ms=3, alpha=0.8, color=colors[regime], label=regime
        )
    fit = model[(model["comparison"].astype(str) == comparison) & (model["response"] == "diff")]
    coef = dict(zip(fit["term"], fit["coef"], strict=True))
    note = ""
    if {"intercept", "saturation"} <= set(coef):
        s = np.linspace(0, float(pairs["saturation"].max()), 50)
        left.plot(100 * s, coef["intercept"] + coef["saturation"] * s, color="0.15", lw=1.0)
        row = onset[onset["comparison"].astype(str) == comparison]
        if len(row) and str(row["bounded"].iloc[0]) == "yes":
            lo, hi = (100 * float(row[c].iloc[0]) for c in ("ci_low", "ci_high"))
            left.axvspan(max(lo, 0.0), hi, color=st.OKABE_ITO["yellow"], alpha=0.25, lw=0)
            note = (
                " Yellow: Fieller 95% interval of the saturation at which the fitted difference reaches "
                f"{float(row['margin'].iloc[0]):+g} {diff_unit_name(ctx.metric)}."
            )
    left.set_xlabel("Weights beyond their range at the end (%)")
    left.set_ylabel(st.diff_label(ctx.metric))
    left.set_title(comparison)
    curves = ctx.curves()
    if curves is not None and "weight_saturation" in set(curves["metric"]):
        sat = curves[(curves["metric"] == "weight_saturation") & curves["layer"].isna()]
        labels = pairs[[c for c in pairs.columns if c in ctx.conditions] + ["regime"]].drop_duplicates()
        labels = labels.astype(str)
        sat = sat.astype({c: str for c in labels.columns if c != "regime"}).merge(
            labels, on=[c for c in labels.columns if c != "regime"]
        )
        for (regime, policy), part in sat.groupby(["regime", "weight_policy"], sort=False):
            mean = part.groupby("epoch")["value"].mean()
            right.plot(
                mean.index,
                100 * mean.to_numpy(),
                color=colors.get(regime, "0.5"),
                ls=st.POLICY_LINESTYLES.get(str(policy), "-"),
                lw=1.1,
            )
        right.set_xlabel("Epoch")
        right.set_ylabel("Weights beyond their range (%)")
        right.set_title("solid: exact, dashed: ste")
    else:
        right.set_axis_off()
    handles, names = left.get_legend_handles_labels()
    host = right if right.axison else left  # the right panel's middle is empty: the regimes' key goes there
    keyed = len(order) <= MAX_KEYED_REGIMES  # a key of dozens of regimes would crowd out the panels
    if keyed:
        host.legend(
            handles,
            names,
            loc="lower right",
            bbox_to_anchor=(1.0, 0.16),
            fontsize=st.FONT_SMALL,
            frameon=False,
            title="regime",
        )
    else:
        note += (
            f" {len(order)} regimes, too many to key: colours repeat; each regime's numbers are in "
            "stats/saturation_regimes.csv."
        )
    n = pairs.groupby("regime").size()
    caption = (
        f"Weight site, {comparison}: each point is one seed's paired difference in "
        f"{st.metric_name(ctx.metric)} ({diff_unit_name(ctx.metric)}) against the mean share of the two "
        f"runs' weight-site parameters beyond their range after training (pooled over layers), "
        f"{span(int(n.min()), int(n.max()))} seeds per regime; line: the mixed model's fit (random intercept "
        f"per regime); grey: ±δ = {ctx.margin:g}.{note} Points of regimes with equal values (e.g. identical "
        "runs with no weight beyond its range) lie on top of each other. Right: that share per epoch, mean "
        "over seeds, per regime (colours as left) and weight policy."
    )
    yield Made(SATURATION_FIGURE, fig, caption)
