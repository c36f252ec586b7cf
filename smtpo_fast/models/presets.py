"""The `tiny` preset (a small Llama built from its config, with a byte-level BPE tokenizer trained locally on the
dataset's text and the catalog's metadata) and `load_model`, which opens any preset or HF Llama/Qwen2 folder,
optionally wrapped in a LoRA adapter (peft).

The tiny tokenizer uses ChatML markers (`<|im_start|>`, `<|im_end|>`) like SmolLM2, so one chat template and one
stop token serve both presets."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]
PRESETS = ("tiny", "smollm2-135m")


@dataclass
class TinyConfig:
    """Shape of the `tiny` preset: a Llama small enough to train from scratch on 2 CPU cores in minutes."""

    vocab_size: int = 4096
    """Target BPE vocabulary size (the trainer may stop below it on a small corpus)."""
    hidden_size: int = 128
    """Model width."""
    num_layers: int = 4
    """Transformer blocks."""
    num_heads: int = 4
    """Attention heads (head dim = hidden_size / num_heads)."""
    num_kv_heads: int = 2
    """Key/value heads (grouped-query attention, as SmolLM2 and Qwen2 use)."""
    intermediate_size: int = 352
    """MLP width."""
    max_positions: int = 1024
    """Longest sequence the rotary embedding is configured for."""
    seed: int = 0
    """Seed of the random initialisation."""


def corpus_texts(dialogue_files: Iterable[str | Path] = (), catalog=None, extra: Iterable[str] = ()) -> list[str]:
    """The tokenizer's training text: every utterance of the dialogue files, every catalog item's text and
    attributes, and `extra` strings (the prompt templates), so the fixed prompt words are single tokens."""
    from ..data.turns import read_dialogues

    texts = list(extra)
    for path in dialogue_files:
        for dialogue in read_dialogues(path, skip_bad=True):
            texts += [u.text for u in dialogue.utterances]
    if catalog is not None:
        for item in catalog.items.values():
            texts.append(item.text())
            texts.append(", ".join(item.attributes()))
    return texts


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 4096):
    """A byte-level BPE `PreTrainedTokenizerFast` trained on `texts` (any string encodes: no unknown token), with
    ChatML special tokens, `<|im_end|>` as end-of-sequence (the end of an assistant turn) and `<pad>` padding."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<pad>", unk_token=None, model_max_length=1 << 30)
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"  # generation pads on the left; the trainer pads explicitly
    return fast


def build_tiny(out_dir: str | Path, texts: Iterable[str], config: TinyConfig | None = None) -> Path:
    """Train the tokenizer on `texts`, initialise a Llama of `config`'s shape from scratch and save both as a
    normal HF folder (`config.json`, `model.safetensors`, tokenizer files with the chat template)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = config or TinyConfig()
    out = Path(out_dir)
    tokenizer = train_bpe_tokenizer(texts, config.vocab_size)
    model_config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads, max_position_embeddings=config.max_positions,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True, rope_theta=10000.0)
    torch.manual_seed(config.seed)
    model = LlamaForCausalLM(model_config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "tiny_preset.json").write_text(json.dumps(asdict(config), indent=1))
    return out


def resolve_model(name_or_path: str, cache_dir: str | Path | None = None, allow_download: bool = False) -> Path:
    """The folder of a preset or an HF model path. `tiny` is `<cache>/models/tiny` (build it first with
    `build_tiny`, as `smtpo train simulator` does); `smollm2-135m` follows `resolve_smollm2`'s order."""
    from ..data.paths import cache_dir as default_cache_dir

    if name_or_path == "tiny":
        path = default_cache_dir(cache_dir) / "models" / "tiny"
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"preset 'tiny' is not built yet at {path}: call build_tiny (or run "
                                    "`smtpo train simulator --preset tiny`, which builds it)")
        return path
    if name_or_path == "smollm2-135m":
        from .smollm2 import resolve_smollm2

        return resolve_smollm2(cache_dir=cache_dir, allow_download=allow_download)
    path = Path(name_or_path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"model: {name_or_path!r} is neither a preset {PRESETS} nor a folder with config.json")
    return path


def load_model(name_or_path: str | Path, *, cache_dir=None, allow_download: bool = False, dtype=None,
               device: str | None = None, lora_r: int = 0, lora_alpha: int = 16, lora_dropout: float = 0.0,
               adapter: str | Path | None = None, seed: int | None = None):
    """(model, tokenizer) for a preset or HF folder. `lora_r > 0` wraps the model in a fresh LoRA adapter on the
    attention and MLP projections; `adapter` loads a saved peft adapter instead. The tokenizer pads on the left
    and has a chat template (ChatML when the folder brings none). `seed` seeds the adapter's random initialisation."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(str(name_or_path), cache_dir, allow_download) if not isinstance(name_or_path, Path) \
        else name_or_path
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.chat_template is None:
        tokenizer.chat_template = CHAT_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter), is_trainable=True)
    elif lora_r > 0:
        from peft import LoraConfig, get_peft_model

        if seed is not None:
            torch.manual_seed(seed)
        model = get_peft_model(model, LoraConfig(
            r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, task_type="CAUSAL_LM",
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    if device is not None:
        model.to(device)
    return model, tokenizer
