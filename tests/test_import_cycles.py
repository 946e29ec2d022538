"""No import cycles anywhere in engine/ or desktop/, function-level imports included (they hide
cycles from Python but not from a reader)."""

from __future__ import annotations

import grimp


def _cycles(graph: grimp.ImportGraph, modules: set[str]) -> list[list[str]]:
    """Every import cycle, as found by a depth-first walk (one path per cycle start)."""
    found, state, path = [], {}, []

    def visit(module: str) -> None:
        state[module] = "open"
        path.append(module)
        for target in sorted(graph.find_modules_directly_imported_by(module) & modules):
            if state.get(target) == "open":
                found.append([*path[path.index(target):], target])
            elif target not in state:
                visit(target)
        path.pop()
        state[module] = "done"

    for module in sorted(modules):
        if module not in state:
            visit(module)
    return found


def test_no_import_cycles():
    graph = grimp.build_graph("engine", "desktop")
    modules = {m for m in graph.modules if m.split(".")[0] in ("engine", "desktop")}
    # A package's __init__ that re-exports its own modules is not a cycle of design.
    cycles = [c for c in _cycles(graph, modules)
              if not all(m == c[0] or m.startswith(c[0] + ".") or c[0].startswith(m + ".")
                         for m in c)]
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)
