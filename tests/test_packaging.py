"""Packaging promises: no accidental CUDA torch, no torch in the build environment, the two commands wired up."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0].lower() for r in requirements}


def test_base_install_never_pulls_torch():
    """torch comes only from an explicit pin or the `torch` extra, never as a side effect of `pip install .`."""
    project = pyproject()["project"]
    assert "torch" not in names(project["dependencies"])
    assert "torch" in names(project["optional-dependencies"]["torch"])
    for extra, reqs in project["optional-dependencies"].items():
        if extra != "torch":
            assert "torch" not in names(reqs), f"extra {extra!r} would pull torch"


def test_build_does_not_need_torch():
    assert names(pyproject()["build-system"]["requires"]) <= {"setuptools", "wheel"}
    assert not re.search(r"^\s*(import torch|from torch)", (ROOT / "setup.py").read_text(), re.M)


def test_makefile_pins_torch_and_offers_the_two_commands():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^TORCH_SPEC \?= torch==\d+\.\d+\.\d+$", makefile, re.M)
    for target in ("run", "test"):
        assert re.search(rf"^{target}: ", makefile, re.M)
    assert "-m trainer.main" in makefile
    readme = (ROOT / "README.md").read_text()
    assert "make run" in readme and "make test" in readme


def test_ci_runs_make_test_and_fails_on_errors():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "set -euo pipefail" in ci and "make test" in ci
    assert "|| true" not in ci


def test_markers_are_declared():
    markers = " ".join(pyproject()["tool"]["pytest"]["ini_options"]["markers"])
    for marker in ("gpu", "slow", "distributed"):
        assert f"{marker}:" in markers
