"""Argument checks shared by the ops. Every failure names the argument and what was expected."""

from __future__ import annotations

import math
from typing import Iterable

import torch


def check_tensor(name: str, t, *, dtypes: Iterable[torch.dtype] | None = None, ndim: Iterable[int] | None = None):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if dtypes is not None:
        dtypes = tuple(dtypes)
        if t.dtype not in dtypes:
            names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
            raise TypeError(f"{name}: expected dtype in ({names}), got {str(t.dtype).replace('torch.', '')}")
    if ndim is not None:
        ndim = tuple(ndim)
        if t.dim() not in ndim:
            raise ValueError(f"{name}: expected {' or '.join(map(str, ndim))} dimensions, got shape {tuple(t.shape)}")


def check_same_device(**tensors: torch.Tensor):
    items = [(k, v) for k, v in tensors.items() if v is not None]
    first_name, first = items[0]
    for name, t in items[1:]:
        if t.device != first.device:
            raise ValueError(f"{name}: on {t.device}, but {first_name} is on {first.device}; put both on one device")


def check_positive_float(name: str, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a number, got {value!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise ValueError(f"{name}: expected a finite number > 0, got {value!r}")
    return v
