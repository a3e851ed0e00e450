"""No import cycle between the subpackages of ``echo_megatron``.

Every ``import`` / ``from ... import`` in every module of the package is read with ``ast`` (module level AND
inside functions, classes and ``if`` blocks: a function-level import is a dependency all the same, only a
deferred one). Each import is mapped to its node: the subpackage it lands in (``echo_megatron.model.builder``
-> ``model``), or the top-level module itself (``rundir``, ``errors``, ``cli``). The test fails on any cycle
of the node graph and prints it with the import that makes each edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

from echo_testing import REPO

PKG = "echo_megatron"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _node(module: str) -> str | None:
    """``echo_megatron.<node>[...]`` -> node; None outside the package or for the package root itself."""
    parts = module.split(".")
    if parts[0] != PKG or len(parts) < 2:
        return None
    return parts[1]


def _imported(tree: ast.AST, module: str, is_package: bool) -> list[tuple[str, int]]:
    """(absolute module name, line) of every import in ``tree``; ``from X import y`` also yields ``X.y``
    (``y`` may be a submodule)."""
    out = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            out += [(a.name, n.lineno) for a in n.names]
        elif isinstance(n, ast.ImportFrom):
            if n.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (n.level - 1)]
                target = ".".join(base + ([n.module] if n.module else []))
            else:
                target = n.module or ""
            out.append((target, n.lineno))
            out += [(f"{target}.{a.name}", n.lineno) for a in n.names if a.name != "*"]
    return out


def import_graph() -> dict[str, dict[str, str]]:
    """node -> {imported node: "file:line" of one import making the edge}."""
    root = REPO / PKG
    nodes = {p.name for p in root.iterdir() if (p / "__init__.py").exists()}
    nodes |= {p.stem for p in root.glob("*.py") if p.stem != "__init__"}
    graph: dict[str, dict[str, str]] = {}
    for path in sorted((REPO / PKG).rglob("*.py")):
        module = _module_name(path)
        src = _node(module)
        if src is None:
            continue
        graph.setdefault(src, {})
        tree = ast.parse(path.read_text(), filename=str(path))
        for target, line in _imported(tree, module, path.name == "__init__.py"):
            dst = _node(target)
            if dst in nodes and dst != src:
                graph[src].setdefault(dst, f"{path.relative_to(REPO)}:{line}")
    return graph


def strongly_connected(graph: dict[str, dict[str, str]]) -> list[set[str]]:
    """The strongly connected components of ``graph`` with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = {stack.pop()}
            while v not in comp:
                comp.add(stack.pop())
            if len(comp) > 1:
                components.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


def _shortest_cycle(graph: dict[str, dict[str, str]], start: str) -> list[str] | None:
    """A shortest cycle through ``start`` (breadth first), or None."""
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph.get(v, {})):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    return None


def find_cycles(graph: dict[str, dict[str, str]]) -> list[list[str]]:
    """For every node on a cycle, a shortest cycle through it (each cycle once, rotated to its least node)."""
    cycles: list[list[str]] = []
    for comp in strongly_connected(graph):
        for v in sorted(comp):
            c = _shortest_cycle(graph, v)[:-1]
            i = c.index(min(c))
            c = c[i:] + c[:i] + [min(c)]
            if c not in cycles:
                cycles.append(c)
    return sorted(cycles)


def _describe(graph: dict[str, dict[str, str]], cycle: list[str]) -> str:
    edges = [f"  {a} -> {b}  ({graph[a][b]})" for a, b in zip(cycle, cycle[1:])]
    return " -> ".join(cycle) + "\n" + "\n".join(edges)


def test_the_graph_sees_function_level_and_relative_imports():
    """The walker itself: a function-level import and a relative import each make an edge."""
    src = "def f():\n    from echo_megatron.model import builder\nfrom ..config import loader\n"
    found = {t for t, _ in _imported(ast.parse(src), "echo_megatron.training.setup", False)}
    assert "echo_megatron.model.builder" in found and "echo_megatron.config.loader" in found
    assert find_cycles({"a": {"b": ""}, "b": {"c": ""}, "c": {"a": ""}, "d": {"a": ""}}) == [
        ["a", "b", "c", "a"]
    ]
    assert find_cycles({"a": {"b": ""}, "b": {}}) == []


def test_no_import_cycle_between_subpackages():
    graph = import_graph()
    assert len(graph) > 10  # every subpackage and top-level module was read
    cycles = find_cycles(graph)
    assert not cycles, "import cycles between echo_megatron subpackages:\n" + "\n".join(
        _describe(graph, c) for c in cycles
    )
