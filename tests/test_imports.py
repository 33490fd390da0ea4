"""The package's shape: no import cycle inside `climb_jax/`, and no module longer than a screenful of
screens (400 lines) in `climb_jax/`, `launch/` or `benchmarks/`.

The import graph is read from the source (an AST pass, nothing is imported): every `import` and
`from ... import` of a `climb_jax` module anywhere in a file, late imports inside functions and
`if TYPE_CHECKING:` blocks included, is an edge. A late import hides a cycle from Python but not from
the reader, so it counts here as well.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

PACKAGE = "climb_jax"
MAX_LINES = 400
LINE_LIMITED = ("climb_jax", "launch", "benchmarks")


def module_files(root: Path = REPO, package: str = PACKAGE) -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name, for its __init__.py)."""
    modules = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The module `name` names, or the nearest enclosing module of the package (`a.b.attr` -> `a.b`)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imported_modules(module: str, path: Path, modules: dict[str, Path]) -> dict[str, int]:
    """The package's modules `module` imports, each with the line of its first import."""
    is_package = path.name == "__init__.py"
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's package, up level - 1 packages
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            # `from pkg import mod` imports the module pkg.mod; `from mod import name` imports mod.
            names = [f"{origin}.{alias.name}" for alias in node.names]
        for name in names:
            if name.split(".")[0] != PACKAGE:
                continue
            target = _resolve(name, modules)
            if target is not None and target != module:
                found.setdefault(target, node.lineno)
    return found


def import_graph(root: Path = REPO) -> dict[str, dict[str, int]]:
    modules = module_files(root)
    return {m: imported_modules(m, p, modules) for m, p in modules.items()}


def import_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle through each strongly connected component of more than one module (Tarjan's)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(v: str) -> None:  # recursion depth is bounded by the number of modules (~150)
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return [_cycle_in(sorted(c), graph) for c in sorted(components)]


def _cycle_in(component: list[str], graph: dict[str, dict[str, int]]) -> list[str]:
    """The shortest cycle through the component's first module, found breadth-first inside it."""
    start, members = component[0], set(component)
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v]):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return path[::-1] + [start]
                if w in members and w not in parents:
                    parents[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle through {start} in {component}")  # pragma: no cover - Tarjan's found one


def describe(cycle: list[str], graph: dict[str, dict[str, int]]) -> str:
    modules = module_files()
    steps = [f"{a} (line {graph[a][b]} of {modules[a].relative_to(REPO)}) imports {b}"
             for a, b in zip(cycle, cycle[1:])]
    return " -> ".join(cycle) + "\n    " + "\n    ".join(steps)


def test_no_import_cycle_inside_the_package():
    graph = import_graph()
    cycles = import_cycles(graph)
    assert not cycles, "import cycles inside climb_jax/ (move the function to the module that owns " \
        "the fact, rather than import late):\n  " + "\n  ".join(describe(c, graph) for c in cycles)


def test_the_cycle_finder_finds_late_relative_and_from_imports(tmp_path):
    """The finder itself, on a package built for it: a late `from pkg import mod` inside a function and a
    relative import close a cycle; an import of a name from a module is an edge to that module."""
    pkg = tmp_path / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from climb_jax.sub.b import thing\n")
    (pkg / "sub" / "b.py").write_text("from . import c\nthing = 1\n")
    (pkg / "sub" / "c.py").write_text("def late():\n    from climb_jax import a\n    return a\n")
    (pkg / "d.py").write_text("import climb_jax.a\nimport numpy\n")
    graph = {m: imported_modules(m, p, module_files(tmp_path)) for m, p in module_files(tmp_path).items()}
    assert graph["climb_jax.d"] == {"climb_jax.a": 1}
    assert import_cycles(graph) == [["climb_jax.a", "climb_jax.sub.b", "climb_jax.sub.c", "climb_jax.a"]]
    (pkg / "sub" / "c.py").write_text("def late():\n    return 1\n")
    graph = {m: imported_modules(m, p, module_files(tmp_path)) for m, p in module_files(tmp_path).items()}
    assert import_cycles(graph) == []


def test_no_module_over_400_lines():
    long = {}
    for folder in LINE_LIMITED:
        for path in sorted((REPO / folder).rglob("*.py")):
            lines = len(path.read_text().splitlines())
            if lines > MAX_LINES:
                long[str(path.relative_to(REPO))] = lines
    assert not long, f"modules over {MAX_LINES} lines (split each along a seam, one job per module): {long}"
