"""int8 dense layers: x @ W with W in int8 and x in uint8, summed exactly in int32 on AVX-512 VNNI.

    W [K, N] float -> q [K, N] int8, t [N]           one scale per output column, at load (symmetric)
    x [M, K] float -> u [M, K] uint8, s [M], z [M]   255 steps s from each token row's minimum z
    x @ W ~ (float32(u @ q) * s + z * colsum(q)) * t

(x ~ u s + z, so x @ W ~ t (s (u @ q) + z sum_k q).) A token's values are not centred on zero (a
GELU's output is almost all >= 0, and a hidden state's few outlier channels sit on one side), so
its own [min, max] range in 255 steps keeps about twice the resolution of a symmetric one; and
``vpdpbusd`` multiplies unsigned bytes by signed ones, which is exactly u by q. The sum u @ q is of
integers, so it is exact in any order: a row's result does not depend on its batch, its threads or
the kernel (minibert/bert.py's ``int8_linear`` is the NumPy statement of these steps, and the kernel
gives its bits). A CPU without VNNI takes ``int8_matmul_numpy``: the same integers summed in
float64 by BLAS, exact while no sum passes 2^53 (255 * 127 * K is far below it).
"""

import functools
from dataclasses import dataclass

import numpy as np

from .jit import njit, prange
from .simd import vdequant, vdpbusd, vload, vsplat, vstore, vzero

TILE_ROWS = 4  # rows of x per register tile
TILE_COLUMNS = 64  # columns per register tile: 4 vectors of 16 int32 sums (16 accumulators in all)
K_GROUP = 4  # bytes of K per int32 lane of vpdpbusd


@dataclass(frozen=True)
class Int8Matrix:
    """A weight matrix quantized once, at load, in the kernel's packed form. ``x @ m`` is
    bert.int8_linear(x, m.q, m.scale, m.colsum), so minibert/bert.py's forward pass runs an int8
    model unchanged. ``q``, the plain [K, N] form, is unpacked only where it is used (bert.py, the
    NumPy twin): a model keeps one byte per weight."""

    shape: tuple  # (K, N), as the float matrix it replaces
    scale: np.ndarray  # [N] float32, max |W[:, n]| / 127
    colsum: np.ndarray  # [N] float32: sum_k q[k, n] (an integer, exact in float32)
    packed: np.ndarray  # [N64 / 16 * K4, 16] int32: for each 16 columns, each 4 rows of K as one int32 lane
    wide_colsum: np.ndarray  # [1, N64] float32: colsum, zeros past N (the kernel's whole tiles)
    wide_scale: np.ndarray  # [1, N64] float32: scale, zeros past N

    __array_ufunc__ = None  # so that NumPy's x @ m defers to __rmatmul__

    @functools.cached_property
    def q(self):  # [K, N] int8: round(W / scale) per column
        k, n = self.shape
        blocks, k4 = self.wide_scale.shape[1] // 16, -(-k // K_GROUP)
        lanes = self.packed.view(np.int8).reshape(blocks, k4, 16, K_GROUP)
        return np.ascontiguousarray(lanes.transpose(1, 3, 0, 2).reshape(k4 * K_GROUP, blocks * 16)[:k, :n])

    @property
    def nbytes(self):
        return sum(a.nbytes for a in (self.scale, self.colsum, self.packed, self.wide_colsum, self.wide_scale))

    def __rmatmul__(self, x):  # x @ m, in minibert/bert.py
        from minibert.bert import int8_linear

        return int8_linear(x, self.q, self.scale, self.colsum)


def quantize_columns(w):  # [K, N] float32 -> [K, N] int8, [N] float32: symmetric, one scale per column
    scale = (np.abs(w).max(axis=0) / np.float32(127)).astype(np.float32)
    q = w / np.where(scale > 0, scale, np.float32(1))  # (in place from here: a load holds few copies)
    np.rint(q, out=q)
    np.clip(q, -127, 127, out=q)
    return q.astype(np.int8), scale


def int8_matrix(w):  # [K, N] float -> Int8Matrix
    return int8_matrix_from_rows(np.asarray(w).T)


def int8_matrix_from_rows(wt):  # [N, K] float (a checkpoint's [out, in] layout) -> Int8Matrix of its [K, N]
    """The same quantization as ``quantize_columns`` of ``wt.T``, bit for bit (a column's max and
    each element's rounding do not depend on the layout), without a transposed float32 copy: only
    the int8 result is transposed, into the kernel's packed form."""
    if wt.ndim != 2 or not np.isfinite(wt).all():
        raise ValueError("int8_matrix: w must be a finite 2-D matrix")
    qt, scale = quantize_columns(np.asarray(wt, dtype=np.float32).T)  # (a transposed view: no copy)
    n, k = qt.T.shape
    k4, n64 = -(-k // K_GROUP), -(-n // TILE_COLUMNS) * TILE_COLUMNS
    padded = np.zeros((n64, k4 * K_GROUP), dtype=np.int8)  # zero rows and columns add nothing
    padded[:n, :k] = qt.T
    # [N64/16, 16, K4, 4] -> [N64/16, K4, 16, 4]: the 4 bytes of one lane adjacent, 16 lanes a vector
    lanes = padded.reshape(n64 // 16, 16, k4, K_GROUP).transpose(0, 2, 1, 3)
    packed = np.ascontiguousarray(lanes).view(np.int32).reshape(n64 // 16 * k4, 16)
    colsum = qt.sum(axis=0, dtype=np.int32).astype(np.float32)
    wide_colsum, wide_scale = np.zeros((1, n64), dtype=np.float32), np.zeros((1, n64), dtype=np.float32)
    wide_colsum[0, :n], wide_scale[0, :n] = colsum, scale
    return Int8Matrix((k, n), scale, colsum, packed, wide_colsum, wide_scale)


# ---------------------------------------------------------------- NumPy twin (any CPU)


def int8_matmul_numpy(x, m):  # [M, K] float32, Int8Matrix -> [M, N] float32: the kernel's bits
    from minibert.bert import quantize_rows  # (the model to read states the rows' quantization)

    u, step, low = quantize_rows(x)
    acc = (u.astype(np.float64) @ m.q.astype(np.float64)).astype(np.int32)  # integers: exact in float64
    return (acc.astype(np.float32) * step[:, None] + low[:, None] * m.colsum) * m.scale


# ---------------------------------------------------------------- Numba kernels (AVX-512 VNNI)


@njit(cache=True, nogil=True, error_model="numpy")
def quantize_rows_u8(x, k4, lows, highs):  # [M, K] float32, K4, [M] x2 -> [M4, 4 K4] uint8, [M4, 1] step, low
    """Each row's min and max come from NumPy (its SIMD reductions are 4x a loop here, and carry a
    NaN through to the step, and so to the output, where the non-finite check finds it)."""
    m, k = x.shape
    m4 = -(-m // TILE_ROWS) * TILE_ROWS
    out = np.zeros((m4, k4 * K_GROUP), dtype=np.uint8)  # zeros past K and in the padding rows add nothing
    steps = np.zeros((m4, 1), dtype=np.float32)
    low = np.zeros((m4, 1), dtype=np.float32)
    for i in range(m):
        lo = lows[i]
        s = (highs[i] - lo) / np.float32(255)
        steps[i, 0], low[i, 0] = s, lo
        d = s if s > 0 else np.float32(1)
        for j in range(k):
            v = np.rint((x[i, j] - lo) / d)
            out[i, j] = np.uint8(min(max(v, np.float32(0)), np.float32(255)))
    return out, steps, low


@njit(cache=True, nogil=True, error_model="numpy")
def int8_tiles_into(xu, steps, lows, packed, colsum, scale, out, c0, c1):  # -> out[:, c0:c1]
    """out[:, c0:c1] <- the dequantized int32 sums of xu's rows with W's columns c0:c1 (multiples
    of TILE_COLUMNS). xu: [M4, 4 K4] uint8, viewed here as int32 [M4, K4] (4 bytes of K per lane)."""
    m4, kb = xu.shape
    k4 = kb // K_GROUP
    n64 = colsum.shape[1]
    if (
        m4 % TILE_ROWS
        or kb % K_GROUP
        or steps.shape[0] != m4
        or lows.shape[0] != m4
        or packed.shape[1] != 16
        or packed.shape[0] != n64 // 16 * k4
        or n64 % TILE_COLUMNS
        or out.shape[0] != m4
        or out.shape[1] != n64
        or scale.shape[1] != n64
        or not (0 <= c0 <= c1 <= n64)
        or c0 % TILE_COLUMNS
        or c1 % TILE_COLUMNS
        or out.strides[1] != 4
    ):  # no bounds checks inside
        raise ValueError("int8_tiles_into: shapes of x, the packed weights and out do not agree")
    x32 = xu.view(np.int32)
    for j in range(c0, c1, TILE_COLUMNS):
        b0 = j // 16 * k4  # packed row of column block j / 16 at k = 0; the next blocks k4 further
        b1, b2, b3 = b0 + k4, b0 + 2 * k4, b0 + 3 * k4
        t0, t1, t2, t3 = vload(scale, 0, j), vload(scale, 0, j + 16), vload(scale, 0, j + 32), vload(scale, 0, j + 48)
        n0, n1, n2, n3 = (
            vload(colsum, 0, j),
            vload(colsum, 0, j + 16),
            vload(colsum, 0, j + 32),
            vload(colsum, 0, j + 48),
        )
        for i in range(0, m4, TILE_ROWS):
            # the register tile, unrolled: 4 rows of x by 4 vectors of 16 columns, 16 int32 accumulators
            s0 = s1 = s2 = s3 = e0 = e1 = e2 = e3 = f0 = f1 = f2 = f3 = g0 = g1 = g2 = g3 = vzero(x32)
            for k in range(k4):
                w0, w1, w2, w3 = (
                    vload(packed, b0 + k, 0),
                    vload(packed, b1 + k, 0),
                    vload(packed, b2 + k, 0),
                    vload(packed, b3 + k, 0),
                )
                a = vsplat(x32[i, k])
                s0 = vdpbusd(s0, a, w0)
                e0 = vdpbusd(e0, a, w1)
                f0 = vdpbusd(f0, a, w2)
                g0 = vdpbusd(g0, a, w3)
                a = vsplat(x32[i + 1, k])
                s1 = vdpbusd(s1, a, w0)
                e1 = vdpbusd(e1, a, w1)
                f1 = vdpbusd(f1, a, w2)
                g1 = vdpbusd(g1, a, w3)
                a = vsplat(x32[i + 2, k])
                s2 = vdpbusd(s2, a, w0)
                e2 = vdpbusd(e2, a, w1)
                f2 = vdpbusd(f2, a, w2)
                g2 = vdpbusd(g2, a, w3)
                a = vsplat(x32[i + 3, k])
                s3 = vdpbusd(s3, a, w0)
                e3 = vdpbusd(e3, a, w1)
                f3 = vdpbusd(f3, a, w2)
                g3 = vdpbusd(g3, a, w3)
            r, z = vsplat(steps[i, 0]), vsplat(lows[i, 0])
            vstore(out, i, j, vdequant(s0, r, z, n0, t0))
            vstore(out, i, j + 16, vdequant(e0, r, z, n1, t1))
            vstore(out, i, j + 32, vdequant(f0, r, z, n2, t2))
            vstore(out, i, j + 48, vdequant(g0, r, z, n3, t3))
            r, z = vsplat(steps[i + 1, 0]), vsplat(lows[i + 1, 0])
            vstore(out, i + 1, j, vdequant(s1, r, z, n0, t0))
            vstore(out, i + 1, j + 16, vdequant(e1, r, z, n1, t1))
            vstore(out, i + 1, j + 32, vdequant(f1, r, z, n2, t2))
            vstore(out, i + 1, j + 48, vdequant(g1, r, z, n3, t3))
            r, z = vsplat(steps[i + 2, 0]), vsplat(lows[i + 2, 0])
            vstore(out, i + 2, j, vdequant(s2, r, z, n0, t0))
            vstore(out, i + 2, j + 16, vdequant(e2, r, z, n1, t1))
            vstore(out, i + 2, j + 32, vdequant(f2, r, z, n2, t2))
            vstore(out, i + 2, j + 48, vdequant(g2, r, z, n3, t3))
            r, z = vsplat(steps[i + 3, 0]), vsplat(lows[i + 3, 0])
            vstore(out, i + 3, j, vdequant(s3, r, z, n0, t0))
            vstore(out, i + 3, j + 16, vdequant(e3, r, z, n1, t1))
            vstore(out, i + 3, j + 32, vdequant(f3, r, z, n2, t2))
            vstore(out, i + 3, j + 48, vdequant(g3, r, z, n3, t3))
    return out


@njit(cache=True, nogil=True, error_model="numpy", parallel=True)
def _int8_over_threads(xu, steps, lows, packed, colsum, scale, out, threads):
    n64 = out.shape[1]
    step = -(-(n64 // TILE_COLUMNS) // threads) * TILE_COLUMNS
    for t in prange(threads):
        int8_tiles_into(xu, steps, lows, packed, colsum, scale, out, min(t * step, n64), min((t + 1) * step, n64))
    return out


@njit(cache=True, nogil=True, error_model="numpy")
def _int8_matmul(x, lows, highs, packed, colsum, scale, n, threads):  # [M, K] float32, ... -> [M, N] float32
    k4 = packed.shape[0] // (colsum.shape[1] // 16)
    if x.shape[1] > k4 * K_GROUP or x.shape[1] <= (k4 - 1) * K_GROUP or x.shape[1] == 0:
        raise ValueError("int8_matmul: x has a different number of columns than the matrix has rows")
    if lows.shape[0] != x.shape[0] or highs.shape[0] != x.shape[0]:
        raise ValueError("int8_matmul: one min and one max per row of x")
    xu, steps, low = quantize_rows_u8(x, k4, lows, highs)
    out = np.empty((xu.shape[0], colsum.shape[1]), dtype=np.float32)
    if threads > 1:
        _int8_over_threads(xu, steps, low, packed, colsum, scale, out, threads)
    else:
        int8_tiles_into(xu, steps, low, packed, colsum, scale, out, 0, colsum.shape[1])
    return out[: x.shape[0], :n]


def int8_matmul(x, m, threads=1):  # [M, K] float32, Int8Matrix, int -> [M, N] float32 (VNNI CPUs only)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"int8_matmul: x must be [M, K] with K > 0, got shape {x.shape}")
    lows, highs = x.min(axis=1), x.max(axis=1)
    return _int8_matmul(x, lows, highs, m.packed, m.wide_colsum, m.wide_scale, m.shape[1], max(int(threads), 1))
