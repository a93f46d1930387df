"""A stand-in `wandb` package for the tests: records `init`, `log` and `finish` as JSON lines, needs no network.

In-process, the tests put this module in `sys.modules`; a launched run finds it on `PYTHONPATH`
(`tests/_fake_wandb`). Each call appends `{"call": ..., ...}` to the file `FAKE_WANDB_LOG` names (else to `CALLS`).
"""

from __future__ import annotations

import json
import os
from typing import Any

CALLS: list[dict[str, Any]] = []


def _record(entry: dict[str, Any]) -> None:
    CALLS.append(entry)
    path = os.environ.get("FAKE_WANDB_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")


class Run:
    """What `wandb.init` returns: `log(data, step=)` and `finish()`, as the real `wandb.sdk.wandb_run.Run`."""

    def log(self, data: dict[str, Any], step: int | None = None, commit: bool | None = None) -> None:
        if not isinstance(data, dict) or not all(isinstance(v, (int, float)) for v in data.values()):
            raise TypeError(f"fake wandb: log() takes a dict of numbers here, got {data!r}")
        _record({"call": "log", "data": data, "step": step})

    def finish(self, exit_code: int | None = None) -> None:
        _record({"call": "finish"})


def init(*, project: str | None = None, name: str | None = None, mode: str | None = None, dir: str | None = None,
         config: dict | None = None, **unknown: Any) -> Run:  # fmt: skip
    if unknown:
        raise TypeError(f"fake wandb: unexpected init arguments {sorted(unknown)}")
    if mode not in (None, "online", "offline", "disabled"):
        raise ValueError(f"fake wandb: mode {mode!r}")
    _record({"call": "init", "project": project, "name": name, "mode": mode, "dir": dir, "config": config})
    return Run()
