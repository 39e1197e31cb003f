"""The layout is the design: no import cycle in `analog/` and `study/`, the pipeline's folders in their
order, the analysis reading files only, and the README's option table written from `TrialConfig`."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("analog", "study")


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> dict[str, set[str]]:
    """Module -> the project modules it imports anywhere in its source (lazy imports inside functions too)."""
    files = {_module_name(p, root): p for pkg in packages for p in sorted((root / pkg).rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    anchor = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in files:  # `import a.b.c` of a name inside a module
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges.add(target)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for start in sorted(graph):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_no_import_cycle_in_analog_and_study() -> None:
    graph = import_graph()
    assert len(graph) > 30 and "study.analysis.stats.compute" in graph
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_cycle_finder_finds_cycles_through_lazy_and_relative_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg import b\n")
    (pkg / "b.py").write_text("def f():\n    from .c import g\n")
    (pkg / "c.py").write_text("import pkg.a\ndef g():\n    pass\n")
    graph = import_graph(tmp_path, ("pkg",))
    assert graph["pkg.b"] == {"pkg.c"} and graph["pkg.c"] == {"pkg.a"}
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]
    (pkg / "c.py").write_text("import os\n")
    assert find_cycle(import_graph(tmp_path, ("pkg",))) is None


# the pipeline, stage by stage: a stage's modules import only stages before it (and shared modules)
STAGES = (
    "study.training",
    "study.sweep",
    "study.analysis.stats",
    "study.analysis.report",
    "study.analysis",
    "study.advisor",  # reads the studies' statistics; the README and paper read its files, not its code
)
SHARED = ("analog", "study.tables")


def _stage(module: str) -> int | None:
    matches = [i for i, s in enumerate(STAGES) if module == s or module.startswith(s + ".")]
    return max(matches) if matches else None


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_imports_only_the_stages_before_it(stage: str) -> None:
    graph = import_graph()
    own = STAGES.index(stage)
    for module, targets in graph.items():
        if _stage(module) != own:
            continue
        for target in targets:
            later = _stage(target)
            if target.startswith(SHARED) or later is None:
                continue
            assert later <= own, f"{module} (stage {stage}) imports {target}, a later stage"


def test_the_report_and_figures_never_recompute_the_pairing() -> None:
    """What the report needs (the skipped comparisons included) is read from stats/ files."""
    graph = import_graph()
    pairing = {"study.analysis.stats.paired", "study.analysis.stats.families", "study.analysis.stats.compute"}
    for module, targets in graph.items():
        if module.startswith(("study.analysis.report", "study.analysis.figures")):
            assert not targets & pairing, (module, targets & pairing)
    source = (ROOT / "study/analysis/report/markdown.py").read_text()
    for name in ("trial_table", "pair_trials", "skipped_conditions", "applicable_comparisons"):
        assert not re.search(rf"\b{name}\(", source), name


def test_readme_option_table_is_written_from_trial_config() -> None:
    from study.cli import option_table

    text = (ROOT / "README.md").read_text()
    begin, end = "<!-- OPTIONS:BEGIN -->", "<!-- OPTIONS:END -->"
    assert begin in text and end in text
    assert text.split(begin, 1)[1].split(end, 1)[0].strip() == option_table()


def test_train_help_is_the_field_description() -> None:
    from study.cli import train_help
    from study.training.config import TrialConfig

    for name, field in TrialConfig.model_fields.items():
        assert field.description, name
        assert train_help(name).startswith(field.description), name
    assert "one of: mnist5k, digits" in train_help("dataset")
    assert train_help("epochs").endswith("(default: 10)")
