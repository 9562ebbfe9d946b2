"""The layout's rules, read from the source with ``ast`` (no imports run):
one-way arrows between packages, no import cycles, nothing imports a CLI module,
small files."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("rewards", "learner", "actors", "cluster", "pipelines")
STDLIB = set(sys.stdlib_module_names)
MAX_LINES = 400


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))}


def _imports(path: Path) -> set[str]:
    """Every module imported anywhere in the file (top level or inside functions)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)  # `from pkg import submodule`
    return out


def _project_graph() -> dict[str, set[str]]:
    sources = _sources()
    return {m: {i for i in _imports(p) if i in sources and i != m} for m, p in sources.items()}


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def _package_of(module: str) -> str:
    """`pipelines.training.sft` -> `pipelines.training`; `actors.rollout` -> `actors`."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "pipelines" and len(parts) > 1 else parts[0]


def test_cycle_finder_finds_a_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_between_modules():
    assert _find_cycle(_project_graph()) is None


def test_no_import_cycle_between_packages():
    packages: dict[str, set[str]] = {}
    for m, deps in _project_graph().items():
        packages.setdefault(_package_of(m), set()).update(_package_of(d) for d in deps if _package_of(d)
                                                          != _package_of(m))
    assert _find_cycle(packages) is None


# What each package may import of the project's own packages (arrows point one way).
ALLOWED = {
    "rewards": {"rewards"},
    "learner": {"rewards", "learner"},
    "actors": {"rewards", "learner", "actors", "cluster"},
    "cluster": {"cluster"},
    "pipelines": set(PACKAGES),
}


@pytest.mark.parametrize("package", PACKAGES)
def test_arrows_point_one_way(package):
    wrong = sorted(f"{m} imports {i}" for m, p in _sources().items() if m.split(".")[0] == package
                   for i in _imports(p) if i.split(".")[0] in PACKAGES and i.split(".")[0] not in ALLOWED[package])
    assert wrong == []


def _third_party(path: Path) -> set[str]:
    return {i.split(".")[0] for i in _imports(path)} - STDLIB - set(PACKAGES) - {"__future__"}


def test_rewards_are_stdlib_only():
    found = {m: _third_party(p) for m, p in _sources().items() if m.startswith("rewards")}
    assert {m: s for m, s in found.items() if s} == {}


def test_grpo_math_needs_no_ray_or_vllm():
    assert _third_party(REPO / "learner" / "grpo.py") <= {"torch"}


def test_cluster_needs_only_ray():
    found = {m: _third_party(p) for m, p in _sources().items() if m.startswith("cluster")}
    assert {m: s for m, s in found.items() if s - {"ray"}} == {}


def test_nothing_imports_a_cli_module():
    cli = {m for m in _sources() if m.startswith("pipelines.cli.")} - {"pipelines.cli.main"}
    importers = sorted(f"{m} imports {i}" for m, p in _sources().items() if not m.startswith("pipelines.cli")
                       for i in _imports(p) if i in cli or i == "pipelines.cli.main")
    assert importers == []


def test_source_files_are_small():
    files = [p for pkg in PACKAGES + ("tests", "bench") for p in (REPO / pkg).rglob("*.py")]
    long = sorted(f"{p.relative_to(REPO)}: {n}" for p in files if (n := len(p.read_text().splitlines())) > MAX_LINES)
    assert long == []
