"""A 2-layer, width-64 Llama with a locally trained tokenizer, built once per test session folder."""

from __future__ import annotations

from smtpo_fast.models import TinyConfig, build_tiny

TEXTS = ["I loved Bridesmaids (2011), comedies mostly.", "Have you seen Ghostbusters (1984)? yes, loved it",
         "genre: comedy, romance; director: Paul Feig; star: Kristen Wiig; era: 2010s",
         "Seeker feedback accept likes dislikes target movie recommended list",
         "You are a movie seeker talking to a recommender.", "Police Academy (1984) How to Train Your Dragon"] * 30
TEST_SHAPE = TinyConfig(vocab_size=600, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                        intermediate_size=128, max_positions=512)


def tiny_model_folder(root, texts=TEXTS):
    folder = root / "tiny-model"
    if not (folder / "config.json").exists():
        build_tiny(folder, texts, TEST_SHAPE)
    return folder


def single_thread():
    """Generator for an autouse fixture: tiny models run ~30x faster on one thread than with OpenMP threads
    competing on a shared 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
