"""Input checks shared by the kernels' public functions: each failure is a ValueError naming the argument."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def check_float(name: str, t: object, *, dtypes: Sequence[torch.dtype] = FLOAT_DTYPES) -> torch.Tensor:
    """`t` must be a tensor of one of `dtypes`."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        allowed = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise ValueError(f"{name} must have a floating dtype ({allowed}), got {t.dtype}")
    return t


def check_shape(name: str, t: torch.Tensor, shape: Sequence[int], *, like: str) -> None:
    """`t` must have exactly `shape` (that of the argument named `like`)."""
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(shape)} (as {like})")


def check_device(name: str, t: torch.Tensor, device: torch.device, *, like: str) -> None:
    """`t` must live on `device` (that of the argument named `like`)."""
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but {like} is on {device}: move them to one device")


def check_finite_number(name: str, x: object) -> float:
    """`x` must be a finite real number (a python number or a one-element tensor)."""
    if isinstance(x, torch.Tensor):
        if x.numel() != 1:
            raise ValueError(f"{name} must be a number, got a tensor of shape {tuple(x.shape)}")
        x = x.item()
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise ValueError(f"{name} must be a real number, got {type(x).__name__}")
    x = float(x)
    if not math.isfinite(x):
        raise ValueError(f"{name} must be finite, got {x}")
    return x


def check_positive_int(name: str, x: object) -> int:
    """`x` must be an integer > 0 (a python int, not a bool or a float)."""
    if isinstance(x, bool) or not isinstance(x, int):
        raise ValueError(f"{name} must be an integer, got {type(x).__name__}")
    if x <= 0:
        raise ValueError(f"{name} must be > 0, got {x}")
    return x


ValueCheck = tuple[torch.Tensor, str | Callable[[], str]]
"""A check on tensor values: a 0-d bool tensor (true: the argument is bad) and the error message (or a callable
making it, called only on failure, for messages that quote the bad values)."""


def raise_on_values(checks: Sequence[ValueCheck]) -> None:
    """Raise ValueError with the message of the first check whose flag is true.

    Checks on values cost a device sync, so all of a call's flags come back to the host together: one transfer per
    device for every value check of the call. Under torch.compile they are skipped (a data-dependent branch would
    break the graph); the eager call validates.
    """
    if not checks or torch.compiler.is_compiling():
        return
    by_device: dict[torch.device, list[int]] = {}
    for i, (bad, _) in enumerate(checks):
        by_device.setdefault(bad.device, []).append(i)
    failed = []
    for idx in by_device.values():
        flags = torch.stack([checks[i][0].reshape(()) for i in idx]).tolist()
        failed += [i for i, flag in zip(idx, flags) if flag]
    if failed:
        message = checks[min(failed)][1]
        raise ValueError(message() if callable(message) else message)
