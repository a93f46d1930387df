"""Input checks shared by the kernels' public functions: each failure is a ValueError naming the argument."""

from __future__ import annotations

import math
from collections.abc import Sequence

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
