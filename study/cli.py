"""Command line: python -m study {train,run,collect,stats,figures,verify} ..."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import yaml

from study.tables import parse_bool, read_yaml
from study.training.config import ConfigError, TrialConfig, field_choices


def _shown_default(name: str) -> str:
    default = TrialConfig.model_fields[name].default
    shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
    return "none" if shown is None else str(shown)


def train_help(name: str) -> str:
    """`--NAME` help of `train`: the field's description (`TrialConfig`), its choices and default."""
    text = TrialConfig.model_fields[name].description or name
    choices = field_choices(name)
    if choices:
        text += f"; one of: {', '.join(choices)}"
    return f"{text} (default: {_shown_default(name)})"


def option_table() -> str:
    """The README's table of `train` options, from the same field descriptions as `train --help`."""
    lines = ["| option | default | what |", "| --- | --- | --- |"]
    for name, field in TrialConfig.model_fields.items():
        lines.append(f"| `--{name.replace('_', '-')}` | `{_shown_default(name)}` | {field.description} |")
    return "\n".join(lines)


def _parse_value(field: str, text: str) -> Any:
    if text.lower() in ("none", "null"):
        return None
    if field in ("hidden", "channels"):  # comma-separated sizes
        return [int(v) for v in text.split(",") if v.strip()]
    flag = parse_bool(text, numeric=False)
    if flag is not None:
        return flag
    return yaml.safe_load(text)


PLUGINS_HELP = (
    "modules to import first, comma separated (as a spec's plugins: they register policies, "
    "normalizations, datasets, architectures); a --config file may list them under plugins:"
)


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train one trial and print its record",
        description="Train one analog network (one configuration, one seed) and print its record.",
    )
    p.add_argument("--config", type=Path, help="YAML file of configuration fields (options override it)")
    p.add_argument("--out", type=Path, help="folder for the Lightning CSV log (<out>/<run_id>/metrics.csv)")
    p.add_argument("--json", action="store_true", help="print the full record as JSON")
    p.add_argument("--plugins", help=PLUGINS_HELP)
    for name in TrialConfig.model_fields:
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, metavar=name.upper(), help=train_help(name))


def _cmd_train(args: argparse.Namespace) -> int:
    from study.training.trial import run_trial

    rec = run_trial(_trial_config(args), out_dir=args.out)
    if args.json:
        print(json.dumps(rec, indent=1, sort_keys=True, default=str))
    else:
        print(
            f"run_id {rec['run_id']}: test accuracy {rec['test_acc']:.2f}% (loss {rec['test_loss']:.4f}), "
            f"best val {rec['best_val_acc']:.2f}% at epoch {rec['best_epoch']} "
            f"(test {rec['test_acc_at_best_val']:.2f}%), {rec['epochs_run']} epochs, "
            f"{'DIVERGED, ' if rec['diverged'] else ''}{rec['wall_time_s']:.1f} s"
        )
    return 0


def _add_run(sub: argparse._SubParsersAction) -> None:
    from study.sweep.runner import DEFAULT_BUNDLE, RECORDED

    p = sub.add_parser("run", help="run (or resume) every trial of a study spec")
    p.add_argument("spec", help="spec file, or the name of one in study/specs/ (e.g. smoke)")
    p.add_argument(
        "--out", default="runs", help="output folder; the study goes to OUT/<name>/ (default: runs)"
    )
    p.add_argument("--workers", type=int, help="parallel worker processes (default: number of cores)")
    p.add_argument("--executor", default="local", choices=("local", "dask"))
    p.add_argument(
        "--scheduler",
        help="Dask scheduler address (tls://host:8786 with the --tls-* files; tcp:// on loopback only, "
        "unless --insecure); default: a LocalCluster on loopback with temporary TLS certificates",
    )
    p.add_argument("--tls-ca", help="CA file for a TLS Dask scheduler (with --tls-cert and --tls-key)")
    p.add_argument("--tls-cert", help="client certificate for a TLS Dask scheduler")
    p.add_argument("--tls-key", help="client key for a TLS Dask scheduler")
    p.add_argument(
        "--insecure",
        action="store_true",
        help="allow a plain tcp:// --scheduler address off loopback (unencrypted, unauthenticated)",
    )
    p.add_argument(
        "--bundle",
        default=str(DEFAULT_BUNDLE),
        help="seeds trained together in one vectorised model: a number (1 = one by one), 'auto' (the "
        "default: per condition, 1 for networks too large to gain from bundling, else 32) or "
        f"'{RECORDED}' (the size OUT/<study>/runs.csv was trained with, which re-running a committed "
        "study needs to reproduce its numbers: a bundle's noise draws depend on its members)",
    )
    p.add_argument("--retry-failed", action="store_true", help="rerun trials that failed")
    p.add_argument(
        "--dry-run", action="store_true", help="print trial counts and an estimated time; run nothing"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar (for logs)")
    p.add_argument(
        "--allow-uncommitted-spec",
        action="store_true",
        help="run a canonical spec (study/specs/*.yaml) with uncommitted changes (development only: the "
        "registration in OUT/<study>/preregistration.json then names no committed version)",
    )
    p.add_argument(
        "--allow-hypotheses-change",
        metavar="REASON",
        help="continue although the pre-registered hypotheses differ from the stored spec; the reason "
        "is logged in OUT/<study>/hypotheses_log.jsonl and shown in the report",
    )


def _check_run_args(args: argparse.Namespace) -> Any:
    """Refuse options that are wrong or would be ignored (ValueError naming the option and what is
    allowed); returns the Dask `Security` for a TLS scheduler, or None."""
    from study.sweep.runner import AUTO, RECORDED, check_scheduler_address, resolve_bundle

    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers: must be >= 1, got {args.workers}")
    if args.bundle not in (RECORDED, AUTO):
        resolve_bundle(args.bundle, Path(os.devnull))  # a bad number is refused before anything else
    out = Path(args.out)
    if not str(args.out).strip():
        raise ValueError("--out: empty; give a folder (e.g. runs)")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {args.out}: exists and is not a folder")
    tls = {"--tls-ca": args.tls_ca, "--tls-cert": args.tls_cert, "--tls-key": args.tls_key}
    given = [name for name, value in tls.items() if value is not None]
    dask_only = [*given, *(["--scheduler"] if args.scheduler is not None else [])]
    dask_only += ["--insecure"] if args.insecure else []
    if args.executor != "dask" and dask_only:
        raise ValueError(f"{', '.join(dask_only)}: only with --executor dask")
    if given and len(given) < len(tls):
        missing = [name for name in tls if name not in given]
        raise ValueError(
            f"{', '.join(given)} without {', '.join(missing)}: a TLS scheduler needs all three "
            "(--tls-ca, --tls-cert, --tls-key)"
        )
    if given and args.scheduler is None:
        raise ValueError(
            "--tls-ca/--tls-cert/--tls-key: only with --scheduler tls://HOST:PORT (the LocalCluster the "
            "runner starts makes its own temporary certificates)"
        )
    if args.insecure and args.scheduler is None:
        raise ValueError("--insecure: only with a plain --scheduler tcp://HOST:PORT address")
    for name, value in tls.items():
        if value is not None and not Path(value).is_file():
            what = "is a folder" if Path(value).is_dir() else "no such file"
            raise ValueError(f"{name} {value}: {what}")
    if args.scheduler is None:
        return None
    check_scheduler_address(args.scheduler, tls=bool(given), insecure=args.insecure)
    if not given:
        return None
    from distributed.security import Security

    return Security(
        tls_ca_file=args.tls_ca,
        tls_client_cert=args.tls_cert,
        tls_client_key=args.tls_key,
        require_encryption=True,
    )


def _cmd_run(args: argparse.Namespace) -> int:
    from study.sweep.runner import dry_run, resolve_bundle, run_study, study_dir
    from study.sweep.spec import load_spec, spec_file

    security = _check_run_args(args)  # bad options are refused before the spec is even read
    spec = load_spec(args.spec)  # an oversized grid is refused before anything builds it
    args.bundle = resolve_bundle(args.bundle, study_dir(args.out, spec))
    if args.dry_run:
        dry_run(spec, out=args.out, workers=args.workers, bundle=args.bundle)
        return 0
    counts = run_study(
        spec,
        out=args.out,
        workers=args.workers,
        executor=args.executor,
        scheduler=args.scheduler,
        retry_failed=args.retry_failed,
        bundle=args.bundle,
        quiet=args.quiet,
        hypotheses_change_reason=args.allow_hypotheses_change,
        security=security,
        insecure=args.insecure,
        spec_path=spec_file(args.spec),
        allow_uncommitted_spec=args.allow_uncommitted_spec,
    )
    left = counts["failed"] + counts["todo"]
    if left:  # anything not done is a non-zero exit: a script must not go on to collect a partial study
        from study.sweep.runner import counts_and_held, study_dir, unfinished_message
        from study.sweep.tuning import study_trials

        # read again: another runner may have finished trials this one found busy since they were counted
        sdir = study_dir(args.out, spec)
        trials = study_trials(spec, sdir)
        counts, held = counts_and_held(sdir, trials)
        if counts["failed"] + counts["todo"]:
            print(f"error: {unfinished_message(spec.name, len(trials), counts, held)}", file=sys.stderr)
            return 1
    return 0


def _cmd_collect(args: argparse.Namespace) -> int:
    from study.sweep.collect import collect

    collect(args.dir)
    return 0


def _cmd_stats(args: argparse.Namespace) -> int:
    from study.analysis.publish import stats_stage

    out = stats_stage(args.dir)
    print(f"statistics -> {out}")
    return 0


def _cmd_figures(args: argparse.Namespace) -> int:
    from study.analysis.figures.registry import make_figures

    make_figures(args.dir)
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from study.sweep.verify import verify

    result = verify(args.dir, args.sample, args.seed)
    return 0 if not result["mismatches"] else 1


def _cmd_report(args: argparse.Namespace) -> int:
    from study.analysis.publish import write_report

    write_report(args.dir)
    return 0


def _cmd_paper(args: argparse.Namespace) -> int:
    from study.analysis.publish import build_paper_inputs

    build_paper_inputs(args.dirs)
    return 0


def _cmd_summary(args: argparse.Namespace) -> int:
    from study.analysis.publish import summary

    summary(args.dirs)
    return 0


def analyze_one(sdir: Path) -> str:
    """Statistics, figures and report of one study; returns what it printed (studies run in parallel)."""
    import contextlib
    import io

    from study.analysis.figures.registry import make_figures
    from study.analysis.publish import stats_stage, write_report

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        print(f"==> statistics, figures and report: {sdir}")
        print(f"statistics -> {stats_stage(sdir)}")
        make_figures(sdir)
        write_report(sdir)
    return out.getvalue()


def _cmd_analyze(args: argparse.Namespace) -> int:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from study.analysis.publish import build_paper_inputs, readme_answer, summary

    jobs = min(len(args.dirs), os.cpu_count() or 1)
    if jobs > 1:  # each study's stages read and write only its own folder: independent
        with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as pool:
            for text in pool.map(analyze_one, args.dirs):
                print(text, end="", flush=True)
    else:
        for sdir in args.dirs:
            print(analyze_one(sdir), end="", flush=True)
    paper_dirs = list(args.dirs)
    if args.advisor:  # after the studies' statistics, which it reads; before the paper inputs
        from study.advisor.fit import fit_advisor
        from study.advisor.spec import ADVISOR_SPEC

        parents = {Path(d).resolve().parent for d in args.dirs}
        if len(parents) != 1:
            raise ValueError("--advisor: the study folders must share one parent (the results folder)")
        paper_dirs.append(fit_advisor(parents.pop(), ADVISOR_SPEC))
    from study.analysis.recommend import write_recommendations

    parents = {Path(d).resolve().parent for d in args.dirs}
    if len(parents) == 1:  # the recommendation table reads every study of the results folder
        write_recommendations(parents.pop())
    build_paper_inputs(paper_dirs)
    readme_answer(args.dirs)
    summary(args.dirs)
    return 0


def _cmd_recommend(args: argparse.Namespace) -> int:
    from study.analysis.recommend import write_recommendations

    parents = {Path(d).resolve().parent for d in args.dirs}
    if len(parents) != 1:
        raise ValueError("recommend: the study folders must share one parent (the results folder)")
    write_recommendations(parents.pop())
    return 0


def _cmd_readme(args: argparse.Namespace) -> int:
    from study.analysis.publish import readme_answer

    readme_answer(args.dirs)
    return 0


def _add_advisor(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "advisor",
        help="fit the advisor's rule on the committed studies and validate it on held-out conditions",
        description="Fit the advisor's rule (study/advisor/advisor.yaml) on results/<sources>/ and write "
        "results/advisor/.",
    )
    p.add_argument("--results", type=Path, default=Path("results"), help="folder of the source studies")
    p.add_argument("--spec", type=Path, help="advisor spec (default: study/advisor/advisor.yaml)")
    p.add_argument("--out", type=Path, help="output folder (default: RESULTS/<spec name>)")
    p.add_argument(
        "--allow-uncommitted-spec", action="store_true", help="fit under an uncommitted spec (development)"
    )
    p = sub.add_parser(
        "advise",
        help="should I back-propagate through my normalization? probe a trial configuration",
        description="Probe a trial configuration at each site (a short run with the straight-through "
        "gradient there) and print the advisor's advice with the measured diagnostics.",
    )
    p.add_argument(
        "--config", type=Path, help="YAML file of trial configuration fields (options override it)"
    )
    p.add_argument("--rule", type=Path, default=Path("results/advisor/rule.json"), help="the fitted rule")
    p.add_argument("--seeds", default="0,1", help="probe seeds, comma separated (default 0,1)")
    p.add_argument("--plugins", help=PLUGINS_HELP)
    for name in TrialConfig.model_fields:
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, metavar=name.upper(), help=train_help(name))


def _trial_config(args: argparse.Namespace) -> TrialConfig:
    """The configuration of `train` / `advise`: --config's fields, overridden by the options."""
    from study.sweep.spec import import_plugins

    data: dict[str, Any] = {}
    if args.config:
        data.update(read_yaml(args.config, "fix the configuration file") or {})
    plugins = data.pop("plugins", None) or []
    if not isinstance(plugins, list) or not all(isinstance(m, str) for m in plugins):
        raise ConfigError(f"plugins: a list of module names expected, got {plugins!r}")
    import_plugins([*plugins, *(m.strip() for m in (args.plugins or "").split(",") if m.strip())])
    for name in TrialConfig.model_fields:
        text = getattr(args, name)
        if text is not None:
            data[name] = _parse_value(name, text)
    return TrialConfig.parse(data)


def _cmd_advisor(args: argparse.Namespace) -> int:
    from study.advisor.fit import fit_advisor
    from study.advisor.spec import ADVISOR_SPEC

    fit_advisor(args.results, args.spec or ADVISOR_SPEC, args.out, args.allow_uncommitted_spec)
    return 0


def _cmd_advise(args: argparse.Namespace) -> int:
    import time

    from analog.advise import Rule
    from study.advisor.probe import format_advice, probe_config

    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds: comma-separated integers expected, got {args.seeds!r}") from None
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) < len(seeds):
        raise ValueError(f"--seeds: give distinct seeds >= 0, got {args.seeds!r}")
    config = _trial_config(args)
    rule = Rule.load(args.rule)
    start = time.perf_counter()
    print(
        f"probing run {config.run_id}: {len(seeds)} seed(s) x 2 sites, {rule.probe_epoch} epoch(s) each",
        flush=True,
    )
    advice = probe_config(config, rule, seeds, progress=lambda line: print(line, flush=True))
    print(format_advice(advice, rule, time.perf_counter() - start))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m study", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_run(sub)
    _add_advisor(sub)
    for name, helptext in (
        ("collect", "write runs.csv and curves.csv.gz from a study's trials"),
        ("stats", "statistics and report from DIR/runs.csv and DIR/spec.yaml"),
        ("figures", "figures from DIR/runs.csv, DIR/curves.csv.gz and DIR/stats/"),
        ("report", "DIR/report.md from DIR/stats/ and DIR/figures/"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("dir", type=Path, help="the study folder (OUT/<study>)")
    p = sub.add_parser("verify", help="re-train N random trials of a finished study and compare records")
    p.add_argument("dir", type=Path)
    p.add_argument("--sample", type=int, default=5, help="trials to re-train (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random choice of trials")
    for name, helptext in (
        ("paper", "copy the studies' LaTeX macros, tables and figures to paper/generated/"),
        ("summary", "print the headline answer of each study"),
        ("readme", "rewrite the README's generated answer block from the studies' statistics"),
        ("recommend", "write <results>/recommendations.csv (the front door's and Table 1's table)"),
        ("analyze", "stats, figures, report for each study, then paper inputs, README block, summary"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("dirs", type=Path, nargs="+", help="study folders")
        if name == "analyze":
            p.add_argument(
                "--advisor",
                action="store_true",
                help="then fit the advisor (study/advisor/advisor.yaml) on the studies' parent folder "
                "(<parent>/advisor) and add it to the paper inputs",
            )
    args = parser.parse_args(argv)
    handler = {
        "train": _cmd_train,
        "run": _cmd_run,
        "collect": _cmd_collect,
        "stats": _cmd_stats,
        "figures": _cmd_figures,
        "verify": _cmd_verify,
        "report": _cmd_report,
        "paper": _cmd_paper,
        "summary": _cmd_summary,
        "readme": _cmd_readme,
        "recommend": _cmd_recommend,
        "analyze": _cmd_analyze,
        "advisor": _cmd_advisor,
        "advise": _cmd_advise,
    }[args.command]
    from study.sweep.runner import HypothesesChanged, SpecNotCommitted
    from study.tables import require_study_dir

    try:
        for d in [getattr(args, "dir", None), *getattr(args, "dirs", [])]:
            if d is not None:
                require_study_dir(d)
        return handler(args)
    except (ConfigError, FileNotFoundError, ValueError, HypothesesChanged, SpecNotCommitted) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a file or folder the command must write or read: say which, no traceback
        print(f"error: {err.filename or ''}: {err.strerror or err}", file=sys.stderr)
        return 2
    # study.sweep.runner.Interrupted carries the counts of an interrupted run
    except KeyboardInterrupt as err:
        command = "python -m study " + shlex.join(sys.argv[1:] if argv is None else argv)
        finished = getattr(err, "finished", None)
        if finished is None:
            print(f"interrupted; run the same command again:\n  {command}", file=sys.stderr)
        else:
            counts, total = err.counts, err.total  # type: ignore[attr-defined]
            print(
                f"interrupted: {finished} trial(s) finished in this run, {counts['done']}/{total} done in "
                f"all ({counts['failed']} failed, {counts['todo']} to do); finished trials are kept, no "
                f"claim is left. Resume with:\n  {command}",
                file=sys.stderr,
            )
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
