"""Catalog-constrained decoding of item names (target prediction).

`TitleTrie` holds the token sequences of every catalog item's display name ('Title (Year)', as the target task's
answers are written) and says which tokens may come next after a generated prefix, so that beam search over it
(HF `generate`'s `prefix_allowed_tokens_fn`) returns k distinct catalog titles instead of k spellings of a few
names, some of which no catalog entry resolves. Generative recommenders decode item identifiers the same way."""

from __future__ import annotations

from typing import Iterable


class TitleTrie:
    """Prefix tree over the token ids of `names` (tokenised as a reply starts: no special tokens), each ending in
    `end_token_id`."""

    def __init__(self, tokenizer, names: Iterable[str], end_token_id: int):
        if end_token_id is None:
            raise ValueError("end_token_id: the tokenizer has no end-of-sequence token to close a name with")
        names = sorted(set(n for n in names if n and n.strip()))
        if not names:
            raise ValueError("names: no item names to constrain decoding to")
        self.end = int(end_token_id)
        self.root: dict[int, dict] = {}
        self.depth = 0
        for ids in tokenizer(names, add_special_tokens=False)["input_ids"]:
            node = self.root
            for token in ids:
                node = node.setdefault(int(token), {})
            node.setdefault(self.end, {})
            self.depth = max(self.depth, len(ids) + 1)
        self.size = len(names)
        self._lists: dict[int, list[int]] = {}

    def allowed(self, generated: Iterable[int]) -> list[int]:
        """Tokens that may follow `generated` (the reply's tokens so far): a name's next tokens, the end token once
        a whole name is written, and only the end token off the tree (after the end, or for a foreign prefix)."""
        node = self.root
        for token in generated:
            node = node.get(int(token))
            if not node:
                return [self.end]
        key = id(node)
        if key not in self._lists:
            self._lists[key] = list(node)
        return self._lists[key]

    @classmethod
    def for_catalog(cls, tokenizer, catalog) -> "TitleTrie":
        from .tasks import display_name

        return cls(tokenizer, (display_name(i, catalog) for i in catalog.ids), tokenizer.eos_token_id)
