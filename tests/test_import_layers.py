"""The packages' imports: layered, with no circle, and `fastslow.kernels` light to import.

Layers, lowest first: `fastslow.kernels` (the kernels: torch and Triton only), `fastslow` (the algorithms), `trainer`.
No module imports a layer above its own, at module level or inside a function. Module-level imports form no circle
(config <-> config_io and data <-> data_parquet were two).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import import_graph  # noqa: E402  (tools/ is no package)

PACKAGES = ("fastslow", "trainer")
LAYERS = ("fastslow.kernels", "fastslow", "trainer")
"""Lowest first: a module may import its own layer and those before it."""


def _module(path: Path) -> str:
    return import_graph.module_name(ROOT, path)


def test_no_import_circles() -> None:
    """Module-level imports (inside `if TYPE_CHECKING:` too: a circle for a reader all the same; imports inside
    functions are deliberate lazy imports and are left out) form no circle, a package's `__init__` re-exporting its
    children excepted. The graph and the search are `tools/import_graph.py`'s."""
    files = {_module(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph = {m: import_graph.imports(p, set(files), module_level=True) - {m} for m, p in files.items()}
    real = import_graph.circles(graph)
    assert not real, "module-level import circles: " + "; ".join(" -> ".join(c) for c in real)


def _layer(module: str) -> int:
    """Index in LAYERS of the most specific layer that holds `module` (-1: not a project module)."""
    found = [i for i, layer in enumerate(LAYERS) if module == layer or module.startswith(layer + ".")]
    return max(found, key=lambda i: len(LAYERS[i])) if found else -1


def _all_imports(path: Path) -> set[str]:
    """Every absolute import anywhere in the file (module level, functions, TYPE_CHECKING blocks)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def test_no_import_goes_up_a_layer() -> None:
    up: list[str] = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            own = _layer(_module(path))
            above = sorted({m for m in _all_imports(path) if _layer(m) > own})
            up += [f"{_module(path)} imports {m}" for m in above]
    assert not up, "imports that go up a layer (fastslow.kernels < fastslow < trainer): " + "; ".join(up)


def test_layer_check_sees_function_level_imports(tmp_path: Path) -> None:
    """The check itself: an import inside a function of a kernel file counts."""
    path = tmp_path / "k.py"
    path.write_text("def f():\n    from trainer.config import Config\n    import fastslow.sfpo\n")
    assert {"trainer.config", "trainer.config.Config", "fastslow.sfpo"} <= _all_imports(path)
    assert _layer("fastslow.kernels.grpo") == 0 and _layer("fastslow.sfpo") == 1 and _layer("trainer.step") == 2
    assert _layer("kernels") == -1  # Hugging Face's package, not ours


def test_no_top_level_kernels_package() -> None:
    """The kernels live in `fastslow.kernels`: a top-level `kernels` is Hugging Face's import name (transformers
    needs it), so none may exist in the repository."""
    assert not (ROOT / "kernels").exists() and not (ROOT / "kernels.py").exists()


_PROBE = """
import json, sys, time
t0 = time.perf_counter()
import torch
try:
    import triton
except ImportError:
    pass
t1 = time.perf_counter()
import fastslow.kernels
from fastslow.kernels import grpo_loss, linear_grpo_loss, low_var_kl, reposition_, token_logprobs
t2 = time.perf_counter()
heavy = ["sympy", "math_verify", "transformers", "torch.distributed.tensor", "trainer"]
print(json.dumps({"torch_s": t1 - t0, "kernels_s": t2 - t1, "loaded": [m for m in heavy if m in sys.modules],
                  "file": fastslow.kernels.__file__}))
"""


def test_kernels_import_is_light(tmp_path: Path) -> None:
    """`import fastslow.kernels` in a fresh interpreter, from another folder: it loads none of math-verify, sympy,
    transformers, DTensor or the trainer, and costs little beyond torch and Triton themselves (measured here:
    ~0.03 s after ~0.9 s for torch and Triton, on 2 CPU cores)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", _PROBE], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["loaded"] == [], f"importing fastslow.kernels loaded {got['loaded']}"
    assert Path(got["file"]).resolve() == ROOT / "fastslow" / "kernels" / "__init__.py"
    # Generous for a loaded CI machine; the heavy imports above cost seconds (transformers ~3 s).
    assert got["kernels_s"] < max(1.0, got["torch_s"]), got


def test_the_import_graph_tool_agrees(tmp_path: Path) -> None:
    """`tools/import_graph.py` (the counts quoted in notes) sees this checkout as the tests above do, and counts an
    upward import and a circle where there is one."""
    got = import_graph.counts(ROOT)
    assert got["imports up a layer"] == 0 and got["module-level circles"] == 0 and got["modules"] > 50
    for pkg in ("fastslow/kernels", "trainer"):
        (tmp_path / pkg).mkdir(parents=True)
    (tmp_path / "fastslow" / "__init__.py").write_text("")
    (tmp_path / "fastslow" / "kernels" / "__init__.py").write_text("")
    (tmp_path / "fastslow" / "kernels" / "a.py").write_text("import trainer.b\n")
    (tmp_path / "trainer" / "__init__.py").write_text("")
    (tmp_path / "trainer" / "b.py").write_text("import fastslow.kernels.a\n")
    got = import_graph.counts(tmp_path)
    assert got["imports up a layer"] == 1 and got["module-level circles"] == 1 and got["modules"] == 5
