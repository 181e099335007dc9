"""Multi-head self-attention over packed sequences.

For one text and one head, with Q, K, V the [T, Dh] slices of the projected tokens:

    scores = Q K^T / sqrt(Dh)           [T, T]   how much each token attends to each other token
    scores[:, j] = -inf where mask[j]=0          padding keys get zero weight (twin only)
    P = softmax(scores, axis=-1)        [T, T]
    out = P V                           [T, Dh]

Heads are computed independently and written side by side: out[:, h*Dh:(h+1)*Dh].

The fast version takes the fused projection ``qkv`` [N, 3D] (columns Q | K | V) of all tokens of
a batch packed back to back, and works text by text (texts of equal length together). A text's
queries only ever see its own keys, so there is no padding and no mask to get wrong: tokens of
different texts cannot mix by construction. QK^T and PV are BLAS matmuls (a hand-written Numba
loop was 3-4x slower at every length we tried, 8 to 256 tokens); the softmax between them is the
Numba kernel, in float64 with one rounding, single-threaded on purpose: it runs between BLAS calls
whose worker threads spin on the other core, and a second Numba thread would fight them for it.
"""

import math

import numpy as np
from numba import njit

# ---------------------------------------------------------------- NumPy twins (the math)


def softmax_ref(x):  # [..., T] -> [..., T]
    e = np.exp(x - x.max(axis=-1, keepdims=True))  # shifting by the max changes nothing but overflow
    return e / e.sum(axis=-1, keepdims=True)


def attention_ref(q, k, v, mask):  # [B, H, T, Dh] x3, [B, T] -> [B, H, T, Dh]
    scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(q.shape[-1])  # [B, H, T, T]
    scores = np.where(mask[:, None, None, :] > 0, scores, -np.inf)  # a padding key is never attended
    return softmax_ref(scores) @ v


def pack(padded, lengths):  # [B, T, ...], [B] -> [N, ...], [B + 1]
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(lengths)
    return np.concatenate([padded[b, :n] for b, n in enumerate(lengths)]), offsets


def unpack(packed, offsets, fill=0.0):  # [N, ...], [B + 1] -> [B, T, ...], [B, T] mask
    lengths = np.diff(offsets)
    t = int(lengths.max()) if len(lengths) else 0
    out = np.full((len(lengths), t) + packed.shape[1:], fill, dtype=packed.dtype)
    mask = np.zeros((len(lengths), t), dtype=np.int64)
    for b, n in enumerate(lengths):
        out[b, :n] = packed[offsets[b]:offsets[b + 1]]
        mask[b, :n] = 1
    return out, mask

# ---------------------------------------------------------------- Numba kernel


@njit(cache=True, inline="always")
def exp_nonpositive(x):  # float64 x <= 0 -> exp(x), relative error < 1e-10; branch-free, vectorises
    # exp(x) = exp(x / 128) ^ 128: a short Taylor series on [-0.625, 0], then seven squarings.
    # (libm's exp is a scalar call; softmax needs T^2 of them per head.) Below -80 the result
    # (< 2e-35) is far beneath a softmax row's sum of at least 1, so clamping there is exact enough.
    y = max(x, -80.0) * 0.0078125
    p = 1.0 / 479001600.0
    p = p * y + 1.0 / 39916800.0
    p = p * y + 1.0 / 3628800.0
    p = p * y + 1.0 / 362880.0
    p = p * y + 1.0 / 40320.0
    p = p * y + 1.0 / 5040.0
    p = p * y + 1.0 / 720.0
    p = p * y + 1.0 / 120.0
    p = p * y + 1.0 / 24.0
    p = p * y + 1.0 / 6.0
    p = p * y + 0.5
    p = p * y + 1.0
    p = p * y + 1.0
    for _ in range(7):
        p = p * p
    return p


# reassoc lets LLVM vectorise the max and sum reductions (their order then differs from a plain
# loop's, by less than an fp32 rounding of the result); no nnan/ninf flags: -inf is used.
@njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc", "contract"})
def softmax_rows(scores, scale, exact):  # [R, T] (in place), float, bool -> [R, T]
    """Each row r <- softmax(scale * r), computed in float64 and rounded once."""
    n, t = scores.shape
    e = np.empty(t, dtype=np.float64)
    for r in range(n):
        row = scores[r]
        best = -np.inf
        for j in range(t):
            best = max(best, np.float64(row[j]))
        if exact:
            for j in range(t):
                e[j] = math.exp((np.float64(row[j]) - best) * scale)
        else:
            for j in range(t):
                e[j] = exp_nonpositive((np.float64(row[j]) - best) * scale)
        total = 0.0
        for j in range(t):
            total += e[j]
        inv = 1.0 / total
        for j in range(t):
            row[j] = e[j] * inv
    return scores


def attention_packed(qkv, offsets, n_heads, out):  # [N, 3D], [B + 1], int, [N, D] -> [N, D]
    """Each text attends over its own tokens only. Texts of equal length (common: batches are
    length-sorted) share one batched matmul; the matmuls go to BLAS, the softmax to Numba."""
    d = qkv.shape[1] // 3
    dh = d // n_heads
    lengths = np.diff(offsets)
    exact = qkv.dtype == np.float64
    b = 0
    while b < len(lengths):
        t, e = int(lengths[b]), b
        while e < len(lengths) and lengths[e] == t:
            e += 1
        rows = slice(int(offsets[b]), int(offsets[e]))
        x = qkv[rows].reshape(e - b, t, 3, n_heads, dh)  # [G, T, Q|K|V, H, Dh], a view
        q = x[:, :, 0].transpose(0, 2, 1, 3)  # [G, H, T, Dh]
        k_t = x[:, :, 1].transpose(0, 2, 3, 1)  # [G, H, Dh, T]
        v = x[:, :, 2].transpose(0, 2, 1, 3)  # [G, H, T, Dh]
        scores = q @ k_t  # [G, H, T, T]
        softmax_rows(scores.reshape(-1, t), 1.0 / math.sqrt(dh), exact)
        out[rows] = (scores @ v).transpose(0, 2, 1, 3).reshape(-1, d)  # heads side by side again
        b = e
    return out
