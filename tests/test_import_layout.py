"""Imports run one way (docs/developing.md, "Layout"): no module imports one that imports it back, at module level
or inside a function. Read from the source with ``ast``, so nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path

import rlhf_pairs

PACKAGE = Path(rlhf_pairs.__file__).parent


def module_files() -> dict[str, Path]:
    """Dotted module name -> its file, for every module of the package."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports anywhere in its file. ``from a.b import c`` is an edge to
    ``a.b.c`` when that is a module, else to ``a.b``. Edges between a package and its own submodules are left out
    (a subpackage's ``__init__`` and its modules refer to each other by design, e.g. ``scripts/rank.py`` takes
    ``run_command`` from ``rlhf_pairs.scripts``)."""
    modules = module_files()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names if alias.name in modules)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in modules:
                for alias in node.names:
                    submodule = f"{node.module}.{alias.name}"
                    targets.add(submodule if submodule in modules else node.module)
        graph[name] = {
            t for t in targets if t != name and not name.startswith(t + ".") and not t.startswith(name + ".")
        }
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (``[a, b, ..., a]``), or ``None``."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" after
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_former_cycles_run_one_way():
    """cli -> scripts (the job table lives with the scripts) and win_rate -> ranking (the tie rule and the
    probability check live in ranking), never back."""
    graph = import_graph()
    assert "rlhf_pairs.scripts" in graph["rlhf_pairs.cli"]
    assert "rlhf_pairs.cli" not in graph["rlhf_pairs.scripts"]
    assert "rlhf_pairs.ranking" in graph["rlhf_pairs.win_rate"]
    assert "rlhf_pairs.win_rate" not in graph["rlhf_pairs.ranking"]


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_find_cycle_sees_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_moved_names_stay_importable_from_where_they_were():
    from importlib import import_module

    # import_module: the package's lazy `rlhf_pairs.win_rate` attribute is the function, not the module
    cli, scripts, ranking, win_rate = map(
        import_module, ("rlhf_pairs.cli", "rlhf_pairs.scripts", "rlhf_pairs.ranking", "rlhf_pairs.win_rate")
    )
    assert cli.JOBS is scripts.JOBS
    assert win_rate.pair_outcome is ranking.pair_outcome
