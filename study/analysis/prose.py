"""Generated text read as a reader would: the slips a template makes when its slots repeat or are empty.

`prose_problems(text)` lists each slip with its context: a phrase repeated across "and" ("X and X"),
"better by" or "worse by" followed by a negative number, "larger"/"smaller" after a negative number, a
range whose two ends are equal ("8–8"), "n = 0", a doubled word ("levels levels"), and a sentence about
diverged trials in a text whose tables count none. Tests run it over every generated file.
"""

from __future__ import annotations

import re

_CHECKS: list[tuple[str, re.Pattern[str]]] = [
    (
        "repeated phrase around 'and'",
        re.compile(r"(?<![\w/-])([\w./=-]{3,}(?: [\w./=-]+){0,3}) and \1(?![\w/-])"),
    ),
    ("'better/worse by' a negative number", re.compile(r"\b(?:better|worse) by [−-]\d")),
    ("negative number called larger/smaller", re.compile(r"[−-]\d[\d.]*\s?(?:pp|%)?\s(?:larger|smaller)\b")),
    ("range with equal ends", re.compile(r"(?<![\d.–-])(\d+(?:\.\d+)?)(?:[–]|--?)\1(?![\d.–-])")),
    ("n = 0", re.compile(r"\bn = 0(?![\d.])")),
    ("doubled word", re.compile(r"\b([A-Za-z]{3,})\)? \(?\1\b")),
]
_DIVERGED = re.compile(r"[^.]*\bwhen (?:trials|a trial) diverged[^.]*\.")


def prose_problems(text: str, diverged_trials: int | None = None) -> list[str]:
    """Every slip of `text` (module docstring) as `kind: ...context...`."""
    out = []
    for kind, pattern in _CHECKS:
        for m in pattern.finditer(text):
            a, b = max(m.start() - 40, 0), min(m.end() + 40, len(text))
            out.append(f"{kind}: ...{text[a:b]}...".replace("\n", " "))
    if diverged_trials == 0:
        out += [
            f"divergence sentence with no diverged trial: {m.group(0).strip()}"
            for m in _DIVERGED.finditer(text)
        ]
    return out
