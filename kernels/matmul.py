"""Dense layers for a few rows: ``x @ W`` when x is one short query, not a batch.

    out = x @ W          x [M, K], W [K, N] (stored [in, out], contiguous), out [M, N]

A dense layer is a matmul, and for a batch (hundreds of rows) BLAS is the right tool: it packs W
into cache-sized panels and reuses each panel across many rows of x. With M ~ 10 rows (one
~10-token query) that packing is most of the work: OpenBLAS copies every weight matrix on every
call and then uses each copied element only M times. Measured on 2 cores at M = 10: ~70 GFLOP/s
instead of ~200, and a 10-token query spends 85-90% of its time in these matmuls.

``matmul_rows`` streams W instead, once, in its stored order. For a panel of W's columns it walks
down W four rows at a time and adds their contribution into two rows of ``out`` at once:

    out[i, j] += x[i, k] W[k, j] + x[i, k+1] W[k+1, j] + x[i, k+2] W[k+2, j] + x[i, k+3] W[k+3, j]

The four W rows stay in L1 while all M rows of x use them, the ``out`` panel (M x 1,024 floats)
stays in L1/L2, and the loop over j is contiguous, so LLVM vectorises it (one FMA per W element
per row of x, four per load-and-store of ``out``). The cores split K, not N: W's rows are cut into
K_PARTS fixed slices, each summed into its own partial ``out``, and the partials are added at the
end in a fixed order; ``matmul_rows`` runs the slices on the calling thread, ``matmul_rows_split``
deals them to Numba's threads, with bit-identical results. Each thread streams a contiguous part
of W. (Splitting N instead made the two threads slower than one: on the FFN output matrix,
[3072, 768], they read the two halves of the same rows. Splitting K was ~2x faster.)

Rounding: every product is rounded to fp32 and summed in fp32 in a different order than BLAS's
(groups of four, then across panels of K), as BLAS's own order differs from torch's. The error is
the size of BLAS's (checked in the tests against a float64 product; tolerance there).
"""

import numpy as np
from numba import njit, prange

PANEL = 1024  # columns of W per pass: M x PANEL of ``out`` and 4 x PANEL of W fit in L1/L2 at M ~ 10
# W's rows are summed in this many fixed slices, each into its own partial result, whether one
# thread runs them or several: a result never depends on how many threads computed it.
K_PARTS = 4

# ---------------------------------------------------------------- NumPy twin (the math)


def matmul_ref(x, w):  # [M, K], [K, N] -> [M, N]
    return x @ w

# ---------------------------------------------------------------- Numba kernels


@njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
def matmul_rows_into(x, w, out, k0, k1):  # [M, K], [K, N], [M, N], int, int -> [M, N]
    """out <- x[:, k0:k1] @ w[k0:k1]. Row views (1-D, unit stride) keep the inner loops vectorisable."""
    m = x.shape[0]
    n_cols = w.shape[1]
    for p0 in range(0, n_cols, PANEL):
        p1 = min(p0 + PANEL, n_cols)
        n = p1 - p0
        for i in range(m):
            o = out[i, p0:p1]
            for j in range(n):
                o[j] = 0.0
        k = k0
        while k + 4 <= k1:
            w0, w1, w2, w3 = w[k, p0:p1], w[k + 1, p0:p1], w[k + 2, p0:p1], w[k + 3, p0:p1]
            i = 0
            while i + 2 <= m:  # two rows of x per pass over the four rows of W
                a0, b0, c0, d0 = x[i, k], x[i, k + 1], x[i, k + 2], x[i, k + 3]
                a1, b1, c1, d1 = x[i + 1, k], x[i + 1, k + 1], x[i + 1, k + 2], x[i + 1, k + 3]
                o0, o1 = out[i, p0:p1], out[i + 1, p0:p1]
                for j in range(n):
                    u0, u1, u2, u3 = w0[j], w1[j], w2[j], w3[j]
                    o0[j] += a0 * u0 + b0 * u1 + c0 * u2 + d0 * u3
                    o1[j] += a1 * u0 + b1 * u1 + c1 * u2 + d1 * u3
                i += 2
            if i < m:  # the odd row
                a0, b0, c0, d0 = x[i, k], x[i, k + 1], x[i, k + 2], x[i, k + 3]
                o0 = out[i, p0:p1]
                for j in range(n):
                    o0[j] += a0 * w0[j] + b0 * w1[j] + c0 * w2[j] + d0 * w3[j]
            k += 4
        while k < k1:  # K not a multiple of 4
            w0 = w[k, p0:p1]
            for i in range(m):
                a0 = x[i, k]
                o0 = out[i, p0:p1]
                for j in range(n):
                    o0[j] += a0 * w0[j]
            k += 1
    return out


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def k_slice(k, p):  # int, int -> (k0, k1): W's rows in slice p of K_PARTS, a multiple of 4 long
    step = (-(-k // K_PARTS) + 3) // 4 * 4  # ceil(k / K_PARTS), rounded up to a multiple of 4
    return min(p * step, k), min((p + 1) * step, k)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def sum_parts(partial):  # [K_PARTS, M, N] -> [M, N], always in the same order
    out = partial[0]
    for p in range(1, K_PARTS):
        out += partial[p]
    return out  # a view of partial[0]: the other parts are freed with it


@njit(cache=True, nogil=True, error_model="numpy")
def matmul_rows(x, w):  # [M, K], [K, N] -> [M, N], on the calling thread
    if w.shape[0] != x.shape[1]:
        raise ValueError("matmul_rows: x has a different number of columns than w has rows")
    partial = np.empty((K_PARTS, x.shape[0], w.shape[1]), dtype=x.dtype)
    for p in range(K_PARTS):
        k0, k1 = k_slice(x.shape[1], p)
        matmul_rows_into(x, w, partial[p], k0, k1)
    return sum_parts(partial)


@njit(cache=True, nogil=True, error_model="numpy", parallel=True)
def matmul_rows_split(x, w):  # [M, K], [K, N] -> [M, N], the same sums, the slices over Numba's threads
    if w.shape[0] != x.shape[1]:
        raise ValueError("matmul_rows: x has a different number of columns than w has rows")
    partial = np.empty((K_PARTS, x.shape[0], w.shape[1]), dtype=x.dtype)
    for p in prange(K_PARTS):
        k0, k1 = k_slice(x.shape[1], p)
        matmul_rows_into(x, w, partial[p], k0, k1)
    return sum_parts(partial)
