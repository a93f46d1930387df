"""trainer.eval: the [eval] config, the held-out split, difficulty through the data loader, sharding and seeds,
the real evaluation files, evaluation during 2-rank training (same numbers as one process, training unchanged),
and the standalone command on a run's export and checkpoint."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from test_trainer_run import ROOT, run

from trainer import data
from trainer import eval as ev
from trainer.config import ConfigError, from_dict, load_config
from trainer.model.load import model_config, model_from_config
from trainer.model.tiny import build_tokenizer
from trainer.rollout import Completion, HFEngine
from trainer.tasks import synthetic as task

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FILES = ("math500", "gsm8k_test", "aime24", "amc23")
needs_data = pytest.mark.skipif(
    not all((DATA / f"{name}.jsonl").is_file() for name in FILES), reason=f"the evaluation files are not in {DATA}"
)


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def _cfg(**eval_keys) -> object:
    return from_dict({"eval": eval_keys, "rollout": {"max_new_tokens": 6}})


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ------------------------------------------------------------------------------------------------------ config
def test_eval_config_sources_and_errors() -> None:
    assert _cfg().eval.sources == ["synthetic"]
    assert load_config(["eval.source=a/x.jsonl, b/y.parquet"]).eval.sources == ["a/x.jsonl", "b/y.parquet"]
    listed = from_dict({"eval": {"source": ["a/x.jsonl", "synthetic"]}}).eval
    assert listed.source == "a/x.jsonl,synthetic" and listed.sources == ["a/x.jsonl", "synthetic"]
    for override, message in [
        ("eval.n=0", "eval.n = 0: must be >= 1"),
        ("eval.top_p=0", "eval.top_p = 0.0: must be in (0, 1]"),
        ("eval.every=-1", "eval.every = -1: must be >= 0"),
        ("eval.batch_size=0", "eval.batch_size = 0: must be >= 1"),
        ("eval.source=data.csv", "eval.source = 'data.csv': 'data.csv' is neither a built-in task"),
        ("eval.source=a/x.jsonl,b/x.parquet", "two entries report as 'x'"),
        ("eval.source=", "eval.source = '': must be a built-in task ('synthetic', 'chain') or"),
        ("eval.temprature=0.5", "did you mean 'eval.temperature'"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_config([override])
    with pytest.raises(ConfigError, match=r"eval\.source"):
        from_dict({"eval": {"source": ["a.jsonl", 3]}})


# -------------------------------------------------------------------------------------------------------- data
def test_held_out_split_is_disjoint_from_training(tok) -> None:
    train = task.make_dataset(4096, 0, split="train")
    held_out = task.make_dataset(256, 0, split="eval")
    assert {it["prompt"] for it in train}.isdisjoint(it["prompt"] for it in held_out)
    assert all("level" in it for it in held_out)
    # The trainer's two loaders draw exactly these: training prompts (data) and the eval set.
    cfg = _cfg(synthetic_size=64)
    (s,) = ev.load_eval_sets(cfg, tok)
    assert (s.name, s.task, s.count, s.skipped) == ("synthetic", "synthetic", 64, 0)
    training = data.load_prompts(cfg.data, tok, seed=cfg.seed)
    assert {it["prompt"] for it in training}.isdisjoint(s.prompts[i]["prompt"] for i in range(s.count))
    assert all(s.prompts[i]["difficulty"] is not None for i in range(s.count))


def test_difficulty_carried_through_jsonl_and_parquet(tok, tmp_path: Path) -> None:
    rows = [
        {"prompt": "1 + 2 =", "answer": "3", "level": 2},
        {"prompt": "2 + 2 =", "answer": "4"},
        {"prompt": "0 + 1 =", "answer": "1", "level": "hard"},
    ]
    path = _jsonl(tmp_path / "d.jsonl", rows)
    base = dict(prompt_key="prompt", answer_key="answer", max_prompt_tokens=64, on_long_prompt="skip")
    cfg = SimpleNamespace(source=str(path), apply_chat_template=True, difficulty_key="level", **base)
    assert [it["difficulty"] for it in data.load_prompts(cfg, tok)] == [2, None, "hard"]
    plain = data.load_prompts(SimpleNamespace(source=str(path), apply_chat_template=True, **base), tok)
    assert "difficulty" not in plain[0]  # the training data config names no difficulty column
    _jsonl(path, [{"prompt": "1 + 2 =", "answer": "3", "level": [1]}])
    with pytest.raises(ValueError, match=r"d\.jsonl: line 1: the difficulty column must hold a number or a string"):
        data.load_prompts(cfg, tok)


def test_difficulty_from_parquet(tok, tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table({"prompt": ["1 + 2 =", "2 + 2 =", "0 + 1 ="], "answer": ["3", "4", "1"]})
    pq.write_table(table.append_column("level", pa.array([1, None, 3])), tmp_path / "d.parquet")
    base = dict(prompt_key="prompt", answer_key="answer", max_prompt_tokens=64, on_long_prompt="skip")
    cfg = SimpleNamespace(source=str(tmp_path / "d.parquet"), apply_chat_template=True, difficulty_key="level", **base)
    assert [it["difficulty"] for it in data.load_prompts(cfg, tok)] == [1, None, 3]
    pq.write_table(table, tmp_path / "none.parquet")  # no such column: no difficulty, not an error
    cfg.source = str(tmp_path / "none.parquet")
    assert [it["difficulty"] for it in data.load_prompts(cfg, tok)] == [None, None, None]


def test_missing_eval_file_names_eval_source(tok, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"^eval\.source: .*nothing\.jsonl does not exist"):
        ev.load_eval_sets(_cfg(source=str(tmp_path / "nothing.jsonl")), tok)


# ----------------------------------------------------------------------------------------- sharding and seeds
class SeededEngine:
    """A stand-in engine: each call's completions drawn from its seed, every call recorded."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[list[int]], int]] = []

    def generate(self, prompt_ids, sampling):
        self.calls.append(([list(p) for p in prompt_ids], sampling.seed))
        rng = random.Random(sampling.seed)
        return [[Completion(rng.choices(range(4, 31), k=5)) for _ in range(sampling.n)] for _ in prompt_ids]

    def wake_up(self) -> None: ...

    def sleep(self) -> None: ...


def test_blocks_are_dealt_to_ranks_with_their_own_seeds(tok, tmp_path: Path, monkeypatch) -> None:
    rows = [{"prompt": f"{i % 5} + {i % 3} =", "answer": str(i % 5 + i % 3), "level": i % 3} for i in range(23)]
    cfg = _cfg(source=str(_jsonl(tmp_path / "sums.jsonl", rows)), batch_size=5, n=3)
    sets = ev.load_eval_sets(cfg, tok)
    alone = SeededEngine()
    one = ev.evaluate(cfg, alone, tok, sets, step=7)
    assert len(alone.calls) == 5  # blocks of 5, 5, 5, 5, 3
    drop = lambda m: {k: v for k, v in m.items() if k != "time/eval"}
    assert drop(ev.evaluate(cfg, SeededEngine(), tok, sets, step=7)) == drop(one)

    # Two ranks, one after the other: the gather hands each the parts gathered so far (rank 1 runs first).
    parts_of: dict[int, list] = {}
    engines = {1: SeededEngine(), 0: SeededEngine()}
    for rank in (1, 0):

        def gather(parts, local, rank=rank):
            parts_of[rank] = local
            parts[:] = [parts_of.get(r, []) for r in range(len(parts))]

        monkeypatch.setattr(ev.dist, "all_gather_object", gather)
        two = ev.evaluate(cfg, engines[rank], tok, sets, step=7, rank=rank, world=2)
    assert drop(two) == drop(one)
    # Same number of calls on both ranks (rank 1's last one empty); blocks 0, 2, 4 on rank 0, 1, 3 on rank 1.
    assert len(engines[0].calls) == len(engines[1].calls) == 3 and engines[1].calls[-1][0] == []
    dealt = [engines[b % 2].calls[b // 2] for b in range(5)]
    assert dealt == alone.calls
    assert len({seed for _, seed in alone.calls}) == 5 and ev.block_seed(0, 7, "sums", 2) == alone.calls[2][1]
    assert one["eval/sums/prompts"] == 23.0 and one["eval/sums/level_2/prompts"] == 7.0


def test_evaluate_is_deterministic_and_leaves_the_rng(tok) -> None:
    cfg = _cfg(synthetic_size=16, n=2)
    sets = ev.load_eval_sets(cfg, tok)
    engine = HFEngine(
        lambda: model_from_config(model_config(cfg.model, tok), seed=0), pad_token_id=tok.pad_token_id,
        device="cpu", dtype=torch.float32,
    )  # fmt: skip
    before = torch.get_rng_state()
    python_before = random.getstate()
    first = ev.evaluate(cfg, engine, tok, sets, step=0)
    assert torch.equal(torch.get_rng_state(), before) and random.getstate() == python_before
    again = ev.evaluate(cfg, engine, tok, sets, step=0)
    later = ev.evaluate(cfg, engine, tok, sets, step=25)
    drop = lambda m: {k: v for k, v in m.items() if k != "time/eval"}
    assert drop(first) == drop(again) and drop(first) != drop(later)
    assert set(first) >= {"eval/synthetic/avg@2", "eval/synthetic/pass@2", "eval/synthetic/maj@2"}
    assert first["eval/synthetic/prompts"] == 16.0


# -------------------------------------------------------------------------------------------------- real data
@needs_data
@pytest.mark.slow
def test_real_evaluation_files(tmp_path: Path, monkeypatch) -> None:
    """The papers' benchmarks through the whole path: file, chat template, length limit, generation, the math
    verifier, the per-level split of MATH-500. A random tiny model scores ~0; the point is that it all runs."""
    chat = build_tokenizer()
    chat.chat_template = "{% for m in messages %}so {{ m['content'] }} then{% endfor %}<think>"
    monkeypatch.chdir(tmp_path)  # the presets' paths are relative to the repository root: found from anywhere
    sources = [f"../shared/data/{name}.jsonl" for name in FILES]
    assert Path(ev.resolve_source(sources[0])).resolve() == (DATA / "math500.jsonl").resolve()
    cfg = from_dict({
        "eval": {"source": sources, "max_prompts": 4, "n": 2, "max_prompt_tokens": 4096, "max_new_tokens": 4},
    })  # fmt: skip
    sets = ev.load_eval_sets(cfg, chat)
    assert [s.name for s in sets] == list(FILES) and all(s.task == "math" and s.count == 4 for s in sets)
    first = sets[0].prompts[0]
    assert first["prompt_ids"][0] == chat.convert_tokens_to_ids("so")  # the chat template was applied
    assert first["difficulty"] in (1, 2, 3, 4, 5)
    engine = HFEngine(
        lambda: model_from_config(model_config(cfg.model, chat), seed=0), pad_token_id=chat.pad_token_id,
        device="cpu", dtype=torch.float32,
    )  # fmt: skip
    metrics = ev.evaluate(cfg, engine, chat, sets, step=0)
    levels = {str(sets[0].prompts[i]["difficulty"]) for i in range(4)}
    for name in FILES:
        assert metrics[f"eval/{name}/prompts"] == 4.0
        assert 0.0 <= metrics[f"eval/{name}/avg@2"] <= metrics[f"eval/{name}/pass@2"] <= 1.0
        assert 1.0 <= metrics[f"eval/{name}/length"] <= 4.0
    for level in levels:
        assert f"eval/math500/level_{level}/avg@2" in metrics
    assert not any("/level_" in k for k in metrics if not k.startswith("eval/math500/"))  # no level column there


# ------------------------------------------------------------------------------------------------- end to end
def _eval_rows(lines: list[dict]) -> list[dict]:
    return [r for r in lines if r.get("kind") == "eval"]


def _numbers(row: dict) -> dict:
    return {k: v for k, v in row.items() if k.startswith("eval/")}


# The warm start (a supervised pass before RL) is the same with evaluation on and off and costs minutes here: off.
NO_WARM_START = "warm_start.mode=off"
EVAL_ON = ("eval.enabled=true", "eval.every=1", "eval.synthetic_size=24", "eval.batch_size=5",
           "checkpoint.export_hf=true", NO_WARM_START)  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """Two 2-rank runs of 2 steps: evaluation after every step (and an HF export), and evaluation off."""
    tmp = tmp_path_factory.mktemp("eval_runs")
    on = run(tmp / "on", *EVAL_ON, "optim.total_steps=2")
    off = run(tmp / "off", "eval.enabled=false", "optim.total_steps=2", NO_WARM_START)
    return {"tmp": tmp, "dir": tmp / "on", "on": on, "off": off}


@pytest.mark.distributed
@pytest.mark.slow
def test_evaluation_during_training_does_not_change_it(trained) -> None:
    on, off = trained["on"], trained["off"]
    assert [r["step"] for r in _eval_rows(on)] == [0, 1, 2] and not _eval_rows(off)
    train_rows = [r for r in on if "kind" not in r]
    assert len(train_rows) == len(off) == 2
    for a, b in zip(train_rows, off):
        for k in a:
            if not k.startswith(("time", "mem", "sys/")) and k != "tokens_per_s":
                assert a[k] == b[k], (k, a[k], b[k])
    last = _eval_rows(on)[-1]
    assert last["eval/synthetic/prompts"] == 24.0 and 0 <= last["eval/synthetic/avg@4"] <= 1
    lines = (trained["dir"] / "summary.txt").read_text().splitlines()
    first_eval = _eval_rows(on)[0]["eval/synthetic/avg@4"]
    assert lines[1].startswith("held-out accuracy (eval avg@4, step 0 -> 2): synthetic ")
    assert f"synthetic {first_eval:.3f} -> {last['eval/synthetic/avg@4']:.3f}" in lines[1]
    assert lines[2].startswith("accuracy: first 10% of steps")


@pytest.mark.distributed
@pytest.mark.slow
def test_resumed_run_evaluates_as_the_uninterrupted_one(trained) -> None:
    """1 step, stop, resume for 1 more: the same evaluation rows (the resumed start does not evaluate step 1
    again), and the summary still starts from the first run's evaluation before training."""
    split = trained["tmp"] / "split"
    run(split, *EVAL_ON, "optim.total_steps=1")
    lines = run(split, *EVAL_ON, "optim.total_steps=2", "--resume", "auto")
    assert [r["step"] for r in _eval_rows(lines)] == [0, 1, 2]
    for a, b in zip(_eval_rows(lines), _eval_rows(trained["on"])):
        assert _numbers(a) == _numbers(b), a["step"]
    summary = (split / "summary.txt").read_text()
    assert (trained["dir"] / "summary.txt").read_text().splitlines()[1] in summary


def _standalone(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", TRITON_INTERPRET="0")
    env.pop("RANK", None)
    cmd = [sys.executable, "-m", "trainer.eval", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("model", ["hf", "checkpoints/step_00000002"])
def test_standalone_reproduces_the_runs_last_evaluation(trained, model, tmp_path: Path) -> None:
    """One process evaluating the export or the checkpoint gives the numbers the 2 ranks logged at the end."""
    out = _standalone(str(trained["dir"] / model), "--json", str(tmp_path / "m.json"))
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    assert "avg@4" in out.stdout and "synthetic level" in out.stdout
    record = json.loads((tmp_path / "m.json").read_text())
    assert record["step"] == 2
    assert _numbers(record["metrics"]) == _numbers(_eval_rows(trained["on"])[-1])


def test_standalone_help_and_bad_model(tmp_path: Path, capsys) -> None:
    from trainer.eval.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0 and "checkpoint folder" in capsys.readouterr().out
    assert main([str(tmp_path)]) == 2
    assert "not a Hugging Face folder" in capsys.readouterr().err
    (tmp_path / "config.json").write_text("{}")
    assert main([str(tmp_path), "eval.n=0"]) == 2
    assert "eval.n = 0" in capsys.readouterr().err
