"""`UserSimulator`: the seeker, played by a (fine-tuned) causal LM.

Inference is batched over dialogues with HF `generate` (left padding, greedy by default). `accepted` and the
attributes come from the reply's structured tail (`feedback.parse_feedback`), never from a rule on the target."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..data.catalog import Catalog
from .constrained import TitleTrie
from .feedback import Feedback, parse_feedback
from .tasks import (ATTRIBUTES_INSTRUCTION, LABEL_FREE, TARGET_AWARE, TARGET_INSTRUCTION, TaskConfig,
                    feedback_prompt, history_prompt, opening_prompt, parse_attribute_line)


CARD = "simulator.json"


def save_simulator_card(folder: str | Path, mode: str, tasks: TaskConfig) -> None:
    """Record next to a trained simulator which simulator it is and the prompt settings it was trained with."""
    (Path(folder) / CARD).write_text(json.dumps({"mode": mode, "tasks": asdict(tasks)}, indent=1))


def load_simulator_card(folder: str | Path) -> dict | None:
    path = Path(folder) / CARD
    return json.loads(path.read_text()) if path.exists() else None


@dataclass
class GenerationConfig:
    """Decoding settings of the simulator."""

    max_new_tokens: int = 64
    """Longest reply (utterance plus feedback line)."""
    temperature: float = 0.0
    """0 decodes greedily; > 0 samples."""
    top_p: float = 1.0
    """Nucleus sampling mass when sampling."""
    batch_size: int = 16
    """Dialogues per generate call."""


class UserSimulator:
    """The seeker of a conversational recommendation dialogue.

    `model`/`tokenizer`: an HF causal LM (optionally a peft model) and its tokenizer with a chat template.
    `mode`: "label_free" (sees the dialogue and the recommended list only) or "target_aware" (also the targets).
    Dialogues are lists of `{"role": "seeker"|"recommender", "text": str}`; items are catalog ids (or plain names
    when the catalog lacks them)."""

    def __init__(self, model, tokenizer, catalog: Catalog | None = None, mode: str = LABEL_FREE,
                 generation: GenerationConfig | None = None, tasks: TaskConfig | None = None):
        if mode not in (LABEL_FREE, TARGET_AWARE):
            raise ValueError(f"mode: expected {LABEL_FREE!r} or {TARGET_AWARE!r}, got {mode!r}")
        self.model, self.tokenizer, self.catalog, self.mode = model, tokenizer, catalog, mode
        self.generation = generation or GenerationConfig()
        self.tasks = tasks or TaskConfig()
        self.tokenizer.padding_side = "left"
        self._trie: TitleTrie | None = None

    @classmethod
    def load(cls, folder: str | Path, catalog: Catalog | None = None, device: str | None = None,
             generation: GenerationConfig | None = None) -> "UserSimulator":
        """A simulator saved by `smtpo train simulator` (`<out>/<mode>/final`): its mode and prompt settings come
        from the folder's simulator.json."""
        from ..models import load_model

        card = load_simulator_card(folder)
        if card is None:
            raise FileNotFoundError(f"folder: {folder} has no {CARD} (not written by `smtpo train simulator`)")
        model, tokenizer = load_model(Path(folder), device=device)
        return cls(model, tokenizer, catalog, mode=card["mode"], generation=generation,
                   tasks=TaskConfig(**card["tasks"]))

    # -- generation ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompts: list[list[dict]], max_new_tokens: int | None = None, num_return_sequences: int = 1,
                 num_beams: int = 1, allowed_next=None) -> list[list[str]]:
        """Replies to chat prompts: `num_return_sequences` strings per prompt (special tokens removed).
        `allowed_next(reply_token_ids) -> token ids` constrains decoding (e.g. `TitleTrie.allowed`)."""
        cfg = self.generation
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        out: list[list[str]] = []
        for start in range(0, len(prompts), cfg.batch_size):
            chunk = prompts[start:start + cfg.batch_size]
            texts = [self.tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in chunk]
            enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            sample = cfg.temperature > 0 and num_beams == 1
            kwargs = dict(max_new_tokens=max_new_tokens or cfg.max_new_tokens, do_sample=sample,
                          num_return_sequences=num_return_sequences, num_beams=num_beams,
                          eos_token_id=self.tokenizer.eos_token_id, pad_token_id=self.tokenizer.pad_token_id)
            if allowed_next is not None:
                prompt_len = enc["input_ids"].shape[1]
                kwargs["prefix_allowed_tokens_fn"] = lambda _, ids: allowed_next(ids[prompt_len:].tolist())
            if sample:
                kwargs.update(temperature=cfg.temperature, top_p=cfg.top_p)
            else:
                kwargs.update(temperature=None, top_p=None, top_k=None)
            generated = self.model.generate(**enc, **kwargs)
            new = generated[:, enc["input_ids"].shape[1]:]
            decoded = self.tokenizer.batch_decode(new, skip_special_tokens=True)
            for i in range(len(chunk)):
                out.append([d.strip() for d in decoded[i * num_return_sequences:(i + 1) * num_return_sequences]])
        self.model.train(was_training)
        return out

    # -- the API -------------------------------------------------------------------------------------------------
    def feedback_prompt(self, dialogue: list[dict], recommended_items: list[str],
                        target_items: list[str] | None = None) -> list[dict]:
        if self.mode == TARGET_AWARE and not target_items:
            raise ValueError("target_items: the target-aware simulator needs the target item(s)")
        return feedback_prompt(dialogue, recommended_items, self.catalog, self.mode,
                               target_items if self.mode == TARGET_AWARE else None, config=self.tasks)

    def respond_batch(self, dialogues: list[list[dict]], recommended_lists: list[list[str]],
                      target_lists: list[list[str]] | None = None) -> list[Feedback]:
        """`respond` for many dialogues in batched generate calls."""
        if len(dialogues) != len(recommended_lists):
            raise ValueError(f"recommended_lists: expected {len(dialogues)} lists (one per dialogue), got "
                             f"{len(recommended_lists)}")
        if target_lists is not None and len(target_lists) != len(dialogues):
            raise ValueError(f"target_lists: expected {len(dialogues)} lists, got {len(target_lists)}")
        targets = target_lists or [None] * len(dialogues)
        prompts = [self.feedback_prompt(d, r, t) for d, r, t in zip(dialogues, recommended_lists, targets)]
        return [parse_feedback(reply[0]) for reply in self.generate(prompts)]

    def respond(self, dialogue: list[dict], recommended_items: list[str],
                target_items: list[str] | None = None) -> Feedback:
        """The seeker's reply to the recommender's last utterance (the last element of `dialogue`), which
        recommends `recommended_items`. The target-aware simulator also needs `target_items`."""
        return self.respond_batch([dialogue], [recommended_items], [target_items] if target_items else None)[0]

    def start_batch(self, target_lists: list[list[str]]) -> list[str]:
        if self.mode != TARGET_AWARE:
            raise ValueError("start: only the target-aware simulator opens conversations (it needs a target)")
        prompts = [opening_prompt(t, self.catalog, config=self.tasks) for t in target_lists]
        return [reply[0] for reply in self.generate(prompts)]

    def start(self, target_items: list[str]) -> str:
        """The seeker's opening utterance of an interactive evaluation dialogue whose target is `target_items`."""
        return self.start_batch([target_items])[0]

    def title_trie(self) -> TitleTrie:
        """The token trie of the catalog's titles (built on first use)."""
        if self._trie is None:
            self._trie = TitleTrie.for_catalog(self.tokenizer, self.catalog)
        return self._trie

    # -- the auxiliary tasks (what fidelity evaluation measures) -------------------------------------------------
    def predict_attributes(self, dialogues: list[list[dict]]) -> list[list[str]]:
        """Attribute alignment: typed attributes ('genre:comedy', ...) the seeker's target has, from history."""
        replies = self.generate([history_prompt(d, ATTRIBUTES_INSTRUCTION, self.tasks) for d in dialogues])
        return [parse_attribute_line(r[0]) for r in replies]

    def predict_targets(self, dialogues: list[list[dict]], k: int = 10, constrained: bool = True) -> list[list[str]]:
        """Target prediction: up to `k` distinct catalog ids (beam search, best first; names the catalog cannot
        resolve are dropped). `constrained` (with a catalog): the beams may only spell catalog titles
        (`TitleTrie`), so the k beams are k catalog items."""
        prompts = [history_prompt(d, TARGET_INSTRUCTION, self.tasks) for d in dialogues]
        trie = self.title_trie() if constrained and self.catalog is not None else None
        replies = self.generate(prompts, max_new_tokens=min(trie.depth, 48) if trie else 24, num_return_sequences=k,
                                num_beams=k, allowed_next=trie.allowed if trie else None)
        out = []
        for names in replies:
            ids = []
            for name in names:
                item_id = self.catalog.resolve(name) if self.catalog is not None else name
                if item_id is not None and item_id not in ids:
                    ids.append(item_id)
            out.append(ids)
        return out
