"""TRL's GRPOTrainer on the built-in job, for `bench.peer`: run with the TRL environment's Python (`.venv-trl`).

    python bench/peer_trl.py MODEL_DIR PROMPTS.jsonl OUT.jsonl STEPS
    accelerate launch --cpu --num_processes N bench/peer_trl.py ...   # TRL's own multi-process mode (DDP, gloo)

MODEL_DIR is the warm-started built-in model (`bench.peer` writes it), PROMPTS.jsonl the synthetic task's prompts
and answers; every optimizer step appends `{"step", "seconds", "completion_tokens"}` to OUT.jsonl. The reward is
fastslow's own GRPO reward for the task (`trainer.tasks.synthetic.check(...).correct`, a response cut at the length
limit scored wrong, as `reward.truncated = "wrong"`), imported from this checkout. Imports nothing else of fastslow.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SETTINGS = {
    "num_generations": 8,  # rollout.group_size
    "per_device_train_batch_size": 128,  # 16 prompts x 8 completions / processes, one optimizer step per batch
    "gradient_accumulation_steps": 1,
    "max_completion_length": 20,  # rollout.max_new_tokens
    "temperature": 1.0,
    "top_p": 1.0,
    "top_k": 0,
    "beta": 0.0,  # no KL, no reference model
    "num_iterations": 1,  # one update per batch
    "epsilon": 0.2,
    "epsilon_high": 0.28,
    "loss_type": "dapo",  # token-mean over the batch
    "scale_rewards": "group",  # algorithm.std_normalize = true
    "learning_rate": 5e-4,
    "lr_scheduler_type": "constant",
    "warmup_steps": 0,
    "weight_decay": 0.0,
    "adam_beta1": 0.9,
    "adam_beta2": 0.999,
    "max_grad_norm": 1.0,
    "gradient_checkpointing": False,
    "bf16": False,
    "fp16": False,
    "use_cpu": True,
    "logging_steps": 1,
    "report_to": [],
    "save_strategy": "no",
    "disable_dropout": True,
    "shuffle_dataset": True,
    "seed": 0,
    "dataloader_num_workers": 0,
}


def main() -> int:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from trainer.tasks.synthetic import check

    model_dir, prompts_file, out_file, steps = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
    torch.set_num_threads(1)
    rows = [json.loads(line) for line in prompts_file.read_text().splitlines()]
    dataset = Dataset.from_list([{"prompt": r["prompt"], "answer": r["answer"]} for r in rows])
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    eos = tok.eos_token_id
    limit = SETTINGS["max_completion_length"]

    def reward(prompts, completions, completion_ids, answer, **_):
        out = []
        for text, ids, ans in zip(completions, completion_ids, answer):
            cut = len(ids) >= limit and (not ids or ids[-1] != eos)
            out.append(0.0 if cut else float(check(text, str(ans)).correct))
        return out

    class Timer(TrainerCallback):
        def __init__(self) -> None:
            self.start = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds = time.perf_counter() - self.start

        def on_log(self, args, state, control, logs=None, **kwargs):
            if rank0 and logs and "completions/mean_length" in logs:  # the logs are already gathered
                n = 128
                row = {"step": state.global_step, "seconds": self.seconds,
                       "completion_tokens": logs["completions/mean_length"] * n}  # fmt: skip
                with out_file.open("a") as f:
                    f.write(json.dumps(row) + "\n")

    world = int(os.environ.get("WORLD_SIZE", "1"))
    SETTINGS["per_device_train_batch_size"] = 128 // world
    rank0 = int(os.environ.get("RANK", "0")) == 0
    config = GRPOConfig(output_dir=str(out_file.parent / "trl_out"), max_steps=steps, **SETTINGS)
    trainer = GRPOTrainer(
        model=model, reward_funcs=reward, args=config, train_dataset=dataset, processing_class=tok,
        callbacks=[Timer()],
    )  # fmt: skip
    trainer.train()
    return 0


if __name__ == "__main__":
    sys.exit(main())
