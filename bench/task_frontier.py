"""What the warm start can reach on a built-in task, level by level: the accuracy and length of its own answers, of
forced direct answers, and of forced thoughts with and without their redundant part.

    python -m bench.task_frontier [--config chain] [--per-level 128] [--out DIR] [section.key=value ...]

For each level, `--per-level` held-out problems (the task's eval split) are answered three ways by the warm-started
model (the one every RL run of that config starts from), sampled at `rollout.temperature`:
- free: as the model chooses (what RL starts from);
- direct: the response forced to open with `<answer>`;
- thought: forced to open with `<think>`; its samples are also split by whether they carry a redundant part (the
  chain task's `wait` restatement, the digit-sum task's filler words), to show what removing it costs.

The frontier per level is the shortest way of answering whose accuracy is within `--tolerance` of the best way's: what
a length reward can reach without losing accuracy. Writes `bench/results/frontier_<task>_<device>_<date>.{json,md}`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model

from bench._harness import device_info, results_stem
from trainer import tasks
from trainer.config import load_config
from trainer.data import encode_prompts
from trainer.model import warm_start
from trainer.model.load import load_tokenizer, model_config, model_from_config

ROOT = Path(__file__).resolve().parents[1]
MODES = {"free": "", "direct": "<answer>", "thought": "<think>"}
PADDING_WORDS = {"wait", "so", "is", "plus", "makes", "then", "ok", "hmm", "check", "count"}


def _parse(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(prog="python -m bench.task_frontier", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="chain", help="a TOML file or preset (default: chain)")
    p.add_argument("--per-level", type=int, default=128, help="held-out problems per level (default 128)")
    p.add_argument("--tolerance", type=float, default=0.02, help="accuracy given up for length (default 0.02)")
    p.add_argument("--work", default="runs/learning", help="the run folders' parent (its .warm_start is used)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"), help="where the results go")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    return p.parse_known_args(argv)


def problems_by_level(task: Any, per_level: int, seed: int) -> dict[int, list[dict]]:
    """`per_level` held-out problems of each level."""
    by_level: dict[int, list[dict]] = {lv: [] for lv in range(1, task.MAX_LEVEL + 1)}
    size = per_level * task.MAX_LEVEL * 4
    while any(len(v) < per_level for v in by_level.values()):
        by_level = {lv: [] for lv in by_level}
        for item in task.make_dataset(size, seed, split="eval"):
            if len(by_level[item["level"]]) < per_level:
                by_level[item["level"]].append(item)
        size *= 2
    return by_level


@torch.no_grad()
def sample(
    model: Any, tok: Any, prompts: list[list[int]], prefix: list[int], max_new: int, temperature: float
) -> list[list[int]]:
    """Each prompt's sampled continuation after `prefix` (the prefix included, the stop token kept, padding not)."""
    rows = [p + prefix for p in prompts]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):  # left padding
        ids[i, width - len(r) :], mask[i, width - len(r) :] = torch.tensor(r), 1
    out = model.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=max_new - len(prefix), do_sample=temperature > 0,
        temperature=temperature if temperature > 0 else None, top_p=1.0, top_k=0, pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    result = []
    for row in out[:, width:].tolist():
        if tok.eos_token_id in row:
            row = row[: row.index(tok.eos_token_id) + 1]
        result.append(prefix + row)
    return result


def _stats(task: Any, tok: Any, items: list[dict], completions: list[list[int]]) -> dict[str, Any]:
    """Accuracy, mean length (tokens, the stop token included), thought rate, and the same split by padding."""
    eos = tok.eos_token_id
    rows = []
    for it, c in zip(items, completions):
        text = tok.decode([t for t in c if t != eos], skip_special_tokens=True)
        ended = bool(c) and c[-1] == eos
        verdict = task.check(text, it["answer"])
        pieces = set(tok.convert_ids_to_tokens(c))
        rows.append((verdict.correct and ended, len(c), "<think>" in pieces, bool(pieces & PADDING_WORDS)))

    def summary(sel: list[tuple[bool, int, bool, bool]]) -> dict[str, float | int | None]:
        if not sel:
            return {"n": 0, "accuracy": None, "length": None}
        return {
            "n": len(sel),
            "accuracy": round(sum(r[0] for r in sel) / len(sel), 4),
            "length": round(sum(r[1] for r in sel) / len(sel), 2),
        }

    return {
        **summary(rows),
        "thought_rate": round(sum(r[2] for r in rows) / len(rows), 4),
        "padded_rate": round(sum(r[3] for r in rows) / len(rows), 4),
        "padded": summary([r for r in rows if r[3]]),
        "unpadded": summary([r for r in rows if not r[3]]),
    }


def frontier(levels: dict[int, dict[str, Any]], tolerance: float) -> dict[int, dict[str, Any]]:
    """Per level, the shortest of {direct, unpadded thought, thought, free} within `tolerance` of the best accuracy."""
    out = {}
    for lv, modes in levels.items():
        options = [
            ("direct", modes["direct"]),
            ("thought, unpadded", modes["thought"]["unpadded"]),
            ("thought", modes["thought"]),
            ("free", modes["free"]),
        ]
        options = [(name, s) for name, s in options if s.get("n") and s["accuracy"] is not None]
        best = max(s["accuracy"] for _, s in options)
        name, s = min(((n, s) for n, s in options if s["accuracy"] >= best - tolerance), key=lambda x: x[1]["length"])
        out[lv] = {"way": name, "accuracy": s["accuracy"], "length": s["length"], "best_accuracy": best}
    return out


def markdown(result: dict[str, Any]) -> str:
    """The per-level table."""
    lines = [
        f"# What the warm start reaches on `{result['task']}`, per level",
        "",
        f"`python -m bench.task_frontier --config {result['config']}`: {result['per_level']} held-out problems per "
        f"level, sampled at temperature {result['temperature']}; accuracy / mean length in tokens (stop included).",
        "",
        "| level | free (thinks) | direct | thought | thought without padding | thought with padding | frontier |",
        "| ---: | --- | --- | --- | --- | --- | --- |",
    ]

    def cell(s: dict[str, Any]) -> str:
        return "-" if not s.get("n") else f"{s['accuracy']:.2f} / {s['length']:.1f}"

    for lv, m in result["levels"].items():
        f = result["frontier"][lv]
        lines.append(
            f"| {lv} | {cell(m['free'])} ({m['free']['thought_rate']:.2f}) | {cell(m['direct'])} | "
            f"{cell(m['thought'])} | {cell(m['thought']['unpadded'])} | {cell(m['thought']['padded'])} | "
            f"{f['way']}: {f['accuracy']:.2f} / {f['length']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def measure(argv: list[str] | None = None) -> dict[str, Any]:
    """The frontier for the command line `argv` (see the module docstring), written under `--out` and returned."""
    args, overrides = _parse(argv)
    cfg = load_config(["--config", args.config, *overrides])
    task = tasks.of_source(cfg.data.source)
    tok = load_tokenizer(cfg.model, task=task.NAME)
    config = model_config(cfg.model, tok)
    path = warm_start.ensure_cache(config, tok, cfg, Path(args.work) / "frontier", is_main=True)
    model = model_from_config(config, seed=cfg.warm_start.seed)
    load_model(model, str(path), strict=True)
    model.eval()
    torch.manual_seed(args.seed)
    max_new, temperature = cfg.rollout.max_new_tokens, cfg.rollout.temperature
    levels: dict[int, dict[str, Any]] = {}
    for lv, items in problems_by_level(task, args.per_level, args.seed).items():
        prompts = encode_prompts(tok, [it["prompt"] for it in items], chat_template=cfg.data.apply_chat_template)
        levels[lv] = {}
        for mode, text in MODES.items():
            prefix = tok(text, add_special_tokens=False)["input_ids"] if text else []
            completions = sample(model, tok, prompts, prefix, max_new, temperature)
            levels[lv][mode] = _stats(task, tok, items, completions)
        print(
            f"level {lv}: "
            + ", ".join(f"{m} {levels[lv][m]['accuracy']:.2f}/{levels[lv][m]['length']:.1f}" for m in MODES),
            flush=True,
        )
    result = {
        "task": task.NAME,
        "config": args.config,
        "overrides": overrides,
        "warm_start": str(path),
        "per_level": args.per_level,
        "temperature": temperature,
        "tolerance": args.tolerance,
        "device": device_info()["device"],
        "levels": levels,
        "frontier": frontier(levels, args.tolerance),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"frontier_{task.NAME}_{results_stem()}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    stem.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    print(f"results: {stem}.json, .md", file=sys.stderr)
    return result


def main(argv: list[str] | None = None) -> int:
    measure(argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
