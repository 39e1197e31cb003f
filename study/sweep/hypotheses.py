"""The pre-registered analysis block (`hypotheses:`) of a study spec."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from analog.locations import canonical_signal_policy, is_uniform
from analog.policies import OTHER_SITE
from study.tables import ALL_METRICS, DRAW_METRICS, POLICY_COLUMNS, SITE_COLUMN, is_percent

SITES = ("weight", "signal")


class Comparison(BaseModel):
    """One pre-registered paired comparison at one site: `a` vs `b`, trials paired by seed.

    Without `factor`: policies `a` and `b` of the site's policy column (`weight_policy` or
    `signal_policy`), paired within each condition (the condition factors) and policy of the other site.
    With `factor`: values `a` and `b` of that condition factor of the spec (e.g. ``factor: weight_bound``,
    ``a: project``, ``b: forward``), paired within each combination of the other condition factors and
    of both sites' policies; `site` still says which site the comparison belongs to (its label, its
    family, the report's and the figures' per-site sections). `study.sweep.spec` checks that `factor`
    is a condition factor of the spec and that `a` and `b` are two of its values.
    """

    model_config = ConfigDict(extra="forbid")

    site: Literal["weight", "signal"]
    # a condition factor whose values are compared; absent (None): the site's policies are compared
    factor: str | None = None
    a: str
    b: str
    role: Literal["primary", "positive_control", "secondary"] = "primary"

    @field_validator("factor")
    @classmethod
    def _factor(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("a condition factor of the spec (e.g. weight_bound), or leave it out")
        return v

    @field_validator("a", "b")
    @classmethod
    def _location_spec(cls, v: str, info: ValidationInfo) -> str:
        """A signal policy set by location (:mod:`analog.locations`) is written in its canonical form,
        the one runs.csv's `signal_policy` column holds, so that the comparison finds its trials. The
        values of a `factor` are not policies: they are checked against the spec's factor values."""
        if info.data.get("factor") is not None or is_uniform(v):
            return v
        canonical = canonical_signal_policy(v, "")
        if canonical != v:
            raise ValueError(f"write {v!r} as {canonical!r} (the canonical form runs.csv holds)")
        return v

    @field_validator("b")
    @classmethod
    def _distinct(cls, v: str, info: ValidationInfo) -> str:
        if v == info.data.get("a"):
            raise ValueError(f"must differ from a (both are {v!r}): a comparison of a value with itself")
        return v

    @property
    def column(self) -> str:
        """The column whose values `a` and `b` are: `factor`, else the site's policy column."""
        return self.factor if self.factor is not None else SITE_COLUMN[self.site]

    def held_columns(self, conditions: list[str]) -> list[str]:
        """The columns within each combination of which trials of `a` and `b` are paired by seed:
        `conditions` (the spec's condition columns) and the other site's policy column; for a `factor`
        comparison the condition columns but `factor`, and both sites' policy columns."""
        if self.factor is None:
            return [*conditions, SITE_COLUMN[OTHER_SITE[self.site]]]
        return [c for c in conditions if c != self.factor] + list(POLICY_COLUMNS)

    @property
    def label(self) -> str:
        """`weight: exact vs ste`; a factor comparison names its factor: `weight: project vs forward
        (weight_bound)`."""
        text = f"{self.site}: {self.a} vs {self.b}"
        return text if self.factor is None else f"{text} ({self.factor})"


def _default_comparisons() -> list[Comparison]:
    return [
        Comparison(site="weight", a="exact", b="ste"),
        Comparison(site="signal", a="exact", b="ste"),
        Comparison(site="weight", a="zero", b="ste", role="positive_control"),
        Comparison(site="signal", a="zero", b="ste", role="positive_control"),
    ]


class EffectModel(BaseModel):
    """A pre-registered model of each primary comparison's paired differences across conditions.

    `formula`: the right-hand side (patsy) over condition columns and `derived` names, e.g.
    ``C(arch) + C(dataset) + C(arch):C(dataset)``; the response is the paired difference d = a - b per
    condition and seed, with a random intercept per condition and per seed (crossed).
    `derived`: new columns as pandas expressions over the condition columns, which hold runs.csv's
    text (e.g. ``leak_high: "leakage == '0.5'"``).
    `marginal`: factors whose levels get estimated marginal means of d (averaged over the design's
    conditions), with 95% CIs.
    `scale`: `pp` (the metric's units) or `logit` (accuracies only: d = logit(a/100) - logit(b/100), each
    accuracy clipped to [0.1%, 99.9%]).
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    formula: str = Field(min_length=1)
    derived: dict[str, str] = Field(default_factory=dict)
    marginal: list[str] = Field(default_factory=list)
    # `pp`: d in the metric's units; `logit`: d = logit(a) - logit(b) of accuracies (log odds ratio of a
    # correct prediction), a scale on which floor and ceiling do not compress the effect
    scale: Literal["pp", "logit"] = "pp"

    @field_validator("formula")
    @classmethod
    def _formula(cls, v: str) -> str:
        if not v.strip():
            raise ValueError(
                "a right-hand side over condition factors is needed, e.g. 'C(arch) + C(dataset)'"
            )
        return v

    @field_validator("derived")
    @classmethod
    def _derived(cls, v: dict[str, str]) -> dict[str, str]:
        bad = [k for k, e in v.items() if not k.isidentifier() or not str(e).strip()]
        if bad:
            raise ValueError(f"derived: names must be identifiers with a non-empty expression; got {bad}")
        return v

    @field_validator("marginal")
    @classmethod
    def _marginal(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"marginal: duplicate factor names in {v}")
        return v


class Hypotheses(BaseModel):
    """Pre-registered analysis: comparisons, primary metric, equivalence margin, alpha, correction.

    `margin` is in the metric's units (accuracies are percent, so 0.5 = 0.5 percentage points).
    Comparisons whose policies (or, with `factor`, values) are absent from a study are skipped by the
    statistics stage.
    The multiple-comparison family is all rows of the comparisons with the same `role`
    (`family: role`), all rows of each comparison separately (`per_comparison`), or every row (`all`).
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    metric: str = "test_acc"
    margin: float = Field(0.5, gt=0)
    alpha: float = Field(0.05, gt=0, lt=1)
    correction: Literal["holm", "bonferroni", "fdr_bh", "none"] = "holm"
    family: Literal["role", "per_comparison", "all"] = "role"
    comparisons: list[Comparison] = Field(default_factory=_default_comparisons)
    diverged: Literal["include", "exclude"] = "include"
    # no longer used (issue #14: one pre-specified test, no normality pre-test); kept so that the specs
    # that set it, the committed studies' among them, still validate and keep their hash
    normality_alpha: float = Field(0.05, gt=0, lt=1)
    bootstrap_resamples: int = Field(9999, ge=100)
    bootstrap_seed: int = Field(0, ge=0, le=2**32 - 1)
    effect_model: EffectModel | None = None

    @model_validator(mode="after")
    def _logit_needs_accuracy(self) -> Hypotheses:
        if (
            self.effect_model is not None
            and self.effect_model.scale == "logit"
            and not is_percent(self.metric)
        ):
            raise ValueError(
                "effect_model.scale: 'logit' needs an accuracy metric (in percent); metric is "
                f"{self.metric!r}"
            )
        return self

    def dump(self) -> dict[str, Any]:
        """As plain data; `effect_model` and a comparison's `factor` only when set (so older specs keep
        their hashes)."""
        data = self.model_dump(mode="json")
        for comparison in data.get("comparisons") or []:
            if comparison.get("factor") is None:
                comparison.pop("factor", None)
        if data.get("effect_model") is None:
            data.pop("effect_model", None)
        elif data["effect_model"].get("scale") == "pp":  # the default: older specs keep their hashes
            del data["effect_model"]["scale"]
        return data

    @field_validator("metric")
    @classmethod
    def _metric(cls, v: str) -> str:
        if v not in ALL_METRICS:
            raise ValueError(
                f"unknown metric {v!r}; allowed: {', '.join(ALL_METRICS)} (the columns of runs.csv; "
                f"{', '.join(DRAW_METRICS)} from the final evaluation over noise draws)"
            )
        return v
