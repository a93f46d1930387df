"""Argument checks shared by the fastslow modules: each failure is a ValueError naming the argument."""

from __future__ import annotations

import torch
from torch import Tensor

from fastslow.kernels._checks import check_finite_number as _finite_number_or_tensor

__all__ = ["check_1d_real", "check_accuracy", "check_finite_number", "check_int"]


def check_int(name: str, x: object, *, minimum: int) -> int:
    """`x` must be an int (not a bool) `>= minimum`."""
    if isinstance(x, bool) or not isinstance(x, int) or x < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {x!r}")
    return x


def check_finite_number(name: str, x: object, *, tensor: bool = False) -> float:
    """`x` as a float after checking it is a finite python int or float (not a bool).

    With `tensor=True` a one-element tensor is taken too (its value is read, a device sync on GPU): for values the
    model computes, such as an entropy. Hyperparameters stay python numbers.
    """
    if isinstance(x, Tensor) and not tensor:
        raise ValueError(f"{name} must be a real number, got a tensor")
    return _finite_number_or_tensor(name, x)


def check_1d_real(name: str, t: object) -> Tensor:
    """`t` must be a 1-D tensor of a real (not complex) dtype."""
    if not isinstance(t, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    if t.is_complex():
        raise ValueError(f"{name} must have a real dtype, got {t.dtype}")
    return t


def check_accuracy(name: str, t: object, *, dtype: torch.dtype | None = None) -> Tensor:
    """`t` as `dtype` after checking it is a 1-D real tensor with values in [0, 1].

    `dtype=None` keeps a floating tensor's dtype (so it is compared as written) and promotes bool or int to float32.
    The range is checked after the cast.
    """
    t = check_1d_real(name, t)
    if dtype is not None:
        t = t.to(dtype)
    elif not t.is_floating_point():
        t = t.to(torch.float32)
    if not bool(((t >= 0) & (t <= 1)).all()):  # also rejects NaN
        raise ValueError(f"{name} must hold values in [0, 1]")
    return t
