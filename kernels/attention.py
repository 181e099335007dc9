"""Multi-head self-attention over packed sequences.

For one text and one head, with Q, K, V the [T, Dh] slices of the projected tokens:

    scores = Q K^T / sqrt(Dh)           [T, T]   how much each token attends to each other token
    scores[:, j] = -inf where mask[j]=0          padding keys get zero weight (twin only)
    P = softmax(scores, axis=-1)        [T, T]
    out = P V                           [T, Dh]

Heads are computed independently and written side by side: out[:, h*Dh:(h+1)*Dh].

The Numba kernel takes the fused projection ``qkv`` [N, 3D] (columns Q | K | V) of all tokens of
a batch packed back to back, and loops over (text, head) pairs. A text's queries only ever see
its own keys, so there is no padding and no mask to get wrong: tokens of different texts cannot
mix by construction. Softmax is done one query row at a time, so the [T, T] matrix is never
materialised (a row of T scores stays in L1 cache even at T = 512).
"""

import math

import numpy as np
from numba import njit, prange

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


@njit(cache=True, parallel=True)
def attention_packed(qkv, offsets, n_heads, out):  # [N, 3D], [B + 1], int, [N, D] -> [N, D]
    n_texts = offsets.shape[0] - 1
    d = qkv.shape[1] // 3
    dh = d // n_heads
    scale = 1.0 / math.sqrt(dh)
    max_len = 0
    for b in range(n_texts):
        max_len = max(max_len, offsets[b + 1] - offsets[b])
    for job in prange(n_texts * n_heads):
        b = job // n_heads
        h = job - b * n_heads
        start = offsets[b]
        t = offsets[b + 1] - start
        q0, k0, v0 = h * dh, d + h * dh, 2 * d + h * dh
        scores = np.empty(max_len, dtype=np.float64)
        acc = np.empty(dh, dtype=np.float64)
        for i in range(t):
            qi = start + i
            best = -np.inf
            for j in range(t):
                kj = start + j
                s = 0.0
                for c in range(dh):
                    s += qkv[qi, q0 + c] * qkv[kj, k0 + c]
                s *= scale
                scores[j] = s
                best = max(best, s)
            total = 0.0
            for j in range(t):
                e = math.exp(scores[j] - best)
                scores[j] = e
                total += e
            acc[:] = 0.0
            for j in range(t):
                p = scores[j]
                kj = start + j
                for c in range(dh):
                    acc[c] += p * qkv[kj, v0 + c]
            inv = 1.0 / total
            for c in range(dh):
                out[qi, q0 + c] = acc[c] * inv
    return out
