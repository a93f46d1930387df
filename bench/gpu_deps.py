"""The pure-Python packages `make gpu-check` needs, carried as wheels to a GPU machine that reaches no registry.

A bare GPU machine has its own torch, triton and transformers (their builds must match its CUDA driver: never
replaced here) but not the test and benchmark tools. On a machine with a registry,

    python -m bench.gpu_deps fetch gpu_wheels/     # pip download --no-deps of the pinned wheels (~15 MB)

and carry `gpu_wheels/` with the source tree. `install(...)` then puts only what the GPU machine's python lacks into
a folder of its own (`pip install --no-index --find-links gpu_wheels --no-deps --target .gpu_deps`), added to the
subprocesses' `PYTHONPATH`: its site-packages stay untouched. The pins are the versions the CPU suite passes with
(those installed where `fetch` runs, else `FALLBACK_PINS`).
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

# import name -> distribution; every one of these has a py3-none-any wheel
PURE_PYTHON: dict[str, str] = {
    "pytest": "pytest",
    "pluggy": "pluggy",
    "iniconfig": "iniconfig",
    "packaging": "packaging",
    "pygments": "pygments",
    "pytest_benchmark": "pytest-benchmark",
    "cpuinfo": "py-cpuinfo",
    "pytest_timeout": "pytest-timeout",
    "math_verify": "math-verify",
    "latex2sympy2_extended": "latex2sympy2_extended",
    "sympy": "sympy",
    "mpmath": "mpmath",
    "antlr4": "antlr4-python3-runtime",
    "liger_kernel": "liger-kernel",
    "pynvml": "nvidia-ml-py",
    "tomli_w": "tomli-w",
}
FALLBACK_PINS = {"py-cpuinfo": "9.0.0", "liger-kernel": "0.8.5", "nvidia-ml-py": "13.615.71"}
"""Versions for the distributions not installed where `fetch` runs (the CPU venv has no liger or NVML)."""


@dataclass
class DepsReport:
    """What `install` found: present already, installed from the wheel folder, or still missing (and why)."""

    present: dict[str, str] = field(default_factory=dict)  # distribution -> version
    installed: list[str] = field(default_factory=list)  # wheel file names
    missing: dict[str, str] = field(default_factory=dict)  # distribution -> reason
    target: str | None = None
    dry_run: bool = False

    def lines(self) -> list[str]:
        out = []
        if self.installed:
            verb = "would install" if self.dry_run else "installed"
            out.append(f"{verb} from wheels into {self.target}: {', '.join(self.installed)}")
        if self.present:
            out.append("already present: " + ", ".join(f"{d} {v}" for d, v in sorted(self.present.items())))
        for dist, why in sorted(self.missing.items()):
            out.append(f"MISSING {dist}: {why}")
        return out


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def pins() -> list[str]:
    """`dist==version` for every carried distribution."""
    return [f"{d}=={_version(d) or FALLBACK_PINS.get(d, '')}".rstrip("=") for d in PURE_PYTHON.values()]


def fetch(folder: Path) -> int:
    """Download the pinned wheels (no dependencies resolved: the list is complete) into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(folder), *pins()]
    print(" ".join(cmd), flush=True)
    return subprocess.call(cmd)


def _wheel_for(folder: Path, dist: str) -> Path | None:
    stem = dist.replace("-", "_").lower()
    found = sorted(p for p in folder.glob("*.whl") if p.name.lower().startswith(stem + "-"))
    return found[-1] if found else None


def missing_modules(extra_paths: list[Path] | None = None) -> list[str]:
    """The import names of `PURE_PYTHON` this python cannot import (looking in `extra_paths` too)."""
    saved = list(sys.path)
    sys.path[:0] = [str(p) for p in extra_paths or []]
    try:
        return [m for m in PURE_PYTHON if importlib.util.find_spec(m) is None]
    finally:
        sys.path[:] = saved
        importlib.invalidate_caches()


def install(wheels: Path | None, target: Path, *, dry_run: bool = False) -> DepsReport:
    """Install what is missing from `wheels` into `target` (no index, no dependency resolution)."""
    report = DepsReport(target=str(target), dry_run=dry_run)
    lacking = set(missing_modules([target]))
    for module, dist in PURE_PYTHON.items():
        if module not in lacking:
            report.present[dist] = _version(dist) or "(importable)"
    todo: list[Path] = []
    for module in sorted(lacking):
        dist = PURE_PYTHON[module]
        wheel = _wheel_for(wheels, dist) if wheels is not None and wheels.is_dir() else None
        if wheel is None:
            where = f"no wheel for it in {wheels}" if wheels is not None else "no wheel folder given"
            report.missing[dist] = f"{where} (fetch them: python -m bench.gpu_deps fetch DIR)"
        else:
            todo.append(wheel)
    if todo and not dry_run:
        cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--find-links", str(wheels),
               "--target", str(target), "--quiet", *map(str, todo)]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            for wheel in todo:
                report.missing[wheel.name] = f"pip install failed: {out.stderr.strip()[-300:]}"
            return report
    report.installed = [w.name for w in todo]
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_deps", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("fetch", help="download the wheels").add_argument("folder", type=Path)
    sub.add_parser("pins", help="print the pinned distributions")
    args = parser.parse_args(argv)
    if args.command == "pins":
        print("\n".join(pins()))
        return 0
    return fetch(args.folder)


if __name__ == "__main__":
    raise SystemExit(main())
