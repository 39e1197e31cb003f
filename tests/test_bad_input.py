"""Ordinary mistakes cost a clear message, never results (issue #13): odd study paths, bad spec rules
and values, edited specs, tables that do not cover the spec."""

from __future__ import annotations

from pathlib import Path

import pytest

from study.analysis.publish import build_paper_inputs

ROOT = Path(__file__).resolve().parent.parent


def _fake_study(path: Path) -> Path:
    (path / "stats" / "latex").mkdir(parents=True)
    (path / "stats" / "latex" / "macros.tex").write_text("% macros\n")
    (path / "figures").mkdir()
    (path / "spec.yaml").write_text("name: x\n")
    return path


@pytest.mark.parametrize("odd", [".", "..", "", "paper", "/"])
def test_paper_refuses_folders_that_are_not_studies_and_deletes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, odd: str
) -> None:
    paper = tmp_path / "paper"
    out = paper / "generated"
    (out / "core").mkdir(parents=True)
    (out / "core" / "keep.tex").write_text("kept")
    (paper / "main.tex").write_text("kept")
    monkeypatch.chdir(out)  # `python -m study paper ..` from inside paper/generated named paper/ itself
    with pytest.raises(ValueError, match="not a study folder"):
        build_paper_inputs([odd], out=out)
    assert (paper / "main.tex").read_text() == "kept" and (out / "core" / "keep.tex").read_text() == "kept"


def test_paper_refuses_a_study_without_statistics_before_touching_anything(tmp_path: Path) -> None:
    out = tmp_path / "generated"
    good = _fake_study(tmp_path / "core")
    bare = tmp_path / "other"
    bare.mkdir()
    (bare / "spec.yaml").write_text("name: other\n")
    (out / "core").mkdir(parents=True)
    (out / "core" / "old.tex").write_text("old")
    with pytest.raises(ValueError, match="stats/latex missing"):
        build_paper_inputs([good, bare], out=out)
    assert (out / "core" / "old.tex").read_text() == "old"  # the valid one was not half-replaced either


def test_paper_refuses_two_studies_of_one_name(tmp_path: Path) -> None:
    a, b = _fake_study(tmp_path / "a" / "core"), _fake_study(tmp_path / "b" / "core")
    with pytest.raises(ValueError, match="same name given twice: core"):
        build_paper_inputs([a, b], out=tmp_path / "generated")


def test_paper_replaces_only_its_own_study_folder(tmp_path: Path) -> None:
    out = tmp_path / "generated"
    study = _fake_study(tmp_path / "runs" / "core")
    (out / "core").mkdir(parents=True)
    (out / "core" / "stale.tex").write_text("stale")
    (out / "other").mkdir()
    (out / "other" / "macros.tex").write_text("other")
    build_paper_inputs([study], out=out)
    assert sorted(p.name for p in (out / "core").iterdir()) == ["captions.tex", "figures", "macros.tex"]
    assert (out / "other" / "macros.tex").read_text() == "other"
    assert sorted(p.name for p in out.iterdir()) == ["core", "macros.tex", "other"]


def test_cli_refuses_a_dot_study_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from study.cli import main

    for argv in (["paper", "."], ["stats", ".."], ["readme", str(tmp_path)]):
        assert main(argv) == 2, argv
        assert "is not a study folder" in capsys.readouterr().err


# --------------------------------------------------------------------------- spec rules and values

BASE = {"dataset": "digits", "hidden": [16], "epochs": 1, "diagnostics": False}


def _spec(**over) -> dict:
    spec = {
        "name": "s",
        "base": dict(BASE),
        "factors": {"precision": [4, 16], "weight_policy": ["exact", "ste"]},
        "seeds": 2,
    }
    spec.update(over)
    return spec


def _errors(spec: dict) -> str:
    from study.sweep.spec import parse_spec
    from study.training.config import ConfigError

    with pytest.raises(ConfigError) as err:
        parse_spec(spec)
    return str(err.value)


@pytest.mark.parametrize(
    ("rule", "needle"),
    [
        ({"lr": 0.01, "precision": 4, "weight_policy": "ste"}, "include[0].lr: not a factor of this study"),
        ({"precison": 4, "weight_policy": "ste"}, "include[0].precison: not a factor"),
        ({"precision": 4}, "missing: weight_policy"),
        ({"precision": 8, "weight_policy": "ste"}, "include[0].precision: value 8 is not one of"),
        ({"precision": 4.0, "weight_policy": "ste"}, "value 4.0 is not one of"),
        ({}, "include[0]: must be a non-empty mapping"),
    ],
)
def test_include_cells_name_every_factor_with_listed_values(rule: dict, needle: str) -> None:
    assert needle in _errors(_spec(include=[rule]))


def test_exclude_rules_with_unknown_values_are_errors() -> None:
    text = _errors(_spec(exclude=[{"precision": [4, 64]}, {"seed": 1}]))
    assert "exclude[0].precision: value 64 is not one of the factor's values [4, 16]" in text
    assert "exclude[1].seed: not a factor of this study; factors: precision, weight_policy" in text


def test_an_include_cell_the_exclude_dropped_is_accepted() -> None:
    from study.sweep.spec import expand, parse_spec

    spec = parse_spec(_spec(exclude=[{"precision": 4}], include=[{"precision": 4, "weight_policy": "ste"}]))
    assert len(expand(spec)) == 3 * 2


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("lr", float("inf"), "base.lr"),
        ("lr", float("nan"), "base.lr"),
        ("divide", float("nan"), "divide"),
        ("leakage", float("inf"), "leakage"),
        ("seed", -1, "seed"),
        ("split_seed", 2**40, "split_seed"),
    ],
)
def test_non_finite_and_out_of_range_base_values_are_errors(field: str, value: float, needle: str) -> None:
    assert needle in _errors(_spec(base={**BASE, field: value}))


@pytest.mark.parametrize(
    ("hyp", "needle"),
    [
        ({"margin": float("inf")}, "hypotheses.margin"),
        ({"margin": float("nan")}, "hypotheses.margin"),
        ({"alpha": float("nan")}, "hypotheses.alpha"),
        ({"normality_alpha": float("inf")}, "hypotheses.normality_alpha"),
        ({"metric": "test_accuracy"}, "unknown metric 'test_accuracy'; allowed: test_acc, test_loss"),
        ({"bootstrap_seed": -3}, "hypotheses.bootstrap_seed"),
    ],
)
def test_bad_hypotheses_values_are_errors(hyp: dict, needle: str) -> None:
    assert needle in _errors(_spec(hypotheses=hyp))


def test_negative_seeds_and_repeated_factor_spellings_are_reported_together() -> None:
    spec = _spec(seeds=[0, -2], factors={"precision": [16, 16.0], "lr": [0.01, 0.010, 1e-2]})
    spec["hypotheses"] = {"metric": "accuracy"}
    text = _errors(spec)
    assert "seeds" in text and "[-2]" in text
    assert "factors.precision: values 16 and 16.0 give the same configuration" in text
    assert "factors.lr: values 0.01 and 0.01 give the same configuration" in text
    assert "unknown metric 'accuracy'" in text


def test_preset_names_of_one_policy_pair_are_one_trial_not_an_error() -> None:
    from study.sweep.spec import expand, parse_spec

    spec = parse_spec(_spec(factors={"policies": ["analogvnn", "ste/exact", "exact/exact"]}))
    assert len({t.run_id for t in expand(spec)}) == 2 * 2


def test_statistics_refuse_to_pair_trials_whose_configurations_differ(tmp_path: Path) -> None:
    import pandas as pd
    import yaml

    from study.analysis.publish import stats_stage

    rows = [
        {"run_id": f"{i:016x}", "weight_policy": wp, "signal_policy": "exact", "seed": s, "test_acc": 80.0}
        for i, (wp, s) in enumerate([("exact", 0), ("ste", 0), ("exact", 1), ("ste", 1)])
    ]
    rows.append({**rows[0], "run_id": "f" * 16, "test_acc": 70.0})  # same factors, another configuration
    (tmp_path / "spec.yaml").write_text(
        yaml.safe_dump({"name": "s", "factors": {"weight_policy": ["exact", "ste"]}, "seeds": 2})
    )
    pd.DataFrame(rows).to_csv(tmp_path / "runs.csv", index=False)
    with pytest.raises(ValueError, match="different configurations.*0000000000000000, ffffffffffffffff"):
        stats_stage(tmp_path)
    assert not (tmp_path / "stats" / "comparisons.csv").exists()


# --------------------------------------------------------------------------- the spec a record was run under


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A finished 2-trial study (tiny trials, sequential, one worker)."""
    from study.sweep.runner import run_study
    from study.sweep.spec import parse_spec

    spec = _spec(factors={"weight_policy": ["exact", "ste"]}, seeds=1)
    out = tmp_path_factory.mktemp("ran")
    run_study(parse_spec(spec), out=out, workers=1, bundle=1, quiet=True)
    return out / "s", spec


def _copy(ran: tuple[Path, dict], dest: Path) -> Path:
    import shutil

    return Path(shutil.copytree(ran[0], dest / "s"))


def test_collect_refuses_records_run_under_a_hand_edited_spec(ran, tmp_path: Path) -> None:
    import yaml

    from study.sweep.collect import collect

    sdir = _copy(ran, tmp_path)
    spec = yaml.safe_load((sdir / "spec.yaml").read_text())
    spec["description"] = "edited by hand after the run"
    (sdir / "spec.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ValueError, match=r"2 trial\(s\) were run under a spec whose hash is neither"):
        collect(sdir)
    assert not (sdir / "runs.csv").exists()


def test_a_spec_changed_through_the_runner_is_logged_and_its_records_accepted(ran, tmp_path: Path) -> None:
    import json

    import pandas as pd

    from study.sweep.collect import collect
    from study.sweep.runner import run_study
    from study.sweep.spec import parse_spec

    sdir = _copy(ran, tmp_path)
    old_hash = parse_spec(ran[1]).hash()
    more = parse_spec({**ran[1], "seeds": 2, "description": "two seeds now"})
    run_study(more, out=tmp_path, workers=1, bundle=1, quiet=True)
    (entry,) = [json.loads(ln) for ln in (sdir / "spec_log.jsonl").read_text().splitlines()]
    assert entry["old_hash"] == old_hash and entry["new_hash"] == more.hash()
    assert entry["changed"] == ["description", "seeds"]
    runs = pd.read_csv(collect(sdir)[0])
    assert sorted(runs["spec_hash"]) == sorted([old_hash, old_hash, more.hash(), more.hash()])


def test_stats_refuse_a_table_with_trials_of_an_unknown_spec(ran, tmp_path: Path) -> None:
    import pandas as pd

    from study.analysis.publish import stats_stage
    from study.sweep.collect import collect

    sdir = _copy(ran, tmp_path)
    runs = pd.read_csv(collect(sdir)[0])
    runs.loc[0, "spec_hash"] = "0123456789abcdef"
    runs.to_csv(sdir / "runs.csv", index=False)
    with pytest.raises(ValueError, match=f"{runs.loc[0, 'run_id']} \\(spec 0123456789abcdef\\)"):
        stats_stage(sdir)


def test_a_hypotheses_change_needs_a_reason_that_the_report_shows(ran, tmp_path: Path) -> None:
    from study.analysis.publish import stats_stage
    from study.cli import main
    from study.sweep.collect import collect
    from study.sweep.runner import HypothesesChanged, run_study
    from study.sweep.spec import parse_spec

    sdir = _copy(ran, tmp_path)
    changed = parse_spec({**ran[1], "hypotheses": {"margin": 1.0}})
    for reason in (None, "", "   "):
        with pytest.raises(HypothesesChanged, match="--allow-hypotheses-change REASON"):
            run_study(changed, out=tmp_path, workers=1, quiet=True, hypotheses_change_reason=reason)
    assert not (sdir / "hypotheses_log.jsonl").exists()
    with pytest.raises(SystemExit):  # the flag without its reason is a usage error
        main(["run", "x.yaml", "--allow-hypotheses-change"])
    run_study(changed, out=tmp_path, workers=1, quiet=True, hypotheses_change_reason="pilot SD was 2 pp")
    collect(sdir)
    report = (stats_stage(sdir) / "report.md").read_text()
    assert "## Pre-registration" in report and "`margin` 0.5 → 1.0; reason: pilot SD was 2 pp" in report


# --------------------------------------------------------------------------- damaged inputs


def test_a_yaml_syntax_error_names_the_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from study.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: s\nfactors:\n  precision: [4, 16\nseeds: 2\n")
    assert main(["run", str(bad), "--out", str(tmp_path / "out"), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {bad}:4: YAML syntax error") and "fix the spec file" in err
    assert "Traceback" not in err and len(err.splitlines()) == 1


def test_an_unreadable_or_damaged_input_names_the_file(
    ran, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from study.cli import main
    from study.sweep.collect import collect

    sdir = _copy(ran, tmp_path)
    collect(sdir)
    (sdir / "curves.csv.gz").write_bytes(b"\x1f\x8b\x08\x00 truncated")
    assert main(["figures", str(sdir)]) == 2
    err = capsys.readouterr().err
    assert f"{sdir / 'curves.csv.gz'}: damaged or unreadable" in err and "python -m study collect" in err
    (sdir / "runs.csv").write_bytes(b'a,b\n"unterminated\n')
    assert main(["stats", str(sdir)]) == 2
    assert f"{sdir / 'runs.csv'}: damaged or unreadable" in capsys.readouterr().err
    (sdir / "spec.yaml").write_bytes(b"\xff\xfe not text")
    assert main(["collect", str(sdir)]) == 2
    assert f"{sdir / 'spec.yaml'}: cannot read it (not UTF-8 text)" in capsys.readouterr().err


def test_a_folder_where_a_file_is_expected_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from study.cli import main

    (tmp_path / "spec.yaml").mkdir()
    assert main(["run", str(tmp_path / "spec.yaml"), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert "is a folder, not a spec file" in err and len(err.splitlines()) == 1


def test_stats_refuse_a_table_that_does_not_cover_the_spec(ran, tmp_path: Path) -> None:
    import pandas as pd

    from study.analysis.publish import stats_stage
    from study.sweep.collect import collect

    sdir = _copy(ran, tmp_path)
    full = pd.read_csv(collect(sdir)[0])
    full.iloc[:1].to_csv(sdir / "runs.csv", index=False)  # what a crash mid-write used to leave
    with pytest.raises(
        ValueError, match=r"1 cell x seed row\(s\) of the spec missing \(e.g. weight_policy=ste"
    ):
        stats_stage(sdir)
    extra = pd.concat([full, full.iloc[:1].assign(seed=7)])
    extra.to_csv(sdir / "runs.csv", index=False)
    with pytest.raises(ValueError, match=r"1 row\(s\) not in the spec \(e.g. weight_policy=exact, seed=7\)"):
        stats_stage(sdir)
    assert not (sdir / "stats" / "comparisons.csv").exists()
