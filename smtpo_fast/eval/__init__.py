"""Evaluation: Recall@k / NDCG@k, static and interactive evaluation of recommenders, reports."""

from .metrics import ndcg_at, recall_at, summarise_static
from .recommender import (LLMRanker, PopularityRanker, RetrieverRanker, interactive_eval, static_eval,
                          static_turns)

__all__ = ["LLMRanker", "PopularityRanker", "RetrieverRanker", "interactive_eval", "ndcg_at", "recall_at",
           "static_eval", "static_turns", "summarise_static"]
