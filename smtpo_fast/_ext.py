"""Loading of the native module and Triton kernels, and the per-call choice of backend.

Backends, fastest first, chosen per call by device (DESIGN.md §2):

* ``cuda``   -- the native module's CUDA kernels, for CUDA tensors, when it was built with nvcc;
* ``triton`` -- Triton kernels, for CUDA tensors, or for CPU tensors under ``TRITON_INTERPRET=1`` (tests);
* ``cpu``    -- the native module's OpenMP/SIMD kernels, for CPU tensors;
* ``torch``  -- the plain-torch reference, which defines every op and runs anywhere.

``SMTPO_BACKEND=torch|cpu|cuda|triton`` forces one for every call; an op's ``backend=`` argument forces one for
that call. On CPU tensors the interpreter is only used when asked for (it is a test tool, not a fast path).
"""

from __future__ import annotations

import importlib
import os
import warnings
from functools import lru_cache

import torch

# Kept in sync with csrc/common.h.
DTYPE_CODES = {
    torch.float32: 0,
    torch.bfloat16: 1,
    torch.float16: 2,
    torch.float64: 3,
    torch.int64: 4,
    torch.int32: 5,
    torch.bool: 6,
}

BACKENDS = ("torch", "cpu", "cuda", "triton")


@lru_cache(maxsize=None)
def native():
    """The compiled module ``smtpo_fast._C``, or None (with the import error kept for ``backends()``)."""
    try:
        return importlib.import_module("smtpo_fast._C")
    except ImportError as exc:  # not built: the torch reference still works
        _load_errors["native"] = f"{type(exc).__name__}: {exc}"
        return None


@lru_cache(maxsize=None)
def triton_kernels():
    """The Triton kernels package (``smtpo_fast.kernels`` when installed, ``kernels`` in a source tree), or None."""
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        _load_errors["triton"] = f"{type(exc).__name__}: {exc}"
        return None
    errors = []
    for name in ("smtpo_fast.kernels", "kernels"):
        try:
            return importlib.import_module(name)
        except ImportError as exc:
            errors.append(f"{name}: {type(exc).__name__}: {exc}")
    _load_errors["triton"] = "; ".join(errors)
    return None


_load_errors: dict[str, str] = {}
_warned: set[str] = set()


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def available(name: str, device: torch.device) -> bool:
    """Whether backend ``name`` can run on tensors of ``device`` in this process."""
    if name == "torch":
        return True
    if name == "cpu":
        return device.type == "cpu" and native() is not None
    if name == "cuda":
        return device.type == "cuda" and native() is not None and bool(getattr(native(), "built_with_cuda", False))
    if name == "triton":
        if triton_kernels() is None:
            return False
        return device.type == "cuda" or (device.type == "cpu" and triton_interpreted())
    raise ValueError(f"unknown backend {name!r}; expected one of {BACKENDS}")


# torch.compile evaluates the choice once while tracing and keeps the name as a constant in the graph.
@torch.compiler.assume_constant_result
def select(op: str, device: torch.device, backend: str | None = None, dtype: torch.dtype | None = None,
           arg: str = "input") -> str:
    """The backend one call of ``op`` runs on: ``backend`` if given, else ``$SMTPO_BACKEND``, else the fastest.

    The kernels take float32 / bfloat16 / float16; a float64 ``dtype`` (of the tensor named ``arg``) runs the torch
    reference, and asking for another backend by argument for it is a TypeError.
    """
    if dtype == torch.float64:
        if backend is not None and backend != "torch":
            raise TypeError(f"{arg}: float64 runs only on the torch backend, not {backend!r}")
        return "torch"
    forced = backend or os.environ.get("SMTPO_BACKEND") or None
    if forced is not None:
        if forced not in BACKENDS:
            raise ValueError(f"backend: unknown backend {forced!r}; expected one of {BACKENDS}")
        if not available(forced, device):
            raise RuntimeError(
                f"backend: {forced!r} is not usable for {op} on {device.type} tensors here "
                f"(see smtpo_fast.ops.backends(): {backends()})"
            )
        return forced
    order = ("cuda", "triton", "torch") if device.type == "cuda" else ("cpu", "torch")
    for name in order:
        if available(name, device):
            if name == "torch" and op not in _warned:
                _warned.add(op)
                warnings.warn(
                    f"smtpo_fast: no compiled kernel for {op} on {device.type}; using the torch reference "
                    f"({backends()})",
                    RuntimeWarning,
                    stacklevel=3,
                )
            return name
    return "torch"


def backends() -> dict:
    """What is built and usable here: one entry per backend, plus the reasons for what is missing."""
    mod = native()
    cuda_ok = torch.cuda.is_available()
    info = {
        "torch": True,
        "cpu": mod is not None,
        "cuda": mod is not None and bool(getattr(mod, "built_with_cuda", False)) and cuda_ok,
        "triton": triton_kernels() is not None and (cuda_ok or triton_interpreted()),
        "native_built_with_cuda": bool(getattr(mod, "built_with_cuda", False)) if mod else False,
        "cpu_isa": mod.cpu_isa() if mod is not None else None,
        "cuda_device": torch.cuda.get_device_name() if cuda_ok else None,
        "triton_interpret": triton_interpreted(),
    }
    if _load_errors:
        info["errors"] = dict(_load_errors)
    return info


def stream_of(t: torch.Tensor) -> int:
    """The raw handle of the current CUDA stream of ``t``'s device."""
    return torch.cuda.current_stream(t.device).cuda_stream
