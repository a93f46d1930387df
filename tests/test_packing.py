"""Packed rows (trainer/packing.py, trainer/model/attention.py): the layout, sequence boundaries, packed == padded."""

from __future__ import annotations

import pytest
import torch
from _tiny import tiny_lm

from fastslow.kernels._dispatch import force_backend
from trainer.batch import Group, make_batch
from trainer.model import attention
from trainer.packing import first_fit_decreasing, make_row, pack_minibatches
from trainer.policy import Policy
from trainer.rollout.base import Completion
from trainer.step import logprobs

IMPLS = [attention.PACKED_SDPA, "sdpa", "eager"]


@pytest.fixture(autouse=True)
def _torch_kernels():
    """The kernels' torch path: their Triton path (interpreted here, slow) has its own tests; this is the layout."""
    with force_backend("torch"):
        yield


def test_first_fit_decreasing_fills_rows_and_isolates_long_sequences() -> None:
    lengths = [5, 30, 3, 9, 12, 2, 7, 1]
    rows = first_fit_decreasing(lengths, 16)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert [1] in rows  # over the budget: alone
    assert all(sum(lengths[i] for i in row) <= 16 for row in rows if row != [1])
    assert len(rows) == 1 + 3  # 49 tokens besides the long one: 4 rows of 16 would be the bound, FFD needs 3


def test_rows_restart_positions_and_name_their_sequences() -> None:
    row = make_row([2, 0], [3, 1, 2], [True, False, True], torch.device("cpu"))
    assert row.seq.tolist() == [2, 2, 0, 0, 0]
    assert row.pos.tolist() == [0, 1, 0, 1, 2]
    assert row.seq_ids.tolist() == [[0, 0, 1, 1, 1]]
    assert row.cu_seqlens.tolist() == [0, 2, 5] and row.max_len == 3 and row.scored == 2
    empty = make_row([], [3], [True], torch.device("cpu"))
    assert empty.tokens == 1 and empty.seq.tolist() == [-1] and empty.scored == 0


def _row_logp(policy: Policy, seqs: list[list[int]]) -> torch.Tensor:
    """Per-token log-probs of the concatenated `seqs` (each token's next token in its own sequence), `[N]`."""
    lengths = [len(s) for s in seqs]
    row = make_row(list(range(len(seqs))), lengths, [True] * len(seqs), torch.device("cpu"))
    ids = torch.tensor([t for s in seqs for t in s])[None]
    targets = torch.cat([torch.tensor([*s[1:], -100]) for s in seqs])[None]
    with torch.no_grad():
        logp, _ = policy(ids, None, targets, packed=row.model_kwargs(policy.attn, torch.float32))
    return logp[0]


@pytest.mark.parametrize("impl", IMPLS)
def test_a_sequence_does_not_see_its_row_neighbours(impl: str) -> None:
    policy = Policy(tiny_lm().eval(), attn_implementation=impl if impl != attention.PACKED_SDPA else "auto")
    assert policy.attn == impl
    g = torch.Generator().manual_seed(0)
    mine = torch.randint(4, 40, (9,), generator=g).tolist()
    before = torch.randint(4, 40, (5,), generator=g).tolist()
    after = torch.randint(4, 40, (6,), generator=g).tolist()
    alone = _row_logp(policy, [mine])
    a = _row_logp(policy, [before, mine, after])[5:14]
    b = _row_logp(policy, [[*after, 7], mine, before])[7:16]  # other neighbours, other lengths, another offset
    torch.testing.assert_close(a, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b, alone, atol=1e-5, rtol=1e-5)


def _batch(lengths: list[int]) -> object:
    g = torch.Generator().manual_seed(1)
    comps = [Completion(torch.randint(4, 40, (n,), generator=g).tolist()) for n in lengths]
    groups = [Group([1, 5, 6, 7], comps[:2], *[torch.zeros(2)] * 3), Group([1, 8], comps[2:], *[torch.zeros(2)] * 3)]
    return make_batch(groups, 0, torch.device("cpu"))


@pytest.mark.parametrize("impl", IMPLS)
def test_packed_logprobs_equal_padded(group_of_one, impl: str) -> None:
    batch = _batch([11, 0, 3, 25])  # an empty response; the last sequence is over the 20-token budget
    policy = Policy(tiny_lm().eval(), attn_implementation="auto" if impl == attention.PACKED_SDPA else impl)
    policy.reshard = lambda: None  # what FSDP2 adds, and `logprobs` calls
    minibatches = torch.tensor_split(torch.arange(4), 2)
    packed = pack_minibatches(minibatches, batch.attention_mask.sum(-1), batch.mask.any(-1), 20, torch.device("cpu"))
    assert [len(mb) for mb in packed.minibatches] == [1, 2]
    logp, ent = logprobs(policy, batch, 2, 0.9)
    logp_p, ent_p = logprobs(policy, batch, 2, 0.9, packed)
    m = batch.mask
    torch.testing.assert_close(logp_p[m], logp[m], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent_p[m], ent[m], atol=1e-5, rtol=1e-5)


def test_attention_choice_and_config_keys() -> None:
    from trainer.config import from_dict, load_config

    cpu = torch.device("cpu")
    assert attention.resolve("auto", cpu) == attention.PACKED_SDPA
    with pytest.raises(ValueError, match="needs a CUDA device and flash-attn"):
        attention.resolve("flash_attention_2", cpu)
    with pytest.raises(ValueError, match="attn_implementation"):
        from_dict({"model": {"attn_implementation": "flash"}})
    with pytest.raises(ValueError, match="micro_batch_tokens"):
        from_dict({"optim": {"micro_batch_tokens": -1}})
    cfg = load_config([])
    assert cfg.optim.packing is True and cfg.optim.micro_batch_tokens == 0
    assert cfg.model.attn_implementation == "auto"


@pytest.mark.gpu
@pytest.mark.skipif(
    not attention.flash_attn_available(torch.device("cuda")), reason="flash-attn varlen needs CUDA and flash-attn"
)
def test_flash_attn_varlen_keeps_sequences_apart() -> None:
    """On a GPU with flash-attn: "auto" is varlen flash-attn, its packed rows match per-sequence SDPA (bf16)."""
    lm = tiny_lm().cuda().to(torch.bfloat16).eval()
    policy = Policy(lm)
    assert policy.attn == "flash_attention_2"
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(4, 40, (n,), generator=g).tolist() for n in (5, 9, 6)]
    with force_backend(None):
        flash = _row_logp_on(policy, seqs, "cuda")
        policy.attn = attention.configure(lm, "sdpa")
        ref = _row_logp_on(policy, seqs, "cuda")
    # bf16 activations: two attention kernels differ by a few bf16 ulps of the logits
    torch.testing.assert_close(flash, ref, atol=3e-2, rtol=3e-2)


def _row_logp_on(policy: Policy, seqs: list[list[int]], device: str) -> torch.Tensor:
    lengths = [len(s) for s in seqs]
    row = make_row(list(range(len(seqs))), lengths, [True] * len(seqs), torch.device(device))
    ids = torch.tensor([t for s in seqs for t in s], device=device)[None]
    targets = torch.cat([torch.tensor([*s[1:], -100]) for s in seqs]).to(device)[None]
    with torch.no_grad():
        logp, _ = policy(ids, None, targets, packed=row.model_kwargs(policy.attn, torch.bfloat16))
    return logp[0].float()


def test_packed_attention_splits_equal_per_sequence_slices() -> None:
    """`packed_sdpa_forward` splits q/k/v once (issue 28: per-sequence slices cost a zero-filled row-sized gradient
    each in the backward); outputs and gradients are those of the slice-per-sequence form, bit for bit, with GQA
    and padding after the last sequence."""
    import itertools

    import torch.nn.functional as F

    from trainer.model.attention import packed_sdpa_forward

    torch.manual_seed(0)
    n, hq, hkv, d = 23, 4, 2, 8
    cu = torch.tensor([0, 5, 5, 12, 20])  # an empty sequence, then 3 padding tokens after the last bound
    q, k, v = (torch.randn(1, h, n, d, requires_grad=True) for h in (hq, hkv, hkv))
    module = torch.nn.Module().train()
    out, _ = packed_sdpa_forward(module, q, k, v, None, cu_seq_lens_q=cu)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))

    def sliced(q, k, v):
        k2, v2 = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)
        parts = [
            F.scaled_dot_product_attention(q[:, :, a:b], k2[:, :, a:b], v2[:, :, a:b], is_causal=True)
            for a, b in itertools.pairwise(cu.tolist())
            if b > a
        ]
        return torch.cat(parts, dim=2).transpose(1, 2).contiguous()

    expected = sliced(q, k, v)
    assert out.shape == (1, 20, hq, d) and torch.equal(out, expected)
    for got, want in zip(grads, torch.autograd.grad(expected.square().sum(), (q, k, v))):
        assert torch.equal(got, want)
