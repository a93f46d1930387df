"""Every Triton kernel the tests launch compiles for sm_80 and sm_90 with the real compiler; none spills.

No GPU is needed: Triton builds cubins for a named target with the ptxas in its wheel. What gets compiled is what
the kernel tests launched (`bench.triton_launches`): the launches recorded earlier in this session (the kernel
tests sort before this file, so `make test` covers a new kernel or constexpr combination by itself), merged with
the committed recording `tests/triton_launches.json` (so this file alone covers them too). The compiles run in a
subprocess without `TRITON_INTERPRET` (`python -m bench.triton_compile compile`), cached between runs by kernel
source, target and version; `make compile-report` refreshes the recording and bench/results/triton_compile.md,
which adds sm_100 (a third of the compile time, left out of `make test` to keep the suite short).
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fastslow.kernels as kernels
from bench import triton_launches
from fastslow.kernels._dispatch import force_backend, interpreting
from fastslow.kernels._triton import HAS_TRITON

ROOT = Path(__file__).resolve().parent.parent


def _skip_reason() -> str | None:
    if not HAS_TRITON:
        return "Triton is not installed"
    from bench.triton_compile import compiler_problem

    return compiler_problem()


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))


def _triton_kernels() -> set[str]:
    """Every `@triton.jit` function of the `kernels` package named `*_kernel` (the launched ones; helpers such as
    `cast_rtne` are compiled as part of the kernels that call them)."""
    found = set()
    for info in pkgutil.iter_modules(kernels.__path__):
        if info.ispkg or info.name.startswith("_fastslow"):  # the native CPU library is loaded with ctypes
            continue
        module = importlib.import_module(f"fastslow.kernels.{info.name}")
        for name, obj in vars(module).items():
            jit = obj.__class__.__name__ in ("JITFunction", "InterpretedFunction")
            if jit and name.endswith("_kernel") and getattr(obj, "fn", obj).__module__ == module.__name__:
                found.add(f"{module.__name__}:{name}")
    return found


def _launches() -> list[dict]:
    return triton_launches.merged(triton_launches.load(), triton_launches.recorded())


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Every launch compiled for sm_80 and sm_90 (one subprocess)."""
    tmp = tmp_path_factory.mktemp("triton_compile")
    launches, out = tmp / "launches.json", tmp / "compiled.json"
    triton_launches.save(_launches(), launches)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # triton 3.9 warns when unset; 1 is its default
    proc = subprocess.run(
        [sys.executable, "-m", "bench.triton_compile", "compile", "--launches", str(launches), "--json", str(out),
         "--targets", "80,90"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    if not out.exists():
        pytest.fail(f"bench.triton_compile did not run (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(out.read_text())


def test_every_kernel_of_the_package_was_launched_by_a_test() -> None:
    missing = _triton_kernels() - {r["kernel"] for r in _launches()}
    assert not missing, (
        f"Triton kernels that no recorded test launch covers: {sorted(missing)}; test them under the interpreter, "
        "then `make compile-report` (python -m bench.triton_compile record) to refresh tests/triton_launches.json"
    )


def test_committed_recording_names_every_kernel_this_session_launched() -> None:
    committed = {r["kernel"] for r in triton_launches.load()}
    session = {r["kernel"] for r in triton_launches.recorded()}
    assert session <= committed, (
        f"launched here but missing from tests/triton_launches.json: {sorted(session - committed)}; "
        "run `make compile-report` and commit its two files"
    )


@pytest.mark.slow  # the compiles (about a minute on 2 cores with an empty cache)
def test_sm80_and_sm90_are_compiled(compiled: dict) -> None:
    assert {"sm_80", "sm_90"} <= set(compiled["targets"]), compiled["skipped_targets"]
    assert compiled["launches"] == len(_launches()) and compiled["rows"]


def test_every_launch_compiles(compiled: dict) -> None:
    errors = [r for r in compiled["rows"] if "error" in r]
    assert not errors, "\n".join(
        f"{r['kernel']} [{r['variant']}] {r['target']}: {r['error'].splitlines()[0]}" for r in errors[:10]
    )


def test_no_kernel_spills_registers(compiled: dict) -> None:
    from bench.triton_compile import spilling

    rows = [r for r in compiled["rows"] if "error" not in r]
    assert rows and all(r["registers"] is not None and r["spill_stores"] is not None for r in rows), (
        "ptxas' verbose log was not found: the report cannot say whether anything spills"
    )
    bad = spilling(rows)
    assert not bad, "\n".join(
        f"{r['kernel']} [{r['variant']}] {r['target']}: {r['registers']} registers, "
        f"{r['spill_stores']} B spill stores / {r['spill_loads']} B spill loads"
        for r in bad[:10]
    )


@pytest.mark.skipif(not interpreting(), reason="launches are recorded from the interpreter")
def test_a_new_launch_is_recorded_by_itself() -> None:
    from fastslow.kernels import low_var_kl

    logp = torch.randn(37, dtype=torch.float16)
    with force_backend("triton"):
        low_var_kl(logp, torch.randn(37, dtype=torch.float16))
    records = [r for r in triton_launches.recorded() if r["kernel"] == "fastslow.kernels.kl:_low_var_kl_fwd_kernel"]
    mine = [r for r in records if r["signature"]["logp_ptr"] == "*fp16" and r["signature"]["n"] == "i32"]
    assert mine and mine[0]["constexprs"]["BLOCK"] == 1024 and mine[0]["options"] == {"num_warps": 4}
    assert "n" not in mine[0]["attrs"]  # 37 is not a multiple of 16: no divisibility hint, as the launcher has it
