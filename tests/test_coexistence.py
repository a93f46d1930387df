"""Our import names beside Hugging Face's `kernels` (which transformers >= 5.25 imports), and the lock.

- In this environment: `from transformers import PreTrainedModel` and `from fastslow.kernels import grpo_loss` both
  work, from the checkout's root and from another folder, in one interpreter.
- A non-editable install: the wheel holds no top-level `kernels`, and the same imports work from it (slow: it
  builds the wheel and installs it into a scratch venv).
- `tools/lock.py`: the lock's parse, diff and file format, and a lock committed for the CI machine's kind.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import lock  # noqa: E402  (tools/ is no package)

_BOTH = """
import json, sys
from transformers import PreTrainedModel
from fastslow.kernels import grpo_loss, linear_grpo_loss, low_var_kl, reposition_, token_logprobs
import fastslow.kernels
hf = None
try:
    import kernels
    hf = getattr(kernels, "__file__", None) or str(list(kernels.__path__))
except ImportError:
    pass
print(json.dumps({"ours": fastslow.kernels.__file__, "hf_kernels": hf, "model": PreTrainedModel.__name__}))
"""


def _run(code: str, cwd: Path, env: dict[str, str] | None = None) -> dict:
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("where", ["checkout", "elsewhere"])
def test_transformers_and_our_kernels_in_one_process(where: str, tmp_path: Path) -> None:
    cwd = ROOT if where == "checkout" else tmp_path
    got = _run(_BOTH, cwd)
    assert Path(got["ours"]).resolve() == ROOT / "fastslow" / "kernels" / "__init__.py"
    assert got["model"] == "PreTrainedModel"
    if got["hf_kernels"] is not None:  # Hugging Face's package, where transformers brought it: never ours
        assert str(ROOT) not in got["hf_kernels"] or ".venv" in got["hf_kernels"], got


def test_hugging_face_kernels_is_theirs() -> None:
    """Where Hugging Face's `kernels` is installed, the name resolves to it, from the checkout's root too."""
    spec = importlib.util.find_spec("kernels")
    if spec is None:
        pytest.skip("Hugging Face's kernels is not installed (transformers < 5.25 does not need it)")
    assert spec.origin is None or Path(spec.origin).resolve().parent != ROOT / "kernels"
    assert not (ROOT / "kernels").exists()


@pytest.mark.slow
def test_wheel_has_no_top_level_kernels_and_imports_from_a_venv(tmp_path: Path) -> None:
    """`pip wheel .` (no build isolation: no registry needed), the wheel's file list, then `pip install` of the wheel
    into a scratch venv that sees this environment's dependencies through a .pth line (so torch and transformers are
    not installed twice) but not its editable install of fastslow."""
    src = tmp_path / "src"  # a clean copy: a stale build/ in the checkout could slip old files into the wheel
    junk = (".venv*", ".git", "build", "dist", "runs", "*.egg-info", "__pycache__", "*.so", ".pytest_cache", "gpu_*")
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(*junk), symlinks=True)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(src)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("fastslow-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/", 1)[0] for n in names}
    assert "kernels" not in tops and not any(n.startswith("kernels.") for n in tops), sorted(tops)
    assert {"fastslow", "trainer"} <= tops
    assert "fastslow/kernels/__init__.py" in names
    in_source = {
        str(init.parent.relative_to(ROOT)) + "/__init__.py"
        for top in ("fastslow", "trainer")
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert in_source - set(names) == set(), "packages missing from the wheel"
    assert any(n.startswith("fastslow/kernels/_fastslow_cpu") for n in names) or os.environ.get("FASTSLOW_NO_NATIVE")

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    (site / "_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for cwd in (tmp_path, ROOT):
        out = subprocess.run([str(py), "-c", _BOTH], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        got = json.loads(out.stdout.strip().splitlines()[-1])
        if cwd == tmp_path:  # from the checkout's root, the source tree comes first on sys.path, as for any project
            assert Path(got["ours"]).resolve().is_relative_to(site.resolve()), got
        assert got["model"] == "PreTrainedModel"


def test_lock_parse_and_diff() -> None:
    text = "# header\n\nTorch==2.13.0+cpu\ntyping_extensions==4.12.2  # why\n-e file:///x\nnumpy==2.1.0\n"
    locked = lock.parse(text)
    assert locked == {"torch": "2.13.0+cpu", "typing-extensions": "4.12.2", "numpy": "2.1.0"}
    now = {"torch": "2.13.0+cpu", "typing-extensions": "4.13.0", "kernels": "0.19.1"}
    assert lock.diff(locked, now) == [
        "new:   kernels 0.19.1",
        "gone:  numpy 2.1.0",
        "moved: typing-extensions 4.12.2 -> 4.13.0",
    ]
    assert lock.diff(locked, dict(locked)) == []
    rendered = lock.render(locked, "linux-x86_64-py311-cpu")
    assert lock.parse(rendered) == locked and rendered.startswith("# fastslow lock for linux-x86_64-py311-cpu")


def test_machine_kind_names_the_accelerator() -> None:
    py = f"py{sys.version_info[0]}{sys.version_info[1]}"
    assert lock.machine_kind(has_cuda=False).endswith(f"-{py}-cpu")
    assert lock.machine_kind(has_cuda=True).endswith(f"-{py}-cuda")


def test_a_lock_is_committed_for_the_ci_machine() -> None:
    """The CI and development machines are one kind (x86_64, CPython 3.11, no GPU): `make test` there installs
    through its lock, which pins the packages the suite cannot run without."""
    path = ROOT / "requirements" / "lock-linux-x86_64-py311-cpu.txt"
    assert path.is_file(), "run `make lock` on the CI machine kind and commit the file"
    pins = lock.parse(path.read_text(encoding="utf-8"))
    for name in ("torch", "transformers", "triton", "numpy", "math-verify", "pytest", "ruff"):
        assert name in pins, name
