"""Mutation score per module with mutmut (the `mutation` extra): how many small code changes the tests catch.

    python benchmarks/mutation.py                      # every module in MODULES, 2 workers
    python benchmarks/mutation.py analog study/analysis/stats --max-children 4
    python benchmarks/mutation.py study/analysis/stats --sample 300   # a seeded random sample: an estimate
    python benchmarks/mutation.py --report-only        # re-print the scores of the last run

Not part of CI (it takes tens of minutes to hours). For each module, a scratch copy of the repository
(`analog/`, `study/`, `tests/`, `pyproject.toml` plus a generated `[tool.mutmut]` table) is made under
`--work` (default `benchmarks/.mutation/`, git-ignored by its own .gitignore); mutmut mutates only that
module and runs, per mutant, the tests of the module's fast selection that reach the mutated function
(it traces which tests call which function on a clean run first). `PYTHONPATH` points at mutmut's
`mutants/` copy, so tests that start `python -m study` subprocesses run the mutated code too
(mutmut's trampolines read the mutant to apply from the inherited environment).

Score = killed / tested, where killed includes timeouts and crashes (the tests noticed); `no tests`
(no selected test reaches the function) and `survived` are not killed. With `--sample N` only a seeded
random sample of the module's mutants is tested; the score is then an estimate, printed with its Wilson
95% interval. Survivors are listed with
`mutmut show NAME` run in the scratch copy (printed below the scores).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# module -> (files to mutate, fast test selection that exercises them)
MODULES: dict[str, tuple[list[str], list[str]]] = {
    "analog": (
        ["analog/*.py"],
        [
            "tests/test_analog.py",
            "tests/test_analog_contracts.py",
            "tests/test_parity_analogvnn.py",
            "tests/test_behaviours.py::test_gradient_mismatch_norm_ratio_and_cosine_against_hand_computed_gradients",
        ],
    ),
    "study/analysis/stats": (
        ["study/analysis/stats/*.py"],
        ["tests/test_stats.py", "tests/test_stats_contracts.py", "tests/test_behaviours.py"],
    ),
    "study/sweep/runner.py": (
        ["study/sweep/runner.py"],
        ["tests/test_runner.py", "tests/test_behaviours.py"],
    ),
    "study/training/trial.py": (
        ["study/training/trial.py"],
        ["tests/test_trial.py", "tests/test_behaviours.py"],
    ),
}
# mutmut maps each test to the functions called while it runs, and runs only those tests per mutant. A
# module- or session-scoped fixture runs inside the first test that uses it, so the later tests that read
# its result would never be run against mutants of what the fixture calls (false survivors). In the
# scratch copy every fixture is therefore function-scoped: slower, but each test runs what it reads.
FIXTURE_SCOPE = re.compile(r"""scope=["'](?:module|session|package|class)["'],?\s*""")
KILLED = {"killed", "timeout", "segfault", "caught by type check"}
PYTEST_ARGS = ["-p", "no:cacheprovider", "-m", "not slow", "-q"]


def _status_names() -> dict[int | None, str]:
    from mutmut.stats import status_by_exit_code  # the mapping mutmut itself reports with

    return status_by_exit_code


def _toml_list(items: list[str]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def prepare(module: str, work: Path) -> Path:
    """A scratch copy of the repository configured to mutate `module` only."""
    only, tests = MODULES[module]
    scratch = work / module.replace("/", "_").removesuffix(".py")
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    for name in ("analog", "study", "tests"):
        shutil.copytree(ROOT / name, scratch / name, ignore=ignore)
    for test_file in (scratch / "tests").glob("*.py"):  # see FIXTURE_SCOPE
        test_file.write_text(FIXTURE_SCOPE.sub("", test_file.read_text()))
    config = (
        "\n\n[tool.mutmut]\n"
        'source_paths = ["analog", "study"]\n'
        f"only_mutate = {_toml_list(only)}\n"
        f"pytest_add_cli_args = {_toml_list(PYTEST_ARGS)}\n"
        f"pytest_add_cli_args_test_selection = {_toml_list(tests)}\n"
        'process_isolation = "fork"\n'
        "use_git_change_detection = false\n"
    )
    (scratch / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text() + config)
    return scratch


def sample_names(scratch: Path, env: dict[str, str], size: int, seed: int = 0) -> list[str]:
    """A seeded random sample of `size` of the module's mutant names. A `mutmut run` filtered on a name
    that matches nothing generates the mutants and traces the tests, then stops; the names are then
    read from its meta files."""
    with open(scratch / "mutmut-generate.log", "w") as log:
        subprocess.run(
            [shutil.which("mutmut") or "mutmut", "run", "no-mutant-has-this-name"],
            cwd=scratch,
            env=env,
            stdout=log,
            stderr=log,
        )
    names = sorted(
        name
        for meta in (scratch / "mutants").rglob("*.py.meta")
        for name in json.loads(meta.read_text()).get("exit_code_by_key", {})
    )
    if not names:
        raise SystemExit(f"mutmut generated no mutants in {scratch} (see mutmut-generate.log)")
    return sorted(random.Random(seed).sample(names, min(size, len(names))))


def run(module: str, work: Path, max_children: int, sample: int | None = None) -> None:
    scratch = prepare(module, work)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "PYTHONPATH": str(scratch / "mutants"),
    }
    # the directory must exist before the interpreter starts: Python caches a missing sys.path entry as
    # importer-less, and imports would then fall through to the editable install (the unmutated code)
    (scratch / "mutants").mkdir()
    mutmut = shutil.which("mutmut") or "mutmut"
    start = time.time()
    names = sample_names(scratch, env, sample) if sample else []
    with open(scratch / "mutmut.log", "w") as log:
        subprocess.run(
            [mutmut, "run", "--max-children", str(max_children), *names],
            cwd=scratch,
            env=env,
            stdout=log,
            stderr=log,
        )
    print(
        f"{module}: mutmut finished in {(time.time() - start) / 60:.1f} min (log: {scratch / 'mutmut.log'})"
    )


def results(module: str, work: Path) -> tuple[Counter, list[str]]:
    """(count per status, names of the mutants not killed) from the meta files of the last run."""
    scratch = work / module.replace("/", "_").removesuffix(".py")
    names = _status_names()
    counts: Counter = Counter()
    alive: list[str] = []
    for meta in sorted((scratch / "mutants").rglob("*.py.meta")):
        data = json.loads(meta.read_text())
        for name, code in data.get("exit_code_by_key", {}).items():
            status = names[code]
            counts[status] += 1
            if status not in KILLED and status != "not checked":
                alive.append(f"{name}: {status}")
    return counts, alive


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson 95% interval of a proportion k/n (the score of a random sample of mutants)."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def report(modules: list[str], work: Path, show: bool) -> None:
    print(f"\n{'module':<18} {'killed':>7} {'tested':>7} {'score':>7}  {'95% CI':>13}  other")
    details = []
    for module in modules:
        counts, alive = results(module, work)
        unchecked = counts.pop("not checked", 0)
        total = sum(counts.values())
        killed = sum(counts[s] for s in KILLED)
        other = ", ".join(f"{s} {n}" for s, n in sorted(counts.items()) if s not in KILLED)
        if unchecked:
            other += f"{', ' if other else ''}not run (outside the sample) {unchecked}"
        score = f"{100 * killed / total:.1f}%" if total else "-"
        ci = "" if not total else "[{:.1f}, {:.1f}]%".format(*(100 * v for v in wilson(killed, total)))
        print(f"{module:<18} {killed:>7} {total:>7} {score:>7}  {ci:>13}  {other}")
        details.append((module, alive))
    for module, alive in details:
        if not alive:
            continue
        print(f"\n## {module}: {len(alive)} not killed")
        scratch = work / module.replace("/", "_").removesuffix(".py")
        for line in alive:
            print(line)
            if show:
                name = line.split(":")[0]
                diff = subprocess.run(
                    [shutil.which("mutmut") or "mutmut", "show", name],
                    cwd=scratch,
                    capture_output=True,
                    text=True,
                ).stdout
                print(
                    "\n".join(
                        "    " + ln
                        for ln in diff.splitlines()[1:]
                        if ln.startswith(("-", "+")) and ln[:3] not in ("---", "+++")
                    )
                )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("modules", nargs="*", default=list(MODULES), help=f"any of {', '.join(MODULES)}")
    parser.add_argument("--max-children", type=int, default=2, help="parallel mutant workers")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / ".mutation")
    parser.add_argument("--report-only", action="store_true", help="print the scores of the last run")
    parser.add_argument("--show", action="store_true", help="print each surviving mutant's diff")
    parser.add_argument(
        "--sample",
        type=int,
        help="test only a seeded random sample of this many mutants per module (an estimate)",
    )
    args = parser.parse_args()
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        parser.error(f"unknown module(s) {unknown}; choose from {', '.join(MODULES)}")
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / ".gitignore").write_text("*\n")
    if not args.report_only:
        for module in args.modules:
            run(module, args.work, args.max_children, args.sample)
    report(args.modules, args.work, args.show)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
