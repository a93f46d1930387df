"""trainer.checkpoint.check: a damaged checkpoint is named (the file and what is wrong) and `--resume auto` falls
back to the newest whole one; the trainer state is written once and loads at any world size (older per-rank files
too); each step's RNG streams come from (seed, step, rank). World size 1, in this process; the runs under torchrun
are in tests/test_resume_any_world.py."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from test_trainer_checkpoint import _lm, _sharded, _train

from trainer.checkpoint import TRAINER_STATE, load_checkpoint, save_checkpoint, seed_step, trainer_state_file
from trainer.checkpoint.check import damage, resume_candidates
from trainer.checkpoint.checksums import CHECKSUMS


def _cut(path: Path) -> None:
    """Keeps the first half of the file's bytes, as a full disk or an interrupted copy would."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture
def run(group_of_one, tmp_path: Path) -> tuple[Path, list[Path]]:
    """A run folder with three whole checkpoints (steps 1-3; `latest` names step 3)."""
    policy, opt = _sharded(_lm(seed=0))
    _train(policy, opt, 1, seed=1)
    paths = [save_checkpoint(tmp_path, s, policy, opt, {"step": s}, keep=0) for s in (1, 2, 3)]
    return tmp_path, paths


def test_each_kind_of_damage_is_named(run) -> None:
    _, (one, two, three) = run
    assert [damage(p) for p in (one, two, three)] == [None, None, None]
    shard = next(three.glob("*.distcp"))
    size = shard.stat().st_size
    _cut(shard)
    assert damage(three) == f"{shard} is cut short ({size // 2} of at least {size} bytes)"  # its last item ends it
    _cut(two / TRAINER_STATE)
    assert damage(two).startswith(f"{two / TRAINER_STATE} does not load (")
    assert "\n" not in damage(two)

    for name, expect in ((".metadata", "does not read"), ("meta.json", "does not read")):
        broken = one.with_name("copy")
        shutil.copytree(one, broken)
        _cut(broken / name)
        assert damage(broken).startswith(f"{broken / name} {expect} (")
        shutil.rmtree(broken)
    broken = one.with_name("copy")
    shutil.copytree(one, broken)
    (shard := next(broken.glob("*.distcp"))).unlink()
    assert damage(broken) == f"{shard} is missing"
    (broken / TRAINER_STATE).unlink()
    shutil.copy(one / next(one.glob("*.distcp")).name, shard)
    assert damage(broken) == f"{broken / TRAINER_STATE} is missing"


def _zero_inside(path: Path, start: int, length: int) -> None:
    """Zero `length` bytes from `start` in place: the size stays, as after a bad block or a copy that wrote holes."""
    with open(path, "r+b") as f:
        f.seek(start)
        f.write(bytes(length))


def test_bytes_changed_in_place_are_found_by_the_checksums(run) -> None:
    """Before: a shard with bytes zeroed inside one tensor passed every check and resumed silently."""
    _, (one, two, three) = run
    entries = json.loads((three / CHECKSUMS).read_text())["crc32"]
    assert set(entries) == {p.name for p in three.iterdir() if p.name != CHECKSUMS}  # every file, each rank's shards
    shard = next(three.glob("*.distcp"))
    _zero_inside(shard, shard.stat().st_size // 3, 4096)
    assert damage(three) == f"{shard} does not match its checksum (its bytes changed after it was written)"
    (two / "meta.json").write_text((two / "meta.json").read_text().replace('"torch"', '"torch" '))
    assert damage(two) == f"{two / 'meta.json'} has {(two / 'meta.json').stat().st_size} bytes, " + (
        f"{(two / 'meta.json').stat().st_size - 1} when written"
    )
    (one / CHECKSUMS).write_text("{not json")
    assert damage(one).startswith(f"{one / CHECKSUMS} does not read (")


def test_auto_resume_falls_back_to_the_newest_whole_checkpoint(run) -> None:
    run_dir, (one, two, three) = run
    choice = resume_candidates(run_dir)
    assert choice.candidates == [three, two, one] and choice.warnings == [] and choice.damaged is None

    _cut(next(three.glob("*.distcp")))
    (run_dir / "checkpoints" / "step_00000004.tmp").mkdir()  # a save killed midway, as before
    choice = resume_candidates(run_dir)
    assert choice.candidates == [two, one] and choice.complete == 3
    assert choice.warnings[0].startswith("ignoring incomplete checkpoint") and "step_00000004.tmp" in choice.warnings[0]
    assert choice.damaged == choice.warnings[1]
    assert choice.damaged.startswith(f"checkpoint {three} is damaged ({three}/") and "cut short" in choice.damaged

    (run_dir / "checkpoints" / "latest").write_text("step_00000001\n")  # `latest` is tried first, then newest first
    assert resume_candidates(run_dir).candidates == [one, two]

    _cut(two / TRAINER_STATE)
    _cut(one / ".metadata")
    choice = resume_candidates(run_dir)
    assert choice.candidates == [] and choice.complete == 3 and len(choice.warnings) == 4


def test_trainer_state_is_written_once_and_older_per_rank_files_load(run) -> None:
    _, (one, _, _) = run
    assert sorted(p.name for p in one.glob("trainer_state*")) == [TRAINER_STATE]
    assert trainer_state_file(one, 3) == one / TRAINER_STATE
    # A checkpoint written before: one file per rank (2 ranks here), resumed by any number of processes.
    (one / TRAINER_STATE).rename(one / "trainer_state_rank0.pt")
    torch.save({"step": 11}, one / "trainer_state_rank1.pt")
    (one / CHECKSUMS).unlink()  # written before checksums existed too
    assert damage(one) is None
    assert trainer_state_file(one, 1) == one / "trainer_state_rank1.pt"
    assert trainer_state_file(one, 5) == one / "trainer_state_rank0.pt"
    policy, opt = _sharded(_lm(seed=3))
    assert load_checkpoint(one, policy, opt) == {"step": 1}  # rank 0 reads its own


def _draw() -> tuple[float, float, list[float]]:
    return random.random(), float(np.random.rand()), torch.rand(2).tolist()


def test_step_streams_depend_on_seed_step_and_rank_only() -> None:
    seed_step(7, 3, 1)
    first = _draw()
    _draw()
    seed_step(7, 3, 1)
    assert _draw() == first
    others = set()
    for args in ((7, 3, 0), (7, 4, 1), (8, 3, 1)):
        seed_step(*args)
        others.add(_draw()[0])
    assert first[0] not in others and len(others) == 3
