"""Entry point: `torchrun --nproc_per_node=N -m trainer.main [--config FILE.toml] [section.key=value ...]`.

With no arguments it runs the built-in job (`trainer/configs/default.toml`): a tiny Qwen2-architecture model
trained with GRPO on a synthetic verifiable task, on whatever the machine has. Bad configuration exits with status
2 and one line naming the key, before any work.
"""

from __future__ import annotations

import sys

from trainer.config import ConfigError, load_config


def main(argv: list[str] | None = None) -> int:
    """Parse, build, train, close; returns the process exit status."""
    try:
        cfg = load_config(sys.argv[1:] if argv is None else argv)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2

    from trainer.dist import close, init_distributed
    from trainer.trainer import Trainer

    info = init_distributed()
    trainer = Trainer(cfg, info)
    try:
        trainer.train()
    finally:
        trainer.close()
        close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
