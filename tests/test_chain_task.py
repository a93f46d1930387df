"""trainer.tasks.chain and the built-in task registry: data, worked solutions, the tokenizer, and the plumbing that
makes `data.source = "chain"` a task like the default one (config, prompts, reward, evaluation sets, warm start)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from transformers import PretrainedConfig

from trainer import tasks
from trainer.config import ConfigError, load_config
from trainer.data import load_prompts
from trainer.eval import load_eval_sets
from trainer.model import warm_start
from trainer.model.tiny import build_tokenizer
from trainer.reward import builtin as rewards
from trainer.tasks import chain


def test_registry_names_both_tasks_and_refuses_others() -> None:
    assert tasks.NAMES == ("synthetic", "chain")
    assert tasks.get("chain") is chain and tasks.get("synthetic").NAME == "synthetic"
    assert tasks.of_source("data/x.jsonl").NAME == "synthetic"  # a file: the tiny preset's default tokenizer
    assert tasks.is_builtin("chain") and not tasks.is_builtin("chain.jsonl")
    with pytest.raises(ValueError, match="built-in tasks are synthetic, chain"):
        tasks.get("digits")


def test_dataset_is_deterministic_uniform_and_right() -> None:
    a = chain.make_dataset(3000, seed=1)
    assert a == chain.make_dataset(3000, seed=1) and a != chain.make_dataset(3000, seed=2)
    for item in a:
        terms = item["prompt"].split()
        assert terms[-1] == "=" and len(terms) - 1 == item["level"] == len(item["digits"])
        assert [t[0] for t in terms[:-1]] == list(chain.LETTERS[: item["level"]])
        assert [int(t[1:]) for t in terms[:-1]] == item["digits"] and all(1 <= d <= 9 for d in item["digits"])
        assert item["answer"] == str(sum(item["digits"]) % 10)
    levels = Counter(item["level"] for item in a)
    assert set(levels) == set(range(1, chain.MAX_LEVEL + 1))
    assert max(levels.values()) < 1.4 * min(levels.values())


def test_held_out_split_is_disjoint_and_checked() -> None:
    train = {it["prompt"] for it in chain.make_dataset(20000, seed=0, split="train")}
    held = [it["prompt"] for it in chain.make_dataset(2000, seed=0, split="eval")]
    assert not train & set(held) and all(chain.split_of(p) == "eval" for p in held)
    with pytest.raises(ValueError, match="split"):
        chain.make_dataset(4, seed=0, split="test")
    with pytest.raises(ValueError, match="size"):
        chain.make_dataset(0, seed=0)


def test_worked_solutions_lengths_and_score() -> None:
    assert chain.solution([3, 5, 2], think=False) == "<answer> 0 </answer>"
    assert chain.solution([3, 5, 2], think=True) == "<think> a3 3 b5 8 c2 0 </think> <answer> 0 </answer>"
    assert chain.solution([3, 5, 2], think=True, verify=2) == (
        "<think> a3 3 b5 8 c2 0 wait 0 0 </think> <answer> 0 </answer>"
    )
    assert chain.solution([3, 5, 2], think=True, verify=9) == chain.solution([3, 5, 2], think=True, verify=3)
    tok = build_tokenizer("chain")
    for item in chain.make_dataset(40, seed=3):
        for think, verify in ((False, 0), (True, 0), (True, item["level"])):
            text = chain.solution(item["digits"], think=think, verify=verify)
            ids = tok(text, add_special_tokens=False)["input_ids"]
            decoded = tok.decode(ids)
            assert tok(decoded, add_special_tokens=False)["input_ids"] == ids  # the text round-trips
            want = 3 if not think else 2 + 2 * item["level"] + 3 + (1 + verify if verify else 0)
            assert len(ids) == want
            v = chain.check(decoded, item["answer"])
            assert v.correct and v.formatted, decoded
    wrong = chain.check("<think> a3 3 b5 8 c2 1 </think> <answer> 1 </answer>", "0")
    assert not wrong.correct and wrong.formatted and wrong.predicted == "1"


def test_tokenizer_has_the_task_vocabulary_only() -> None:
    tok = build_tokenizer("chain")
    assert len(tok) == 4 + len(chain.VOCAB) == 164
    assert len(build_tokenizer()) == 31  # the default task's tokenizer is unchanged (golden traces, caches)
    assert tok.convert_ids_to_tokens(tok("a3 b5 =", add_special_tokens=False)["input_ids"]) == ["a3", "b5", "="]


def test_warm_start_mixture_and_weights() -> None:
    pairs = warm_start.examples(4000, seed=0, direct=0.5, filler=0.8, task=chain)
    direct = sum(r.startswith("<answer>") for _, r in pairs) / len(pairs)
    thoughts = [r for _, r in pairs if r.startswith("<think>")]
    checked = sum(" wait " in r for r in thoughts) / len(thoughts)
    assert 0.46 < direct < 0.54 and 0.76 < checked < 0.84
    long = sum(len(p.split()) - 1 > 8 for p, _ in pairs) / len(pairs)
    assert 0.45 < long < 0.55  # levels uniform, as the task's (WARM_START_WEIGHTS)
    weighted = chain.make_dataset(4000, 0, weights=[1.0] * 8 + [0.0] * 8)
    assert max(it["level"] for it in weighted) == 8
    assert all(chain.check(r, "x").predicted is not None for _, r in pairs[:50])


def test_config_data_eval_and_reward_take_the_chain_task() -> None:
    cfg = load_config(["--config", "chain"])
    assert cfg.data.source == "chain" and cfg.eval.sources == ["chain"] and warm_start.applies(cfg)
    assert rewards.task_for(cfg.data) == "chain"
    tok = build_tokenizer("chain")
    prompts = load_prompts(cfg.data, tok, seed=0)
    assert len(prompts) > 1000 and prompts[0]["prompt"].endswith("=")
    sets = load_eval_sets(cfg, tok)
    assert [(s.name, s.task, s.count) for s in sets] == [("chain", "chain", 512)]
    assert all(chain.split_of(sets[0].prompts[i]["prompt"]) == "eval" for i in range(20))
    correct, formatted = rewards.score(["<answer> 0 </answer>", "<answer> 0"], ["0", "0"], task="chain")
    assert correct.tolist() == [True, True] and formatted.tolist() == [True, False]
    with pytest.raises(ConfigError, match="built-in task"):
        load_config(["data.source=chains"])
    with pytest.raises(ConfigError, match="built-in task"):
        load_config(["eval.source=chainz"])


def test_warm_start_cache_is_keyed_by_task() -> None:
    config = PretrainedConfig(vocab_size=164)
    a = warm_start.cache_path(load_config(["--config", "chain"]), config, Path("runs/x"))
    b = warm_start.cache_path(load_config([]), config, Path("runs/x"))
    assert a.name.startswith(chain.VERSION) and b.name.startswith("digit-sum-v1") and a != b


def test_frontier_picks_the_shortest_way_within_tolerance() -> None:
    from bench.task_frontier import frontier

    def way(acc: float, length: float) -> dict:
        return {"n": 10, "accuracy": acc, "length": length}

    levels = {
        1: {"direct": way(0.99, 4.0), "thought": {**way(1.0, 10.0), "unpadded": way(1.0, 8.0)}, "free": way(0.9, 7.0)},
        5: {"direct": way(0.1, 4.0), "thought": {**way(0.95, 20.0), "unpadded": way(0.94, 16.0)}, "free": way(0.7, 15)},
        9: {"direct": way(0.1, 4.0), "thought": {**way(0.9, 30.0), "unpadded": {"n": 0}}, "free": way(0.6, 22.0)},
    }
    f = frontier(levels, 0.02)
    assert f[1]["way"] == "direct" and f[1]["length"] == 4.0  # 0.99 is within 0.02 of 1.0
    assert f[5]["way"] == "thought, unpadded" and f[5]["best_accuracy"] == 0.95
    assert f[9]["way"] == "thought"  # no unpadded sample: not an option
