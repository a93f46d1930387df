"""trainer.model.load and .tiny: the built-in tokenizer, the seeded tiny Qwen2, HF folders and their errors, the frozen
reference."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from trainer.model import load as M
from trainer.model import tiny
from trainer.tasks import synthetic as task


def _cfg(**overrides) -> SimpleNamespace:
    """A stand-in for the `model` config section (the real one lives in trainer.config)."""
    fields = dict(
        path=None,
        preset="tiny",
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=256,
        trust_remote_code=False,
    )
    fields.update(overrides)
    return SimpleNamespace(**fields)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    """A tiny model and its tokenizer written with save_pretrained, as a checkpoint export would."""
    folder = tmp_path_factory.mktemp("tiny_hf")
    model, tok = M.load_model_and_tokenizer(_cfg(), seed=3)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder, model


# ------------------------------------------------------------------------------------------------------ tokenizer


def test_tokenizer_specials_and_vocab() -> None:
    tok = tiny.build_tokenizer()
    assert isinstance(tok, PreTrainedTokenizerFast)
    assert len(tok) == len(tiny.SPECIALS) + len(task.VOCAB) == 31
    assert (tok.pad_token, tok.bos_token, tok.eos_token) == ("<pad>", "<bos>", "<eos>")
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert [tok.convert_tokens_to_ids(w) for w in task.VOCAB] == list(range(4, 31))


def test_tokenizer_round_trip() -> None:
    tok = tiny.build_tokenizer()
    text = "3 + 1 = <think> so 1 plus 3 makes 4 </think> <answer> 4 </answer>"
    ids = tok(text)["input_ids"]
    assert ids == [tok.convert_tokens_to_ids(w) for w in text.split()]  # one token per word, nothing added
    decoded = tok.decode(ids)
    assert decoded == "3+1=<think>so1plus3makes4</think><answer>4</answer>"  # words joined without spaces
    assert tok(decoded)["input_ids"] == ids
    assert tok("3+1=")["input_ids"] == tok(" 3  + 1 = ")["input_ids"] == ids[:4]
    assert tok.decode([*ids[:4], tok.eos_token_id, tok.pad_token_id], skip_special_tokens=True) == "3+1="
    assert tok("12")["input_ids"] == [tok.convert_tokens_to_ids("1"), tok.convert_tokens_to_ids("2")]


def test_tokenizer_save_load_next_to_a_qwen2_config(saved: tuple[Path, torch.nn.Module]) -> None:
    # The folder holds a qwen2 config.json: AutoTokenizer must still give back exactly the same tokenizer.
    folder, _ = saved
    tok, loaded = tiny.build_tokenizer(), AutoTokenizer.from_pretrained(folder)
    assert json.loads((folder / "config.json").read_text())["model_type"] == "qwen2"
    assert loaded.get_vocab() == tok.get_vocab()
    assert (loaded.pad_token_id, loaded.eos_token_id) == (tok.pad_token_id, tok.eos_token_id)
    text = "<think> wait 2 + 2 </think> <answer> 4 </answer>"
    assert loaded(text)["input_ids"] == tok(text)["input_ids"]
    assert loaded.decode(tok(text)["input_ids"]) == tok.decode(tok(text)["input_ids"])


# ------------------------------------------------------------------------------------------------------ tiny model


def test_tiny_model_is_seeded_and_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a, tok = M.load_model_and_tokenizer(_cfg(), seed=7)
    assert torch.equal(torch.rand(3), expected_next)  # building did not consume the caller's random stream
    b, _ = M.load_model_and_tokenizer(_cfg(), seed=7)
    c, _ = M.load_model_and_tokenizer(_cfg(), seed=8)
    assert _same_weights(a, b)
    assert not _same_weights(a, c)
    assert a.training
    cfg = a.config
    assert cfg.model_type == "qwen2" and cfg.vocab_size == len(tok)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (64, 2, 4, 2)
    assert cfg.tie_word_embeddings and a.lm_head.weight is a.model.embed_tokens.weight
    assert (cfg.pad_token_id, cfg.eos_token_id) == (tok.pad_token_id, tok.eos_token_id)


def test_tiny_model_sizes_dtype_and_generation() -> None:
    model, tok = M.load_model_and_tokenizer(_cfg(hidden_size=32, num_layers=1, intermediate_size=64), seed=0)
    assert model.config.hidden_size == 32 and len(model.model.layers) == 1
    bf16, _ = M.load_model_and_tokenizer(_cfg(), seed=0, dtype=torch.bfloat16, tokenizer=tok)
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}
    ids = torch.tensor([tok("1 + 2 =")["input_ids"]])
    out = model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id
    )
    assert out.shape[0] == 1 and 4 < out.shape[1] <= 9 and torch.equal(out[:, :4], ids)


def test_bad_preset_and_sizes() -> None:
    with pytest.raises(ValueError, match=r"model\.preset.*'huge'"):
        M.load_model_and_tokenizer(_cfg(preset="huge"))
    with pytest.raises(ValueError, match=r"model\.hidden_size .*model\.num_heads"):
        M.load_model_and_tokenizer(_cfg(hidden_size=66))
    with pytest.raises(ValueError, match=r"model\.num_heads .*model\.num_kv_heads"):
        M.load_model_and_tokenizer(_cfg(num_kv_heads=3))


def test_reference_is_frozen_copy_of_the_initial_policy() -> None:
    policy, _ = M.load_model_and_tokenizer(_cfg(), seed=5)
    ref = M.build_reference(_cfg(), seed=5)
    assert _same_weights(policy, ref)
    assert not ref.training and all(not p.requires_grad for p in ref.parameters())
    assert all(p.requires_grad for p in policy.parameters())
    assert all(p.data_ptr() != q.data_ptr() for p, q in zip(policy.parameters(), ref.parameters()))


# ------------------------------------------------------------------------------------------------------ HF folders


def test_load_folder_saved_by_save_pretrained(saved: tuple[Path, torch.nn.Module]) -> None:
    folder, original = saved
    model, tok = M.load_model_and_tokenizer(_cfg(path=str(folder)))
    assert _same_weights(model, original)
    assert model.training and tok.pad_token_id == 0
    ids = torch.tensor([tok("2 + 2 =")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, original.eval()(ids).logits, rtol=0, atol=0)
    ref = M.build_reference(_cfg(path=str(folder)))
    assert _same_weights(ref, original) and not any(p.requires_grad for p in ref.parameters())


def test_missing_folder_or_files_give_clear_errors(saved: tuple[Path, torch.nn.Module], tmp_path: Path) -> None:
    folder, _ = saved
    with pytest.raises(FileNotFoundError, match=r"model\.path: .*nope does not exist"):
        M.load_model_and_tokenizer(_cfg(path=str(tmp_path / "nope")))
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        M.load_model_and_tokenizer(_cfg(path=str(a_file)))
    for missing, message in (
        ("model.safetensors", "lacks weights"),
        ("config.json", "lacks config.json"),
        ("tokenizer.json", None),
    ):
        partial = tmp_path / f"no_{missing}"
        partial.mkdir()
        for f in folder.iterdir():
            if f.name != missing:
                (partial / f.name).write_bytes(f.read_bytes())
        if message is None:  # tokenizer_config.json alone still names a tokenizer: drop it too
            (partial / "tokenizer_config.json").unlink()
            message = "lacks a tokenizer"
        with pytest.raises(FileNotFoundError, match=rf"model\.path: .*{message}"):
            M.load_model_and_tokenizer(_cfg(path=str(partial)))


def test_unloadable_folder_names_the_key(saved: tuple[Path, torch.nn.Module], tmp_path: Path) -> None:
    folder, _ = saved
    for f in folder.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match=r"model\.path: cannot load a causal LM"):
        M.load_model_and_tokenizer(_cfg(path=str(tmp_path)))


def test_tokenizer_without_pad_token_gets_eos(saved: tuple[Path, torch.nn.Module], tmp_path: Path) -> None:
    folder, _ = saved
    for f in folder.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    tok = tiny.build_tokenizer()
    tok.pad_token = None
    tok.save_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path).pad_token is None
    loaded = M.load_tokenizer(_cfg(path=str(tmp_path)))
    assert loaded.pad_token == "<eos>" and loaded.pad_token_id == loaded.eos_token_id == 2


def test_model_config_folder_builds_random_weights(tmp_path):
    """`model.config`: the architecture and tokenizer of a folder without weights, seeded random init."""
    from trainer.config import Config, ConfigError, from_dict
    from trainer.model.load import load_model_and_tokenizer

    tiny, tok = load_model_and_tokenizer(Config().model, seed=0)
    tiny.config.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    cfg = from_dict({"model": {"config": str(tmp_path)}}).model
    a, tok_a = load_model_and_tokenizer(cfg, seed=3)
    b, _ = load_model_and_tokenizer(cfg, seed=3)
    c, _ = load_model_and_tokenizer(cfg, seed=4)
    assert type(a) is type(tiny) and a.config.hidden_size == tiny.config.hidden_size and len(tok_a) == len(tok)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(x, y) for x, y in zip(a.parameters(), c.parameters()))
    with pytest.raises(ConfigError, match=r"model\.config"):
        from_dict({"model": {"config": str(tmp_path), "path": str(tmp_path)}})
    with pytest.raises(FileNotFoundError, match=r"model\.config"):
        load_model_and_tokenizer(from_dict({"model": {"config": str(tmp_path / "nope")}}).model)


def test_model_vocab_smaller_than_the_tokenizer(saved: tuple[Path, torch.nn.Module], tmp_path: Path) -> None:
    """A tokenizer with ids past the model's embedding rows: a clear error naming both sizes and the folder."""
    folder, model = saved
    rows = model.get_input_embeddings().weight.shape[0]
    for f in folder.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    tok = tiny.build_tokenizer()
    tok.add_tokens(["extra_word_1", "extra_word_2"])
    tok.save_pretrained(tmp_path)
    message = rf"model\.path: {tmp_path}: the model's vocabulary \({rows} tokens.*tokenizer's \({rows + 2} tokens"
    with pytest.raises(ValueError, match=message):
        M.load_model_and_tokenizer(_cfg(path=str(tmp_path)))
    (tmp_path / "model.safetensors").unlink()  # model.config: same architecture, random weights, same check
    with pytest.raises(ValueError, match=message.replace("path", "config", 1)):
        M.load_model_and_tokenizer(_cfg(config=str(tmp_path)))
    # a tokenizer passed in is checked too; the tiny preset sizes its vocabulary to the tokenizer
    with pytest.raises(ValueError, match=rf"model\.path: {folder}: .*\({rows + 2} tokens"):
        M.load_model_and_tokenizer(_cfg(path=str(folder)), tokenizer=tok)
    built, _ = M.load_model_and_tokenizer(_cfg(), tokenizer=tok)
    assert built.get_input_embeddings().weight.shape[0] == rows + 2


def test_a_qwen2_tokenizer_without_a_pad_token_pads_with_eos_and_adds_nothing(tmp_path: Path) -> None:
    """A real Qwen2-style tokenizer_config.json without the `pad_token` key (not `pad_token: null`): transformers'
    Qwen2Tokenizer would add `<|endoftext|>` as a new token, one id past the model's vocabulary."""
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2Tokenizer

    words = ["1", "2", "3", "+", "=", "<|im_end|>"]
    vocab = {w: i for i, w in enumerate(words)}
    tok = Qwen2Tokenizer(vocab=vocab, merges=[], eos_token="<|im_end|>", pad_token=None, unk_token=None)
    tok.save_pretrained(tmp_path)
    config_file = tmp_path / "tokenizer_config.json"
    declared = json.loads(config_file.read_text())
    for name in ("pad_token", "unk_token"):
        declared.pop(name, None)
    config_file.write_text(json.dumps(declared))
    assert "<|endoftext|>" in AutoTokenizer.from_pretrained(tmp_path).get_vocab()  # what transformers does alone
    config = Qwen2Config(
        vocab_size=len(words), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, tie_word_embeddings=True,
    )  # fmt: skip
    Qwen2ForCausalLM(config).save_pretrained(tmp_path)

    model, loaded = M.load_model_and_tokenizer(_cfg(path=str(tmp_path)))
    assert len(loaded) == len(words) and "<|endoftext|>" not in loaded.get_vocab()
    assert loaded.pad_token == loaded.eos_token == "<|im_end|>" and loaded.pad_token_id == words.index("<|im_end|>")
    assert model.config.pad_token_id == loaded.pad_token_id
