"""sentence-transformers' ``util`` on NumPy: scores between embeddings, search, mining, quantization.

Every function takes NumPy arrays, (nested) lists, or torch tensors (read without importing torch
when none is given), 1-D ([D], one embedding) or 2-D ([n, D]), and returns what
sentence-transformers returns, as NumPy: a score matrix [n_a, n_b] (higher is more similar), a
pairwise score vector [n], hit lists or index lists.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

import numpy as np

# ------------------------------------------------------------------ inputs


def _is_torch(x):  # a torch tensor, recognised without importing torch
    return type(x).__module__.split(".")[0] == "torch" and hasattr(x, "detach")


def _from_torch(x):  # torch tensor -> NumPy array (bfloat16, which NumPy lacks, as float32)
    x = x.detach().cpu()
    if str(x.dtype) == "torch.bfloat16":
        x = x.float()
    return x.numpy()


def _as_array(x, name):  # array-like -> NumPy float array, as sentence-transformers' _convert_to_float_tensor
    if x is None:
        raise TypeError(f"{name} is None; expected embeddings (an array, a list or a tensor)")
    if _is_torch(x):
        x = _from_torch(x)
    elif isinstance(x, (list, tuple)):
        if x and all(_is_torch(v) for v in x):
            x = np.stack([_from_torch(v) for v in x])
        elif x and all(isinstance(v, np.ndarray) for v in x):
            try:
                x = np.stack(x)
            except ValueError:
                raise ValueError(f"{name}: the embeddings in the list have different shapes") from None
        else:
            try:
                x = np.asarray(x, dtype=np.float32)  # torch.tensor's default for Python floats
            except (TypeError, ValueError):
                raise TypeError(f"{name} must be numeric: a list of numbers or of equal-length embeddings") from None
    a = np.asarray(x)
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
        raise TypeError(f"{name} must be a numeric array of embeddings, got dtype {a.dtype}")
    if not np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float32)
    elif np.finfo(a.dtype).bits < 32:  # matmul in float16 would round scores into false ties
        a = a.astype(np.float32)
    return a


def _as_2d(x, name):  # array-like -> [n, D]
    a = _as_array(x, name)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2:
        raise ValueError(f"{name} must be 1-D [D] or 2-D [n, D], got shape {a.shape}")
    return a


def _pair(a, b):  # -> [n_a, D], [n_b, D]
    a, b = _as_2d(a, "a"), _as_2d(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"embedding sizes differ: a has {a.shape[1]} dims, b has {b.shape[1]}")
    return a, b


def _pairwise(a, b):  # -> [n, D], [n, D] (or [D], [D]): row i of a goes with row i of b
    a, b = _as_array(a, "a"), _as_array(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"pairwise scores need equal shapes, got a {a.shape} and b {b.shape}")
    return a, b


def _positive(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


# ------------------------------------------------------------------ scores


def normalize_embeddings(embeddings) -> np.ndarray:  # [n, D] (or [D]) -> the same, unit rows
    x = _as_array(embeddings, "embeddings")
    with np.errstate(over="ignore"):
        norms = np.linalg.norm(x, axis=-1, keepdims=True)
    if not np.isfinite(norms).all() and np.isfinite(x).all():  # the squares overflowed, the vector did not
        wide = x.astype(np.float64)
        scale = np.maximum(np.abs(wide).max(axis=-1, keepdims=True), 1e-300)  # so that no square overflows
        unit = wide / scale
        return (unit / np.maximum(np.linalg.norm(unit, axis=-1, keepdims=True), 1e-300)).astype(x.dtype)
    # 1e-12 as torch.nn.functional.normalize: an all-zero row stays zero instead of becoming NaN
    return x / np.maximum(norms, 1e-12)


def cos_sim(a, b) -> np.ndarray:  # [n_a, D], [n_b, D] -> [n_a, n_b]
    a, b = _pair(a, b)
    return normalize_embeddings(a) @ normalize_embeddings(b).T


pytorch_cos_sim = cos_sim  # sentence-transformers' older name


def dot_score(a, b) -> np.ndarray:  # [n_a, D], [n_b, D] -> [n_a, n_b]
    a, b = _pair(a, b)
    return a @ b.T


def euclidean_sim(a, b) -> np.ndarray:  # [n_a, D], [n_b, D] -> [n_a, n_b], the negated L2 distance
    a, b = _pair(a, b)
    return -np.sqrt(np.maximum(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1), 0))


def manhattan_sim(a, b) -> np.ndarray:  # [n_a, D], [n_b, D] -> [n_a, n_b], the negated L1 distance
    a, b = _pair(a, b)
    return -np.abs(a[:, None, :] - b[None, :, :]).sum(-1)


def pairwise_dot_score(a, b) -> np.ndarray:  # [n, D], [n, D] -> [n]: a[i] . b[i]
    a, b = _pairwise(a, b)
    return (a * b).sum(axis=-1)


def pairwise_cos_sim(a, b) -> np.ndarray:  # [n, D], [n, D] -> [n]
    a, b = _pairwise(a, b)
    return pairwise_dot_score(normalize_embeddings(a), normalize_embeddings(b))


def pairwise_euclidean_sim(a, b) -> np.ndarray:  # [n, D], [n, D] -> [n], the negated L2 distance
    a, b = _pairwise(a, b)
    return -np.linalg.norm(a - b, axis=-1)


def pairwise_manhattan_sim(a, b) -> np.ndarray:  # [n, D], [n, D] -> [n], the negated L1 distance
    a, b = _pairwise(a, b)
    return -np.abs(a - b).sum(axis=-1)


SIMILARITY = {"cosine": cos_sim, "dot": dot_score, "euclidean": euclidean_sim, "manhattan": manhattan_sim}
PAIRWISE = {
    "cosine": pairwise_cos_sim,
    "dot": pairwise_dot_score,
    "euclidean": pairwise_euclidean_sim,
    "manhattan": pairwise_manhattan_sim,
}


# ------------------------------------------------------------------ search and mining


def semantic_search(
    query_embeddings,
    corpus_embeddings,
    query_chunk_size: int = 100,
    corpus_chunk_size: int = 500000,
    top_k: int = 10,
    score_function: Callable = cos_sim,
) -> list[list[dict]]:  # [n_q, D], [n_c, D] -> n_q lists of top_k hits
    """For each query, the ``top_k`` corpus entries by score: ``[{"corpus_id": int, "score": float}, ...]``,
    best first. Scores are computed chunk by chunk so a large corpus never needs an n_q x n_c matrix."""
    q, c = _pair(query_embeddings, corpus_embeddings)
    top_k = _positive("top_k", top_k)
    query_chunk_size, corpus_chunk_size = (
        _positive("query_chunk_size", query_chunk_size),
        _positive("corpus_chunk_size", corpus_chunk_size),
    )
    if score_function is cos_sim:  # as sentence-transformers: normalize once, then dot products
        q, c, score_function = normalize_embeddings(q), normalize_embeddings(c), dot_score
    heaps = [[] for _ in range(len(q))]  # min-heaps of (score, corpus_id) holding each query's best so far
    for cs in range(0, len(c), corpus_chunk_size):
        for qs in range(0, len(q), query_chunk_size):
            scores = _as_2d(score_function(q[qs : qs + query_chunk_size], c[cs : cs + corpus_chunk_size]), "scores")
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


information_retrieval = semantic_search


def paraphrase_mining(
    model,
    sentences: list[str],
    show_progress_bar: bool = False,
    batch_size: int = 32,
    query_chunk_size: int = 5000,
    corpus_chunk_size: int = 100000,
    max_pairs: int = 500000,
    top_k: int = 100,
    score_function: Callable = cos_sim,
    truncate_dim: int | None = None,
    prompt_name: str | None = None,
    prompt: str | None = None,
) -> list[list]:  # -> [[score, i, j], ...] with i < j, best first
    """The most similar pairs among ``sentences``, embedded with ``model``."""
    embeddings = model.encode(
        sentences,
        show_progress_bar=show_progress_bar,
        batch_size=batch_size,
        truncate_dim=truncate_dim,
        prompt_name=prompt_name,
        prompt=prompt,
    )
    return paraphrase_mining_embeddings(
        embeddings,
        query_chunk_size=query_chunk_size,
        corpus_chunk_size=corpus_chunk_size,
        max_pairs=max_pairs,
        top_k=top_k,
        score_function=score_function,
    )


def _top(scores, k):  # [n, m], k -> (values, indices) of each row's k largest, largest first
    idx = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < scores.shape[1] else np.argsort(-scores, axis=1)
    values = np.take_along_axis(scores, idx, axis=1)
    order = np.lexsort((idx, -values), axis=1)  # by score, ties by index: only the k kept are sorted
    return np.take_along_axis(values, order, axis=1), np.take_along_axis(idx, order, axis=1)


def paraphrase_mining_embeddings(
    embeddings,
    query_chunk_size: int = 5000,
    corpus_chunk_size: int = 100000,
    max_pairs: int = 500000,
    top_k: int = 100,
    score_function: Callable = cos_sim,
) -> list[list]:  # [n, D] -> [[score, i, j], ...] with i < j, best first
    """Each embedding's ``top_k`` neighbours, kept as pairs (at most ``max_pairs``, the best)."""
    e = _as_2d(embeddings, "embeddings")
    top_k, max_pairs = _positive("top_k", top_k), _positive("max_pairs", max_pairs)
    query_chunk_size, corpus_chunk_size = (
        _positive("query_chunk_size", query_chunk_size),
        _positive("corpus_chunk_size", corpus_chunk_size),
    )
    pairs, queued, min_score = [], set(), float("-inf")  # a min-heap of (score, i, j), its (i, j), the bar
    for qs in range(0, len(e), query_chunk_size):
        values = idx = None
        for cs in range(0, len(e), corpus_chunk_size):
            scores = _as_2d(score_function(e[qs : qs + query_chunk_size], e[cs : cs + corpus_chunk_size]), "scores")
            v, i = _top(scores, min(top_k + 1, scores.shape[1]))
            if values is None:
                values, idx = v, i + cs
            else:
                values, idx = np.concatenate([values, v], axis=1), np.concatenate([idx, i + cs], axis=1)
                values, pos = _top(values, min(top_k + 1, values.shape[1]))
                idx = np.take_along_axis(idx, pos, axis=1)
        for row in range(len(values)):
            i = qs + row
            neighbours = [(int(j), float(s)) for j, s in zip(idx[row], values[row]) if j != i][:top_k]
            for j, score in neighbours:
                if score <= min_score:
                    continue
                pair = (i, j) if i < j else (j, i)
                if pair in queued:
                    continue
                queued.add(pair)
                if len(pairs) < max_pairs:
                    heapq.heappush(pairs, (score, *pair))
                else:
                    evicted = heapq.heappushpop(pairs, (score, *pair))
                    queued.discard(evicted[1:])
                    min_score = evicted[0]
    return sorted(([score, i, j] for score, i, j in pairs), key=lambda x: x[0], reverse=True)


def community_detection(
    embeddings,
    threshold: float = 0.75,
    min_community_size: int = 10,
    batch_size: int = 1024,
    show_progress_bar: bool = False,
) -> list[list[int]]:  # [n, D] -> communities (lists of indices, the centre first), largest first
    """Groups of at least ``min_community_size`` embeddings whose cosine to a centre is >= ``threshold``,
    as sentence-transformers finds them (greedy, largest first, no index in two groups)."""
    if embeddings is None or len(embeddings) == 0:
        return []
    e = _as_2d(embeddings, "embeddings")
    min_community_size, batch_size = (
        _positive("min_community_size", min_community_size),
        _positive("batch_size", batch_size),
    )
    if len(e) < min_community_size:
        return []
    e = normalize_embeddings(e)
    threshold = np.asarray(threshold, dtype=e.dtype)
    found = []
    sort_max_size = min(max(2 * min_community_size, 50), len(e))
    for start in range(0, len(e), batch_size):
        scores = e[start : start + batch_size] @ e.T
        kth = -np.partition(-scores, min_community_size - 1, axis=1)[:, min_community_size - 1]
        large_enough = kth >= threshold
        if not large_enough.any():
            continue
        scores = scores[large_enough]
        values, indices = _top(scores, sort_max_size)
        while sort_max_size < len(e) and (values[:, -1] >= threshold).any():
            sort_max_size = min(2 * sort_max_size, len(e))
            values, indices = _top(scores, sort_max_size)
        counts = (values >= threshold).sum(axis=1)
        for center, count, row in zip(np.flatnonzero(large_enough) + start, counts, indices):
            found.append((int(center), row[:count]))
    found.sort(key=lambda c: len(c[1]), reverse=True)
    communities, used = [], np.zeros(len(e), dtype=bool)
    for center, members in found:
        if used[center]:
            continue
        rest = members[~used[members]]
        if len(rest) >= min_community_size:
            community = [center] + [int(m) for m in rest if m != center]
            communities.append(community)
            used[community] = True
    return sorted(communities, key=len, reverse=True)


# ------------------------------------------------------------------ quantization

PRECISIONS = ("float32", "int8", "uint8", "binary", "ubinary")


def _quantization_ranges(embeddings, precision, calibration_embeddings):  # -> [2, D]: each dimension's min, max
    if calibration_embeddings is None:
        if embeddings.ndim == 1 or embeddings.shape[0] == 1:
            raise ValueError(
                f"cannot compute {precision} quantization ranges from a single embedding; pass `ranges` or "
                "`calibration_embeddings` from a representative set of embeddings"
            )
        calibration_embeddings = embeddings
    c = _as_array(calibration_embeddings, "calibration_embeddings")
    return np.vstack((np.min(c, axis=0), np.max(c, axis=0)))


def quantize_embeddings(
    embeddings, precision: str, ranges=None, calibration_embeddings=None
) -> np.ndarray | list[np.ndarray]:  # [n, D] -> [n, D] int8/uint8, or [n, ceil(D / 8)] packed bits
    """As sentence-transformers' ``quantize_embeddings``, bit for bit: int8/uint8 cut each dimension's
    range (``ranges`` [2, D], else the min and max of ``calibration_embeddings``, else of the
    embeddings themselves) into 256 buckets; binary/ubinary keep the sign bits, packed 8 per byte."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if isinstance(embeddings, list) and embeddings:
        items = [_from_torch(x) if _is_torch(x) else x for x in embeddings]
        if isinstance(items[0], np.ndarray) and items[0].ndim == 2:  # token matrices: one set of buckets for all
            if precision.endswith("int8") and ranges is None:
                data = np.concatenate(items, axis=0) if calibration_embeddings is None else calibration_embeddings
                if len(data):
                    ranges = _quantization_ranges(_as_array(data, "embeddings"), precision, calibration_embeddings)
            return [quantize_embeddings(m, precision, ranges, calibration_embeddings) for m in items]
        embeddings = items
    elif isinstance(embeddings, list):
        return []
    if isinstance(embeddings, np.ndarray) and embeddings.dtype in (np.int8, np.uint8):
        raise ValueError("embeddings to quantize must be floats, not int8 or uint8")
    e = _as_array(embeddings, "embeddings")
    if precision == "float32":
        return e.astype(np.float32)
    if precision.endswith("int8"):
        if e.ndim == 2 and e.shape[0] == 0:  # nothing to calibrate
            return np.zeros((0, e.shape[1]), dtype=np.int8 if precision == "int8" else np.uint8)
        if ranges is None:
            ranges = _quantization_ranges(e, precision, calibration_embeddings)
        ranges = np.asarray(ranges).astype(np.float32, copy=False)
        if ranges.ndim != 2 or ranges.shape[0] != 2 or ranges.shape[1] != e.shape[-1]:
            raise ValueError(f"ranges must have shape (2, {e.shape[-1]}), got {ranges.shape}")
        starts = ranges[0, :]
        steps = (ranges[1, :] - starts) / 255
        steps = np.where(steps == 0, 1, steps)
        buckets = np.clip(np.floor((e - starts) / steps), 0, 255)
        return buckets.astype(np.uint8) if precision == "uint8" else (buckets - 128).astype(np.int8)
    bits = np.packbits(e > 0, axis=-1)
    return bits if precision == "ubinary" else (bits - 128).astype(np.int8)
