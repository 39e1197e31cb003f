"""Signal-site gradient policies by location: which layer (hidden or readout) and which position.

In AnalogVNN's layer order (:mod:`analog.layers`) every analog layer normalizes its signal twice:

* ``input``  — the normalization before the matmul (``signal in -> [norm, precision, noise]``);
* ``output`` — the normalization after it (``linear -> [noise, norm, precision]``), before the activation.

A classifier's layers are ``hidden`` (every layer followed by a hidden activation) or the ``readout``
(the last layer, whose output are the logits). That gives four locations::

    hidden_input, hidden_output, readout_input, readout_output

A signal policy is either one policy name (every location; the common case, unchanged) or a
location spec, as a mapping ``{default: exact, readout_output: ste}`` or as the compact string
``"exact,readout_output=ste"`` (a bare first item is the default). Keys are ``default``, the groups
``hidden``, ``readout``, ``input``, ``output`` and the four locations; a more specific key overrides a
less specific one, two keys of one level may not cover the same location, and every location must get
a policy. A hidden location may take one policy per hidden layer: a list in a mapping, or
``ste:exact`` in the string. :func:`canonical_signal_policy` writes every spec in one canonical string
(a single name when all locations agree), so equal specs give one configuration and one ``run_id``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from analog.policies import check_policy
from analog.policies import field_label as _at

ROLES: tuple[str, ...] = ("hidden", "readout")
POSITIONS: tuple[str, ...] = ("input", "output")
SIGNAL_LOCATIONS: tuple[str, ...] = tuple(f"{r}_{p}" for r in ROLES for p in POSITIONS)
GROUPS: dict[str, tuple[str, ...]] = {
    "hidden": ("hidden_input", "hidden_output"),
    "readout": ("readout_input", "readout_output"),
    "input": ("hidden_input", "readout_input"),
    "output": ("hidden_output", "readout_output"),
}
DEFAULT_KEY = "default"
LOCATION_KEYS: tuple[str, ...] = (DEFAULT_KEY, *GROUPS, *SIGNAL_LOCATIONS)
INDEX_SEP = ":"  # per-hidden-layer policies in the compact string: hidden_output=ste:exact
ITEM_SEP = ","

Assignment = dict[str, tuple[str, ...]]  # location -> one policy (all layers) or one per hidden layer


def _covers(key: str) -> tuple[str, ...]:
    if key == DEFAULT_KEY:
        return SIGNAL_LOCATIONS
    return GROUPS.get(key, (key,))


def _level(key: str) -> int:
    return 0 if key == DEFAULT_KEY else 1 if key in GROUPS else 2


def _values(key: str, value: Any, field: str) -> tuple[str, ...]:
    if isinstance(value, str) and INDEX_SEP in value:
        value = value.split(INDEX_SEP)
    if isinstance(value, list | tuple):
        if not value:
            raise ValueError(f"{_at(field)}{key}: an empty list of policies")
        if any(loc.startswith("readout") for loc in _covers(key)):
            raise ValueError(
                f"{_at(field)}{key}: one policy per layer is allowed only for hidden locations "
                f"(hidden, hidden_input, hidden_output); the readout is one layer"
            )
        return tuple(check_policy(v, f"{_at(field)}{key}") for v in value)
    return (check_policy(value, f"{_at(field)}{key}"),)


def _parse_string(text: str, field: str) -> dict[str, Any]:
    items = [s.strip() for s in text.split(ITEM_SEP)]
    if any(not s for s in items):
        raise ValueError(f"{_at(field)}empty item in {text!r}")
    out: dict[str, Any] = {}
    for i, item in enumerate(items):
        key, sep, value = item.partition("=")
        if not sep:
            if i:
                raise ValueError(
                    f"{_at(field)}{item!r} in {text!r}: only the first item may be a bare policy (the "
                    "default); write the others as location=policy"
                )
            key, value = DEFAULT_KEY, item
        key, value = key.strip(), value.strip()
        if key in out:
            raise ValueError(f"{_at(field)}{key!r} given twice in {text!r}")
        out[key] = value
    return out


def parse_signal_policy(value: str | Mapping[str, Any], field: str = "signal_policy") -> Assignment:
    """Every location's policies for a policy name, a location mapping or a compact location string.

    Raises `ValueError` naming `field`, the bad key or value and what is allowed.
    """
    if isinstance(value, str) and is_uniform(value):
        return dict.fromkeys(SIGNAL_LOCATIONS, (check_policy(value, field),))
    if isinstance(value, str):
        spec = _parse_string(value, field)
    elif isinstance(value, Mapping):
        spec = dict(value)
    else:
        raise ValueError(
            f"{_at(field)}must be a policy name, a mapping of locations to policies or a string such as "
            f"'exact,readout_output=ste'; got {value!r}"
        )
    if not spec:
        raise ValueError(f"{_at(field)}an empty mapping; allowed keys: {', '.join(LOCATION_KEYS)}")
    bad = [k for k in spec if k not in LOCATION_KEYS]
    if bad:
        raise ValueError(f"{_at(field)}unknown location {bad[0]!r}; allowed: {', '.join(LOCATION_KEYS)}")
    assigned: dict[str, tuple[int, str, tuple[str, ...]]] = {}  # location -> (level, key, policies)
    for key in sorted(spec, key=_level):
        policies = _values(key, spec[key], field)
        for loc in _covers(key):
            prev = assigned.get(loc)
            if prev is not None and prev[0] == _level(key):
                raise ValueError(
                    f"{_at(field)}{prev[1]!r} and {key!r} both set {loc}; set {loc} itself to say which wins"
                )
            assigned[loc] = (_level(key), key, policies)
    missing = [loc for loc in SIGNAL_LOCATIONS if loc not in assigned]
    if missing:
        raise ValueError(
            f"{_at(field)}no policy for {', '.join(missing)}; give a default (a bare first item, or the "
            f"key {DEFAULT_KEY!r}) or every location"
        )
    out: Assignment = {}
    for loc in SIGNAL_LOCATIONS:
        policies = assigned[loc][2]
        out[loc] = policies[:1] if len(set(policies)) == 1 else policies
    return out


def _text(policies: tuple[str, ...]) -> str:
    return INDEX_SEP.join(policies)


def canonical_signal_policy(value: str | Mapping[str, Any], field: str = "signal_policy") -> str:
    """The one string that spells `value`: a policy name when every location agrees, else
    ``"<default>,<location or group>=<policy>,..."`` with the most common policy as the default (on a
    tie, the one nearest the logits), e.g. ``"exact,input=ste"``, ``"ste,readout_output=exact"``.

    Fixed points: ``canonical_signal_policy(canonical_signal_policy(v)) == canonical_signal_policy(v)``.
    """
    assign = parse_signal_policy(value, field)
    singles = [p for loc in SIGNAL_LOCATIONS if len(p := assign[loc]) == 1]
    if len(set(assign.values())) == 1 and singles:
        return assign[SIGNAL_LOCATIONS[0]][0]
    counts = Counter(singles)
    if counts:
        top = max(counts.values())
        # ties go to the readout's output policy (the logits' clamp), then the locations before it
        default: tuple[str, ...] | None = next(p for p in reversed(singles) if counts[p] == top)
    else:
        default = None
    rest = [loc for loc in SIGNAL_LOCATIONS if assign[loc] != default]
    items = [] if default is None else [_text(default)]
    done: set[str] = set()
    if default is not None and len(rest) == 2 and assign[rest[0]] == assign[rest[1]]:
        group = next((g for g, locs in GROUPS.items() if set(locs) == set(rest)), None)
        if group is not None:
            items.append(f"{group}={_text(assign[rest[0]])}")
            done = set(rest)
    items += [f"{loc}={_text(assign[loc])}" for loc in rest if loc not in done]
    return ITEM_SEP.join(items)


def is_uniform(value: str) -> bool:
    """Whether a canonical signal policy is one policy for every location (a plain name)."""
    return ITEM_SEP not in value and "=" not in value and INDEX_SEP not in value


def check_hidden_count(value: str | Mapping[str, Any], n_hidden: int, field: str = "signal_policy") -> None:
    """Per-hidden-layer lists must have one policy per hidden layer (`n_hidden` of them)."""
    for loc, policies in parse_signal_policy(value, field).items():
        if len(policies) > 1 and len(policies) != n_hidden:
            raise ValueError(
                f"{_at(field)}{loc} lists {len(policies)} policies ({_text(policies)}) but the network has "
                f"{n_hidden} hidden layer(s); give one per hidden layer or a single policy"
            )


def layer_signal_policies(
    value: str | Mapping[str, Any], role: str | None, index: int = 0, field: str = "signal_policy"
) -> tuple[str, str]:
    """(input policy, output policy) of the layer at (`role`, `index`) under the signal policy `value`.

    `role` is ``hidden`` or ``readout``; `index` counts hidden layers from 0. A plain policy name needs
    no role (a layer built on its own); a location spec does.
    """
    if isinstance(value, str) and is_uniform(value):
        name = check_policy(value, field)
        return name, name
    if role not in ROLES:
        raise ValueError(
            f"{_at(field)}{value!r} sets policies by location, so the layer needs its role, one of "
            f"{', '.join(ROLES)} (got {role!r}); build_classifier sets it"
        )
    assign = parse_signal_policy(value, field)
    out = []
    for pos in POSITIONS:
        policies = assign[f"{role}_{pos}"]
        if len(policies) > 1 and not 0 <= index < len(policies):
            raise ValueError(
                f"{_at(field)}{role}_{pos} lists {len(policies)} policies; there is no hidden layer {index}"
            )
        out.append(policies[index] if len(policies) > 1 else policies[0])
    return out[0], out[1]
