"""Weight sync from an FSDP2-sharded trained model into the hf engine: the engine then computes the trainer's log-probs.

The trained model is wrapped the way the trainer does it: a `Policy` module holding the HF model as `lm`,
`fully_shard` on each decoder layer then on the root, on a CPU mesh of 1 rank (in this process) or 2 ranks
(gloo, spawned). Its weights are moved by an SGD step, so they differ from the engine's initial copy; after the
sync the engine's log-probs of a fixed sequence equal the trainer's (computed inside an FSDP forward) to 1e-6, and
syncing through many tiny buckets or through one big bucket leaves bit-identical engine weights.
"""

from __future__ import annotations

import re

import pytest
import torch
import torch.distributed as dist
import transformers
from _distributed import run_two_ranks
from _tiny import tiny_lm
from torch import nn

from trainer.model.names import hf_name
from trainer.rollout import HFEngine
from trainer.weight_sync import iter_full_tensors, sync_weights

TIMEOUT_S = 60.0  # a healthy 2-rank run takes ~10 s; a hung collective would wait forever
TINY_BUCKET = 1024  # bytes: the norms (256 B) share buckets; embeddings (10 KiB) and matrices are each alone
HUGE_BUCKET = 1 << 30  # everything in one bucket
# Float32 on CPU, the same weights and the same eager ops on both sides: equal up to summation order, if at all.
ATOL = 1e-6


def token_logprobs(lm: nn.Module, ids_BT: torch.Tensor) -> torch.Tensor:
    """log p(ids[:, t + 1] | ids[:, :t + 1]) under `lm`: [B, T - 1], eager log_softmax in float32."""
    logits_BTV = lm(ids_BT).logits[:, :-1].float()
    return torch.log_softmax(logits_BTV, dim=-1).gather(-1, ids_BT[:, 1:, None]).squeeze(-1)


class Policy(nn.Module):
    """The trainer's wrapper: parameter names are "lm." + the HF names; forward gives token log-probs [B, T - 1]."""

    def __init__(self, lm: transformers.PreTrainedModel) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, ids_BT: torch.Tensor) -> torch.Tensor:
        return token_logprobs(self.lm, ids_BT).clone()  # not a view: FSDP2 warns about returned views


def _engine_params(engine: HFEngine) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in engine.model.named_parameters()}


def _check_sync(rank: int, world: int) -> None:
    """Shard, train one step, sync in tiny and huge buckets, compare log-probs and weights (every rank)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    mesh = init_device_mesh("cpu", (world,))
    policy = Policy(tiny_lm())
    for layer in policy.lm.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(policy, mesh=mesh)
    assert all(isinstance(p, DTensor) for p in policy.parameters())
    assert policy.lm.lm_head.weight is policy.lm.model.embed_tokens.weight, "FSDP2 untied the embeddings"

    gen = torch.Generator().manual_seed(1)  # the same batch on every rank: the averaged gradient is the same
    ids_BT = torch.randint(0, 40, (3, 10), generator=gen)
    opt = torch.optim.SGD(policy.parameters(), lr=2.0)
    (-policy(ids_BT).mean()).backward()
    opt.step()

    engine = HFEngine(tiny_lm, pad_token_id=0, device="cpu", dtype=torch.float32)  # the untrained weights
    policy.eval()
    with torch.no_grad():
        trainer_logp = policy(ids_BT)  # an FSDP forward: gathers the shards
        before = token_logprobs(engine.model, ids_BT)
    assert (trainer_logp - before).abs().max() > 1e-3, "the SGD step did not move the weights: nothing to test"

    # Many buckets, with tensors larger than a bucket.
    stats = sync_weights(policy, engine, bucket_bytes=TINY_BUCKET, prefix="lm.")
    with torch.no_grad():
        after = token_logprobs(engine.model, ids_BT)
    torch.testing.assert_close(after, trainer_logp, atol=ATOL, rtol=0)
    engine_lm = engine.model
    assert engine_lm.lm_head.weight is engine_lm.model.embed_tokens.weight, "tied embeddings untied in the engine"
    full_bytes = sum(p.numel() * 4 for p in engine_lm.parameters())  # float32; the tied matrix counted once
    assert stats["bytes"] == full_bytes
    assert stats["buckets"] > 10
    tiny_weights = _engine_params(engine)

    # Scramble the engine, then one bucket: bit-identical weights.
    engine.load_weights((name, torch.randn_like(p)) for name, p in tiny_weights.items())
    stats = sync_weights(policy, engine, bucket_bytes=HUGE_BUCKET, prefix="lm.")
    assert stats["buckets"] == 1
    huge_weights = _engine_params(engine)
    assert huge_weights.keys() == tiny_weights.keys()
    for name, weight in tiny_weights.items():
        assert torch.equal(huge_weights[name], weight), name

    # The buckets themselves: every parameter once under its HF name, none over the limit unless alone.
    names, oversize = [], 0
    for bucket in iter_full_tensors(policy, TINY_BUCKET, prefix="lm."):
        size = sum(t.numel() * t.element_size() for _, t in bucket)
        assert size <= TINY_BUCKET or len(bucket) == 1
        oversize += size > TINY_BUCKET
        names += [name for name, _ in bucket]
    assert oversize > 0
    assert names == list(tiny_weights), "not every parameter once, in order, under its HF name"
    assert "lm_head.weight" not in names  # the tied duplicate is skipped
    # One collective per bucket gives each tensor its own gather's value.
    (whole,) = list(iter_full_tensors(policy, HUGE_BUCKET, prefix="lm."))
    for (name, tensor), (_, param) in zip(whole, policy.named_parameters(), strict=True):
        full = param.full_tensor() if isinstance(param, DTensor) else param  # the root may be unsharded
        assert torch.equal(tensor, full), name


def _check_uneven(rank: int, world: int) -> None:
    """Rows that do not split evenly over the ranks (5, 7), and fewer rows than ranks (1): one rank holds none.
    The bucketed gather equals `full_tensor()`, and each parameter keeps its place and shape."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (world,))
    torch.manual_seed(0)  # the same values on every rank
    shapes = [(5, 3), (1, 4), (7,), (2, 2, 3)]
    model = nn.Module()
    for i, shape in enumerate(shapes):
        model.register_parameter(f"p{i}", nn.Parameter(torch.randn(shape)))
    fully_shard(model, mesh=mesh)
    assert model.p1.to_local().shape[0] == (1 if rank == 0 else 0)  # (1, 4): rank 1 holds no rows
    for bucket in (HUGE_BUCKET, 40):  # one bucket; a bucket a tensor
        got = [t for b in iter_full_tensors(model, bucket) for _, t in b]
        assert [tuple(t.shape) for t in got] == shapes
        for t, p in zip(got, model.parameters(), strict=True):
            assert torch.equal(t, p.full_tensor())


@pytest.mark.distributed
def test_bucketed_gather_of_uneven_shards_two_ranks() -> None:
    run_two_ranks(_check_uneven, 2, timeout_s=TIMEOUT_S)


@pytest.fixture
def one_rank_group():
    """A gloo process group of world size 1 in this process (an in-memory store: no port)."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_sync_from_fsdp2_one_rank(one_rank_group) -> None:
    _check_sync(0, 1)


@pytest.mark.distributed
def test_sync_from_fsdp2_two_ranks() -> None:
    run_two_ranks(_check_sync, 2, timeout_s=TIMEOUT_S)


def test_sync_from_a_plain_model_without_a_process_group() -> None:
    """Unsharded parameters are sent as they are: no collectives, no prefix."""
    trained = tiny_lm(seed=4)
    engine = HFEngine(tiny_lm, pad_token_id=0, device="cpu", dtype=torch.float32)
    sync_weights(trained, engine, bucket_bytes=TINY_BUCKET)
    for name, p in trained.named_parameters():
        assert torch.equal(engine.model.get_parameter(name), p), name


@pytest.mark.parametrize(
    ("name", "prefix", "expected"),
    [
        ("lm.model.layers.0.mlp.up_proj.weight", "lm.", "model.layers.0.mlp.up_proj.weight"),  # the Policy wrapper
        ("model.norm.weight", "", "model.norm.weight"),  # nothing to strip
        ("_fsdp_wrapped_module.model.norm.weight", "", "model.norm.weight"),  # FSDP1
        (
            "lm.model.layers.1._checkpoint_wrapped_module.self_attn.q_proj.bias",
            "lm.",
            "model.layers.1.self_attn.q_proj.bias",
        ),
        ("_orig_mod.lm.model.embed_tokens.weight", "lm.", "model.embed_tokens.weight"),  # compiled: before the prefix
        (
            "lm._orig_mod.model.layers.0._fsdp_wrapped_module._checkpoint_wrapped_module.mlp.w",
            "lm.",
            "model.layers.0.mlp.w",
        ),
        ("value_head.weight", "lm.", "value_head.weight"),  # outside the prefix: kept, the engine rejects it by name
        ("lm.model.my_orig_mod.weight", "lm.", "model.my_orig_mod.weight"),  # only whole components are wrappers
        ("lm.lm_head.weight", "lm.", "lm_head.weight"),  # the prefix once, not "lm" inside a name
    ],
)
def test_hf_name_strips_prefix_and_wrappers(name: str, prefix: str, expected: str) -> None:
    """One mapping for the export (trainer.checkpoint) and the weight sync (trainer.weight_sync)."""
    from trainer import checkpoint, weight_sync

    assert hf_name(name, prefix) == expected
    assert checkpoint.hf_name is hf_name and weight_sync.hf_name is hf_name


def test_unknown_names_reach_the_engine_as_errors() -> None:
    engine = HFEngine(tiny_lm, pad_token_id=0, device="cpu", dtype=torch.float32)
    # The wrong prefix: names are not stripped, and the engine names the first one it does not know.
    with pytest.raises(KeyError, match=re.escape("'lm.model.embed_tokens.weight'")):
        sync_weights(Policy(tiny_lm()), engine, bucket_bytes=HUGE_BUCKET, prefix="policy.")
    with pytest.raises(ValueError, match="bucket_bytes"):
        sync_weights(tiny_lm(), engine, bucket_bytes=0)


def test_stream_metadata_and_wire_dtype() -> None:
    """The stream every engine consumes: metadata without gathering, in stream order; the wire dtype casts each
    tensor and sizes the buckets; the counters add up over passes."""
    from trainer.weight_sync import ModelWeightStream

    policy = Policy(tiny_lm())
    stream = ModelWeightStream(policy, bucket_bytes=TINY_BUCKET // 2, prefix="lm.", dtype=torch.bfloat16)
    meta = stream.metadata()
    params = list(policy.named_parameters())
    assert [(m.name, m.shape, m.dtype) for m in meta] == [
        (n.removeprefix("lm."), tuple(p.shape), torch.bfloat16) for n, p in params
    ]
    buckets = list(stream.buckets())
    sent = [(n, t) for b in buckets for n, t in b]
    assert [n for n, _ in sent] == [m.name for m in meta]
    assert all(t.dtype == torch.bfloat16 for _, t in sent)
    assert all(torch.equal(t, p.detach().bfloat16()) for (_, t), (_, p) in zip(sent, params))
    for b in buckets:  # wire bytes bound a bucket, except a tensor larger than the bound, which goes alone
        assert len(b) == 1 or sum(t.numel() * 2 for _, t in b) <= TINY_BUCKET // 2
    assert stream.bytes_sent == sum(m.nbytes for m in meta) == sum(p.numel() * 2 for _, p in params)
    for _ in stream.buckets():  # a second pass
        pass
    assert stream.buckets_sent == 2 * len(buckets) and stream.bytes_sent == 2 * sum(m.nbytes for m in meta)
