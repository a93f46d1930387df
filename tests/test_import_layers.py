"""The package's module-level imports form no circle (config <-> config_io and data <-> data_parquet were two)."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("kernels", "fastslow", "trainer")


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _module_level_imports(path: Path, known: set[str]) -> set[str]:
    """Project modules imported at module level (inside `if TYPE_CHECKING:` too: a circle for a reader all the
    same); imports inside functions are deliberate lazy imports and are left out."""
    out: set[str] = set()
    body = list(ast.parse(path.read_text(encoding="utf-8")).body)
    while body:
        node = body.pop()
        if isinstance(node, (ast.If, ast.Try)):
            body += node.body + node.orelse + getattr(node, "handlers", []) + getattr(node, "finalbody", [])
        elif isinstance(node, ast.ExceptHandler):
            body += node.body
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known}
            out |= {node.module} if node.module in known else set()
    return out


def test_no_import_circles() -> None:
    files = {_module(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph = {m: _module_level_imports(p, set(files)) - {m} for m, p in files.items()}
    circles: list[list[str]] = []

    def visit(node: str, path: list[str], done: set[str]) -> None:
        for nxt in sorted(graph[node]):
            if nxt in path:
                circles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in done:
                visit(nxt, [*path, nxt], done)
        done.add(node)

    done: set[str] = set()
    for module in sorted(graph):
        if module not in done:
            visit(module, [module], done)
    # A package's __init__ re-exporting its submodules is not a circle that bites: drop parent <-> child pairs.
    nested = lambda a, b: b.startswith(a + ".") or a.startswith(b + ".")
    real = [c for c in circles if not any(nested(a, b) for a, b in itertools.pairwise(c))]
    assert not real, "module-level import circles: " + "; ".join(" -> ".join(c) for c in real)
