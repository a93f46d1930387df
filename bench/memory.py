"""Host memory per rank of a training run, as a multiple of the model's fp32 size (issue 18's measure).

    python -m bench.memory [--world 1 2] [--hidden 512 --layers 14 --intermediate 1536] [--steps 1]

Writes a Hugging Face folder of a random Qwen2 of those sizes with the built-in tokenizer (once, under `--dir`), then
for each world size runs `torchrun --nproc_per_node=W -m bench.memory --worker`: the Trainer on that folder with a
reference model (`algorithm.kl_coef = 0.01`), the hf engine and an 8 MiB sync bucket, on the CPU, for `--steps`
steps (checkpoint saved, no export). Each rank reports its peak resident memory (`ru_maxrss`) less its resident
memory just before the Trainer is built (imports, process group), divided by the model's fp32 size (`ratio`), and
the same less the same run's on the tiny preset (`ratio_model`: the model-related memory, as issue 18 measured it).
The issue's target: <= 5 / W + 1.5 (policy, gradients and Adam state 4 / W, the reference 1 / W,
the engine's full copy 1, and 0.5 for the largest gathered unit and the allocator). Prints one JSON line per world
size: `{"world", "model_bytes", "ratio", "ratio_model", "target"}` (the largest over ranks).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RUN_ARGS = (
    "algorithm.kl_coef=0.01", "rollout.engine=hf", "rollout.sync_bucket_mb=8", "rollout.prompts_per_step=2",
    "rollout.group_size=2", "rollout.max_new_tokens=4", "optim.micro_batch_size=4", "logging.tensorboard=false",
    "checkpoint.export_hf=false", "eval.enabled=false", "warm_start.mode=off", "algorithm.filter=none",
)  # fmt: skip


def _rss_bytes() -> int:
    """This process's resident memory now (Linux /proc; 0 where it is not available)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def make_folder(folder: Path, *, hidden: int, layers: int, intermediate: int, vocab: int = 0) -> int:
    """A random Qwen2 (untied, the built-in tokenizer; `vocab` > its size pads the embedding and head to that many
    rows, as real tokenizers' vocabularies are) saved to `folder` unless there; returns its fp32 bytes."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from trainer.model.tiny import build_tokenizer

    tok = build_tokenizer()
    heads = max(1, hidden // 64)
    config = Qwen2Config(
        vocab_size=max(len(tok), vocab), hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=1024,
        tie_word_embeddings=False, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    if not (folder / "config.json").is_file():
        torch.manual_seed(0)
        Qwen2ForCausalLM(config).save_pretrained(folder)
        tok.save_pretrained(folder)
    with torch.device("meta"):
        return sum(p.numel() * 4 for p in Qwen2ForCausalLM(config).parameters())


def peaks(folder: Path | None, world: int, *, steps: int = 1, root: Path = ROOT) -> list[int]:
    """One run of `world` ranks on `folder` (None: the tiny preset), with the trainer found under `root`: each
    rank's peak resident bytes beyond its resident bytes just before the Trainer was built."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report"
        env = dict(os.environ, OMP_NUM_THREADS="1", TRITON_INTERPRET="0", FASTSLOW_MEMORY_REPORT=str(report))
        env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
        model = [f"model.path={folder}"] if folder is not None else []
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}",
            "-m", "bench.memory", "--worker", *model, f"logging.run_dir={tmp}/run", f"optim.total_steps={steps}",
            *RUN_ARGS,
        ]  # fmt: skip
        out = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=900)
        if out.returncode != 0:
            raise RuntimeError(f"bench.memory: the W={world} run failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
        return [int(Path(f"{report}.{r}").read_text()) for r in range(world)]


def measure(folder: Path, world: int, model_bytes: int, *, baseline: bool = True, **kw: Any) -> dict[str, Any]:
    """The model run's per-rank peaks as multiples of `model_bytes`: `ratio` (the largest over ranks) and, with
    `baseline`, `ratio_model` less the same run on the tiny preset (the issue's "model-related" memory: what the
    process needs anyway, its data, activations and lazily imported modules, subtracted)."""
    got = peaks(folder, world, **kw)
    result = {"world": world, "model_bytes": model_bytes, "ratio": max(got) / model_bytes, "target": 5 / world + 1.5}
    if baseline:
        tiny = peaks(None, world, **kw)
        result["ratio_model"] = max(g - t for g, t in zip(got, tiny)) / model_bytes
    return result


def worker(argv: list[str]) -> None:
    """Inside torchrun: the Trainer on `argv`'s config, then this rank's model-related peak, in bytes, to a file."""
    from trainer.config import load_config
    from trainer.dist import close, init_distributed
    from trainer.trainer import Trainer

    cfg = load_config(argv)
    info = init_distributed(cfg.parallel, cpu_offload=cfg.model.cpu_offload)
    before = _rss_bytes()
    trainer = Trainer(cfg, info)
    trainer.train()
    trainer.close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    Path(f"{os.environ['FASTSLOW_MEMORY_REPORT']}.{info.rank}").write_text(str(peak - before))
    close()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        worker(argv[1:])
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=14)
    parser.add_argument("--intermediate", type=int, default=1536)
    parser.add_argument("--vocab", type=int, default=0, help="embedding rows (0: the built-in tokenizer's 31)")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "fastslow_memory_model")
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout whose trainer runs (to compare two)")
    args = parser.parse_args(argv)
    folder = args.dir / f"h{args.hidden}_l{args.layers}_i{args.intermediate}_v{args.vocab}"
    sizes = dict(hidden=args.hidden, layers=args.layers, intermediate=args.intermediate, vocab=args.vocab)
    model_bytes = make_folder(folder, **sizes)
    for world in args.world:
        print(json.dumps(measure(folder, world, model_bytes, steps=args.steps, root=args.root)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
