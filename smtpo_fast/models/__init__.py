"""Model presets: the `tiny` Llama trained from scratch with a locally trained BPE tokenizer, and the offline-able
resolution of `smollm2-135m` (SmolLM2-135M-Instruct)."""

from .presets import (CHAT_TEMPLATE, PRESETS, TinyConfig, build_tiny, corpus_texts, load_model, resolve_model,
                      train_bpe_tokenizer)
from .smollm2 import SMOLLM2_REPO, resolve_smollm2

__all__ = ["CHAT_TEMPLATE", "PRESETS", "SMOLLM2_REPO", "TinyConfig", "build_tiny", "corpus_texts", "load_model",
           "resolve_model", "resolve_smollm2", "train_bpe_tokenizer"]
