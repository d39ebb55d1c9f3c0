"""The import graph between kiln's first-level packages and modules, and any cycle in it.

    python tools/import_graph.py          # one line per unit: what it imports
    python tools/import_graph.py --dot    # Graphviz, e.g. | dot -Tsvg > imports.svg

Built by grimp (import-linter's engine), so imports inside functions count, as the layers
contract in pyproject.toml counts them.
"""

from __future__ import annotations

import sys
from collections import defaultdict

import grimp


def first_level_graph(package: str = "kiln") -> dict[str, set[str]]:
    graph = grimp.build_graph(package)
    edges: dict[str, set[str]] = defaultdict(set)

    def unit(module: str) -> str:
        parts = module.split(".")
        return parts[1] if len(parts) > 1 else "(kiln)"

    for module in graph.modules:
        edges.setdefault(unit(module), set())
        for imported in graph.find_modules_directly_imported_by(module):
            if unit(imported) != unit(module):
                edges[unit(module)].add(unit(imported))
    return dict(edges)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one unit (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def main() -> int:
    edges = first_level_graph()
    if "--dot" in sys.argv:
        print("digraph kiln {")
        for src in sorted(edges):
            for dst in sorted(edges[src]):
                print(f'  "{src}" -> "{dst}";')
        print("}")
        return 0
    for src in sorted(edges):
        print(f"{src:12} -> {', '.join(sorted(edges[src])) or '-'}")
    found = cycles(edges)
    print(f"cycles: {found or 'none'}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
