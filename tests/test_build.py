"""trainer.model.build: sharded construction gives today's weights (presets and folders, tied or not); the reference
equals the initial policy; the template is a config on meta; the engine's copy is empty until synced; errors reach
every rank."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh

from tests._distributed import run_two_ranks
from trainer.config import from_dict
from trainer.dist import DistInfo
from trainer.model.build import build_models, params_on_meta
from trainer.model.load import load_model_and_tokenizer, load_tokenizer

TIMEOUT_S = 240.0
UNTIED = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1, "intermediate_size": 64}


def _info() -> DistInfo:
    world = dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("shard",))
    return DistInfo(rank=dist.get_rank(), world=world, local_rank=0, device=torch.device("cpu"), mesh=mesh)


def _full(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))


def _check_same_as_full_load(overrides: dict, run_dir: Path, *, needs_ref: bool = True) -> None:
    """Every rank: the sharded policy (and reference), gathered, equals `load_model_and_tokenizer`'s model."""
    cfg = from_dict({"warm_start": {"mode": "off"}, "seed": 5, **overrides})
    tok = load_tokenizer(cfg.model)
    expect, _ = load_model_and_tokenizer(cfg.model, seed=cfg.seed, tokenizer=tok)
    built = build_models(cfg, _info(), tok, run_dir, mixed_precision=False, needs_ref=needs_ref)
    want = {f"lm.{k}": v for k, v in expect.state_dict().items()}
    for model in [built.policy] + ([built.ref] if needs_ref else []):
        got = _full(model)
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in want), [k for k in want if not torch.equal(got[k], want[k])]
        lm = model.lm
        tied = expect.config.tie_word_embeddings
        assert (lm.lm_head.weight is lm.model.embed_tokens.weight) == tied
        for (name, buf), (_, ref_buf) in zip(lm.named_buffers(), expect.named_buffers(), strict=True):
            assert torch.equal(buf, ref_buf), name  # rotary inv_freq: computed, not left empty
    if needs_ref:
        assert not any(p.requires_grad for p in built.ref.parameters()) and not built.ref.training
    assert all(p.is_meta for p in built.template.parameters())  # a config and a class, no weights
    assert type(built.template) is type(expect) and built.template.config.to_dict() == expect.config.to_dict()
    engine = built.make_engine_model(torch.float32)
    assert not any(p.is_meta for p in engine.parameters()) and not engine.training
    assert (engine.lm_head.weight is engine.model.embed_tokens.weight) == expect.config.tie_word_embeddings
    engine.load_state_dict(expect.state_dict())  # what the first weight sync does
    ids = torch.tensor([[1, 4, 5, 6]])
    torch.testing.assert_close(engine(ids).logits, expect.eval()(ids).logits, rtol=0, atol=0)


def _worker(rank: int, folder: Path, broken: Path, run_dir: Path) -> None:
    torch.manual_seed(rank)  # ranks' RNGs differ: the weights must still be rank 0's
    _check_same_as_full_load({}, run_dir)  # the tiny preset: tied embeddings, seeded
    _check_same_as_full_load({"model": {"path": str(folder)}}, run_dir, needs_ref=False)  # a folder, untied
    cfg = from_dict({"warm_start": {"mode": "off"}, "model": {"path": str(broken)}})
    with pytest.raises(ValueError, match="do not fit its model"):  # found by rank 0 alone, raised on both
        build_models(cfg, _info(), load_tokenizer(cfg.model), run_dir, mixed_precision=False, needs_ref=False)


def _save(folder: Path, model_overrides: dict, *, drop: str | None = None) -> Path:
    cfg = from_dict({"model": model_overrides})
    model, tok = load_model_and_tokenizer(cfg.model, seed=11)
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone() + 1.0)
    state = {k: v for k, v in model.state_dict().items() if k != drop}
    model.save_pretrained(folder, state_dict=state)
    tok.save_pretrained(folder)
    return folder


@pytest.mark.distributed
@pytest.mark.timeout(2 * TIMEOUT_S)
def test_sharded_construction_two_ranks(tmp_path: Path) -> None:
    folder = _save(tmp_path / "untied", UNTIED)
    broken = _save(tmp_path / "broken", UNTIED, drop="model.norm.weight")
    run_two_ranks(_worker, folder, broken, tmp_path / "run", timeout_s=TIMEOUT_S)


def test_sharded_construction_world_1(group_of_one, tmp_path: Path) -> None:
    _check_same_as_full_load({"model": {"num_layers": 1}}, tmp_path)


def test_params_on_meta_keeps_buffers_and_ties() -> None:
    with params_on_meta():
        linear = torch.nn.Linear(3, 4)
        linear.register_buffer("scale", torch.arange(3.0))
        other = torch.nn.Linear(3, 4)
        other.weight = linear.weight
    assert linear.weight.is_meta and linear.bias.is_meta and other.weight is linear.weight
    assert torch.equal(linear.scale, torch.arange(3.0))
    assert not torch.nn.Linear(2, 2).weight.is_meta  # outside: as usual
