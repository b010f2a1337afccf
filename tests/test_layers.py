"""The package's architecture: subpackages by role in layers, imports only downward (or
within a package), no import cycle among semcal's modules (imports inside functions too, and
under TYPE_CHECKING), no module over 450 lines, and every source and calibration registered
explicitly in its one module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from semcal.filter import calibrations, sources

PACKAGE = Path(__file__).resolve().parents[1] / "semcal"
# Top to bottom: a module may import its own package and the layers below it. Packages that
# share a layer (filter, captioning) may not import each other.
LAYERS = (("cli",), ("fit",), ("protocol",), ("stream",), ("reports",), ("filter", "captioning"), ("lm",), ("store",))
LAYERS += (("core",),)
MAX_LINES = 450


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE.rglob("*.py")}


def import_graph() -> dict[str, set[str]]:
    """module -> the semcal modules it imports, anywhere in its body (TYPE_CHECKING included)."""
    known = modules()
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "semcal":
                for alias in node.names:  # from semcal.store import files: the module semcal.store.files
                    imported.add(f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known else node.module)
            elif isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names if alias.name.split(".")[0] == "semcal"}
        graph[name] = {module for module in imported if module in known} - {name}
    return graph


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) < 3:  # semcal itself, semcal.__main__, a package's __init__
        return None
    return next(index for index, layer in enumerate(LAYERS) if parts[1] in layer)


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Imports that break the layers: into a higher layer, or into a sibling package of the same layer."""
    broken = []
    for module, imported in graph.items():
        for target in imported:
            mine, theirs = layer_of(module), layer_of(target)
            if mine is None or theirs is None:
                continue
            if theirs < mine or (theirs == mine and module.split(".")[1] != target.split(".")[1]):
                broken.append(f"{module} -> {target}")
    return sorted(broken)


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


def test_every_module_sits_in_a_layer_and_imports_only_downward():
    graph = import_graph()
    assert "semcal.filter.sources" in graph["semcal.filter.filtering"]
    placed = [module for module in graph if module.count(".") >= 2]
    assert len(placed) > 40 and all(layer_of(module) is not None for module in placed)
    assert not [path for path in PACKAGE.glob("*.py") if path.stem not in ("__init__", "__main__")], "a module outside the packages"
    assert upward_imports(graph) == []


def test_the_layer_rule_catches_an_upward_import():
    graph = import_graph()
    graph["semcal.store.files"] = graph["semcal.store.files"] | {"semcal.fit.fit"}
    graph["semcal.filter.sources"] = graph["semcal.filter.sources"] | {"semcal.captioning.captioning"}
    assert upward_imports(graph) == [
        "semcal.filter.sources -> semcal.captioning.captioning",
        "semcal.store.files -> semcal.fit.fit",
    ]


def test_semcal_has_no_import_cycle():
    graph = import_graph()
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda path: module_name(path))
def test_no_module_is_over_450_lines(path):
    assert len(path.read_text().splitlines()) <= MAX_LINES


def test_every_package_says_what_it_is_and_what_it_may_import():
    for init in PACKAGE.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "May import" in doc or "Imports nothing" in doc, init


def test_sources_and_calibrations_are_registered_by_name():
    assert all(name == source.name for name, source in sources.SOURCES.items())
    assert all(name == calibration.name for name, calibration in calibrations.CALIBRATIONS.items())
    defined = {
        value for value in vars(sources).values() if isinstance(value, type) and issubclass(value, sources.Source)
    }
    assert defined - {sources.Source} == set(sources.SOURCES.values()), "a source class that is not registered"
