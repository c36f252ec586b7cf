"""Okapi BM25 over item texts, in numpy (postings per term), for the lexical baseline and as a fusion feature."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np

TOKEN = re.compile(r"[a-z0-9]+")
STOPWORDS = frozenset(
    "a an and are as at be but by for from has have he her his i if in into is it its me my no not of on or she so "
    "that the their them then there these they this to was we were what when which who will with you your do did "
    "like movie movies film films watch seen see really good great love liked lot one yes ok okay hi hello thanks "
    "thank just also would could can about any some think know".split())


def tokenize(text: str) -> list[str]:
    return [t for t in TOKEN.findall(text.lower()) if t not in STOPWORDS and len(t) > 1]


class BM25:
    """`scores(query)` -> [n_docs] float32. k1 and b are the usual Okapi parameters."""

    def __init__(self, documents: list[str], k1: float = 1.2, b: float = 0.75):
        tokenized = [tokenize(d) for d in documents]
        self.n_docs = len(documents)
        lengths = np.array([len(t) for t in tokenized], dtype=np.float32)
        avg = max(float(lengths.mean()) if len(lengths) else 1.0, 1e-6)
        postings: dict[str, tuple[list[int], list[float]]] = {}
        for doc, tokens in enumerate(tokenized):
            for term, tf in Counter(tokens).items():
                docs, tfs = postings.setdefault(term, ([], []))
                docs.append(doc)
                tfs.append(tf)
        self.postings: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for term, (docs, tfs) in postings.items():
            docs_a = np.array(docs, dtype=np.int64)
            tf = np.array(tfs, dtype=np.float32)
            idf = np.log(1.0 + (self.n_docs - len(docs) + 0.5) / (len(docs) + 0.5))
            weight = idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * lengths[docs_a] / avg))
            self.postings[term] = (docs_a, weight.astype(np.float32))

    def scores(self, query: str) -> np.ndarray:
        out = np.zeros(self.n_docs, dtype=np.float32)
        for term, count in Counter(tokenize(query)).items():
            hit = self.postings.get(term)
            if hit is not None:
                out[hit[0]] += hit[1] * (1.0 + np.log(count))
        return out

    def batch_scores(self, queries: list[str]) -> np.ndarray:
        return np.stack([self.scores(q) for q in queries]) if queries else np.zeros((0, self.n_docs), np.float32)
