"""CUDA graphs of the engine's decode step, one per batch-size bucket (and sampling configuration).

``RolloutEngine._decode_step`` reads and writes only device tensors in place (tokens, positions, cache rows, done
flags, the seed), launches a fixed sequence of kernels (HF's layers, ``decode_attention``, the sampling kernel) and
never synchronises, so it is captured as is: ``bind`` copies a generate call's state into the static buffers of the
smallest bucket that holds it and returns views of them plus a ``replay`` function. Padding rows of a bucket are
marked done and point at the engine's scratch cache row, so they never touch a live conversation.

Capture happens with every row pointed at the scratch row (the warm-up runs write only there); the real state is
copied in afterwards. If capture fails (an op in the model that cannot be captured), the engine warns once and
runs the step eagerly.
"""

from __future__ import annotations

import warnings
from dataclasses import fields

import torch

BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)


class _Captured:
    def __init__(self, graph, state):
        self.graph = graph
        self.state = state


class DecodeGraphs:
    def __init__(self, engine):
        self.engine = engine
        self.graphs: dict = {}
        self.pool = torch.cuda.graph_pool_handle()
        self.enabled = True

    @staticmethod
    def bucket(n: int) -> int:
        """Smallest bucket holding ``n`` rows (buckets may exceed max_batch: padding rows use the scratch row)."""
        return next((b for b in BUCKETS if b >= n), n)

    def _empty_state(self, nb: int):
        from .engine import _DecodeState

        dev = self.engine.device
        e = self.engine
        return _DecodeState(
            cur=torch.full((nb,), e.pad_token_id, dtype=torch.int64, device=dev),
            pos=torch.zeros(nb, dtype=torch.int64, device=dev),
            rows=torch.full((nb,), e.scratch_row, dtype=torch.int64, device=dev),
            done=torch.ones(nb, dtype=torch.bool, device=dev),
            seed=torch.zeros(1, dtype=torch.int64, device=dev),
            tok=torch.zeros(nb, dtype=torch.int64, device=dev),
            lp=torch.zeros(nb, dtype=torch.float32, device=dev),
            lp1=torch.zeros(nb, dtype=torch.float32, device=dev),
            active=torch.zeros(nb, dtype=torch.bool, device=dev),
        )

    def _capture(self, nb, sampling, eos):
        state = self._empty_state(nb)
        step = lambda: self.engine._decode_step(state, sampling, eos)  # noqa: E731
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up: allocator, cuBLAS handles, Triton autotuning; scratch row only
                step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            step()
        return _Captured(graph, state)

    def bind(self, st, sampling, eos, eos_key):
        """Copy ``st`` (a ``_DecodeState`` of ``n`` rows) into a captured bucket; returns ``(views, replay)``, or
        ``(st, None)`` when graphs are off or capture failed."""
        if not self.enabled:
            return st, None
        n = st.cur.shape[0]
        nb = self.bucket(n)
        key = (nb, sampling, eos_key)
        cap = self.graphs.get(key)
        if cap is None:
            try:
                cap = self._capture(nb, sampling, eos)
            except Exception as exc:  # noqa: BLE001 - any capture failure falls back to eager decoding
                warnings.warn(f"RolloutEngine: CUDA graph capture failed ({type(exc).__name__}: {exc}); "
                              "decoding without graphs", RuntimeWarning, stacklevel=3)
                self.enabled = False
                return st, None
            self.graphs[key] = cap
        s = cap.state
        # Padding rows: done, scratch row, position 0; the seed is shared.
        s.cur.fill_(self.engine.pad_token_id)
        s.pos.zero_()
        s.rows.fill_(self.engine.scratch_row)
        s.done.fill_(True)
        for f in fields(st):
            src = getattr(st, f.name)
            dst = getattr(s, f.name)
            if f.name == "seed":
                dst.copy_(src)
            else:
                dst[:n].copy_(src)
        views = type(st)(**{f.name: (getattr(s, f.name) if f.name == "seed" else getattr(s, f.name)[:n])
                            for f in fields(st)})
        return views, cap.graph.replay
