"""The package's layers: no import cycle among semcal's modules (imports inside functions too),
and every source and calibration is registered explicitly in its one module."""

from __future__ import annotations

import ast
from pathlib import Path

from semcal import calibrations, sources

PACKAGE = Path(__file__).resolve().parents[1] / "semcal"


def _runtime_nodes(tree: ast.AST):
    """Every node but those under `if TYPE_CHECKING:` (imports for type hints only run no code)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            continue
        yield node
        yield from _runtime_nodes(node)


def import_graph() -> dict[str, set[str]]:
    """module -> the semcal modules it imports at run time, anywhere in its body."""
    modules = {path.stem for path in PACKAGE.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.glob("*.py"):
        imported = set()
        for node in _runtime_nodes(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("semcal"):
                parts = node.module.split(".")
                if len(parts) > 1:
                    imported.add(parts[1])
                else:  # from semcal import a, b
                    imported |= {alias.name for alias in node.names if alias.name in modules}
            elif isinstance(node, ast.Import):
                imported |= {a.name.split(".")[1] for a in node.names if a.name.startswith("semcal.")}
        graph[path.stem] = imported & modules - {path.stem, "__init__"}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> list[str] | None:
        state[node] = 1
        for child in sorted(graph.get(node, ())):
            if state.get(child) == 1:
                return [*trail, node, child]
            if child not in state and (cycle := visit(child, [*trail, node])):
                return cycle
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node, [])):
            return cycle
    return None


def test_semcal_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 30 and "sources" in graph["filtering"]
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_sources_and_calibrations_are_registered_by_name():
    assert all(name == source.name for name, source in sources.SOURCES.items())
    assert all(name == calibration.name for name, calibration in calibrations.CALIBRATIONS.items())
    defined = {
        value for value in vars(sources).values() if isinstance(value, type) and issubclass(value, sources.Source)
    }
    assert defined - {sources.Source} == set(sources.SOURCES.values()), "a source class that is not registered"
