"""Packaging for fastslow: the three packages plus an optional native CPU kernel.

The native part (csrc/reposition_cpu.cpp) is plain C++ with an extern "C" interface, loaded at run time with
ctypes (fastslow/kernels/_native.py). It needs no torch headers, so the isolated build environment never installs torch,
and a machine without a compiler still installs: the build is optional and the torch path is the fallback.
"""

from __future__ import annotations

import os
import sys

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext


class OptionalNativeBuild(build_ext):
    """Builds the native CPU kernel when it can; warns and carries on when it cannot."""

    def build_extension(self, ext: Extension) -> None:
        if os.environ.get("FASTSLOW_NO_NATIVE") == "1":
            print("fastslow: FASTSLOW_NO_NATIVE=1, skipping the native CPU kernel", file=sys.stderr)
            return
        # OpenMP for threads; -O3 lets gcc/clang vectorise the lerp loops (checked with -fopt-info-vec).
        base = list(ext.extra_compile_args)
        for flags, link in ((["-fopenmp"], ["-fopenmp"]), ([], [])):
            ext.extra_compile_args = base + flags
            ext.extra_link_args = link
            try:
                super().build_extension(ext)
                return
            except Exception as err:  # any compiler failure means "fall back"
                print(f"fastslow: native build with {flags or 'no OpenMP'} failed: {err}", file=sys.stderr)
        print("fastslow: native CPU kernel not built; the torch fallback will be used", file=sys.stderr)


native = Extension(
    "fastslow.kernels._fastslow_cpu",
    sources=["csrc/reposition_cpu.cpp"],
    language="c++",
    extra_compile_args=["-O3", "-std=c++17", "-fno-math-errno"],
    optional=True,
)

setup(
    # every package folder under the two roots (a new wing is in the wheel without an edit here)
    packages=find_packages(include=["fastslow", "fastslow.*", "trainer", "trainer.*"]),
    package_data={"trainer": ["configs/*.toml"]},
    ext_modules=[native],
    cmdclass={"build_ext": OptionalNativeBuild},
)
