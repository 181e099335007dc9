"""Pooling: one vector per text from its token vectors, as sentence-transformers' Pooling does.

    cls                   h[0]                              the [CLS] token
    lasttoken             h[n - 1]                          the last real token ([SEP] for BERT)
    mean                  sum_t h[t] / n                    padding excluded: it is not part of the text,
                                                            and counting it would make a text's vector
                                                            depend on the longest text in its batch
    mean_sqrt_len_tokens  sum_t h[t] / sqrt(n)
    max                   max_t h[t]                        per channel, padding set to -inf first
    weightedmean          sum_t (t+1) h[t] / sum_t (t+1)    later tokens weigh more (position 1-based)

n is the text's real token count (special tokens included). Sums are taken in float64 and the
result rounded once to the tokens' dtype.
"""

import numpy as np

from .attention import unpack
from .jit import njit

POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
_CODES = {mode: i for i, mode in enumerate(POOLING_MODES)}

# ---------------------------------------------------------------- NumPy mirror of the kernel


def pool_padded(tokens, mask, mode):  # [B, T, D], [B, T], str -> [B, D]: sentence-transformers' padded form
    m = mask[:, :, None].astype(np.float64)
    h = tokens.astype(np.float64)
    n = np.maximum(m.sum(axis=1), 1e-9)  # [B, 1]; the clamp is sentence-transformers' guard against 0
    if mode == "cls":
        out = h[:, 0]
    elif mode == "lasttoken":
        out = h[np.arange(len(h)), mask.sum(axis=1) - 1]
    elif mode == "mean":
        out = (h * m).sum(axis=1) / n
    elif mode == "mean_sqrt_len_tokens":
        out = (h * m).sum(axis=1) / np.sqrt(n)
    elif mode == "max":
        out = np.where(m > 0, h, -np.inf).max(axis=1)
    elif mode == "weightedmean":
        w = m * np.arange(1, h.shape[1] + 1)[None, :, None]
        out = (h * w).sum(axis=1) / np.maximum(w.sum(axis=1), 1e-9)
    else:
        raise ValueError(f"unknown pooling mode {mode!r}; known: {', '.join(POOLING_MODES)}")
    return out.astype(tokens.dtype)


def pool_numpy(tokens, offsets, mode):  # [N, D], [B + 1], str -> [B, D]: ``pool`` without Numba
    # The padded form sums in float64 in the kernel's order (token by token) and rounds once.
    lengths = np.diff(offsets)
    if mode in ("cls", "max", "lasttoken") and (lengths == 0).any():
        raise ValueError("pool: a text with no tokens has no first, last or largest token")
    padded, mask = unpack(tokens, offsets)
    return pool_padded(padded, mask, mode)


# ---------------------------------------------------------------- Numba kernel


@njit(cache=True, nogil=True, error_model="numpy")
def _pool_packed(tokens, offsets, code, out):  # [N, D], [B + 1], int, [B, D] -> [B, D]
    d = tokens.shape[1]
    # Numba does not check bounds: offsets that step outside tokens would read another text's rows
    # or the heap. Checked here, in the kernel itself, so that no caller can get past it.
    if offsets.shape[0] < 1 or offsets[0] != 0 or offsets[-1] > tokens.shape[0]:
        raise ValueError("pool: offsets must start at 0 and end within the tokens")
    if out.shape[0] != offsets.shape[0] - 1 or out.shape[1] != d:
        raise ValueError("pool: out must be [B, D]")
    for b in range(offsets.shape[0] - 1):
        if offsets[b + 1] < offsets[b]:
            raise ValueError("pool: offsets must not decrease")
        if offsets[b + 1] == offsets[b] and (code == 0 or code == 1 or code == 5):
            raise ValueError("pool: a text with no tokens has no first, last or largest token")
    for b in range(offsets.shape[0] - 1):
        start, end = offsets[b], offsets[b + 1]
        n = end - start
        acc = np.zeros(d, dtype=np.float64)
        if code == 0:  # cls
            for c in range(d):
                acc[c] = tokens[start, c]
        elif code == 5:  # lasttoken
            for c in range(d):
                acc[c] = tokens[end - 1, c]
        elif code == 1:  # max
            acc[:] = -np.inf
            for t in range(start, end):
                for c in range(d):
                    acc[c] = max(acc[c], tokens[t, c])
        else:  # mean, mean_sqrt_len_tokens, weightedmean
            weight_sum = 0.0
            for t in range(start, end):
                w = float(t - start + 1) if code == 4 else 1.0
                weight_sum += w
                for c in range(d):
                    acc[c] += w * tokens[t, c]
            denom = max(weight_sum, 1e-9)
            if code == 3:
                denom = np.sqrt(max(float(n), 1e-9))
            for c in range(d):
                acc[c] /= denom
        for c in range(d):
            out[b, c] = acc[c]
    return out


def pool(tokens, offsets, mode):  # [N, D], [B + 1], str -> [B, D]
    if mode not in _CODES:
        raise ValueError(f"unknown pooling mode {mode!r}; known: {', '.join(POOLING_MODES)}")
    if tokens.ndim != 2 or np.asarray(offsets).ndim != 1 or len(offsets) < 1:
        raise ValueError(f"pool: tokens must be [N, D] and offsets [B + 1], got {tokens.shape} and {np.shape(offsets)}")
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    out = np.empty((len(offsets) - 1, tokens.shape[1]), dtype=tokens.dtype)
    return _pool_packed(tokens, offsets, _CODES[mode], out)
