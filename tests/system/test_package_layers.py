"""The subpackages of `appliance` import each other without cycles (a cycle means two
packages that can only change together; `federation.codec` -> `privacy` -> `federation`
was one)."""

import ast
from pathlib import Path

import appliance

ROOT = Path(appliance.__file__).parent


def _subpackage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "appliance" else None


def package_imports() -> dict[str, set[str]]:
    """subpackage -> the other subpackages its modules import (module level and inside
    functions alike)."""
    graph: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        relative = path.relative_to(ROOT).parts
        if len(relative) < 2:
            continue  # appliance/cli.py and friends sit on top of every package
        own = relative[0]
        targets = graph.setdefault(own, set())
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            for name in names:
                target = _subpackage(name)
                if target is not None and target != own and (ROOT / target).is_dir():
                    targets.add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path, or None."""
    visiting: list[str] = []
    done: set[str] = set()

    def visit(node: str) -> list[str] | None:
        if node in visiting:
            return [*visiting[visiting.index(node) :], node]
        if node in done:
            return None
        visiting.append(node)
        for target in sorted(graph.get(node, ())):
            if (cycle := visit(target)) is not None:
                return cycle
        visiting.pop()
        done.add(node)
        return None

    for start in sorted(graph):
        if (cycle := visit(start)) is not None:
            return cycle
    return None


def test_find_cycle_sees_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_federation_does_not_import_privacy() -> None:
    assert "privacy" not in package_imports()["federation"]


def test_no_package_import_cycle() -> None:
    assert find_cycle(package_imports()) is None
