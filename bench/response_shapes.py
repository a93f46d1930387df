"""What a trained model's answers look like on the chain task, level by level: how often it answers directly,
thinks, checks (the redundant `wait` pass), skips steps or leaves its answer open; to find the shortcuts a length
reward found.

    python -m bench.response_shapes RUN_DIR [RUN_DIR ...] [--per-level 32] [--json FILE]

Each RUN_DIR's latest checkpoint is loaded (as `python -m trainer.eval` loads it), and `--per-level` held-out
problems of each level are answered at the run's `rollout.temperature`. Per level and shape: the share of answers
and their accuracy. Shapes: `direct` (`<answer> d </answer>`), `thought` (every step written, no check),
`thought+check` (with the `wait` pass), `thought, steps skipped` (fewer steps than terms: a shortcut),
`other` (anything else, e.g. an answer never closed).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from bench.task_frontier import problems_by_level, sample
from trainer import tasks
from trainer.data import encode_prompts
from trainer.eval.cli import _config, _load_model, locate

SHAPES = ("direct", "thought", "thought+check", "thought, steps skipped", "other")


def shape(tokens: list[str], level: int) -> str:
    """The shape of one chain-task answer (its tokens, the stop token excluded)."""
    if tokens[:1] == ["<answer>"]:
        return "direct" if len(tokens) == 3 and tokens[2] == "</answer>" else "other"
    if tokens[:1] != ["<think>"] or "</think>" not in tokens or tokens[-1:] != ["</answer>"]:
        return "other"
    thought = tokens[1 : tokens.index("</think>")]
    steps = sum(len(t) == 2 and t[0].isalpha() and t[1].isdigit() for t in thought)
    if steps < level:
        return "thought, steps skipped"
    return "thought+check" if "wait" in thought else "thought"


def shapes_of(run_dir: Path, per_level: int, seed: int = 0) -> dict[str, Any]:
    """{level: {shape: {"share", "accuracy"}}} for the latest checkpoint of `run_dir`."""
    src = locate(run_dir)
    cfg = _config(src, None, [])
    task = tasks.of_source(cfg.data.source)
    lm, tok = _load_model(cfg, src)
    torch.manual_seed(seed)
    out: dict[str, Any] = {}
    for lv, items in problems_by_level(task, per_level, seed).items():
        prompts = encode_prompts(tok, [it["prompt"] for it in items], chat_template=cfg.data.apply_chat_template)
        completions = sample(lm, tok, prompts, [], cfg.rollout.max_new_tokens, cfg.rollout.temperature)
        count: Counter[str] = Counter()
        right: defaultdict[str, int] = defaultdict(int)
        for it, c in zip(items, completions):
            ended = bool(c) and c[-1] == tok.eos_token_id
            body = c[:-1] if ended else c
            s = shape(tok.convert_ids_to_tokens(body), lv) if ended else "other"
            count[s] += 1
            text = tok.decode(body, skip_special_tokens=True)
            right[s] += int(ended and task.check(text, it["answer"]).correct)
        out[str(lv)] = {s: {"share": count[s] / len(items), "accuracy": right[s] / count[s]} for s in count}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.response_shapes", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="run folders")
    p.add_argument("--per-level", type=int, default=32)
    p.add_argument("--json", default="", help="also write the shapes here")
    args = p.parse_args(argv)
    if not dist.is_initialized():  # the checkpoint loader wants a process group: one of one
        store = tempfile.mkdtemp()
        dist.init_process_group("gloo", init_method=f"file://{store}/pg", rank=0, world_size=1)
    result = {}
    for run in args.runs:
        result[run] = shapes_of(Path(run), args.per_level)
        print(f"\n{run}")
        print("| level | " + " | ".join(SHAPES) + " |")
        print("| ---: |" + " --- |" * len(SHAPES))
        for lv, by in result[run].items():
            cells = [f"{by[s]['share']:.2f} ({by[s]['accuracy']:.2f})" if s in by else "-" for s in SHAPES]
            print(f"| {lv} | " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
