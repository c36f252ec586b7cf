"""Chat examples to token ids with the loss on response tokens only, and the deterministic micro-batch plan
(length bucketing or packing) that makes a data position a single integer, so resuming is exact."""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE_INDEX = -100


def tokenize_example(tokenizer, messages: list[dict], max_length: int) -> dict:
    """`messages` (chat turns; the last is the assistant response) as `input_ids` and `labels` (lists of ints of
    the same length; labels are IGNORE_INDEX on prompt tokens). The response is what the chat template adds after
    the generation prompt, end-of-turn marker included, so the model learns to stop. Over-long examples lose
    prompt tokens from the left (the start of the dialogue), then response tokens from the right."""
    if not messages or messages[-1]["role"] != "assistant":
        raise ValueError("messages: the last message must be the assistant response")
    prompt_text = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
    full_text = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full_text.startswith(prompt_text):
        raise ValueError("the chat template does not render the prompt as a prefix of the full conversation")
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(full_text[len(prompt_text):], add_special_tokens=False)["input_ids"]
    response_ids = response_ids[:max_length - 1]
    prompt_ids = prompt_ids[max(0, len(prompt_ids) - (max_length - len(response_ids))):]
    return {"input_ids": prompt_ids + response_ids,
            "labels": [IGNORE_INDEX] * len(prompt_ids) + list(response_ids)}


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, T] int64
    attention_mask: torch.Tensor  # [B, T] int64, 0 on padding
    labels: torch.Tensor  # [B, T] int64, IGNORE_INDEX on prompt and padding

    @property
    def num_response_tokens(self) -> int:
        """Tokens that carry loss after the one-position shift (labels[:, 1:])."""
        return int((self.labels[:, 1:] != IGNORE_INDEX).sum())

    def to(self, device) -> "Batch":
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device))


def collate(examples: list[dict], pad_id: int) -> Batch:
    """Right-pad to the longest example."""
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[row, :n] = torch.tensor(e["input_ids"])
        labels[row, :n] = torch.tensor(e["labels"])
        mask[row, :n] = 1
    return Batch(ids, mask, labels)


class BatchPlan:
    """Micro-batch `k` of the whole run (epochs concatenated) as a pure function of (examples, seed, k).

    Each epoch shuffles with its own generator (seed, epoch). Bucketing sorts each window of `bucket_size`
    micro-batches by length, so padding stays small, then shuffles the micro-batch order. Packing concatenates
    the shuffled examples into rows of exactly `max_length` tokens (the tail row may be shorter)."""

    def __init__(self, examples: list[dict], batch_size: int, pad_id: int, seed: int = 0, packing: bool = False,
                 max_length: int = 512, bucket_size: int = 64):
        if not examples:
            raise ValueError("examples: need at least one training example")
        self.examples, self.batch_size, self.pad_id = examples, batch_size, pad_id
        self.seed, self.packing, self.max_length, self.bucket_size = seed, packing, max_length, bucket_size
        self._epoch_cache: dict[int, list[list[dict]]] = {}
        self.batches_per_epoch = len(self._epoch(0))

    def _epoch(self, epoch: int) -> list[list[dict]]:
        if epoch in self._epoch_cache:
            return self._epoch_cache[epoch]
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.examples), generator=generator).tolist()
        if self.packing:
            rows, ids, labels = [], [], []
            for i in order:
                ids += self.examples[i]["input_ids"]
                labels += self.examples[i]["labels"]
                while len(ids) >= self.max_length:
                    rows.append({"input_ids": ids[:self.max_length], "labels": labels[:self.max_length]})
                    ids, labels = ids[self.max_length:], labels[self.max_length:]
            if ids:
                rows.append({"input_ids": ids, "labels": labels})
            batches = [rows[i:i + self.batch_size] for i in range(0, len(rows), self.batch_size)]
        else:
            window = self.batch_size * self.bucket_size
            batches = []
            for start in range(0, len(order), window):
                chunk = sorted(order[start:start + window], key=lambda i: len(self.examples[i]["input_ids"]))
                batches += [[self.examples[i] for i in chunk[j:j + self.batch_size]]
                            for j in range(0, len(chunk), self.batch_size)]
            shuffle = torch.randperm(len(batches), generator=generator).tolist()
            batches = [batches[i] for i in shuffle]
        if len(self._epoch_cache) > 2:
            self._epoch_cache.pop(min(self._epoch_cache))
        self._epoch_cache[epoch] = batches
        return batches

    def batch(self, k: int) -> Batch:
        epoch, index = divmod(k, self.batches_per_epoch)
        return collate(self._epoch(epoch)[index], self.pad_id)
