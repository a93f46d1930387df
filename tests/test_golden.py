"""The golden trace: the built-in job's first 20 steps reproduce tests/assets/golden/ (tests/_golden.py)."""

from __future__ import annotations

import _golden
import pytest

# Off the recorded environment (another torch, transformers or CPU vector ISA), fp32 sums run in another order and
# the losses move in their last digits: rel 1e-4 holds them while a sampled token stays the same. A token that
# flips changes accuracy by 1/128 and everything after it: that fails here too, and the trace is regenerated.
REL_ELSEWHERE = 1e-4


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("name", list(_golden.TRACES))
def test_golden_trace_of_the_built_in_job(tmp_path, name):
    """`torchrun --nproc_per_node=2 -m trainer.main` (GRPO, seed 0, one thread a process) for 20 steps with
    `_golden.OVERRIDES`: a warm start of 30 steps of 32 instead of 200 of 128 (time), no evaluation, plots,
    TensorBoard or HF export (files beside training). Loss, grad norm, reward, accuracy, response length and entropy
    of every step equal the recorded ones: exactly where they were recorded, within `REL_ELSEWHERE` elsewhere. A
    change meant to alter training regenerates them with `make golden`."""
    golden = _golden.load(name)
    recorded, here = golden["header"]["environment"], _golden.environment()
    rel = 0.0 if recorded == here else REL_ELSEWHERE
    table = _golden.diff(golden["steps"], _golden.run_job(tmp_path, name), rel)
    where = "" if rel == 0 else f"\nrecorded on {recorded}, this machine {here}: rel {rel}"
    assert not table, (
        f"training changed: the built-in job no longer reproduces {_golden.path_of(name).relative_to(_golden.ROOT)} "
        f"({'exactly' if rel == 0 else f'to rel {rel}'}){where}\n"
        + "\n".join(table)
        + f"\nif the change is meant to alter training, regenerate it: `{_golden.REGENERATE}` and commit the file"
    )
