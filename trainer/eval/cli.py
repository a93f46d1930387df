"""`python -m trainer.eval MODEL [section.key=value ...] [--json FILE] [--step N] [--config FILE]`: evaluate a model.

MODEL is one of:
- a Hugging Face folder (config.json, weights, tokenizer), such as a run's `hf/` export;
- a checkpoint folder of a run (`RUN/checkpoints/step_N`, DCP): the model is rebuilt from the run's `config.toml`
  (`model` section and seed) and the checkpoint's model state is loaded into it;
- a run folder: its `hf/` export when there is one, else its latest complete checkpoint.

The configuration is the run's `config.toml` when MODEL belongs to a run (so its `[eval]` section, data columns and
seed apply), else `--config FILE` or the defaults; then the overrides (`eval.source=../shared/data/math500.jsonl`,
`eval.n=8`, `eval.max_prompt_tokens=1024`, `model.dtype=bfloat16`, any key). The evaluation is `trainer.eval`'s, on
`rollout.engine` (hf by default), with the sampling seed of step `--step`: by default the checkpoint's step, for a
run's export the run's last checkpoint's, else 0; so a run's evaluation at the end is reproduced exactly (on CPU).

Runs alone (a gloo group of one, CPU included) or under torchrun (the prompts are sharded over the ranks). Prints a
table on rank 0 and, with `--json FILE`, writes `{"model", "step", "eval", "metrics"}` there. Exit status: 0, or 2
for a bad configuration or MODEL.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer import checkpoint as ckpt
from trainer.config import Config, ConfigError, load_config
from trainer.metrics import to_number


@dataclass(frozen=True)
class ModelSource:
    """What MODEL turned out to be."""

    kind: str
    """"hf" (a Hugging Face folder) or "dcp" (a checkpoint folder)."""
    path: Path
    run_dir: Path | None
    """The run it belongs to (a folder with config.toml), if any."""
    step: int
    """The step its weights are from (0 when unknown)."""


def _checkpoint_step(path: Path) -> int:
    meta = path / "meta.json"
    if meta.is_file():
        return int(json.loads(meta.read_text())["step"])
    digits = path.name.removeprefix("step_")
    return int(digits) if digits.isdigit() else 0


def locate(model: Path) -> ModelSource:
    """Tells a Hugging Face folder, a checkpoint folder and a run folder apart; ValueError for anything else."""
    model = model.expanduser()
    if (model / ".metadata").is_file():
        run = model.parent.parent if model.parent.name == ckpt.CHECKPOINTS else None
        run = run if run is not None and (run / "config.toml").is_file() else None
        return ModelSource("dcp", model, run, _checkpoint_step(model))
    if (model / "config.json").is_file():
        run = model.parent if (model.parent / "config.toml").is_file() else None
        latest = ckpt.find_latest(run) if run is not None else None
        return ModelSource("hf", model, run, _checkpoint_step(latest) if latest is not None else 0)
    if (model / "config.toml").is_file():
        if (model / "hf" / "config.json").is_file():
            return locate(model / "hf")
        latest = ckpt.find_latest(model)
        if latest is not None:
            return locate(latest)
        raise ValueError(f"{model}: a run folder with neither an hf/ export nor a complete checkpoint")
    raise ValueError(
        f"{model}: not a Hugging Face folder (config.json), a checkpoint folder (.metadata) or a run folder "
        "(config.toml)"
    )


def _config(src: ModelSource, base: str | None, overrides: list[str]) -> Config:
    argv: list[str] = []
    if base is not None:
        argv += ["--config", base]
    elif src.run_dir is not None:
        argv += ["--config", str(src.run_dir / "config.toml")]
    elif src.kind == "dcp":
        raise ValueError(f"{src.path}: a checkpoint outside a run folder: give the run's config with --config FILE")
    if src.kind == "hf":
        argv += [f"model.path={src.path}", "model.config=none"]
    return load_config(argv + overrides)


def _load_model(cfg: Config, src: ModelSource) -> tuple[Any, Any]:
    """The model (CPU, float32) with the weights of `src`, and its tokenizer."""
    from torch.distributed.checkpoint import load as dcp_load
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    from trainer import tasks
    from trainer.model.load import load_model_and_tokenizer, load_tokenizer
    from trainer.policy import Policy

    tokenizer = load_tokenizer(cfg.model, task=tasks.of_source(cfg.data.source).NAME)
    lm, tokenizer = load_model_and_tokenizer(cfg.model, device="cpu", seed=cfg.seed, tokenizer=tokenizer)
    lm.eval()
    if src.kind == "dcp":
        policy = Policy(lm)  # the trainer saves the Policy wrapper's state: names start with "lm."
        state = {"model": get_model_state_dict(policy)}
        dcp_load(state, checkpoint_id=src.path)
        set_model_state_dict(policy, state["model"])
    return lm, tokenizer


def _engine(cfg: Config, src: ModelSource, lm: Any, tokenizer: Any, info: Any, workdir: Path) -> Any:
    from trainer.eval import eval_context_tokens
    from trainer.model.load import engine_dtype
    from trainer.rollout import build_engine, engine_spec
    from trainer.weight_sync import sync_weights

    dtype = engine_dtype(cfg.model, info.device)  # the training run's choice: bf16 on a CPU too with "bfloat16"
    model_dir = None
    own_model = engine_spec(cfg.rollout.engine).own_model
    if own_model:
        model_dir = str(src.path) if src.kind == "hf" else (cfg.model.path or cfg.model.config)
        if model_dir is None:
            lm.config.save_pretrained(workdir)
            model_dir = str(workdir)
    engine = build_engine(
        cfg.rollout.engine, make_model=lambda: lm, pad_token_id=tokenizer.pad_token_id, device=info.device,
        dtype=dtype, rollout=cfg.rollout, model_dir=model_dir, seed=cfg.seed + info.rank, rank=info.rank,
        world=info.world, max_model_len=eval_context_tokens(cfg), model_config=lm.config,
    )  # fmt: skip
    if own_model:  # an engine with a model of its own gets the weights; the hf engine took `lm` itself
        sync_weights(lm, engine, bucket_bytes=cfg.rollout.sync_bucket_bytes, dtype=dtype)
    return engine


def _cell(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:.3f}".rstrip("0").rstrip(".")


def format_table(metrics: dict[str, float]) -> str:
    """One row per source and per source's level: avg@n, pass@k, maj@n, lengths, format, prompts."""
    rows: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        if key.startswith("eval/"):
            group, _, name = key[len("eval/") :].rpartition("/")
            rows.setdefault(group.replace("/level_", " level "), {})[name] = value
    if not rows:
        return "(no metrics)"
    columns = [c for c in next(iter(rows.values())) if c != "skipped_prompts"]
    table = [["source", *columns]] + [[group, *(_cell(row.get(c)) for c in columns)] for group, row in rows.items()]
    widths = [max(len(row[i]) for row in table) for i in range(len(columns) + 1)]
    lines = ["  ".join([row[0].ljust(widths[0])] + [v.rjust(w) for v, w in zip(row[1:], widths[1:])]) for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parse, load, evaluate, report; returns the exit status."""
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(
        prog="python -m trainer.eval", description=doc.splitlines()[0], epilog=doc.split("\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("model", type=Path, help="a Hugging Face folder, a checkpoint folder or a run folder")
    parser.add_argument("overrides", nargs="*", help="config overrides, section.key=value (eval.*, model.*, ...)")
    parser.add_argument("--json", type=Path, default=None, help="also write the metrics to this JSON file")
    parser.add_argument("--step", type=int, default=None, help="the step of the sampling seed (default: see below)")
    parser.add_argument("--config", default=None, help="base config file or preset (default: the run's, if any)")
    args = parser.parse_intermixed_args(sys.argv[1:] if argv is None else argv)
    try:
        src = locate(args.model)
        cfg = _config(src, args.config, args.overrides)
    except (ConfigError, ValueError) as err:
        print(f"trainer.eval: {err}", file=sys.stderr)
        return 2

    from trainer.dist import close, init_distributed
    from trainer.eval import evaluate, load_eval_sets

    info = init_distributed()
    step = src.step if args.step is None else args.step
    try:
        lm, tokenizer = _load_model(cfg, src)
        sets = load_eval_sets(cfg, tokenizer)
        with tempfile.TemporaryDirectory() as workdir:
            engine = _engine(cfg, src, lm, tokenizer, info, Path(workdir))
            try:
                metrics = evaluate(cfg, engine, tokenizer, sets, step=step, rank=info.rank, world=info.world)
            finally:
                engine.close()
        if info.is_main:
            print(f"{src.path} ({src.kind}, step {step}), {cfg.eval.n} samples a prompt, {metrics['time/eval']:.1f} s")
            print(format_table(metrics))
            if args.json is not None:
                values = {k: to_number(k, v) for k, v in metrics.items()}  # NaN (no such sample) as null
                record = {"model": str(src.path), "step": step, "eval": cfg.to_dict()["eval"], "metrics": values}
                args.json.write_text(json.dumps(record, indent=1) + "\n")
    finally:
        close()
    return 0
