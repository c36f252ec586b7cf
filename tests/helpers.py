"""Helpers for the op tests: which (backend, device) pairs can run here, and float64 comparisons."""

from __future__ import annotations

import pytest
import torch

from smtpo_fast import _ext


def backend_device_pairs(include_torch: bool = True) -> list:
    """pytest params of every backend usable here, each with the device its tensors go on."""
    pairs = []
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for dev in devices:
        for name in _ext.BACKENDS:
            if name == "torch" and not include_torch:
                continue
            if _ext.available(name, dev):
                pairs.append(pytest.param(name, dev.type, id=f"{name}-{dev.type}"))
    return pairs


def assert_close(actual: torch.Tensor, expected: torch.Tensor, *, rtol: float, atol: float, what: str = ""):
    """Compare in float64; NaN must match NaN, inf must match inf."""
    a = actual.detach().double().cpu()
    e = expected.detach().double().cpu()
    torch.testing.assert_close(a, e, rtol=rtol, atol=atol, equal_nan=True, msg=lambda m: f"{what}: {m}")
