"""Entry point: `torchrun --nproc_per_node=N -m trainer.main [--config FILE.toml] [section.key=value ...]`.

With no arguments it runs the built-in job (`trainer/configs/default.toml`): a tiny Qwen2-architecture model
trained with GRPO on a synthetic verifiable task, on whatever the machine has.

Exit status: 0 when the run finished, or was stopped by SIGTERM / SIGINT (Ctrl-C) / SIGHUP and saved (see
trainer/trainer.py); 2 for a bad input (config, data file, model folder, resume target, run folder), with one
line naming it, from rank 0, before the models are built (`FASTSLOW_DEBUG=1` adds the traceback); 3 when the run
stopped on `optim.max_bad_steps` non-finite steps in a row, its last good checkpoint intact; 4 when it saved and
stopped on a dry online filter (`rollout.on_filter_exhausted = "stop"`, or `rollout.max_dry_steps`); 1 when a
rank failed (an error in a step or in user code, `SystemExit` included): that rank prints one line
`rank R failed at step N: ...` at once and leaves, and the other ranks follow within seconds (`trainer.failure`).
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from pathlib import Path

from trainer.config import ConfigError, InputError, load_config
from trainer.failure import EXIT_FAILED, guard_stdout, is_peer_loss, leave, report_failure
from trainer.signals import Interrupted, StopFlag, die_with_launcher


def report_input_error(err: ConfigError, *, is_main: bool = True) -> int:
    """One line on stderr (rank 0 only) for a bad input, its traceback first when `FASTSLOW_DEBUG=1`; returns 2.

    The line also goes to the file `FASTSLOW_ERROR_FILE` names, when set: `make run` prints it again after
    torchrun's own report, so that it is the last thing on the screen.
    """
    if not is_main:
        return 2
    if os.environ.get("FASTSLOW_DEBUG") == "1":
        traceback.print_exception(err)
    line = f"{'error' if isinstance(err, InputError) else 'config error'}: {err}"
    print(line, file=sys.stderr, flush=True)
    where = os.environ.get("FASTSLOW_ERROR_FILE")
    if where:
        with contextlib.suppress(OSError):
            Path(where).write_text(line + "\n", encoding="utf-8")
    return 2


def main(argv: list[str] | None = None) -> int:
    """Parse, build, train, close; returns the process exit status (a rank that fails alone never returns: it
    reports and leaves at once, `trainer.failure`)."""
    die_with_launcher()
    guard_stdout()
    try:
        cfg = load_config(sys.argv[1:] if argv is None else argv)
    except ConfigError as err:  # before the process group: torchrun's RANK says which process speaks
        return report_input_error(err, is_main=os.environ.get("RANK", "0") == "0")

    with StopFlag() as stop:  # from here on, SIGTERM / SIGINT stop the run at the next step boundary
        from trainer.dist import close, init_distributed
        from trainer.trainer import BadStepsError, DryFilterStop, Trainer

        rank = int(os.environ.get("RANK", "0"))
        trainer: Trainer | None = None
        try:
            info = init_distributed(cfg.parallel, cpu_offload=cfg.model.cpu_offload)
            rank = info.rank
            if cfg.rollout.prompts_per_step % info.world:  # the one check that needs the world size
                raise ConfigError(
                    f"rollout.prompts_per_step = {cfg.rollout.prompts_per_step}: must be divisible by the number of "
                    f"processes ({info.world}); a run resumes on any number that divides it"
                )
            trainer = Trainer(cfg, info)
            trainer.train(stop)
            status = 0
        # Failures every rank reaches together (their verdicts are reduced or broadcast): report, close, return.
        except ConfigError as err:  # a bad input found once the world is up, or a checkpoint that does not load
            status = report_input_error(err, is_main=rank == 0)
        except BadStepsError as err:
            if rank == 0:
                print(f"stopping: {err}", file=sys.stderr, flush=True)
            status = 3
        except DryFilterStop as err:
            if rank == 0:
                print(f"stopping: {err}", file=sys.stderr, flush=True)
            status = 4
        except Interrupted as err:  # a signal while starting (the warm start): nothing to save yet
            if rank == 0:
                print(f"{stop.name or 'a signal'}: stopped while starting ({err}); nothing saved", flush=True)
            status = 0
        except BaseException as err:  # this rank failed on its own: no barrier, no waiting for the others
            if stop.requested and is_peer_loss(err):  # a signalled start that another rank ended first: a stop
                leave(0)
            step = trainer.step if trainer is not None else None
            report_failure(err, rank=rank, step=step, run_dir=trainer.run_dir if trainer is not None else None)
            if trainer is not None:
                with contextlib.suppress(BaseException):
                    trainer.close()
            leave(EXIT_FAILED, peer=is_peer_loss(err))
        if trainer is not None:
            trainer.close()
        close(barrier=status == 0)
    return status


def finish(status: int) -> None:
    """End the process with `status` once `main` has returned: Python's exit handlers run (the verifier pool's
    among them), the console is flushed, then the process leaves without the interpreter's teardown. In that
    teardown, after a run had finished, saved and left its process group, torch's C++ side now and then aborted a
    rank ("terminate called without an active exception": a native thread still joinable when destroyed), which
    torchrun reported as a failed run (seen in the test suite, about once per full run of it)."""
    import atexit

    atexit._run_exitfuncs()
    leave(status)


if __name__ == "__main__":
    finish(main())
