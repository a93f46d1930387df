"""trainer.checkpoint: exact save/load of a FSDP2 model + AdamW, RNG round trip, atomicity, pruning, HF export.

The model is a tiny Qwen2 (tied embeddings) wrapped like the trainer's Policy (attribute `lm`) and sharded like
trainer/dist.py does it: `fully_shard` per decoder layer, then the root. Everything runs at world size 1 (a gloo
group in this process) and the round trip and export again at world size 2 (gloo, spawned ranks).
"""

from __future__ import annotations

import copy
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import transformers
from _distributed import run_two_ranks
from torch import nn

from trainer.checkpoint import (
    export_hf,
    find_latest,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)

TIMEOUT_S = 90.0  # a healthy 2-rank run takes ~10 s on 2 cores; a hung collective would wait forever
VOCAB = ["<pad>", "<eos>", "<unk>", *"0123456789", *"abcdefghijklmnopqrstuvwxyz"]


class _Policy(nn.Module):
    """The trainer's Policy shape: the HF model as attribute `lm`, so parameter names are "lm." + HF names."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, ids_BT: torch.Tensor) -> torch.Tensor:
        return self.lm(input_ids=ids_BT).logits


def _tokenizer() -> transformers.PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(VOCAB)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )


def _lm(seed: int) -> transformers.Qwen2ForCausalLM:
    config = transformers.Qwen2Config(
        vocab_size=40, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=True, pad_token_id=0, eos_token_id=1, bos_token_id=None,
    )  # fmt: skip
    torch.manual_seed(seed)  # identical weights on every rank
    return transformers.Qwen2ForCausalLM(config)


def _sharded(lm: nn.Module) -> tuple[_Policy, torch.optim.Optimizer]:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    policy = _Policy(lm)
    for layer in lm.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(policy, mesh=mesh)
    return policy, torch.optim.AdamW(policy.parameters(), lr=1e-2, weight_decay=0.1)


def _train(policy: _Policy, opt: torch.optim.Optimizer, steps: int, *, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        ids_BT = torch.randint(3, len(VOCAB), (4, 8), generator=gen)
        logits_BTV = policy(ids_BT)
        loss = nn.functional.cross_entropy(logits_BTV[:, :-1].flatten(0, 1), ids_BT[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad()


def _full_params(policy: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.full_tensor().detach().clone() for n, p in policy.named_parameters()}  # a collective


def _local_optim_state(opt: torch.optim.Optimizer) -> list[dict[str, torch.Tensor]]:
    """Each parameter's AdamW state as this rank's local tensors (its shards), cloned."""
    out = []
    for group in opt.param_groups:
        for p in group["params"]:
            state = opt.state[p]
            out.append({k: (v.to_local() if hasattr(v, "to_local") else v).clone() for k, v in state.items()})
    return out


def _draw() -> tuple[float, float, list[float]]:
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def _assert_params_equal(policy: nn.Module, expect: dict[str, torch.Tensor]) -> None:
    got = _full_params(policy)
    assert got.keys() == expect.keys()
    for name in expect:
        assert torch.equal(got[name], expect[name]), name


def _assert_optim_equal(opt: torch.optim.Optimizer, expect: list[dict[str, torch.Tensor]]) -> None:
    got = _local_optim_state(opt)
    assert len(got) == len(expect)
    for i, (g, e) in enumerate(zip(got, expect)):
        assert g.keys() == e.keys(), i
        for k in e:
            assert torch.equal(g[k], e[k]), (i, k)


def _check_round_trip_and_export(run_dir: Path, *, with_transformers: bool) -> None:
    """Save -> train on -> load restores params, AdamW state and RNG exactly; a fresh model resumes bit-for-bit;
    the HF export holds the FSDP model's full weights (and, `with_transformers`, loads with transformers and
    generates: once is enough, at world size 1, which keeps the spawned ranks' imports down)."""
    rank = dist.get_rank()
    lm = _lm(seed=0)
    template = copy.deepcopy(lm)
    policy, opt = _sharded(lm)
    _train(policy, opt, 2, seed=1)

    random.seed(123)  # the trainer state is the run's, the same on every rank (rank 0 writes it)
    np.random.seed(123)
    torch.manual_seed(123)
    state = {"step": 2, "rng": rng_state(), "note": "hello", "ids": torch.arange(5)}
    path = save_checkpoint(run_dir, 2, policy, opt, state, keep=2)
    assert path == run_dir / "checkpoints" / "step_00000002"
    assert not list(path.glob("trainer_state_rank*.pt")) and (path / "trainer_state.pt").is_file()
    expect_params, expect_optim = _full_params(policy), _local_optim_state(opt)
    expect_numbers = _draw()

    _train(policy, opt, 1, seed=2)
    after_one_more = _full_params(policy)
    assert all(not torch.equal(after_one_more[n], expect_params[n]) for n in expect_params)  # everything moved

    loaded = load_checkpoint(path, policy, opt)
    _assert_params_equal(policy, expect_params)
    _assert_optim_equal(opt, expect_optim)
    assert loaded["step"] == 2 and loaded["note"] == "hello"
    assert torch.equal(loaded["ids"], torch.arange(5))
    _draw()
    set_rng_state(loaded["rng"])
    assert _draw() == expect_numbers

    # A resumed run: a differently initialised model and an optimizer that has never stepped.
    fresh, fresh_opt = _sharded(_lm(seed=7))
    load_checkpoint(run_dir, fresh, fresh_opt)  # a run folder: find_latest picks step 2
    _assert_params_equal(fresh, expect_params)
    _assert_optim_equal(fresh_opt, expect_optim)
    assert fresh_opt.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    _train(fresh, fresh_opt, 1, seed=2)
    _assert_params_equal(fresh, after_one_more)

    tokenizer = _tokenizer()
    hf_dir = run_dir / "hf"
    export_hf(hf_dir, fresh, template, tokenizer, prefix="lm.")
    weights = _full_params(fresh)
    if rank == 0 and not with_transformers:
        from safetensors.torch import load_file

        saved = load_file(hf_dir / "model.safetensors")
        assert set(saved) == {n.removeprefix("lm.") for n in weights} - {"lm_head.weight"}  # tied: written once
        for name, tensor in saved.items():
            assert torch.equal(tensor, weights["lm." + name]), name
    if rank == 0 and with_transformers:
        assert not (run_dir / "hf.tmp").exists()
        exported = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
        loaded_tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
        sd = exported.state_dict()
        for name, full in weights.items():
            assert torch.equal(sd[name.removeprefix("lm.")], full), name
        assert torch.equal(exported.lm_head.weight, exported.model.embed_tokens.weight)
        ids = loaded_tok("1 2 3", return_tensors="pt").input_ids
        assert ids.tolist() == [[VOCAB.index("1"), VOCAB.index("2"), VOCAB.index("3")]]
        out = exported.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=loaded_tok.pad_token_id)
        assert out.shape[0] == 1 and 4 <= out.shape[1] <= 7 and torch.equal(out[:, :3], ids)
    dist.barrier()


def _two_rank_worker(rank: int, run_dir: Path) -> None:
    _check_round_trip_and_export(run_dir, with_transformers=False)


# --------------------------------------------------------------------------------------------- world size 1


def test_round_trip_and_export_world_1(group_of_one, tmp_path: Path) -> None:
    _check_round_trip_and_export(tmp_path, with_transformers=True)


def test_keep_prunes_and_latest(group_of_one, tmp_path: Path) -> None:
    policy, opt = _sharded(_lm(seed=0))
    _train(policy, opt, 1, seed=1)
    ckpts = tmp_path / "checkpoints"
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, policy, opt, {"step": step}, keep=2)
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step_00000002", "step_00000003"]
    assert (ckpts / "latest").read_text().strip() == "step_00000003"
    assert find_latest(tmp_path) == ckpts / "step_00000003"

    # Saving a step again replaces it; keep <= 0 keeps everything.
    save_checkpoint(tmp_path, 3, policy, opt, {"step": 33}, keep=0)
    assert load_checkpoint(ckpts / "step_00000003", policy, opt) == {"step": 33}
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step_00000002", "step_00000003"]


def test_partial_tmp_ignored_and_latest_fallback(group_of_one, tmp_path: Path) -> None:
    policy, opt = _sharded(_lm(seed=0))
    _train(policy, opt, 1, seed=1)
    ckpts = tmp_path / "checkpoints"
    assert find_latest(tmp_path) is None
    save_checkpoint(tmp_path, 1, policy, opt, {"step": 1}, keep=3)
    save_checkpoint(tmp_path, 2, policy, opt, {"step": 2}, keep=3)

    # A save killed midway: a `.tmp` folder with some shards and no metadata, newer than everything else.
    partial = ckpts / "step_00000003.tmp"
    partial.mkdir()
    (partial / "__0_0.distcp").write_bytes(b"half a shard")
    with pytest.warns(UserWarning, match="incomplete checkpoint"):
        assert find_latest(tmp_path) == ckpts / "step_00000002"

    (ckpts / "latest").unlink()  # killed between the rename and the pointer: the newest complete folder
    with pytest.warns(UserWarning, match="incomplete checkpoint"):
        assert find_latest(tmp_path) == ckpts / "step_00000002"
    (ckpts / "latest").write_text("step_00000001\n")  # the pointer wins over "newest"
    with pytest.warns(UserWarning, match="incomplete checkpoint"):
        assert find_latest(tmp_path) == ckpts / "step_00000001"
    (ckpts / "latest").write_text("step_00000009\n")  # names a folder that is gone
    with pytest.warns(UserWarning) as record:
        assert find_latest(tmp_path) == ckpts / "step_00000002"
    messages = [str(w.message) for w in record]
    assert any("incomplete checkpoint" in m for m in messages)
    assert any("'step_00000009', which is not a complete checkpoint" in m for m in messages)
    with pytest.raises(ValueError, match="incomplete"):
        load_checkpoint(partial, policy, opt)

    save_checkpoint(tmp_path, 4, policy, opt, {"step": 4}, keep=3)  # the next save cleans up
    assert not partial.exists()
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step_00000001", "step_00000002", "step_00000004"]
    assert find_latest(tmp_path) == ckpts / "step_00000004"


class _NotPlain:
    pass


def test_trainer_state_must_load_weights_only(group_of_one, tmp_path: Path) -> None:
    policy, opt = _sharded(_lm(seed=0))
    _train(policy, opt, 1, seed=1)
    with pytest.raises(TypeError, match="weights_only"):
        save_checkpoint(tmp_path, 1, policy, opt, {"obj": _NotPlain()}, keep=2)
    with pytest.warns(UserWarning, match="incomplete checkpoint"):
        assert find_latest(tmp_path) is None  # nothing was published


def test_export_bfloat16(group_of_one, tmp_path: Path) -> None:
    lm = _lm(seed=0)
    template = copy.deepcopy(lm)
    dtype_before = template.config.dtype
    policy, _ = _sharded(lm)
    export_hf(tmp_path / "hf", policy, template, _tokenizer(), prefix="lm.", dtype=torch.bfloat16)
    exported = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype="auto")
    assert exported.model.embed_tokens.weight.dtype == torch.bfloat16
    full = policy.lm.model.embed_tokens.weight.full_tensor()
    assert torch.equal(exported.model.embed_tokens.weight, full.to(torch.bfloat16))
    assert template.config.dtype == dtype_before  # the template is not modified


def test_rng_state_round_trip(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    _draw()
    torch.save(rng_state(), tmp_path / "rng.pt")
    expect = _draw()
    _draw()
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert _draw() == expect


# --------------------------------------------------------------------------------------------- world size 2
@pytest.mark.distributed
@pytest.mark.timeout(2 * TIMEOUT_S)  # backstop; run_two_ranks fails sooner, and kills the ranks
def test_round_trip_and_export_two_ranks(tmp_path: Path) -> None:
    run_two_ranks(_two_rank_worker, tmp_path, timeout_s=TIMEOUT_S)
