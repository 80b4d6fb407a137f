"""Static checks of the layering: the Python API (parsgd/api/, which runs the CLI's commands) and the CLI on top, then jobs, then ps / training / analysis / model / data.

    python -m pytest -q tests/test_cli_layers.py

Only parsgd/cli/ may raise click exceptions (the library raises parsgd.errors.UserError subclasses);
nothing below the CLI imports it, nothing below jobs imports jobs, and no import cycle goes through
either. Imports inside functions count too.
"""
import ast
import re
from pathlib import Path

import parsgd

ROOT = Path(parsgd.__file__).parent
CLICK_ERRORS = re.compile(r"click\.(ClickException|BadParameter|UsageError)|click\.exceptions\.")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """{module: parsgd modules it imports anywhere in its body}."""
    files = {module_name(p): p for p in ROOT.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                deps |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        graph[name] = {d for d in deps if d in files and d != name}
    return graph


def in_layer(module: str, *packages: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def test_no_click_exceptions_outside_the_cli():
    hits = [f"{p.relative_to(ROOT.parent)}:{i}: {line.strip()}"
            for p in ROOT.rglob("*.py") if not in_layer(module_name(p), "parsgd.cli")
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if CLICK_ERRORS.search(line)]
    assert not hits, "the library raises parsgd.errors.UserError subclasses:\n" + "\n".join(hits)


def test_nothing_below_the_cli_imports_it_and_nothing_below_jobs_imports_jobs():
    graph = import_graph()
    wrong = [(m, d) for m, deps in graph.items() for d in deps
             if (in_layer(d, "parsgd.cli") and not in_layer(m, "parsgd.api", "parsgd.cli", "parsgd.__main__"))
             or (in_layer(d, "parsgd.jobs") and not in_layer(m, "parsgd.api", "parsgd.cli", "parsgd.jobs"))]
    assert not wrong, wrong
    assert "parsgd.cli" in graph["parsgd.__main__"]


def test_no_import_cycle_through_cli_or_jobs():
    graph = import_graph()

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            m = todo.pop()
            for d in graph.get(m, ()):
                if d == goal:
                    return True
                if d not in seen:
                    seen.add(d)
                    todo.append(d)
        return False

    looped = [m for m in graph if in_layer(m, "parsgd.cli", "parsgd.jobs") and reaches(m, m)]
    assert not looped, looped
