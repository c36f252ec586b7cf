"""Decode-time matmuls on the CPU: the native skinny linear (csrc/isa/skinny_linear_isa.cpp).

A decode step multiplies every weight matrix by only ``n`` rows (one token per conversation row), so it is bound by
reading the weights once from memory. MKL's ``sgemm`` and oneDNN's bf16 matmul are tuned for large products: at
4-8 rows they read the weights at roughly half the memory bandwidth (MKL also repacks the weight panel on every
call). The skinny kernel streams the weights in place, in the ``nn.Linear`` layout (no packed copy, nothing to
rebuild after an optimizer step), with software prefetch, reusing the few rows of ``x`` from L1; bfloat16 uses the
AVX512-BF16 dot product. Measured here at 8 rows: float32 1.6x faster than ``F.linear`` (1.2x faster than MKL's
packed path it replaces), bfloat16 1.3x faster.

The model's code is untouched: while the engine decodes, each ``nn.Linear`` instance gets a ``forward`` that takes
the skinny path for at most ``max_rows`` rows of a float32 / bfloat16 input and ``F.linear`` otherwise (prefill,
training); the instance attribute is removed afterwards.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from .. import _ext

SKINNY_DTYPES = (torch.float32, torch.bfloat16)           # vectorised paths (AVX-512 / AVX512-BF16)
KERNEL_DTYPES = SKINNY_DTYPES + (torch.float16,)          # float16: the generic loop
MAX_ROWS = 16


def skinny_available() -> bool:
    C = _ext.native()
    return C is not None and hasattr(C, "skinny_linear_cpu")


def skinny_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` through the native kernel: CPU, float32 / bfloat16 / float16, ``weight``
    unit-stride along its last dimension. Sums accumulate in float32 (the order differs from MKL's, as any two GEMMs do)."""
    if not skinny_available():
        raise RuntimeError("skinny_linear: the native module is not built")
    if x.device.type != "cpu" or weight.device.type != "cpu":
        raise ValueError("skinny_linear: CPU tensors only")
    if x.dtype not in KERNEL_DTYPES or weight.dtype != x.dtype or (bias is not None and bias.dtype != x.dtype):
        raise ValueError(f"skinny_linear: x, weight, bias must share one dtype of {KERNEL_DTYPES}")
    N, K = weight.shape
    if x.shape[-1] != K or weight.stride(1) != 1 or (bias is not None and (bias.shape != (N,) or
                                                                         bias.stride(0) != 1)):
        raise ValueError(f"skinny_linear: shapes x {tuple(x.shape)}, weight {tuple(weight.shape)} do not match")
    x2 = x.reshape(-1, K)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    M = x2.shape[0]
    y = torch.empty((M, N), dtype=x.dtype)
    _ext.native().skinny_linear_cpu(x2.data_ptr(), x2.stride(0), weight.data_ptr(), weight.stride(0),
                                    0 if bias is None else bias.data_ptr(), y.data_ptr(), N,
                                    _ext.DTYPE_CODES[x.dtype], M, N, K)
    return y.view(*x.shape[:-1], N)


class SkinnyLinears:
    """The CPU ``nn.Linear`` modules of a model, switched to the skinny kernel for small row counts by ``active``."""

    def __init__(self, model: torch.nn.Module, max_rows: int = MAX_ROWS):
        self.linears = [m for m in model.modules() if type(m) is torch.nn.Linear
                        and m.weight.dtype in SKINNY_DTYPES and m.weight.device.type == "cpu"]
        self.max_rows = max_rows

    @contextlib.contextmanager
    def active(self):
        """Within the block, ``nn.Linear`` calls on at most ``max_rows`` rows run the skinny kernel."""
        kernel = _ext.native().skinny_linear_cpu
        codes = _ext.DTYPE_CODES
        max_rows = self.max_rows
        for m in self.linears:
            w, b = m.weight, m.bias
            if w.stride(1) != 1 or (b is not None and (b.dtype != w.dtype or not b.is_contiguous())):
                continue
            # Bound once per activation: the weights are read in place, so in-place updates are seen.
            N, K = w.shape
            wp, ws, bp, dt, code = w.data_ptr(), w.stride(0), 0 if b is None else b.data_ptr(), w.dtype, codes[w.dtype]

            def forward(x, m=m, w=w, b=b, N=N, K=K, wp=wp, ws=ws, bp=bp, dt=dt, code=code):
                M = x.numel() // K if x.shape[-1] == K else 0
                if 0 < M <= max_rows and x.dtype == dt and x.is_contiguous():
                    y = torch.empty(x.shape[:-1] + (N,), dtype=dt)
                    kernel(x.data_ptr(), K, wp, ws, bp, y.data_ptr(), N, code, M, N, K)
                    return y
                return F.linear(x, w, b)

            m.forward = forward
        try:
            yield
        finally:
            for m in self.linears:
                m.__dict__.pop("forward", None)
