"""The house stays in order: no import cycles, arrows pointing down, the entry scripts on top."""

import ast
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "ppo_lab"

#: Rooms and their floors: a module may import only its own room or rooms on lower floors
#: (style guide: commands -> training -> (policies, algo, envs, io) -> config).
FLOORS = {"config": 0, "algo": 1, "io": 1, "policies": 2, "envs": 2, "training": 3, "commands": 4, "api": 5}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def runtime_imports(path: Path) -> set[str]:
    """Every ppo_lab module this file imports at run time, at any depth (functions included),
    leaving out ``if TYPE_CHECKING:`` blocks."""
    tree = ast.parse(path.read_text())
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for child in node.body for n in ast.walk(child))
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ppo_lab"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)  # `from ppo_lab.x import module`
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("ppo_lab"))
    return found


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in runtime_imports(path) if m in files and m != name} for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return []


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in FLOORS) else "<top>"


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert not cycle, " -> ".join(cycle)


def test_the_cycle_check_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []


def test_imports_point_down_the_floors():
    wrong = []
    for module, imported in import_graph().items():
        here = room(module)
        for target in imported:
            there = room(target)
            if here == "<top>" or there == here:
                continue  # the public API and the report entry sit on top of everything
            if there == "<top>" or FLOORS[there] >= FLOORS[here]:
                wrong.append(f"{module} -> {target}")
    assert not wrong, wrong


def test_every_module_sits_in_a_room_and_the_package_never_imports_the_entry_scripts():
    top_level = sorted(p.name for p in PACKAGE.glob("*.py"))
    # Beside the public API, only the thin `python -m ppo_lab.<command>` entry points.
    assert set(top_level) <= {"__init__.py", "report.py", "export.py", "hub.py"}, top_level
    for path in PACKAGE.rglob("*.py"):
        imported = runtime_imports(path) | {
            a.name for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Import) for a in n.names}
        assert not imported & {"train", "evaluate"}, path
