"""The dual-view retriever: semantic (sentence encoder) and collaborative (co-mention) views fused by
cross-attention, plus the popularity / BM25 baselines and candidate-recall evaluation."""

from .evaluate import evaluate_retriever, evaluation_turns, results_table
from .retriever import FEATURES, DualViewRetriever, RetrieverConfig

__all__ = ["DualViewRetriever", "RetrieverConfig", "FEATURES", "evaluate_retriever", "evaluation_turns",
           "results_table"]
