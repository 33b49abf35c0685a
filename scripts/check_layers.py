"""Fails when the chat server's top-level modules import each other in a cycle.

The server is layered: shells (http, ws) over the engine over the ports (bus,
store) and the model. A module reaches another through `crate::NAME` (a `use`
or a path in code); this script collects those edges between the top-level
modules of server/src, ignoring `#[cfg(test)]` modules, and prints every
cycle it finds.

  python3 scripts/check_layers.py            # exit 1 and the cycles, if any
  python3 scripts/check_layers.py --graph    # also print every edge
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "server" / "src"
CRATE_PATH = re.compile(r"\bcrate::([a-z_][a-z0-9_]*)")
# `use crate::{a, b::c}` names several modules at once.
CRATE_GROUP = re.compile(r"\bcrate::\{([^}]*)\}", re.S)


def module_of(path: Path) -> str | None:
    """The top-level module a source file belongs to (None for lib.rs/main.rs)."""
    relative = path.relative_to(ROOT)
    if len(relative.parts) == 1:
        stem = relative.stem
        return None if stem in ("lib", "main") else stem
    return relative.parts[0]


def without_tests(source: str) -> str:
    """The source up to its `#[cfg(test)]` module: tests may reach anywhere."""
    at = source.find("#[cfg(test)]")
    return source if at < 0 else source[:at]


def edges() -> dict[str, set[str]]:
    modules = {module_of(p) for p in ROOT.rglob("*.rs")} - {None}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for path in ROOT.rglob("*.rs"):
        source = module_of(path)
        if source is None:
            continue
        code = without_tests(path.read_text())
        names = set(CRATE_PATH.findall(code))
        for group in CRATE_GROUP.findall(code):
            names.update(part.strip().split("::")[0] for part in group.split(","))
        graph[source].update(n for n in names if n in modules and n != source)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def main() -> int:
    graph = edges()
    if "--graph" in sys.argv:
        for module in sorted(graph):
            print(f"{module} -> {', '.join(sorted(graph[module])) or '-'}")
    found = cycles(graph)
    for component in found:
        inside = [
            f"{a} -> {b}" for a in component for b in sorted(graph[a]) if b in component
        ]
        print(f"import cycle among {', '.join(component)}: {'; '.join(inside)}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
