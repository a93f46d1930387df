"""`make gpu-check` on a CPU: its plan, the wheel-folder install, and the summary it prints from real results.

The GPU steps themselves need a GPU; what runs here is everything around them: the dry run (every command the check
would run), installing a missing pure-Python tool from a wheel folder with no index, and the summary and headline
ratios computed from the committed CPU benchmark JSON, a junit file and a metrics file.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from bench import gpu_check, gpu_deps

ROOT = Path(__file__).resolve().parents[1]
CPU_BENCH = ROOT / "bench" / "results" / "intel-r-xeon-r-processor_2026-11-22T0350Z.json"


def test_dry_run_plans_every_step(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run(
        [sys.executable, "-m", "bench.gpu_check", "--dry-run", "--wheels", str(tmp_path / "none"),
         "--deps-dir", str(tmp_path / "deps")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    assert "tests/test_token_logprobs.py" in text and "tests/test_triton_compile.py" not in text
    assert text.count("--benchmark-only") == len(gpu_check.BENCH_MODULES)
    assert "--nproc_per_node=1 -m trainer.main" in text and "model.dtype=bfloat16" in text
    assert "optim.total_steps=20" in text and "tests/test_vllm_gpu.py" in text
    assert "model.cpu_offload=true" in text  # the offloaded run, with its own GPU peak
    assert not (tmp_path / "deps").exists()  # a dry run installs nothing


def _wheel(folder: Path, dist: str, module: str, source: str) -> Path:
    """A minimal py3-none-any wheel holding one module."""
    name = dist.replace("-", "_")
    info = f"{name}-1.0.dist-info"
    files = {
        f"{module}.py": source,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    files[f"{info}/RECORD"] = "\n".join([*record, f"{info}/RECORD,,"]) + "\n"
    wheel = folder / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
    return wheel


def test_missing_tools_install_from_the_wheel_folder_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels, "fastslow-fake-tool", "fastslow_fake_tool", "ANSWER = 42\n")
    monkeypatch.setattr(
        gpu_deps,
        "PURE_PYTHON",
        {"pytest": "pytest", "fastslow_fake_tool": "fastslow-fake-tool", "fastslow_absent_tool": "absent-tool"},
    )
    target = tmp_path / "deps"
    report = gpu_deps.install(wheels, target)
    assert report.installed == ["fastslow_fake_tool-1.0-py3-none-any.whl"]
    assert set(report.present) == {"pytest"} and set(report.missing) == {"absent-tool"}
    assert "no wheel for it" in report.missing["absent-tool"]
    assert (target / "fastslow_fake_tool.py").read_text() == "ANSWER = 42\n"
    again = gpu_deps.install(wheels, target)  # now importable from the target: nothing more to do
    assert again.installed == [] and "fastslow-fake-tool" in again.present
    assert any(line.startswith("MISSING absent-tool") for line in report.lines())


def test_every_carried_distribution_is_pinned() -> None:
    pins = gpu_deps.pins()
    assert len(pins) == len(gpu_deps.PURE_PYTHON) and all("==" in p for p in pins)


def test_summary_from_real_results(tmp_path: Path) -> None:
    data = json.loads(CPU_BENCH.read_text())
    half = len(data["benchmarks"]) // 2
    parts = [dict(data, benchmarks=data["benchmarks"][:half]), dict(data, benchmarks=data["benchmarks"][half:])]
    merged = gpu_check.merge_bench(parts)
    assert merged["benchmarks"] == data["benchmarks"] and merged["machine_info"] == data["machine_info"]
    heads = {h["case"]: h for h in gpu_check.headline(merged)}
    grpo = heads["grpo_kl fwd+bwd B32-T1024 fp32"]  # README's table of this run: eager 1.14x, compiled 0.29x
    assert round(grpo["ratios"]["eager"], 2) == 1.14 and round(grpo["ratios"]["compiled"], 2) == 0.29
    assert 0 < grpo["fraction_of_ceiling"] < 1 and grpo["rate_unit"] == "GB/s"

    junit = tmp_path / "j.xml"
    junit.write_text('<testsuites><testsuite tests="5" failures="1" errors="0" skipped="2"/></testsuites>')
    assert gpu_check.junit_counts(junit) == {"tests": 5, "failures": 1, "errors": 0, "skipped": 2}
    metrics = tmp_path / "metrics.jsonl"
    rows = [{"step": i, "actor/grad_norm": 0.5, "tokens_per_s": 100.0 + i, "mem/gpu_peak_alloc_gb": 1.0 + i,
             "actor/skipped_updates": 0.0, "accuracy": 0.25} for i in range(3)]  # fmt: skip
    metrics.write_text("\n".join(json.dumps(r) for r in [{"eval/x": 1.0}, *rows]) + "\n")
    run = gpu_check.trainer_summary(metrics)
    assert run["steps"] == 3 and run["finite"] and run["tokens_per_s"] == 102.0 and run["gpu_peak_alloc_gb"] == 3.0

    info = {"device": "GPU X", "date": "d", "versions": {"torch": "2.11"}, "deps": [], "notes": [],
            "ceilings": {"matmul_tflops": 900.0, "copy_gbps": 4000.0}, "peak_gpu_bytes": 3 * 2**30}  # fmt: skip
    steps = [gpu_check.Step("kernel tests", "pass", "3 passed"), gpu_check.Step("vLLM GPU tests", "skip")]
    lines = gpu_check.summary_lines(info, steps, list(heads.values()))
    assert lines[-1] == "gpu-check: PASS" and "peak GPU memory in use (all processes): 3.0 GiB" in lines
    assert any(line.startswith("grpo_kl fwd+bwd B32-T1024 fp32 |") and "eager 1.14x" in line for line in lines)
    steps.append(gpu_check.Step("trainer", "fail", "exit 1"))
    assert gpu_check.summary_lines(info, steps, [])[-1] == "gpu-check: FAIL"


def test_steps_past_their_time_fail_and_say_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real step runner with every cap at a second: each command is started, killed with its children, and its
    step reported as a timeout, without waiting for it."""
    monkeypatch.setattr(gpu_check, "CAPS", dict.fromkeys(gpu_check.CAPS, 1.0))
    env = gpu_check._env(tmp_path / "deps")
    steps, parts = gpu_check.run_steps(tmp_path, env, deadline=float("inf"), has_vllm=False)
    by = {s.name.split(" ")[0]: s for s in steps}
    assert [s.status for s in steps] == ["fail", "fail", "fail", "fail", "skip"] and parts == []
    assert by["kernel"].detail.startswith("timed out") and by["trainer:"].detail.startswith("timed out; 0 steps")
    assert all(s.seconds < 30 for s in steps)
