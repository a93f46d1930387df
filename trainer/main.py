"""Entry point: `torchrun --nproc_per_node=N -m trainer.main [--config FILE.toml] [section.key=value ...]`.

With no arguments it runs the built-in job (`trainer/configs/default.toml`): a tiny Qwen2-architecture model
trained with GRPO on a synthetic verifiable task, on whatever the machine has.

Exit status: 0 when the run finished, or was stopped by SIGTERM / SIGINT (Ctrl-C) and saved (see
trainer/trainer.py); 2 for bad configuration, with one line naming the key, before any work; 3 when the run
stopped on `optim.max_bad_steps` non-finite steps in a row, its last good checkpoint intact.
"""

from __future__ import annotations

import sys

from trainer.config import ConfigError, load_config
from trainer.signals import StopFlag, die_with_launcher


def main(argv: list[str] | None = None) -> int:
    """Parse, build, train, close; returns the process exit status."""
    die_with_launcher()
    try:
        cfg = load_config(sys.argv[1:] if argv is None else argv)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2

    with StopFlag() as stop:  # from here on, SIGTERM / SIGINT stop the run at the next step boundary
        from trainer.dist import close, init_distributed
        from trainer.trainer import BadStepsError, Trainer

        info = init_distributed()
        if cfg.rollout.prompts_per_step % info.world:  # the one check that needs the world size
            if info.is_main:
                print(
                    f"config error: rollout.prompts_per_step = {cfg.rollout.prompts_per_step}: must be divisible by "
                    f"the number of processes ({info.world})",
                    file=sys.stderr,
                )
            close()
            return 2
        try:
            trainer = Trainer(cfg, info)
        except ConfigError as err:  # found once the world is up (the run folder): the same one line, exit 2
            if info.is_main:
                print(f"config error: {err}", file=sys.stderr)
            close()
            return 2
        try:
            trainer.train(stop)
        except BadStepsError as err:
            if info.is_main:
                print(f"stopping: {err}", file=sys.stderr, flush=True)
            return 3
        finally:
            trainer.close()
            close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
