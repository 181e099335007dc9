"""Scores between embeddings and top-k search, as in sentence-transformers' ``util``.

All functions take 1-D ([D], one embedding) or 2-D ([n, D]) arrays or nested lists and return
a 2-D [n_a, n_b] score matrix where higher means more similar.
"""

import heapq

import numpy as np


def _as_2d(x, name):  # array-like -> [n, D] float array
    if x is None:
        raise TypeError(f"{name} is None; expected an array of embeddings")
    a = np.asarray(x)
    if a.dtype == object or not np.issubdtype(a.dtype, np.number):
        raise TypeError(f"{name} must be a numeric array of embeddings, got dtype {a.dtype}")
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2:
        raise ValueError(f"{name} must be 1-D [D] or 2-D [n, D], got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float64)
    return a


def _pair(a, b):
    a, b = _as_2d(a, "a"), _as_2d(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"embedding sizes differ: a has {a.shape[1]} dims, b has {b.shape[1]}")
    return a, b


def normalize_embeddings(x):  # [n, D] -> [n, D] unit rows
    x = _as_2d(x, "embeddings")
    with np.errstate(over="ignore"):
        norms = np.linalg.norm(x, axis=1, keepdims=True)
    if not np.isfinite(norms).all() and np.isfinite(x).all():  # the squares overflowed, the vector did not
        wide = x.astype(np.float64)
        scale = np.maximum(np.abs(wide).max(axis=1, keepdims=True), 1e-300)  # so that no square overflows
        return (wide / scale / np.maximum(np.linalg.norm(wide / scale, axis=1, keepdims=True), 1e-300)).astype(x.dtype)
    # 1e-12 as torch.nn.functional.normalize: an all-zero row stays zero instead of becoming NaN
    return x / np.maximum(norms, 1e-12)


def cos_sim(a, b):  # [n_a, D], [n_b, D] -> [n_a, n_b]
    a, b = _pair(a, b)
    return normalize_embeddings(a) @ normalize_embeddings(b).T


def dot_score(a, b):  # [n_a, D], [n_b, D] -> [n_a, n_b]
    a, b = _pair(a, b)
    return a @ b.T


def euclidean_sim(a, b):  # [n_a, D], [n_b, D] -> [n_a, n_b], the negated L2 distance
    a, b = _pair(a, b)
    return -np.sqrt(np.maximum(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1), 0))


def manhattan_sim(a, b):  # [n_a, D], [n_b, D] -> [n_a, n_b], the negated L1 distance
    a, b = _pair(a, b)
    return -np.abs(a[:, None, :] - b[None, :, :]).sum(-1)


SIMILARITY = {"cosine": cos_sim, "dot": dot_score, "euclidean": euclidean_sim, "manhattan": manhattan_sim}


def semantic_search(
    query_embeddings,
    corpus_embeddings,
    query_chunk_size=100,
    corpus_chunk_size=500000,
    top_k=10,
    score_function=cos_sim,
):  # [n_q, D], [n_c, D] -> n_q lists of top_k hits
    """For each query, the ``top_k`` corpus entries by score: ``[{"corpus_id": int, "score": float}, ...]``,
    best first. Scores are computed chunk by chunk so a large corpus never needs an n_q x n_c matrix."""
    q, c = _pair(query_embeddings, corpus_embeddings)
    for name, v in (("top_k", top_k), ("query_chunk_size", query_chunk_size), ("corpus_chunk_size", corpus_chunk_size)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    heaps = [[] for _ in range(len(q))]  # min-heaps of (score, corpus_id) holding each query's best so far
    for qs in range(0, len(q), query_chunk_size):
        for cs in range(0, len(c), corpus_chunk_size):
            scores = np.asarray(score_function(q[qs : qs + query_chunk_size], c[cs : cs + corpus_chunk_size]))
            k = min(top_k, scores.shape[1])
            best = np.argpartition(-scores, k - 1, axis=1)[:, :k]
            for row, cols in enumerate(best):
                heap = heaps[qs + row]
                for col in cols:
                    item = (float(scores[row, col]), cs + int(col))
                    if len(heap) < top_k:
                        heapq.heappush(heap, item)
                    elif item > heap[0]:
                        heapq.heapreplace(heap, item)
    return [[{"corpus_id": cid, "score": s} for s, cid in sorted(h, key=lambda t: (-t[0], t[1]))] for h in heaps]
