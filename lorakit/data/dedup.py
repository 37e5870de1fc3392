"""Exact and near-duplicate detection (MinHash + LSH from datasketch) for documents,
paragraphs and finished samples.

Exact duplicates compare a hash of the text with case, punctuation and spacing removed.
Near duplicates compare word n-gram sets: LSH proposes candidates, and each candidate is
confirmed with the MinHash Jaccard estimate before anything is dropped.
"""

from __future__ import annotations

import zlib
from collections import Counter
from typing import Sequence

from datasketch import MinHash, MinHashLSH

from lorakit.data.documents import Document
from lorakit.data.textutil import dedup_key, shingles

DOC_THRESHOLD = 0.8
PARA_THRESHOLD = 0.8
MIN_WORDS_EXACT = 8  # shorter paragraphs ("Yes.") repeat legitimately in dialogue
MIN_WORDS_NEAR = 30
_BATCH = 50_000  # shingles per update: bounds the (batch x num_perm) array in memory


def _crc32(data: bytes) -> int:
    # Deterministic across processes (unlike hash()), and fast: a C call per shingle.
    return zlib.crc32(data)


class Signer:
    """Computes MinHash signatures of word n-gram shingles."""

    def __init__(self, num_perm: int = 128, ngram: int = 5, seed: int = 1):
        self.num_perm, self.ngram = num_perm, ngram
        self._template = MinHash(num_perm=num_perm, seed=seed, hashfunc=_crc32)

    def sign(self, text: str) -> MinHash | None:
        """Signature of `text`, or None when it has no words."""
        items = shingles(text, self.ngram)
        if not items:
            return None
        sig = self._template.copy()
        for start in range(0, len(items), _BATCH):
            sig.update_batch(items[start : start + _BATCH])
        return sig

    def lsh(self, threshold: float) -> MinHashLSH:
        """An empty LSH index matching this signer."""
        return MinHashLSH(threshold=threshold, num_perm=self.num_perm)


def exact_jaccard(a: str, b: str, ngram: int = 5) -> float:
    """Exact Jaccard similarity of the word n-gram sets (reported for confirmed duplicates)."""
    sa, sb = set(map(_crc32, shingles(a, ngram))), set(map(_crc32, shingles(b, ngram)))
    return len(sa & sb) / len(sa | sb) if sa or sb else 1.0


def _doc_priority(doc: Document) -> tuple:
    # Keep the copy that still has its Gutenberg header, then the one with the fullest metadata,
    # then the longest, then by name: the order decides which copy of a duplicate survives.
    filled = sum(1 for k in ("author", "title", "translator", "gutenberg_id") if doc.meta.get(k))
    return (not doc.has_header, -filled, -sum(len(p.text) for p in doc.paras), doc.source, doc.doc_id)


def order_documents(docs: Sequence[Document]) -> list[Document]:
    """Documents in the order duplicates are resolved (the first of a group is kept)."""
    return sorted(docs, key=_doc_priority)


def dedup_documents(docs: Sequence[Document], threshold: float = DOC_THRESHOLD) -> tuple[list[Document], list[dict]]:
    """Drop exact and near-duplicate documents; returns (kept, one report entry per dropped doc)."""
    signer = Signer(128, 5)
    lsh = signer.lsh(threshold)
    kept: list[Document] = []
    sigs: dict[str, MinHash] = {}
    by_key: dict[str, Document] = {}
    by_id: dict[str, Document] = {}
    dropped: list[dict] = []
    for doc in order_documents(docs):
        text = doc.text
        key = dedup_key(text)
        if key in by_key:
            orig = by_key[key]
            dropped.append({"file": doc.source, "book": doc.meta["book"], "duplicate_of": orig.source,
                            "duplicate_of_book": orig.meta["book"], "method": "exact", "similarity": 1.0})
            continue
        sig = signer.sign(text)
        if sig is not None:
            scored = sorted(((sig.jaccard(sigs[c]), c) for c in lsh.query(sig)), reverse=True)
            if scored and scored[0][0] >= threshold:
                orig = by_id[scored[0][1]]
                dropped.append({"file": doc.source, "book": doc.meta["book"], "duplicate_of": orig.source,
                                "duplicate_of_book": orig.meta["book"], "method": "minhash",
                                "similarity": round(exact_jaccard(text, orig.text, signer.ngram), 4),
                                "minhash_estimate": round(float(scored[0][0]), 4)})
                continue
            lsh.insert(doc.doc_id, sig)
            sigs[doc.doc_id] = sig
        by_key[key] = by_id[doc.doc_id] = doc
        kept.append(doc)
    kept_ids = {d.doc_id for d in kept}
    return [d for d in docs if d.doc_id in kept_ids], dropped


def dedup_paragraphs(docs: Sequence[Document], counts: Counter, pairs: Counter | None = None,
                     threshold: float = PARA_THRESHOLD) -> None:
    """Drop paragraphs repeated (exactly or nearly) earlier in the corpus, in place.

    `counts` gets 'paragraphs_exact' / 'paragraphs_near'; `pairs` counts (book, duplicate_of_book).
    """
    signer = Signer(64, 3)
    lsh = signer.lsh(threshold)
    seen: dict[str, str] = {}
    sigs: dict[str, tuple[MinHash, str]] = {}
    for d_i, doc in enumerate(order_documents(docs)):
        book = doc.meta["book"]
        kept = []
        for p_i, para in enumerate(doc.paras):
            n_words = len(para.text.split())
            if n_words >= MIN_WORDS_EXACT:
                key = dedup_key(para.text)
                if key in seen:
                    counts["paragraphs_exact"] += 1
                    if pairs is not None:
                        pairs[(book, seen[key])] += 1
                    continue
                seen[key] = book
            if n_words >= MIN_WORDS_NEAR:
                sig = signer.sign(para.text)
                match = next((c for c in lsh.query(sig) if sig.jaccard(sigs[c][0]) >= threshold), None)
                if match is not None:
                    counts["paragraphs_near"] += 1
                    if pairs is not None:
                        pairs[(book, sigs[match][1])] += 1
                    continue
                name = f"{d_i}:{p_i}"
                lsh.insert(name, sig)
                sigs[name] = (sig, book)
            kept.append(para)
        doc.paras = kept


def near_duplicate_pairs(items: Sequence[tuple[str, str]], threshold: float = 0.8,
                         num_perm: int = 64, ngram: int = 5, cache: dict | None = None) -> list[dict]:
    """All pairs of near-duplicate texts among `items` = [(group, text)], exact ones included.

    Each pair is reported once as {a, b, group_a, group_b, similarity} with a < b (indices).
    `cache` (text -> signature) lets a second pass over the same texts skip hashing.
    """
    signer = Signer(num_perm, ngram)
    lsh = signer.lsh(threshold)
    sigs: dict[int, MinHash] = {}
    keys: dict[str, int] = {}
    found: list[dict] = []
    for i, (group, text) in enumerate(items):
        key = dedup_key(text)
        if key in keys:
            j = keys[key]
            found.append({"a": j, "b": i, "group_a": items[j][0], "group_b": group, "similarity": 1.0})
            continue
        keys[key] = i
        if cache is not None and text in cache:
            sig = cache[text]
        else:
            sig = signer.sign(text)
            if cache is not None:
                cache[text] = sig
        if sig is None:
            continue
        for cand in lsh.query(sig):
            sim = float(sig.jaccard(sigs[cand]))
            if sim >= threshold:
                found.append({"a": cand, "b": i, "group_a": items[cand][0], "group_b": group,
                              "similarity": round(sim, 4)})
        lsh.insert(i, sig)
        sigs[i] = sig
    return found
