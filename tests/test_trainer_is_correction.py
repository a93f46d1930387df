"""rollout.is_correction: engine log-probs placed on the right positions, truncated weights and their metrics
(every mode against float64 hand cases: tests/test_offpolicy.py)."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.batch import Group, make_batch
from trainer.offpolicy import correction_weights
from trainer.rollout import Completion


def _group(prompt: list[int], comps: list[Completion]) -> Group:
    n = len(comps)
    return Group(prompt, comps, torch.zeros(n), torch.zeros(n, dtype=torch.bool), torch.ones(n))


def test_batch_places_engine_logprobs_on_the_response_targets() -> None:
    groups = [
        _group([5, 6, 7], [Completion([8, 9], [-0.5, -0.25]), Completion([10], [-2.0])]),
        _group([4], [Completion([11, 12, 13], [-1.0, -3.0, -4.0]), Completion([], [])]),
    ]
    batch = make_batch(groups, pad_id=0, device=torch.device("cpu"))
    assert batch.rollout_logp is not None and batch.rollout_logp.shape == batch.targets.shape
    # the engine's value sits where the trainer scores the same token: wherever the mask is on, and only there
    for row, comp in enumerate(c for g in groups for c in g.completions):
        got = batch.rollout_logp[row][batch.mask[row]].tolist()
        assert got == comp.logprobs
        assert batch.targets[row][batch.mask[row]].tolist() == list(comp)
    assert (batch.rollout_logp[~batch.mask] == 0).all()
    plain = make_batch([_group([5], [[8], [9]])], pad_id=0, device=torch.device("cpu"))
    assert plain.rollout_logp is None  # an engine that returned none


def test_truncated_weights_and_metrics(group_of_one) -> None:
    old = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, -0.5, -0.5]])
    roll = torch.tensor([[-1.5, -1.0, 5.0], [-0.5, -0.5, 9.0]])
    mask = torch.tensor([[True, True, False], [True, True, False]])
    w, m = correction_weights(old, roll, mask, "token_truncate", 0.0, 1.5)
    expected = torch.tensor([[1.5, math.exp(-1.0), 1.0], [1.0, 1.0, 1.0]])
    torch.testing.assert_close(w, expected)
    assert m["rollout/is_capped"] == pytest.approx(0.25)
    assert m["rollout/is_weight"] == pytest.approx((1.5 + math.exp(-1.0) + 2.0) / 4)
    assert m["rollout/logp_abs_diff"] == pytest.approx(1.5 / 4)
