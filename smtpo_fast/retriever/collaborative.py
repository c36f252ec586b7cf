"""The collaborative view: item co-mention statistics from training dialogues, item embeddings factorised from
them (truncated SVD of the positive PMI matrix, i.e. item2vec's implicit objective), and context scores from the
items mentioned so far."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


class CoMention:
    """Co-mention counts among the `n_items` catalog items (indices), learnt from item lists (one per dialogue).
    Only items seen in training get rows, so the dense matrix stays small."""

    def __init__(self, n_items: int, dialogues: Iterable[list[int]], dim: int = 64, seed: int = 0):
        dialogues = [sorted(set(d)) for d in dialogues]
        seen = sorted({i for d in dialogues for i in d})
        self.n_items = n_items
        self.active = np.array(seen, dtype=np.int64)
        self.local = {item: k for k, item in enumerate(seen)}
        n = len(seen)
        self.counts = np.zeros((n, n), dtype=np.float32)
        self.popularity = np.zeros(n_items, dtype=np.float32)  # dialogues that mention the item
        for items in dialogues:
            idx = np.array([self.local[i] for i in items], dtype=np.int64)
            self.popularity[items] += 1
            if len(idx) > 1:
                self.counts[np.ix_(idx, idx)] += 1
        np.fill_diagonal(self.counts, 0)
        self.dim = dim
        self.embeddings = np.zeros((n_items, dim), dtype=np.float32)
        if n > 1:
            self.embeddings[self.active] = self._factorise(dim, seed)

    def _factorise(self, dim: int, seed: int) -> np.ndarray:
        total = max(float(self.counts.sum()), 1.0)
        row = self.counts.sum(1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            pmi = np.log(self.counts * total / np.maximum(row, 1) / np.maximum(row.T, 1))
        ppmi = np.where(self.counts > 0, np.maximum(pmi, 0), 0).astype(np.float32)
        k = min(dim, ppmi.shape[0] - 1)
        u, s, _ = np.linalg.svd(ppmi, full_matrices=False)
        emb = np.zeros((ppmi.shape[0], dim), dtype=np.float32)
        emb[:, :k] = u[:, :k] * np.sqrt(s[:k])
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        return emb / np.maximum(norms, 1e-8)

    def context_matrix(self, contexts: list[list[int]]) -> np.ndarray:
        """[B, n_active] multi-hot of each context's items that training saw."""
        out = np.zeros((len(contexts), len(self.active)), dtype=np.float32)
        for row, items in enumerate(contexts):
            for item in items:
                k = self.local.get(item)
                if k is not None:
                    out[row, k] = 1.0
        return out

    def scores(self, contexts: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        """Per context, over all items: (summed co-mention counts, the same normalised by the items' popularity
        as in a cosine), both [B, n_items] float32."""
        hot = self.context_matrix(contexts)
        raw = np.zeros((len(contexts), self.n_items), dtype=np.float32)
        raw[:, self.active] = hot @ self.counts
        pop = np.sqrt(np.maximum(self.popularity[self.active], 1.0))
        cosine = np.zeros_like(raw)
        cosine[:, self.active] = (hot / pop) @ (self.counts / pop[:, None]) / pop
        return raw, cosine

    def context_embeddings(self, contexts: list[list[int]]) -> np.ndarray:
        """Mean embedding of each context's items ([B, dim]); zeros for a context without known items."""
        out = np.zeros((len(contexts), self.dim), dtype=np.float32)
        for row, items in enumerate(contexts):
            if items:
                out[row] = self.embeddings[items].mean(0)
        return out
