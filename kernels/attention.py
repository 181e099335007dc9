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

from .jit import intrinsic, njit

# ---------------------------------------------------------------- packed and padded layouts


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
        out[b, :n] = packed[offsets[b] : offsets[b + 1]]
        mask[b, :n] = 1
    return out, mask


# ---------------------------------------------------------------- NumPy mirror of the kernel

LOG2E = 1.4426950408889634  # 1 / ln 2
LN2 = 0.6931471805599453
EXP_TAYLOR = tuple(1.0 / math.factorial(i) for i in range(9, -1, -1))  # 1/9!, ..., 1/1!, 1/0!: exp(r), Horner order


def exp_shifted_numpy(x):  # float64 [...] (<= 0) -> exp(x): exp_shifted below, the same steps on arrays
    y = np.maximum(x, -80.0)
    n = np.floor(y * LOG2E + 0.5)
    p = np.polyval(EXP_TAYLOR, y - n * LN2)
    with np.errstate(invalid="ignore"):  # a NaN's n casts to garbage; its p is NaN all the same
        two_n = ((n.astype(np.int64) + 1023) << 52).view(np.float64)
    return np.where(x < -80.0, 0.0, p * two_n)


def softmax_rows_numpy(scores, scale, exact):  # [R, T] (in place), float, bool -> [R, T]
    """softmax_rows without Numba: the kernels' float64 steps (their exp, their max, one rounding)."""
    best = scores.max(axis=-1, keepdims=True).astype(np.float64)  # exact, as the kernels' max
    with np.errstate(invalid="ignore"):  # an inf score makes its row NaN here too, without a warning
        x = (scores.astype(np.float64) - best) * scale
    e = np.exp(x) if exact else exp_shifted_numpy(x)
    scores[...] = e * (1.0 / e.sum(axis=-1, keepdims=True))
    return scores


# ---------------------------------------------------------------- Numba kernel


# Reading a float's bits as an integer, or the reverse, is free in C (a union or memcpy) and in
# NumPy (``a.view``). Numba's ``view`` works only on arrays and is slow to compile (~0.7 s for the
# three this file would need), so these say it to LLVM directly: one ``bitcast``, no instruction.
def _bitcast(src, dst):  # Numba type names, e.g. "float32" -> "int32"
    def cast(typingctx, value):
        from numba import types  # typing runs inside Numba, so it is imported by now (kernels/jit.py)

        source, target = getattr(types, src), getattr(types, dst)
        if value != source:
            return None  # any other argument type is a typing error, never a silent conversion
        return target(source), lambda context, builder, sig, args: builder.bitcast(
            args[0], context.get_value_type(target)
        )

    cast.__name__ = cast.__qualname__ = f"bitcast_{src}_to_{dst}"  # one name each, in error messages too
    return intrinsic(cast)


float32_bits = _bitcast("float32", "int32")  # float32 -> int32 with the same 32 bits
float32_from_bits = _bitcast("int32", "float32")
float64_from_bits = _bitcast("int64", "float64")


# The flags of the softmax kernel it is inlined into, so that its tests test what runs.
@njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc", "contract"}, inline="always")
def exp_shifted(row, best, scale, out):  # [T], float, float, [T] float64 (written) -> sum(out)
    """out[j] <- exp((row[j] - best) * scale) for arguments <= 0, relative error < 1e-11; returns
    their sum, the softmax's denominator, taken in the same pass (one pass less over the row).

    libm's exp is a scalar call and softmax needs T^2 of them per head, so this is written to
    vectorise: exp(y) = 2^n * exp(r) with n = round(y / ln 2) and |r| <= ln 2 / 2, where a
    degree-9 Taylor series gives exp(r) to 1e-11 and 2^n is the float64 whose exponent bits hold
    n + 1023. Below -80 the result is 0: exp(-80) < 2e-35 is far beneath a softmax row's sum (at
    least 1), and clamping there keeps 2^n a normal number. Rounding ln 2 to float64 costs at
    most 116 * 6e-17 in r: nothing."""
    total = 0.0
    for j in range(len(row)):
        x = (np.float64(row[j]) - best) * scale
        y = max(x, -80.0)
        n = np.floor(y * LOG2E + 0.5)
        r = y - n * LN2
        p = 1.0 / 362880.0
        p = p * r + 1.0 / 40320.0
        p = p * r + 1.0 / 5040.0
        p = p * r + 1.0 / 720.0
        p = p * r + 1.0 / 120.0
        p = p * r + 1.0 / 24.0
        p = p * r + 1.0 / 6.0
        p = p * r + 0.5
        p = p * r + 1.0
        p = p * r + 1.0
        two_n = float64_from_bits((np.int64(n) + 1023) << 52)
        out[j] = 0.0 if x < -80.0 else p * two_n  # exactly 0 for -inf (a masked key), as libm; NaN stays NaN
        total += out[j]
    return total


@njit(cache=True, nogil=True, inline="always")
def max_float32(row):  # [T] float32 -> max(row) (NaN if T = 0)
    """The largest element of a float32 row, exactly, 16 lanes at a time.

    Float compares one after another form a chain that LLVM does not vectorise (it may not
    reorder them around a NaN); integer ones it does. A float32's bits, read as an int32, with the
    31 magnitude bits flipped when the sign bit is set, sort exactly as the floats do (-inf < ...
    < -0 < +0 < ... < inf), so the max of these keys, mapped back, is the float max (2.5-3x faster
    than the chain at every length). A NaN never hides: its own exp makes its whole row NaN."""
    best = np.int32(-2147483648)
    for j in range(len(row)):
        b = float32_bits(row[j])
        best = max(best, np.int32(b ^ ((b >> 31) & 0x7FFFFFFF)))
    return float32_from_bits(np.int32(best ^ ((best >> 31) & 0x7FFFFFFF)))  # the same flip undoes itself


# Compiled without fastmath on purpose, and not inlined: under the softmax's "reassoc", LLVM turns
# e * (1 / total) back into e / total, a division per value, several times the cost of a multiply.
@njit(cache=True, nogil=True, error_model="numpy")
def write_scaled(row, e, factor):  # [T] out, [T] float64, float -> row <- e * factor, rounded once
    for j in range(len(row)):
        row[j] = e[j] * factor


def softmax_rows(scores, scale, exact):  # [R, T] (in place), float, bool -> [R, T]
    """Each row r <- softmax(scale * r), computed in float64 and rounded once. ``exact``: with
    libm's exp (for float64, where minibert is held to 1e-12); else the vectorised one (float32)."""
    if exact:
        return softmax_rows_libm(scores, scale)
    if scores.dtype != np.float32:
        raise ValueError(f"softmax_rows: exact=False is for float32 scores, got {scores.dtype}; pass exact=True")
    return softmax_rows_fast(scores, scale)


# reassoc lets LLVM vectorise the sums (their order then differs from a plain loop's, by far less
# than an fp32 rounding of the result); no nnan/ninf flags: a NaN must come out as NaN.
@njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc", "contract"})
def softmax_rows_fast(scores, scale):  # [R, T] float32 (in place), float -> [R, T]
    n, t = scores.shape
    e = np.empty(t, dtype=np.float64)
    for r in range(n):
        row = scores[r]
        total = exp_shifted(row, np.float64(max_float32(row)), scale, e)
        write_scaled(row, e, 1.0 / total)
    return scores


@njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc", "contract"})
def softmax_rows_libm(scores, scale):  # [R, T] (in place), float -> [R, T]
    n, t = scores.shape
    e = np.empty(t, dtype=np.float64)
    for r in range(n):
        row = scores[r]
        best = -np.inf
        for j in range(t):
            best = max(best, np.float64(row[j]))
        total = 0.0
        for j in range(t):
            e[j] = math.exp((np.float64(row[j]) - best) * scale)
            total += e[j]
        for j in range(t):
            row[j] = e[j] / total  # a division, correctly rounded: float64 is held to 1e-12, speed second
    return scores


SCORES_BYTES = 1 << 20  # scores handled at once: about one core's L2 (1 MiB on AMD Zen 4, 1-2 MiB on Xeons)


def attention_packed(qkv, offsets, n_heads, out, softmax=softmax_rows):  # [N, 3D], [B + 1], int, [N, D], fn -> [N, D]
    """Each text attends over its own tokens only. Texts of equal length (common: batches are
    length-sorted) share one batched matmul; the matmuls go to BLAS, the softmax to ``softmax``
    (the Numba kernel, or its NumPy mirror ``softmax_rows_numpy``)."""
    if qkv.ndim != 2 or qkv.shape[1] % 3 or n_heads < 1 or (qkv.shape[1] // 3) % n_heads:
        raise ValueError(
            f"attention_packed: qkv must be [N, 3D] with D a multiple of n_heads={n_heads}, got shape {qkv.shape}"
        )
    d = qkv.shape[1] // 3
    dh = d // n_heads
    if out.shape != (qkv.shape[0], d) or not out.flags.c_contiguous:
        raise ValueError(
            f"attention_packed: out must be a C-contiguous [{qkv.shape[0]}, {d}] array "
            f"(results are written through views of it), got shape {out.shape}"
        )
    lengths = np.diff(offsets)
    exact = qkv.dtype == np.float64
    b = 0
    while b < len(lengths):
        t, e = int(lengths[b]), b
        while e < len(lengths) and lengths[e] == t:
            e += 1
        if t == 0:  # empty texts have no tokens to compute
            b = e
            continue
        rows = slice(int(offsets[b]), int(offsets[e]))
        x = qkv[rows].reshape(e - b, t, 3, n_heads, dh)  # [G, T, Q|K|V, H, Dh], a view
        q = x[:, :, 0].transpose(0, 2, 1, 3)  # [G, H, T, Dh]
        k_t = x[:, :, 1].transpose(0, 2, 3, 1)  # [G, H, Dh, T]
        v = x[:, :, 2].transpose(0, 2, 1, 3)  # [G, H, T, Dh]
        o = out[rows].reshape(e - b, t, n_heads, dh).transpose(0, 2, 1, 3)  # [G, H, T, Dh], a view
        # Heads a few at a time, so that their scores (G x T x T floats each) stay in L2 between
        # the three steps instead of going out to memory and back; only long texts need more than one round.
        step = max(1, min(n_heads, SCORES_BYTES // ((e - b) * t * t * qkv.itemsize)))
        for h in range(0, n_heads, step):
            heads = slice(h, h + step)
            scores = q[:, heads] @ k_t[:, heads]  # [G, h, T, T]
            softmax(scores.reshape(-1, t), 1.0 / math.sqrt(dh), exact)
            np.matmul(scores, v[:, heads], out=o[:, heads])  # straight into out: heads side by side
        b = e
    return out
