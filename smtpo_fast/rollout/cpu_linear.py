"""Decode-time matmuls on the CPU with MKL-packed weights.

A decode step multiplies every weight matrix by only ``n`` rows (one token per conversation row). For such skinny
products MKL's ``sgemm`` spends much of its time packing the weight panel on every call; packing each weight once
for the row count in use (``cblas_sgemm_pack``, exposed as ``torch.ops.mkl._mkl_reorder_linear_weight`` /
``_mkl_linear``, what inductor uses for frozen CPU linears) removes that work: measured here 1.7-2.5x faster
products at 4-8 rows. The model's code is untouched: while the engine runs, each ``nn.Linear`` instance gets a
``forward`` that takes the packed path when its input has exactly the packed row count and ``F.linear`` otherwise
(prefill, other sizes); the instance attribute is removed afterwards, so training forwards are plain torch.

Packs are rebuilt when a weight changes (its version counter moves, e.g. after an optimizer step), and at most
``max_sizes`` row counts are kept (each costs one extra copy of the weights).
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict

import torch
import torch.nn.functional as F


def mkl_packing_available() -> bool:
    return bool(torch.backends.mkl.is_available()) and hasattr(torch.ops.mkl, "_mkl_linear")


class PackedLinears:
    def __init__(self, model: torch.nn.Module, max_sizes: int = 2):
        self.linears = [m for m in model.modules() if type(m) is torch.nn.Linear and m.weight.dtype == torch.float32
                        and m.weight.device.type == "cpu"]
        self.max_sizes = max_sizes
        self.rows: int | None = None                           # the row count packed for this call
        self._packs: OrderedDict[int, dict] = OrderedDict()   # rows -> {id(module): (version, data_ptr, packed)}

    def _packed_for(self, rows: int) -> dict:
        packs = self._packs.get(rows)
        if packs is None:
            packs = {}
            self._packs[rows] = packs
            while len(self._packs) > self.max_sizes:
                self._packs.popitem(last=False)
        self._packs.move_to_end(rows)
        for m in self.linears:
            w = m.weight
            key = (w._version, w.data_ptr())
            entry = packs.get(id(m))
            if entry is None or entry[0] != key:
                with torch.no_grad():
                    packs[id(m)] = (key, torch.ops.mkl._mkl_reorder_linear_weight(w.detach(), rows))
        return packs

    @contextlib.contextmanager
    def active(self, rows: int):
        """Within the block, ``nn.Linear`` calls on exactly ``rows`` rows use the packed weights."""
        packs = self._packed_for(rows)
        for m in self.linears:
            packed = packs[id(m)][1]

            def forward(x, m=m, packed=packed):
                if x.dim() >= 2 and x.numel() // x.shape[-1] == rows and x.dtype == torch.float32:
                    return torch.ops.mkl._mkl_linear(x, packed, m.weight, m.bias, rows)
                return F.linear(x, m.weight, m.bias)

            m.forward = forward
        try:
            yield
        finally:
            for m in self.linears:
                m.__dict__.pop("forward", None)
