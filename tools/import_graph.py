"""Counts over the project's import graph: modules, import edges between them, imports that go up a layer, circles.

    python tools/import_graph.py [ROOT]        # ROOT: a checkout (default: this one)

The layers, lowest first: the kernels (`fastslow.kernels`, or the top-level `kernels` of older checkouts), the
algorithms (`fastslow`), the trainer (`trainer`). An edge is one module importing another, anywhere in the file; a
circle is a cycle of module-level imports (a package's `__init__` re-exporting its children excepted), as
`tests/test_import_layers.py` counts them.
"""

from __future__ import annotations

import ast
import itertools
import sys
from pathlib import Path

PACKAGES = ("kernels", "fastslow", "trainer")
LAYERS = ("kernels", "fastslow.kernels", "fastslow", "trainer")
RANK = {"kernels": 0, "fastslow.kernels": 0, "fastslow": 1, "trainer": 2}


def module_name(root: Path, path: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    """0 kernels, 1 algorithms, 2 trainer; -1 for anything else."""
    found = [p for p in LAYERS if module == p or module.startswith(p + ".")]
    return RANK[max(found, key=len)] if found else -1


def imports(path: Path, known: set[str], *, module_level: bool) -> set[str]:
    """Project modules `path` imports (only at module level, `if`/`try` blocks included, when `module_level`)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes: list[ast.AST] = list(tree.body) if module_level else list(ast.walk(tree))
    out: set[str] = set()
    while nodes:
        node = nodes.pop()
        if module_level and isinstance(node, (ast.If, ast.Try)):
            nodes += node.body + node.orelse + getattr(node, "handlers", []) + getattr(node, "finalbody", [])
        elif module_level and isinstance(node, ast.ExceptHandler):
            nodes += node.body
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known}
            out |= {node.module} if node.module in known else set()
    return out


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    found: list[list[str]] = []
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(graph[node]):
            if nxt in path:
                found.append([*path[path.index(nxt) :], nxt])
            elif nxt not in done:
                visit(nxt, [*path, nxt])
        done.add(node)

    for module in sorted(graph):
        if module not in done:
            visit(module, [module])
    nested = lambda a, b: b.startswith(a + ".") or a.startswith(b + ".")
    return [c for c in found if not any(nested(a, b) for a, b in itertools.pairwise(c))]


def counts(root: Path) -> dict[str, int]:
    files = {module_name(root, p): p for pkg in PACKAGES if (root / pkg).is_dir() for p in (root / pkg).rglob("*.py")}
    known = set(files)
    every = {m: imports(p, known, module_level=False) - {m} for m, p in files.items()}
    top = {m: imports(p, known, module_level=True) - {m} for m, p in files.items()}
    up = sum(1 for m, targets in every.items() for t in targets if layer(t) > layer(m))
    return {
        "modules": len(files),
        "import edges": sum(len(t) for t in every.values()),
        "imports up a layer": up,
        "module-level circles": len(circles(top)),
    }


if __name__ == "__main__":
    where = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1]
    for key, value in counts(where).items():
        print(f"{key}: {value}")
