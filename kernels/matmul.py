"""Dense layers for a few rows: ``x @ W`` when x is one short query, not a batch.

    out = x @ W          x [M, K], W [K, N] (stored [in, out], contiguous), out [M, N]

A dense layer is a matmul, and for a batch (hundreds of rows) BLAS is the right tool: it packs W
into cache-sized panels and reuses each panel across many rows of x. With M ~ 10 rows (one
~10-token query) that packing is most of the work: OpenBLAS copies every weight matrix on every
call and then uses each copied element only M times. Measured on 2 cores at M = 10: ~70 GFLOP/s
instead of ~200, and a 10-token query spends 85-90% of its time in these matmuls.

``matmul_rows`` streams W instead, once, in its stored order. For a panel of W's columns it walks
down W four rows at a time and adds their contribution into two rows of ``out`` at once. The four
W rows stay in L1 while all M rows of x use them, the ``out`` panel (M x 1,024 floats) stays in
L1/L2, and the loop over j is contiguous, so LLVM vectorises it.

Same bits as BLAS. A text's embedding must not depend on whether it was encoded alone (this
kernel) or in a batch (BLAS); two fp32 summation orders of the same sums differ by ~1e-6 relative
after six layers, which is too much. So the kernel adds the products in the order OpenBLAS does:
each output is one chain of fused multiply-adds along k, restarted at every boundary of BLAS's
K blocks, and the block results are added in order:

    acc_b = fma(x[i, k1-1], W[k1-1, j], ... fma(x[i, k0], W[k0, j], 0))     for each block [k0, k1)
    out[i, j] = ((acc_0 + acc_1) + acc_2) + ...

The block boundaries are not guessed: ``blas_k_blocks`` finds them by running NumPy's BLAS and
this kernel on the same random probe and keeping the first candidate rule that matches bit for
bit (OpenBLAS's SkylakeX kernels on this machine: blocks of 448 rows of K, the last two halved).
If none matches (another BLAS, another CPU), it says so and the query takes BLAS. The K blocks
are independent, so the cores split them (each streams its own part of W); a single block
(K <= 448), or the blocks left over, are split by rows of x. Any split gives the same bits.
"""

import numpy as np
from .jit import njit, prange

PANEL = 1024  # columns of W per pass: M x PANEL of ``out`` and 4 x PANEL of W fit in L1/L2 at M ~ 10

# Row 0 as a typed integer, not a literal 0: Numba types a literal argument as Literal[int](0) and
# compiles matmul_rows_into once more for it; with the parallel function that cost ~2 s of a first
# run with an empty Numba cache (4.5-4.8 -> 2.5-2.7 s to compile matmul_rows_split).
FIRST_ROW = np.int64(0)

# ---------------------------------------------------------------- NumPy twin (the math)


def matmul_ref(x, w):  # [M, K], [K, N] -> [M, N]
    return x @ w

# ---------------------------------------------------------------- Numba kernels


@njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
def matmul_rows_into(x, w, out, k0, k1, r0, r1):  # [M, K], [K, N], [M, N], k range, row range -> [M, N]
    """out[r0:r1] <- x[r0:r1, k0:k1] @ w[k0:k1], each output one FMA chain along k (no reassociation).
    Row views (1-D, unit stride) keep the loops over columns vectorisable."""
    n_cols = w.shape[1]
    for p0 in range(0, n_cols, PANEL):
        p1 = min(p0 + PANEL, n_cols)
        n = p1 - p0
        for i in range(r0, r1):
            o = out[i, p0:p1]
            for j in range(n):
                o[j] = 0.0
        k = k0
        while k + 4 <= k1:
            w0, w1, w2, w3 = w[k, p0:p1], w[k + 1, p0:p1], w[k + 2, p0:p1], w[k + 3, p0:p1]
            i = r0
            while i + 2 <= r1:  # two rows of x per pass over the four rows of W
                a0, b0, c0, d0 = x[i, k], x[i, k + 1], x[i, k + 2], x[i, k + 3]
                a1, b1, c1, d1 = x[i + 1, k], x[i + 1, k + 1], x[i + 1, k + 2], x[i + 1, k + 3]
                o0, o1 = out[i, p0:p1], out[i + 1, p0:p1]
                for j in range(n):
                    u0, u1, u2, u3 = w0[j], w1[j], w2[j], w3[j]
                    s0 = o0[j] + a0 * u0  # each line one fused multiply-add, in k order
                    s1 = o1[j] + a1 * u0
                    s0 = s0 + b0 * u1
                    s1 = s1 + b1 * u1
                    s0 = s0 + c0 * u2
                    s1 = s1 + c1 * u2
                    o0[j] = s0 + d0 * u3
                    o1[j] = s1 + d1 * u3
                i += 2
            if i < r1:  # the odd row
                a0, b0, c0, d0 = x[i, k], x[i, k + 1], x[i, k + 2], x[i, k + 3]
                o0 = out[i, p0:p1]
                for j in range(n):
                    s0 = o0[j] + a0 * w0[j]
                    s0 = s0 + b0 * w1[j]
                    s0 = s0 + c0 * w2[j]
                    o0[j] = s0 + d0 * w3[j]
            k += 4
        while k < k1:  # a block length not a multiple of 4
            w0 = w[k, p0:p1]
            for i in range(r0, r1):
                a0 = x[i, k]
                o0 = out[i, p0:p1]
                for j in range(n):
                    o0[j] = o0[j] + a0 * w0[j]
            k += 1
    return out


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def check_blocks(x, w, blocks):  # raise unless blocks = [0, ..., K] cuts x's and w's shared K
    if w.shape[0] != x.shape[1]:
        raise ValueError("matmul_rows: x has a different number of columns than w has rows")
    if len(blocks) < 2 or blocks[0] != 0 or blocks[-1] != x.shape[1]:
        raise ValueError("matmul_rows: blocks must run from 0 to K")
    for b in range(len(blocks) - 1):
        if blocks[b + 1] <= blocks[b]:
            raise ValueError("matmul_rows: blocks must increase")


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def add_blocks(partial):  # [n_blocks, M, N] -> [M, N]: ((acc_0 + acc_1) + acc_2) + ..., BLAS's order
    out = partial[0]
    for b in range(1, partial.shape[0]):
        out += partial[b]
    return out  # a view of partial[0]: the other blocks are freed with it


@njit(cache=True, nogil=True, error_model="numpy")
def matmul_rows(x, w, blocks):  # [M, K], [K, N], [n_blocks + 1] -> [M, N], on the calling thread
    check_blocks(x, w, blocks)
    m = x.shape[0]
    partial = np.empty((len(blocks) - 1, m, w.shape[1]), dtype=x.dtype)
    for b in range(len(blocks) - 1):
        matmul_rows_into(x, w, partial[b], blocks[b], blocks[b + 1], FIRST_ROW, m)
    return add_blocks(partial)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def row_share(m, t, parts):  # rows of x for share t of parts: even cuts, so rows pair up as on one thread
    step = (-(-m // parts) + 1) // 2 * 2
    return min(t * step, m), min((t + 1) * step, m)


@njit(cache=True, nogil=True, error_model="numpy", parallel=True)
def blocks_over_threads(x, w, blocks, threads, partial):  # partial [n_blocks, M, N] <- each block's sums
    # Only the prange loop lives in the parallel function: Numba's parallel compilation is slow
    # (seconds), and grows with what it has to analyse.
    m = x.shape[0]
    n_blocks = len(blocks) - 1
    whole = n_blocks - n_blocks % threads
    for t in prange(threads):
        for b in range(t, whole, threads):
            matmul_rows_into(x, w, partial[b], blocks[b], blocks[b + 1], FIRST_ROW, m)
        r0, r1 = row_share(m, t, threads)
        for b in range(whole, n_blocks):
            matmul_rows_into(x, w, partial[b], blocks[b], blocks[b + 1], r0, r1)
    return partial


@njit(cache=True, nogil=True, error_model="numpy")
def matmul_rows_split(x, w, blocks, threads):  # [M, K], [K, N], [n_blocks + 1], int -> [M, N]
    """The same sums as matmul_rows, dealt to ``threads`` Numba threads: whole K blocks in turn
    (each thread streams its own parts of W), and the blocks left over when they do not divide
    evenly shared by rows of x, so that no thread waits for another."""
    check_blocks(x, w, blocks)
    partial = np.empty((len(blocks) - 1, x.shape[0], w.shape[1]), dtype=x.dtype)
    return add_blocks(blocks_over_threads(x, w, blocks, max(threads, 1), partial))

# ---------------------------------------------------------------- BLAS's summation order


def k_blocks_rule(k, q, unroll):  # int, int, int -> [n_blocks + 1]: OpenBLAS's level-3 K loop
    # driver/level3/level3.c: blocks of GEMM_Q; when less than 2 Q but more than Q remain, two
    # halves rounded up to the unroll. (GEMM_Q is 448 for SkylakeX sgemm in OpenBLAS 0.3.31.)
    bounds, start = [0], 0
    while start < k:
        size = k - start
        if size >= 2 * q:
            size = q
        elif size > q:
            size = (size // 2 + unroll - 1) // unroll * unroll
        start += size
        bounds.append(start)
    return np.array(bounds, dtype=np.int64)


CANDIDATE_Q = (448, 384, 512, 256, 320, 640, 192, 128, 768, 1024)  # GEMM_Q values of OpenBLAS's kernels
CANDIDATE_UNROLL = (1, 2, 4, 8, 16, 32)
_found = {}  # (K, dtype) -> blocks or None


def blas_k_blocks(k, n, dtype, split=False):  # int, int, dtype, bool -> [n_blocks + 1] or None
    """The K blocks with which NumPy's BLAS sums a batch-sized [?, K] @ [K, N] product, found by
    experiment; None when no candidate reproduces BLAS bit for bit (then queries take BLAS too).
    Only for N a multiple of 64 (every matrix of the target models): BLAS sums a ragged last tile
    of columns with other code, placed where its thread split puts it. ``split``: probe with
    matmul_rows_split (the kernel the caller is about to use: compiling the other one too would
    add ~1 s to a first run with an empty Numba cache)."""
    if n % 64:
        return None
    key = (int(k), np.dtype(dtype).str)
    if key not in _found:
        _found[key] = _probe(int(k), np.dtype(dtype), split)
    return _found[key]


def _probe(k, dtype, split):
    rng = np.random.default_rng(k)
    # Batch-sized: M * N * K well above the ~1e6 below which OpenBLAS takes its small-matrix kernel.
    n = 128
    m = max(16, -(-2_000_000 // (n * k)))
    x = rng.standard_normal((m, k)).astype(dtype)
    w = rng.standard_normal((k, n)).astype(dtype)
    want = x @ w
    tried = set()
    for q in CANDIDATE_Q:
        for unroll in CANDIDATE_UNROLL:
            blocks = k_blocks_rule(k, q, unroll)
            if tuple(blocks) in tried:
                continue
            tried.add(tuple(blocks))
            got = matmul_rows_split(x, w, blocks, 1) if split else matmul_rows(x, w, blocks)
            if np.array_equal(got, want):
                return blocks
    return None
