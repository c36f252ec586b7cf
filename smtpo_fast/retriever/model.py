"""The fusion module: a learned query token cross-attends over the context tokens of both views; the result is
scored against item representations built from both views, plus context-dependent mixing of the views' scalar
scores."""

from __future__ import annotations

import torch
from torch import nn

TOKENS = ("semantic_context", "semantic_feedback", "semantic_items", "collaborative_items")


class FusionModel(nn.Module):
    """Shapes: `semantic_tokens` [B, 3, S] (context text, latest seeker feedback, mean of mentioned items' text
    embeddings), `collab_token` [B, C], `token_mask` [B, 4] bool (True = absent), `item_semantic` [M, S],
    `item_collab` [M, C], `features` [B, M, F] z-scored view scores. Returns logits [B, M] float32."""

    def __init__(self, semantic_dim: int, collab_dim: int, n_features: int, hidden: int = 128, heads: int = 4,
                 dropout: float = 0.1):
        super().__init__()
        self.semantic_in = nn.ModuleList([nn.Linear(semantic_dim, hidden) for _ in range(3)])
        self.collab_in = nn.Linear(collab_dim, hidden)
        self.token_type = nn.Parameter(torch.randn(len(TOKENS), hidden) * 0.02)
        self.query = nn.Parameter(torch.randn(1, 1, hidden) * 0.02)
        self.attention = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)
        self.ffn = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, hidden))
        self.item_semantic = nn.Linear(semantic_dim, hidden, bias=False)
        self.item_collab = nn.Linear(collab_dim, hidden, bias=False)
        # Scalar mixing: a global weight per view score plus a context-dependent correction from the query, so the
        # model can lean on text when the seeker has named no movie yet, and on co-mentions once they have.
        self.mix_global = nn.Parameter(torch.ones(n_features) * 0.5)
        self.mix_context = nn.Linear(hidden, n_features)
        nn.init.zeros_(self.mix_context.weight)
        nn.init.zeros_(self.mix_context.bias)
        self.scale = nn.Parameter(torch.tensor(1.0))

    def encode_context(self, semantic_tokens, collab_token, token_mask):
        tokens = torch.stack([proj(semantic_tokens[:, k]) for k, proj in enumerate(self.semantic_in)]
                             + [self.collab_in(collab_token)], dim=1) + self.token_type
        query = self.query.expand(tokens.shape[0], -1, -1)
        attended, _ = self.attention(query, tokens, tokens, key_padding_mask=token_mask)
        q = attended[:, 0] + self.ffn(attended[:, 0])
        return q, self.mix_global + self.mix_context(q)

    def item_vectors(self, item_semantic, item_collab):
        return self.item_semantic(item_semantic) + self.item_collab(item_collab)

    def forward(self, semantic_tokens, collab_token, token_mask, item_semantic, item_collab, features):
        q, weights = self.encode_context(semantic_tokens, collab_token, token_mask)
        items = self.item_vectors(item_semantic, item_collab)
        dense = q @ items.T / q.shape[-1] ** 0.5
        return self.scale * dense + (features * weights[:, None, :]).sum(-1)
