"""`trainer.batch.make_batch` (built from padded lists and length masks) against a per-sequence reference."""

from __future__ import annotations

import random

import pytest
import torch

from trainer.batch import IGNORE_INDEX, Group, make_batch
from trainer.rollout.base import Completion


def _reference(groups: list[Group], pad: int) -> dict[str, torch.Tensor]:
    """Each sequence written into its row in turn: prompt + response, targets shifted by one over the response."""
    seqs = [(g.prompt_ids, c) for g in groups for c in g.completions]
    L = max(2, max(len(p) + len(c) for p, c in seqs))
    ids = torch.full((len(seqs), L), pad)
    att = torch.zeros(len(seqs), L, dtype=torch.long)
    tgt = torch.full((len(seqs), L - 1), IGNORE_INDEX)
    logp = torch.zeros(len(seqs), L - 1)
    for i, (p, c) in enumerate(seqs):
        for j, tok in enumerate([*p, *c]):
            ids[i, j], att[i, j] = tok, 1
        for k, tok in enumerate(c):
            tgt[i, len(p) - 1 + k] = tok
            if c.logprobs is not None:
                logp[i, len(p) - 1 + k] = c.logprobs[k]
    return {"input_ids": ids, "attention_mask": att, "targets": tgt, "mask": tgt != IGNORE_INDEX, "logp": logp}


def _groups(seed: int, logprobs: bool) -> list[Group]:
    rng = random.Random(seed)
    groups = []
    for _ in range(rng.randrange(1, 6)):
        prompt = [rng.randrange(3, 31) for _ in range(rng.randrange(1, 9))]
        comps = []
        for _ in range(rng.randrange(1, 5)):
            c = Completion([rng.randrange(3, 31) for _ in range(rng.randrange(0, 12))])  # empty ones too
            c.logprobs = [-rng.random() for _ in c] if logprobs else None
            comps.append(c)
        n = len(comps)
        groups.append(Group(prompt, comps, torch.rand(n), torch.rand(n) > 0.5, torch.rand(n)))
    return groups


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("logprobs", [False, True])
def test_make_batch_equals_the_per_sequence_layout(seed: int, logprobs: bool) -> None:
    groups = _groups(seed, logprobs)
    batch = make_batch(groups, 0, torch.device("cpu"))
    want = _reference(groups, 0)
    for name in ("input_ids", "attention_mask", "targets", "mask"):
        got = getattr(batch, name)
        assert got.dtype == want[name].dtype and torch.equal(got, want[name]), name
    if logprobs:
        torch.testing.assert_close(batch.rollout_logp, want["logp"], rtol=0, atol=0)
    else:
        assert batch.rollout_logp is None
    assert torch.equal(batch.rewards, torch.cat([g.rewards for g in groups]).float())


def test_one_prompt_token_and_empty_responses() -> None:
    groups = [
        Group([5], [Completion([]), Completion([7])], torch.zeros(2), torch.zeros(2, dtype=torch.bool), torch.zeros(2))
    ]
    batch = make_batch(groups, 0, torch.device("cpu"))
    assert batch.input_ids.tolist() == [[5, 0], [5, 7]]
    assert batch.attention_mask.tolist() == [[1, 0], [1, 1]]
    assert batch.targets.tolist() == [[IGNORE_INDEX], [7]]
