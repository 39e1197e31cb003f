"""Study specs: a declarative grid of trial configurations across seeds, with pre-registered hypotheses.

A spec (YAML, read with ``yaml.safe_load``) names a `base` trial configuration, `factors` (each a
list of values; the grid is their product), optional `exclude` / `include` rules for fractional
designs, `seeds` (a count or a list) and the pre-registered `hypotheses`. Besides TrialConfig fields,
two factor names are shorthands: ``policies`` (a preset such as ``analogvnn`` or ``"<weight>/<signal>"``)
and ``norm`` (the same normalization at both sites). Trials that differ only in policies share seeds.
An optional `tune_lr` block selects each cell's learning rate on validation data (`study.sweep.tuning`).
"""

from __future__ import annotations

import hashlib
import importlib
import itertools
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from analog.locations import canonical_signal_policy, is_uniform
from analog.policies import PRESETS, available_policies, resolve_preset
from study.sweep.hypotheses import Hypotheses
from study.sweep.screen import Screen, check_screen
from study.tables import STUDY_NAME_PATTERN, cell_text, read_yaml
from study.training.config import (
    MAX_SEED,
    ConfigError,
    TrialConfig,
    check_seed_list,
    format_validation_error,
)

ALIASES = ("policies", "norm")
SPECS_DIR = Path(__file__).resolve().parent.parent / "specs"


class TuneLR(BaseModel):
    """Per-cell learning-rate selection (`study.sweep.tuning`): every cell trains at each `grid` value on the
    `selection_seeds` without ever evaluating the test split; the lr with the best mean `metric` (a
    validation metric) is the cell's own lr, at which the study's evaluation seeds then train."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    grid: list[float] = Field(min_length=2)
    selection_seeds: list[int] = Field(min_length=1)
    metric: Literal["val_acc", "best_val_acc"] = "val_acc"

    @field_validator("grid")
    @classmethod
    def _grid(cls, v: list[float]) -> list[float]:
        bad = [x for x in v if not (math.isfinite(x) and x > 0)]
        if bad:
            raise ValueError(f"learning rates must be finite and > 0; got {bad}")
        if len(set(v)) != len(v):
            raise ValueError(f"learning rates must be distinct; got {v}")
        return v

    @field_validator("selection_seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        return check_seed_list(v, "selection seeds")


class StudySpec(BaseModel):
    """A validated study spec."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=STUDY_NAME_PATTERN)
    description: str = ""
    base: dict[str, Any] = Field(default_factory=dict)
    factors: dict[str, list[Any]] = Field(default_factory=dict)
    exclude: list[dict[str, Any]] = Field(default_factory=list)
    include: list[dict[str, Any]] = Field(default_factory=list)
    seeds: int | list[int] = 10
    hypotheses: Hypotheses = Field(default_factory=Hypotheses)
    # modules imported before any trial is built, in the runner and in every worker: they register the
    # study's own policies, normalizations and datasets (absent = none; then the spec hash is unchanged)
    plugins: list[str] = Field(default_factory=list)

    @field_validator("plugins")
    @classmethod
    def _plugins(cls, v: list[str]) -> list[str]:
        bad = [m for m in v if not isinstance(m, str) or not re.fullmatch(MODULE_PATTERN, m)]
        if bad:
            raise ValueError(f"module names (dotted Python identifiers) expected; got {bad}")
        if len(set(v)) != len(v):
            raise ValueError(f"listed twice: {sorted({m for m in v if v.count(m) > 1})}")
        return v

    tune_lr: TuneLR | None = None
    # the pre-registered trainability screen (study.sweep.screen); absent = every condition is analysed
    screen: Screen | None = None
    # factors that belong to a policy arm, not to the condition (e.g. `lr` when each arm trains at its own
    # selected learning rate): the arms of a condition are paired across their values
    arm_factors: list[str] = Field(default_factory=list)

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: int | list[int]) -> int | list[int]:
        if isinstance(v, int) and v < 1:
            raise ValueError("a count >= 1 or a list of integers")
        if isinstance(v, list) and (not v or len(set(v)) != len(v)):
            raise ValueError("the list must be non-empty and without repeats")
        bad = [s for s in ([v - 1] if isinstance(v, int) else v) if not 0 <= s <= MAX_SEED]
        if bad:
            raise ValueError(f"seeds must lie in [0, {MAX_SEED}]; got {bad}")
        return v

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)

    def dump(self) -> dict[str, Any]:
        """The canonical spec as plain data; `plugins`, `tune_lr` and `screen` only when set (so older
        specs' hashes and stored spec.yaml files are unchanged)."""
        data = self.model_dump(mode="json")
        if not data["plugins"]:
            del data["plugins"]
        if data.get("tune_lr") is None:
            data.pop("tune_lr", None)
        if data.get("screen") is None:
            data.pop("screen", None)
        if not data.get("arm_factors"):
            data.pop("arm_factors", None)
        data["hypotheses"] = self.hypotheses.dump()
        return data

    def hash(self) -> str:
        """16-hex hash of the canonical spec."""
        return _hash(self.dump())

    def hypotheses_hash(self) -> str:
        return _hash(self.hypotheses.dump())


@dataclass(frozen=True)
class Trial:
    """One trial of a study: its factor values (as written in the spec) and resolved configuration."""

    factors: dict[str, Any]
    config: TrialConfig

    @property
    def run_id(self) -> str:
        return self.config.run_id

    @property
    def condition_key(self) -> str:
        """Identity of the trial without its seed (members of one seed bundle share it)."""
        return self.config.model_copy(update={"seed": 0}).run_id


MODULE_PATTERN = r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*"


def import_plugins(modules: Iterable[str]) -> None:
    """Import each module of a spec's `plugins` (once per process); a `ConfigError` names any that fails."""
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as err:  # noqa: BLE001 - any error while importing a user's module is reported
            raise ConfigError(
                f"plugins: cannot import {name!r} ({type(err).__name__}: {err}); it must be importable "
                f"by the runner and by every worker (on sys.path, e.g. through PYTHONPATH)"
            ) from err


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def _allowed_factor_names() -> list[str]:
    return [*ALIASES, *(f for f in TrialConfig.model_fields if f != "seed")]


def resolve_config(base: dict[str, Any], cell: dict[str, Any], seed: int) -> TrialConfig:
    """TrialConfig for one cell of the grid: base, then the cell's values, then presets, then the seed."""
    data = {**base}
    cell = dict(cell)
    if "norm" in cell:
        norm = cell.pop("norm")
        data["weight_norm"] = data["signal_norm"] = norm
    preset = cell.pop("policies", None)
    data.update(cell)
    if preset is not None:
        w, s = resolve_preset(preset, data.get("weight_norm", "clamp"), data.get("signal_norm", "clamp"))
        data["weight_policy"], data["signal_policy"] = w, s
    data["seed"] = seed
    return TrialConfig.parse(data)


def _matches(cell: dict[str, Any], rule: dict[str, Any]) -> bool:
    for key, want in rule.items():
        values = want if isinstance(want, list) else [want]
        if cell.get(key) not in values:
            return False
    return True


def cells(spec: StudySpec) -> list[dict[str, Any]]:
    """The grid's cells (factor-value dicts) after `exclude`, plus `include` cells, in a stable order."""
    names = list(spec.factors)
    grid = [dict(zip(names, values, strict=True)) for values in itertools.product(*spec.factors.values())]
    kept = [c for c in grid if not any(_matches(c, r) for r in spec.exclude)]
    for extra in spec.include:
        if extra not in kept:
            kept.append(dict(extra))
    return kept


def expand(spec: StudySpec) -> list[Trial]:
    """Every trial of the study: cells × seeds."""
    trials = []
    first: dict[str, dict[str, Any]] = {}
    for cell in cells(spec):
        for seed in spec.seed_list:
            trial = Trial(factors=cell, config=resolve_config(spec.base, cell, seed))
            other = first.setdefault(trial.condition_key, cell)
            if other is not cell and seed == spec.seed_list[0] and not _same_policy_alias(other, cell):
                raise ValueError(f"cells {other} and {cell} give the same configuration; keep one of them")
            trials.append(trial)
    return trials


def _same_policy_alias(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two cells that differ only in their `policies` preset name (e.g. `analogvnn` and `ste/exact`)."""
    return {k: v for k, v in a.items() if k != "policies"} == {k: v for k, v in b.items() if k != "policies"}


def _check(spec_dict: dict[str, Any]) -> list[str]:
    """Every problem of a raw spec, each naming the field, the bad value and the allowed values."""
    errors: list[str] = []
    base = spec_dict.get("base") or {}
    if not isinstance(base, dict):
        return errors  # reported by the StudySpec validation ("base: Input should be a valid dictionary")
    if "seed" in base:
        errors.append("base.seed: seeds are set by the top-level `seeds:` (a count or a list), not in base")
    base_ok = True
    try:
        TrialConfig.parse({**base, "seed": 0})
    except ConfigError as err:
        errors += [f"base.{line.strip()}" for line in str(err).splitlines()[1:]]
        base_ok = False  # factor values cannot be checked against a broken base; names and rules still can
    allowed = _allowed_factor_names()
    factors = spec_dict.get("factors") or {}
    if not isinstance(factors, dict):
        return errors  # reported by the StudySpec validation
    for name, values in factors.items():
        if name not in allowed:
            errors.append(f"factors.{name}: unknown factor; allowed factors: {', '.join(allowed)}")
            continue
        if not isinstance(values, list) or not values:
            errors.append(f"factors.{name}: must be a non-empty list of values, got {values!r}")
            continue
        resolved: dict[str, Any] = {}
        for value in values if base_ok else []:
            spelling = _check_spelling(name, value)
            if spelling:  # a cell's name must be its canonical form, whatever the other factors are
                errors += spelling
                continue
            problems = _check_value(base, name, value)
            if problems and _valid_in_a_cell(spec_dict, name, value):
                continue  # valid only with other factors' values (momentum with optimizer sgd)
            errors += problems
            if not problems and name != "policies":  # preset names may alias one pair (deduplicated)
                rid = resolve_config(base, {name: value}, 0).run_id
                if rid in resolved:
                    errors.append(
                        f"factors.{name}: values {resolved[rid]!r} and {value!r} give the same "
                        "configuration (a repeat or another spelling of one value); list each value once"
                    )
                resolved.setdefault(rid, value)
    errors += _check_rules(spec_dict, factors)
    errors += _check_tune_lr(spec_dict, factors)
    errors += check_screen(spec_dict, factors)
    errors += _check_arm_factors(spec_dict, factors)
    errors += _check_comparison_factors(spec_dict, factors)
    errors += _check_effect_model(spec_dict, factors)
    return errors


FORMULA_WORDS = {"C", "I", "Treatment", "Sum", "Poly", "center", "standardize", "scale", "np"}


def _check_effect_model(spec_dict: dict[str, Any], factors: dict[str, Any]) -> list[str]:
    """`hypotheses.effect_model` names condition factors (or its `derived` columns) only."""
    hyp = spec_dict.get("hypotheses")
    model = hyp.get("effect_model") if isinstance(hyp, dict) else None
    if not isinstance(model, dict):
        return []  # absent, or reported by the StudySpec validation
    conditions = sorted(set(factors) - {"weight_policy", "signal_policy", "policies"})
    derived = model.get("derived") if isinstance(model.get("derived"), dict) else {}
    known = set(conditions) | set(derived)
    errors = []
    words = set(re.findall(r"[A-Za-z_]\w*", str(model.get("formula", "")))) - FORMULA_WORDS
    quoted = set(re.findall(r"'([^']*)'", str(model.get("formula", ""))))
    unknown = sorted(w for w in words - known if w not in quoted)
    if unknown:
        errors.append(
            f"hypotheses.effect_model.formula: unknown names {unknown}; allowed: the condition factors "
            f"{', '.join(conditions) or '(none)'} and the derived columns "
            f"{', '.join(sorted(derived)) or '(none)'}"
        )
    for name in sorted(set(derived) & set(factors)):
        errors.append(f"hypotheses.effect_model.derived.{name}: a factor of that name exists; choose another")
    marginal = model.get("marginal") if isinstance(model.get("marginal"), list) else []
    bad = [m for m in marginal if m not in conditions]
    if bad:
        errors.append(
            f"hypotheses.effect_model.marginal: {bad} are not condition factors; allowed: "
            f"{', '.join(conditions)}"
        )
    return errors


def _check_arm_factors(spec_dict: dict[str, Any], factors: dict[str, Any]) -> list[str]:
    """`arm_factors` name factors of the study (not the policies themselves), each once."""
    arm = spec_dict.get("arm_factors")
    if not isinstance(arm, list):
        return []  # absent, or reported by the StudySpec validation
    errors = []
    policies = {"weight_policy", "signal_policy", "policies"}
    for name in arm:
        if name not in factors or name in policies:
            allowed = ", ".join(f for f in factors if f not in policies) or "(none)"
            errors.append(
                f"arm_factors: {name!r} is not a condition factor of this study; allowed: {allowed}"
            )
    if len(set(map(str, arm))) != len(arm):
        errors.append(f"arm_factors: listed twice: {sorted({a for a in arm if arm.count(a) > 1})}")
    return errors


def _check_comparison_factors(spec_dict: dict[str, Any], factors: dict[str, Any]) -> list[str]:
    """A comparison's `factor` names a condition factor of the study (not a policy, not an arm factor),
    and its `a` and `b` are two different values of that factor (numbers compared as runs.csv spells
    them: 16, 16.0 and '16' alike)."""
    hyp = spec_dict.get("hypotheses")
    comparisons = hyp.get("comparisons") if isinstance(hyp, dict) else None
    if not isinstance(comparisons, list):
        return []  # absent (the defaults compare policies), or reported by the StudySpec validation
    arm = spec_dict.get("arm_factors")
    arm = {str(a) for a in arm} if isinstance(arm, list) else set()
    policies = {"weight_policy", "signal_policy", "policies"}
    allowed = [f for f in factors if f not in policies and f not in arm]
    shown = ", ".join(allowed) or "(none)"
    errors = []
    for i, comp in enumerate(comparisons):
        if not isinstance(comp, dict) or not isinstance(comp.get("factor"), str):
            continue  # a policy comparison, or a bad type reported by the StudySpec validation
        name, where = comp["factor"], f"hypotheses.comparisons.{i}"
        if name not in allowed:
            why = (
                "a policy column (compare policies without `factor`)"
                if name in policies
                else "an arm factor (set per policy arm, not a condition)"
                if name in arm
                else "not a factor of this study"
            )
            errors.append(f"{where}.factor: {name!r} is {why}; allowed: the condition factors {shown}")
            continue
        values = factors[name] if isinstance(factors[name], list) else []
        texts = [cell_text(v) for v in values]
        listed = ", ".join("none" if v is None else str(v) for v in values)
        for side in ("a", "b"):
            value = comp.get(side)
            if isinstance(value, str) and cell_text(value) not in texts:
                errors.append(
                    f"{where}.{side}: {value!r} is not a value of factor {name!r}; allowed: {listed}"
                )
        a, b = comp.get("a"), comp.get("b")
        if isinstance(a, str) and isinstance(b, str) and a != b and cell_text(a) == cell_text(b):
            errors.append(f"{where}.b: {b!r} is the same value of {name!r} as a ({a!r}); compare two values")
    return errors


def _check_tune_lr(spec_dict: dict[str, Any], factors: dict[str, Any]) -> list[str]:
    """`tune_lr` selects the lr per cell on seeds the evaluation never uses (and no other way)."""
    tune = spec_dict.get("tune_lr")
    if not isinstance(tune, dict):
        return []  # absent, or reported by the StudySpec validation
    errors = []
    if "lr" in factors:
        errors.append("factors.lr: not a factor when tune_lr selects the learning rate of every cell")
    base = spec_dict.get("base") or {}
    if isinstance(base, dict) and "eval_test" in base:
        errors.append("base.eval_test: set by tune_lr (selection trials never evaluate the test split)")
    if "eval_test" in factors:
        errors.append("factors.eval_test: set by tune_lr (selection trials never evaluate the test split)")
    sel, seeds = tune.get("selection_seeds"), spec_dict.get("seeds", 10)
    if isinstance(sel, list) and isinstance(seeds, (int, list)) and not isinstance(seeds, bool):
        evaluation = range(seeds) if isinstance(seeds, int) else seeds
        both = sorted({s for s in sel if isinstance(s, int)} & set(evaluation))
        if both:
            errors.append(
                f"tune_lr.selection_seeds: {both} are evaluation seeds too; the lr must be selected on "
                "seeds the evaluation never uses (choose selection seeds outside `seeds:`)"
            )
    return errors


MAX_CELLS_TRIED = 10_000  # _valid_in_a_cell gives up (the value's error stands) after this many cells


def _valid_in_a_cell(spec_dict: dict[str, Any], name: str, value: Any) -> bool:
    """Whether a factor value that is invalid with the base alone is valid in a cell of the grid (not
    excluded) or an include cell: a value valid only together with another factor's value. Every cell is
    checked when the grid is expanded, so this only keeps such values from being refused up front."""
    base, factors = spec_dict.get("base") or {}, spec_dict.get("factors") or {}
    rules = [r for r in spec_dict.get("exclude") or [] if isinstance(r, dict)]
    others = [k for k, v in factors.items() if k != name and isinstance(v, list)]
    candidates = (
        {name: value, **dict(zip(others, combo, strict=True))}
        for combo in itertools.product(*(factors[k] for k in others))
    )
    includes = [c for c in spec_dict.get("include") or [] if isinstance(c, dict) and c.get(name) == value]
    for i, cell in enumerate(itertools.chain(includes, candidates)):
        if i >= MAX_CELLS_TRIED:
            return False
        if any(_matches(cell, r) for r in rules) and cell not in includes:
            continue
        try:
            resolve_config(base, cell, 0)
        except (ConfigError, ValueError):
            continue
        return True
    return False


def _check_rules(spec_dict: dict[str, Any], factors: dict[str, Any]) -> list[str]:
    """`exclude`/`include` rules name factors only, with values the factors list.

    A rule keyed by a base field or a typo silently matched nothing (exclude) or changed a field the
    statistics do not see (include: trials that differ in more than the compared policy got paired).
    An include cell is a point of the full grid that the exclude rules dropped, so it names every factor.
    """
    errors = []
    names = ", ".join(factors) or "(none)"
    for where in ("exclude", "include"):
        rules = spec_dict.get(where) or []
        if not isinstance(rules, list):
            continue  # reported by the StudySpec validation
        for i, rule in enumerate(rules):
            if not isinstance(rule, dict) or not rule:
                errors.append(f"{where}[{i}]: must be a non-empty mapping of factor names to values")
                continue
            for key, want in rule.items():
                if key not in factors:
                    errors.append(f"{where}[{i}].{key}: not a factor of this study; factors: {names}")
                    continue
                listed = factors[key] if isinstance(factors[key], list) else []
                values = want if isinstance(want, list) and where == "exclude" else [want]
                for v in values:
                    if not any(v == x and type(v) is type(x) for x in listed):
                        errors.append(
                            f"{where}[{i}].{key}: value {v!r} is not one of the factor's values {listed!r}"
                        )
            absent = [f for f in factors if f not in rule] if where == "include" else []
            if absent:
                errors.append(
                    f"{where}[{i}]: an include cell gives a value for every factor; missing: "
                    f"{', '.join(absent)}"
                )
    return errors


def _check_spelling(name: str, value: Any) -> list[str]:
    """A location-wise signal policy must be written in its canonical form (the cell's name downstream)."""
    if name == "signal_policy" and (not isinstance(value, str) or not is_uniform(value)):
        try:
            canonical = canonical_signal_policy(value)
        except ValueError as err:
            return [f"factors.signal_policy: bad value {value!r}: {err}"]
        if canonical != value:
            return [
                f"factors.signal_policy: write {value!r} as {canonical!r} (its canonical form: runs.csv, "
                "the hypotheses and the statistics name the cell by it)"
            ]
    return []


def _check_value(base: dict[str, Any], name: str, value: Any) -> list[str]:
    if name == "policies":
        ok = value in PRESETS or (isinstance(value, str) and value.count("/") == 1)
        if not ok:
            return [
                f"factors.policies: bad value {value!r}; allowed: {', '.join(PRESETS)} or "
                f"'<weight>/<signal>' with policies from {', '.join(available_policies())}"
            ]
    try:
        resolve_config(base, {name: value}, 0)
    except (ConfigError, ValueError) as err:
        lines = str(err).splitlines()
        detail = "; ".join(s.strip() for s in lines[1:]) if len(lines) > 1 else lines[0]
        return [f"factors.{name}: bad value {value!r}: {detail}"]
    return []


def parse_spec(data: dict[str, Any]) -> StudySpec:
    """Validate a raw spec; every error is reported at once (a `ConfigError`), before any trial runs."""
    if not isinstance(data, dict):
        raise ConfigError("invalid spec: the YAML document must be a mapping")
    errors: list[str] = []
    plugins = data.get("plugins")
    if isinstance(plugins, list) and all(isinstance(m, str) for m in plugins):
        try:  # before the values are checked: the plugins register the names they use
            import_plugins(plugins)
        except ConfigError as err:
            errors.append(str(err))
    try:
        spec = StudySpec.model_validate(data)
    except ValidationError as err:
        errors += str(format_validation_error(err, StudySpec)).splitlines()[1:]
        spec = None
    errors += _check(data)
    if not errors and spec is not None:
        try:
            check_grid_size(spec)  # before expand: a grid of millions of cells is refused by its count
            expand(spec)
            if spec.screen is not None and not any(
                all(
                    str(getattr(resolve_config(spec.base, c, 0), k)) == str(v)
                    for k, v in spec.screen.arm.items()
                )
                for c in cells(spec)
            ):
                errors.append(
                    f"screen.arm: no cell of the study runs {spec.screen.arm} (cells resolve policies from "
                    "base, factors and presets; the default weight policy is ste)"
                )
        except (ConfigError, ValueError) as err:
            errors.append(f"cells: {err}")
    if errors:
        raise ConfigError("invalid spec:\n  " + "\n  ".join(e.strip() for e in errors))
    assert spec is not None
    return spec


def stored_spec_hash(data: dict[str, Any]) -> str:
    """The hash of a stored spec, without re-checking its values against today's TrialConfig.

    Analysis reads studies run by earlier versions; a stricter check added since must not make their
    hash (and so their records) unreadable.
    """
    return StudySpec.model_validate(data).hash()


def load_spec(path: str | Path) -> StudySpec:
    """Read a spec file (a path, or the name of a spec shipped in study/specs/)."""
    return parse_spec(read_yaml(spec_file(path), "fix the spec file"))


def spec_to_yaml(spec: StudySpec) -> str:
    """The spec as YAML (what the runner stores next to the trials)."""
    return yaml.safe_dump(spec.dump(), sort_keys=False)


# -- grid size: counted without building the grid (the runner refuses oversized grids) ----------------

MAX_CELLS = 100_000  # grid cells (factor combinations) a study may have; README "Failure and recovery"
MAX_TRIALS = 1_000_000  # cells x seeds: each trial costs ~2 KB and ~0.3 ms to resolve before anything runs


def count_cells(spec: StudySpec) -> int:
    """`len(cells(spec))`, exactly, without materialising the grid: the product of the factors' lengths,
    less the cells `exclude` removes (counted lazily over the sub-grid of the factors the rules name,
    times the other factors' product), plus the `include` cells not already in the grid."""
    import math

    sizes = {name: len(values) for name, values in spec.factors.items()}
    total = math.prod(sizes.values())
    if spec.exclude and total:
        keys = [name for name in spec.factors if any(name in rule for rule in spec.exclude)]
        rest = total // math.prod(sizes[k] for k in keys)
        matched = sum(
            1
            for values in itertools.product(*(spec.factors[k] for k in keys))
            if any(_matches(dict(zip(keys, values, strict=True)), rule) for rule in spec.exclude)
        )
        total -= matched * rest
    extra: list[dict[str, Any]] = []
    for cell in spec.include:
        if not (_in_grid(spec, cell) or cell in extra):
            extra.append(cell)
    return total + len(extra)


def _in_grid(spec: StudySpec, cell: dict[str, Any]) -> bool:
    """Whether `cell` equals a cell of the grid that no `exclude` rule removes (as `cells` compares)."""
    if set(cell) != set(spec.factors):
        return False
    if not all(cell[name] in values for name, values in spec.factors.items()):
        return False
    return not any(_matches(cell, rule) for rule in spec.exclude)


def check_grid_size(spec: StudySpec) -> tuple[int, int]:
    """(cells, trials) of `spec`; a `ConfigError` giving both counts when above MAX_CELLS or MAX_TRIALS."""
    n_cells = count_cells(spec)
    n_trials = n_cells * len(spec.seed_list)
    if n_cells > MAX_CELLS or n_trials > MAX_TRIALS:
        raise ConfigError(
            f"study {spec.name!r} is too large: {n_cells:,} grid cells x {len(spec.seed_list)} seeds = "
            f"{n_trials:,} trials; the limits are {MAX_CELLS:,} cells and {MAX_TRIALS:,} trials "
            "(study.sweep.spec.MAX_CELLS, MAX_TRIALS). Narrow the factors, add exclude rules, or split the "
            "study."
        )
    return n_cells, n_trials


def spec_file(path: str | Path) -> Path:
    """The spec file `load_spec` reads for `path` (a path, or the name of a spec in study/specs/)."""
    p = Path(path)
    if not p.exists() and (SPECS_DIR / f"{path}.yaml").exists():
        p = SPECS_DIR / f"{path}.yaml"
    if not p.is_file():
        shipped = ", ".join(sorted(f.stem for f in SPECS_DIR.glob("*.yaml")))
        what = "is a folder, not a spec file" if p.is_dir() else "not found"
        raise FileNotFoundError(f"spec {str(path)!r} {what} (shipped specs: {shipped})")
    return p
