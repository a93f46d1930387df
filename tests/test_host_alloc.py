"""glibc's thresholds (trainer/host_alloc.py): freed buffers leave the heap while building; an unsharded rank's
steady state keeps them. The allocator checks run in a fresh interpreter: `mallopt` is process-wide."""

from __future__ import annotations

import ctypes.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainer.dist import is_sharded

ROOT = Path(__file__).resolve().parent.parent
needs_glibc = pytest.mark.skipif(
    ctypes.util.find_library("c") is None or os.confstr("CS_GNU_LIBC_VERSION") is None, reason="glibc only"
)

PROBE = r"""
import ctypes, json, sys
import torch
from trainer import host_alloc

class Info(ctypes.Structure):  # struct mallinfo2 (glibc >= 2.33)
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info

def mmapped_by(nbytes):
    before = libc.mallinfo2().hblkhd
    t = torch.empty(nbytes // 4)
    t.fill_(1.0)
    grew = libc.mallinfo2().hblkhd - before
    del t
    return grew

out = {"build": host_alloc.return_freed_memory(), "during_build": mmapped_by(4 << 20)}
out["settled"] = host_alloc.settle_unsharded()
out["after"] = mmapped_by(4 << 20)
out["large_after"] = mmapped_by(64 << 20)
print(json.dumps(out))
"""


def _probe(**extra: str) -> dict:
    """PROBE's answers in a fresh interpreter, with `extra` in its environment."""
    env = {k: v for k, v in os.environ.items() if k != "FASTSLOW_MMAP_THRESHOLD"}
    env.update(PYTHONPATH=str(ROOT), **extra)
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@needs_glibc
def test_a_buffer_is_its_own_mmap_while_building_and_heap_memory_once_settled() -> None:
    out = _probe()
    assert out["build"] and out["settled"]
    assert out["during_build"] >= 4 << 20  # 4 MiB >= 512 KiB: an mmap, given back when freed
    assert out["after"] == 0  # under the steady 32 MiB threshold: from the heap, reused
    assert out["large_after"] >= 64 << 20  # above it: still an mmap


@needs_glibc
def test_the_override_holds_in_both_phases() -> None:
    out = _probe(FASTSLOW_MMAP_THRESHOLD=str(1 << 30))
    assert out["build"] and not out["settled"]
    assert out["during_build"] == 0 and out["after"] == 0  # 1 GiB threshold: all from the heap


def test_a_sharded_policy_keeps_the_build_threshold() -> None:
    """The trainer settles only a plain module (`is_sharded` False); FSDP2's module has `reshard`."""

    class Sharded(torch.nn.Linear):
        def reshard(self) -> None:  # what FSDP2's module has
            pass

    assert is_sharded(Sharded(2, 2)) and not is_sharded(torch.nn.Linear(2, 2))


@pytest.mark.slow
def test_the_trainer_settles_once_after_its_first_step(one_rank, tmp_path: Path, monkeypatch) -> None:
    import trainer.trainer as trainer_module
    from trainer.config import from_dict

    seen: list[int] = []
    trainer_ref: list = []
    monkeypatch.setattr(trainer_module, "settle_unsharded", lambda: seen.append(trainer_ref[0].step))
    cfg = from_dict({
        "optim": {"total_steps": 3},
        "warm_start": {"mode": "off"},
        "rollout": {"prompts_per_step": 2, "group_size": 2, "max_new_tokens": 4},
        "eval": {"enabled": False},
        "checkpoint": {"every": 0, "export_hf": False},
        "logging": {"run_dir": str(tmp_path / "run"), "tensorboard": False, "plots": False},
    })  # fmt: skip
    trainer = trainer_module.Trainer(cfg, one_rank)
    trainer_ref.append(trainer)
    try:
        trainer.train()
    finally:
        trainer.close()
    assert seen == [1]
