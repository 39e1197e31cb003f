"""How close is `run --dry-run`'s estimate to the wall time the committed studies took?

    python benchmarks/check_estimate.py [--results results]

For each committed study (a folder with runs.csv, spec.yaml and run_log.jsonl):

  fresh     the estimate a dry run prints before the study's first trial: the cost model of
            `study.sweep.estimate` fitted on the *other* committed studies (leave-one-out), at the
            study's recorded bundle size and worker count, against the measured wall time of all its runs
  resumed   for a study run in more than one pass (e.g. seeds added later), the estimate a dry run
            prints after the first pass (the model rescaled by the trials that pass finished) against
            the measured wall time of the later passes

The target of issue #16 is the last study's estimate within 20 % (the last study in run_all.sh).
Measured walls include whatever else ran on the machine then (results/README.md says what).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from study.sweep import estimate as E  # noqa: E402
from study.sweep.spec import parse_spec  # noqa: E402
from study.sweep.tuning import study_trials  # noqa: E402
from study.tables import RESTORE_SPEC, read_yaml  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def run_all_studies() -> list[str]:
    text = (ROOT / "run_all.sh").read_text()
    return re.search(r"^STUDIES=\(([^)]*)\)", text, re.M).group(1).split()


def passes(sdir: Path) -> list[dict]:
    return [json.loads(line) for line in (sdir / "run_log.jsonl").read_text().splitlines() if line.strip()]


def check(results: Path, name: str) -> dict:
    sdir = results / name
    rows = E.committed_rows(sdir)
    model = E.committed_cost_model(results, exclude=(name,))
    log = [p for p in passes(sdir) if p.get("wall_time_s", 0) > 0]
    workers = log[-1]["workers"]
    bundle = max(b for _, b, _ in rows)
    measured = sum(p["wall_time_s"] for p in log)
    spec = parse_spec(read_yaml(sdir / "spec.yaml", RESTORE_SPEC))
    trials = study_trials(spec, sdir)  # with tune_lr: the selection trials too (and the own-lr ones where
    # the selection's records are here; runs.csv holds only the shared-lr trials)
    fresh = E.estimate_seconds([(t.config, bundle) for t in trials], model, [])["seconds"] / workers
    out = {"study": name, "trials": len(trials), "workers": workers, "measured": measured, "fresh": fresh}
    if len(log) > 1 and log[0]["done"] < len(rows):  # a later pass: the first pass finished the lowest seeds
        by_seed = sorted(rows, key=lambda r: r[0].seed)
        first, rest = by_seed[: log[0]["done"]], by_seed[log[0]["done"] :]
        if first and rest and first[-1][0].seed < rest[0][0].seed:
            later = E.estimate_seconds([(c, b) for c, b, _ in rest], model, first)
            out["resumed"] = later["seconds"] / workers
            out["resumed_measured"] = sum(p["wall_time_s"] for p in log[1:])
            out["first_pass"] = len(first)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(ROOT / "results"))
    args = parser.parse_args(argv)
    results = Path(args.results)
    names = [n for n in run_all_studies() if (results / n / "runs.csv").is_file()]
    print(f"{'study':<16}{'trials':>7}{'workers':>8}{'measured s':>12}{'fresh est. s':>14}{'ratio':>7}")
    checks = [check(results, n) for n in names]
    for c in checks:
        print(
            f"{c['study']:<16}{c['trials']:>7}{c['workers']:>8}{c['measured']:>12.0f}{c['fresh']:>14.0f}"
            f"{c['fresh'] / c['measured']:>7.2f}"
        )
    for c in checks:
        if "resumed" in c:
            print(
                f"{c['study']}: after its first pass ({c['first_pass']} trials) the dry run estimates "
                f"{c['resumed']:.0f} s for the rest; the later passes took {c['resumed_measured']:.0f} s "
                f"(ratio {c['resumed'] / c['resumed_measured']:.2f})"
            )
    last = checks[-1]
    ratio = last.get("resumed", last["fresh"]) / last.get("resumed_measured", last["measured"])
    verdict = "met" if abs(ratio - 1) <= 0.2 else "not met"
    what = "resumed" if "resumed" in last else "fresh"
    print(f"last study ({last['study']}, {what} estimate): ratio {ratio:.2f}; target within 20 %: {verdict}")


if __name__ == "__main__":
    main()
