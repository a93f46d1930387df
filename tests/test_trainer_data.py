"""trainer.tasks.synthetic / data / reward.builtin: the synthetic task's rule, prompt files and their errors, the
sampler, scoring."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from trainer import data
from trainer.model.tiny import build_tokenizer
from trainer.reward import builtin as rewards
from trainer.tasks import synthetic as task


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def _data_cfg(source: str | Path = "synthetic", **overrides) -> SimpleNamespace:
    """A stand-in for the `data` config section (the real one lives in trainer.config)."""
    fields = dict(
        source=str(source),
        prompt_key="prompt",
        answer_key="answer",
        max_prompt_tokens=64,
        on_long_prompt="skip",
        apply_chat_template=True,
    )
    fields.update(overrides)
    return SimpleNamespace(**fields)


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------------ synthetic task


# The task itself (problems, split, levels, the reward rule) is tested in tests/test_synthetic_task.py.


# ------------------------------------------------------------------------------------------------ load_prompts


def test_synthetic_prompts(tok) -> None:
    prompts = data.load_prompts(_data_cfg(synthetic_size=50), tok, seed=4)
    assert len(prompts) == 50 and prompts.skipped == 0 and prompts.source == "synthetic"
    expected = task.make_dataset(50, seed=4)
    assert [p["prompt"] for p in prompts] == [e["prompt"] for e in expected]
    n_tokens = task.NUM_DIGITS + 1  # the digits and "="
    assert all(p["prompt_ids"] == tok(p["prompt"])["input_ids"] and len(p["prompt_ids"]) == n_tokens for p in prompts)
    assert len(data.load_prompts(_data_cfg(), tok)) == data.SYNTHETIC_SIZE


def test_jsonl_with_custom_keys(tok, tmp_path: Path) -> None:
    path = _jsonl(
        tmp_path / "d.jsonl",
        [{"question": "1 + 2 =", "solution": 3, "extra": "x"}, "", {"question": "so 4", "solution": "\\frac{1}{2}"}],
    )
    prompts = data.load_prompts(_data_cfg(path, prompt_key="question", answer_key="solution"), tok)
    assert [(p["prompt"], p["answer"]) for p in prompts] == [("1 + 2 =", "3"), ("so 4", "\\frac{1}{2}")]
    assert prompts[0]["prompt_ids"] == tok("1 + 2 =")["input_ids"]
    assert prompts.source == str(path)


def test_json_array(tok, tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"prompt": "1 + 1 =", "answer": "2"}]), encoding="utf-8")
    assert [p["answer"] for p in data.load_prompts(_data_cfg(path), tok)] == ["2"]


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        ([{"prompt": "1 + 1 =", "answer": "2"}, {"prompt": "2 + 2 ="}], r"line 2: no key 'answer' \(data.answer_key\)"),
        ([{"answer": "2"}], r"line 1: no key 'prompt' \(data.prompt_key\); the row has: answer"),
        (["[1, 2]"], "line 1: expected a JSON object, got list"),
        (["{not json"], "line 1: not valid JSON"),
        ([{"prompt": 5, "answer": "2"}], r"line 1: data.prompt_key='prompt' must be a non-empty string"),
        ([{"prompt": "  ", "answer": "2"}], "must be a non-empty string"),
        ([{"prompt": "1 =", "answer": None}], r"line 1: data.answer_key='answer' must be a string or a number"),
        ([{"prompt": "1 =", "answer": True}], "must be a string or a number"),
    ],
)
def test_bad_rows_name_file_and_row(tok, tmp_path: Path, rows: list, match: str) -> None:
    path = _jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(ValueError, match=match) as info:
        data.load_prompts(_data_cfg(path), tok)
    assert str(path) in str(info.value)


def test_non_utf8_is_a_clear_error(tok, tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"prompt": "1 + 1 =", "answer": "2"}\n{"prompt": "caf\xe9", "answer": "2"}\n')
    with pytest.raises(ValueError, match=r"latin1.jsonl: line 2: not UTF-8 \(byte 0xe9"):
        data.load_prompts(_data_cfg(path), tok)
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b'\xef\xbb\xbf{"prompt": "1 + 1 =", "answer": "2"}\n')  # a UTF-8 byte order mark is fine
    assert len(data.load_prompts(_data_cfg(bom), tok)) == 1


def test_long_prompts_skipped_and_counted_or_an_error(tok, tmp_path: Path) -> None:
    rows = [{"prompt": "1 + 1 =", "answer": "2"}, {"prompt": "so " * 10, "answer": "0"}, {"prompt": "2 =", "answer": 2}]
    path = _jsonl(tmp_path / "long.jsonl", rows)
    prompts = data.load_prompts(_data_cfg(path, max_prompt_tokens=4), tok)
    assert [p["prompt"] for p in prompts] == ["1 + 1 =", "2 ="] and prompts.skipped == 1
    with pytest.raises(ValueError, match=r"long.jsonl: line 2: the prompt has 10 tokens, more than .*=4"):
        data.load_prompts(_data_cfg(path, max_prompt_tokens=4, on_long_prompt="error"), tok)
    with pytest.raises(ValueError, match=r"holds no prompts \(all 3 were longer"):
        data.load_prompts(_data_cfg(path, max_prompt_tokens=1), tok)
    with pytest.raises(ValueError, match=r"data\.on_long_prompt"):
        data.load_prompts(_data_cfg(path, on_long_prompt="truncate"), tok)


def test_jsonl_is_read_lazily_through_an_index(tok, tmp_path: Path) -> None:
    rows = [{"prompt": f"{i % 10} + 1 =", "answer": i} for i in range(50)]
    rows[7] = {"prompt": "so " * 10, "answer": "long"}
    path = _jsonl(tmp_path / "d.jsonl", ["", *rows, "  "])
    prompts = data.load_prompts(_data_cfg(path, max_prompt_tokens=4), tok)
    assert len(prompts) == 49 and prompts.skipped == 1 and isinstance(prompts, data.Prompts)
    expected = [
        {"prompt": r["prompt"], "prompt_ids": tok(r["prompt"])["input_ids"], "answer": str(r["answer"])}
        for r in rows
        if r["answer"] != "long"
    ]
    assert list(prompts) == expected
    assert prompts[-1] == expected[-1] and prompts[3:6] == expected[3:6] and prompts[::-7] == expected[::-7]
    assert prompts[0] is not prompts[0]  # a fresh dict each read: no shared mutable state
    with pytest.raises(IndexError):
        prompts[49]
    os.utime(path, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))  # `touch`: the same bytes, a new time
    assert prompts[0] == expected[0]  # before: the run died here with a traceback
    path.write_text(path.read_text(encoding="utf-8").replace("1 + 1", "2 + 2"), encoding="utf-8")
    with pytest.raises(ValueError, match=r"d.jsonl: changed after it was loaded \(its bytes differ\)"):
        prompts[0]


def test_bad_rows_past_the_first_batch_fail_at_load(tok, tmp_path: Path) -> None:
    good = [{"prompt": "1 + 1 =", "answer": "2"}] * (data._BATCH + 10)
    path = _jsonl(tmp_path / "late.jsonl", [*good, {"prompt": "1 + 1 ="}])
    with pytest.raises(ValueError, match=rf"late.jsonl: line {len(good) + 1}: no key 'answer'"):
        data.load_prompts(_data_cfg(path), tok)
    path = _jsonl(tmp_path / "late_long.jsonl", [*good, {"prompt": "so " * 10, "answer": "0"}])
    with pytest.raises(ValueError, match=rf"late_long.jsonl: line {len(good) + 1}: the prompt has 10 tokens"):
        data.load_prompts(_data_cfg(path, max_prompt_tokens=4, on_long_prompt="error"), tok)


def test_token_counts_match_encode_prompt(tok, tmp_path: Path) -> None:
    chat_tok = build_tokenizer()
    chat_tok.chat_template = "{% for m in messages %}<think>{{ m['content'] }}</think>{% endfor %}<answer>"
    prompts = ["1 + 1 =", "so so so", "9", "<think> 3 </think> wait", "hello 4"]
    for t in (tok, chat_tok):
        counter = data._TokenCounter(t, chat_template=True)
        for _ in range(2):  # the first batch is checked against encode_prompts, later ones use the backend
            assert counter(prompts) == [len(data.encode_prompt(t, p, chat_template=True)) for p in prompts]
        assert counter.backend is not None

    class Disagreeing:  # a backend that miscounts: the counter notices on the first batch and stops using it
        truncation = padding = None

        def encode_batch(self, texts, add_special_tokens=True):
            return [SimpleNamespace(ids=[0]) for _ in texts]

    lying = build_tokenizer()
    counter = data._TokenCounter(lying, chat_template=False)
    counter.backend = Disagreeing()
    assert counter(prompts) == [len(tok(p)["input_ids"]) for p in prompts]
    assert counter.backend is None


def test_missing_empty_or_unknown_files(tok, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"data.source: .*nope.jsonl does not exist"):
        data.load_prompts(_data_cfg(tmp_path / "nope.jsonl"), tok)
    csv = tmp_path / "d.csv"
    csv.write_text("prompt,answer\n")
    with pytest.raises(ValueError, match=r"unknown type '.csv'"):
        data.load_prompts(_data_cfg(csv), tok)
    empty = _jsonl(tmp_path / "empty.jsonl", ["", "  "])
    with pytest.raises(ValueError, match="holds no prompts"):
        data.load_prompts(_data_cfg(empty), tok)


def test_chat_template_applied_when_present_and_asked(tok, tmp_path: Path) -> None:
    chat_tok = build_tokenizer()
    chat_tok.chat_template = (
        "{% for m in messages %}<think>{{ m['content'] }}</think>{% endfor %}"
        "{% if add_generation_prompt %}<answer>{% endif %}"
    )
    path = _jsonl(tmp_path / "d.jsonl", [{"prompt": "1 + 1 =", "answer": "2"}])
    templated = data.load_prompts(_data_cfg(path), chat_tok)[0]["prompt_ids"]
    assert templated == chat_tok("<think>1 + 1 =</think><answer>")["input_ids"]
    plain = data.load_prompts(_data_cfg(path, apply_chat_template=False), chat_tok)[0]["prompt_ids"]
    assert plain == tok("1 + 1 =")["input_ids"]
    assert data.load_prompts(_data_cfg(path), tok)[0]["prompt_ids"] == plain  # no template: plain text


def test_parquet(tok, tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"q": ["1 + 1 =", "2 + 2 ="], "a": [2, 4]}), path)
    prompts = data.load_prompts(_data_cfg(path, prompt_key="q", answer_key="a"), tok)
    assert [(p["prompt"], p["answer"]) for p in prompts] == [("1 + 1 =", "2"), ("2 + 2 =", "4")]
    with pytest.raises(ValueError, match=r"no column 'prompt' \(data.prompt_key\); the columns are: q, a"):
        data.load_prompts(_data_cfg(path, answer_key="a"), tok)


def test_parquet_streams_by_row_group(tok, tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "groups.parquet"
    prompts_in = [f"{i % 10} + 1 =" if i != 4 else "so " * 10 for i in range(10)]
    pq.write_table(pa.table({"prompt": prompts_in, "answer": list(range(10))}), path, row_group_size=3)
    prompts = data.load_prompts(_data_cfg(path, max_prompt_tokens=4), tok)
    assert len(prompts) == 9 and prompts.skipped == 1
    assert [p["answer"] for p in prompts] == ["0", "1", "2", "3", "5", "6", "7", "8", "9"]
    assert prompts[-1] == {"prompt": "9 + 1 =", "prompt_ids": tok("9 + 1 =")["input_ids"], "answer": "9"}
    assert [p["answer"] for p in prompts[::-4]] == ["9", "5", "0"]


def test_parquet_without_pyarrow_is_a_clear_error(tok, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "d.parquet"
    path.write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # makes `import pyarrow...` raise ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ImportError, match=r"d.parquet needs pyarrow: pip install pyarrow"):
        data.load_prompts(_data_cfg(path), tok)


# ------------------------------------------------------------------------------------------------ PromptSampler


def _chunks(sampler: data.PromptSampler, n: int) -> list[list[int]]:
    return [sampler.next_chunk() for _ in range(n)]


def test_sampler_ranks_get_disjoint_items_of_the_same_global_chunk() -> None:
    single = _chunks(data.PromptSampler(40, 8, seed=3), 12)
    r0 = _chunks(data.PromptSampler(40, 8, seed=3, rank=0, world=2), 12)
    r1 = _chunks(data.PromptSampler(40, 8, seed=3, rank=1, world=2), 12)
    for whole, a, b in zip(single, r0, r1):
        assert len(a) == len(b) == 4 and not set(a) & set(b)
        assert a + b == whole


def test_sampler_epochs_reshuffle_deterministically() -> None:
    chunks = _chunks(data.PromptSampler(20, 6, seed=0), 9)  # 3 chunks per epoch: 18 of 20 items, 2 dropped
    assert chunks == _chunks(data.PromptSampler(20, 6, seed=0), 9)
    assert chunks != _chunks(data.PromptSampler(20, 6, seed=1), 9)
    epochs = [[i for chunk in chunks[e : e + 3] for i in chunk] for e in (0, 3, 6)]
    for epoch in epochs:
        assert len(set(epoch)) == 18 and all(0 <= i < 20 for i in epoch)  # no item twice within an epoch
    assert epochs[0] != epochs[1] != epochs[2]
    assert epochs[1] == torch.randperm(20, generator=torch.Generator().manual_seed(0 + 1)).tolist()[:18]


def test_sampler_resume_continues_exactly() -> None:
    for world in (1, 2):
        straight = data.PromptSampler(30, 8, seed=5, rank=world - 1, world=world)
        first = _chunks(straight, 5)
        state = straight.state_dict()
        assert json.loads(json.dumps(state)) == state  # plain data
        resumed = data.PromptSampler(30, 8, seed=5, rank=world - 1, world=world)
        resumed.load_state_dict(state)
        assert _chunks(resumed, 9) == _chunks(straight, 9)
        assert first  # the resumed sampler did not replay the first chunks
    with pytest.raises(ValueError, match="n_items=30 but this run has n_items=31"):
        data.PromptSampler(31, 8, seed=5).load_state_dict(state)
    with pytest.raises(ValueError, match="seed=5 but this run has seed=6"):
        data.PromptSampler(30, 8, seed=6).load_state_dict(state)


def test_sampler_resumes_at_another_world_size_with_the_same_global_order() -> None:
    """Saved by 2 ranks, resumed by 1 (and back by 4): the global chunks go on as the uninterrupted run's, across an
    epoch's end; the state is a global count, identical on every rank; the older (epoch, position) form loads."""
    straight = _chunks(data.PromptSampler(30, 8, seed=5), 10)  # 3 chunks an epoch
    ranks = [data.PromptSampler(30, 8, seed=5, rank=r, world=2) for r in range(2)]
    together = lambda samplers: [i for s in samplers for i in s.next_chunk()]  # one global chunk, rank by rank
    got = [together(ranks) for _ in range(2)]
    state = ranks[0].state_dict()
    assert state == ranks[1].state_dict() and state["consumed"] == 16
    one = data.PromptSampler(30, 8, seed=5)
    one.load_state_dict(state)
    got += _chunks(one, 3)
    four = [data.PromptSampler(30, 8, seed=5, rank=r, world=4) for r in range(4)]
    for s in four:
        s.load_state_dict(one.state_dict())
    got += [together(four) for _ in range(5)]
    assert got == straight
    legacy = data.PromptSampler(30, 8, seed=5)
    legacy.load_state_dict({"epoch": 1, "position": 8, "seed": 5, "n_items": 30, "prompts_per_chunk": 8})
    assert legacy.consumed == 32 and legacy.next_chunk() == straight[4]


def test_sampler_bad_arguments() -> None:
    with pytest.raises(ValueError, match="not divisible by the world size 2"):
        data.PromptSampler(10, 3, seed=0, rank=0, world=2)
    with pytest.raises(ValueError, match="at least that many"):
        data.PromptSampler(4, 8, seed=0)
    with pytest.raises(ValueError, match="rank"):
        data.PromptSampler(10, 2, seed=0, rank=2, world=2)
    with pytest.raises(ValueError, match="n_items"):
        data.PromptSampler(0, 2, seed=0)


# ------------------------------------------------------------------------------------------------ rewards


def test_score_synthetic() -> None:
    responses = ["<think> so </think> <answer> 2 </answer>", "2", "<answer> 5 </answer>", "", "so"]
    correct, formatted = rewards.score(responses, ["2", "2", "2", "2", "2"], task="synthetic")
    assert correct.dtype == formatted.dtype == torch.bool
    assert correct.tolist() == [True, False, False, False, False]  # "2": no answer tag, no answer
    assert formatted.tolist() == [True, False, True, False, False]
    assert rewards.task_for(_data_cfg()) == "synthetic"
    assert rewards.task_for(_data_cfg("x.jsonl")) == "math"


def test_score_math() -> None:
    # Exact-stage verdicts only (no symbolic check, so no verifier subprocess starts).
    responses = [
        "<think> 2 + 2 </think> <answer> 4 </answer>",
        "the answer is \\boxed{\\frac{8}{2}}",
        "no answer here",
        "<think> x </think> <answer> </answer>",
    ]
    correct, formatted = rewards.score(responses, ["4", "4", "4", "4"], task="math")
    assert correct.tolist() == [True, True, False, False]
    assert formatted.tolist() == [True, False, False, False]
    opened = rewards.score([" 2 + 2 </think> <answer> 4 </answer>"], ["4"], task="math", think_opened=True)
    assert opened[0].tolist() == [True] and opened[1].tolist() == [True]


def test_score_bad_arguments() -> None:
    with pytest.raises(ValueError, match="task must be one of synthetic, chain, math"):
        rewards.score(["1"], ["1"], task="code")
    with pytest.raises(ValueError, match="answers has 2 items but responses has 1"):
        rewards.score(["1"], ["1", "2"], task="synthetic")
    with pytest.raises(ValueError, match="not one string"):
        rewards.score("1", ["1"], task="synthetic")


def test_lengths() -> None:
    responses = ["ab", "", "abcd"]
    assert rewards.lengths([3, 1, 5], responses, "tokens").tolist() == [3.0, 1.0, 5.0]
    from_tensor = rewards.lengths(torch.tensor([3, 1, 5]), responses, "tokens")
    assert from_tensor.dtype == torch.float32 and from_tensor.tolist() == [3.0, 1.0, 5.0]
    assert rewards.lengths([3, 1, 5], responses, "chars").tolist() == [2.0, 0.0, 4.0]
    with pytest.raises(ValueError, match="unit must be one of tokens, chars"):
        rewards.lengths([1], ["a"], "words")
    with pytest.raises(ValueError, match="response_token_counts has 1 items but responses has 2"):
        rewards.lengths([1], ["a", "b"], "tokens")


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".JSON", ".parquet", ".pq"])
def test_config_accepts_exactly_what_the_loaders_read(tok, tmp_path: Path, suffix: str) -> None:
    """`DataConfig` / `EvalConfig` take a file type iff `load_prompts` reads it (one list: trainer.data_formats)."""
    from trainer.config import ConfigError, DataConfig, EvalConfig
    from trainer.data_formats import DATA_SUFFIXES

    assert suffix.lower() in DATA_SUFFIXES
    path = tmp_path / f"d{suffix}"
    rows = [{"prompt": "1 + 1 =", "answer": "2"}]
    if suffix.lower() in (".parquet", ".pq"):
        pa = pytest.importorskip("pyarrow")
        pytest.importorskip("pyarrow.parquet").write_table(pa.Table.from_pylist(rows), path)
    else:
        _jsonl(path, rows)
    cfg = DataConfig(source=str(path))
    EvalConfig(source=f"synthetic,{path}")
    assert [p["answer"] for p in data.load_prompts(cfg, tok)] == ["2"]
    txt = tmp_path / "d.txt"
    _jsonl(txt, rows)
    with pytest.raises(ConfigError, match=r"\.jsonl / \.json / \.parquet / \.pq"):
        DataConfig(source=str(txt))
    with pytest.raises(ValueError, match=r"unknown type '\.txt'"):
        data.load_prompts(_data_cfg(txt), tok)
