"""Dense layers for a few rows: ``x @ W`` when x is one short query, not a batch.

    out = x @ W          x [M, K], W [K, N] (stored [in, out], contiguous), out [M, N]

A dense layer is a matmul, and for a batch (hundreds of rows) BLAS is the right tool: it packs W
into cache-sized panels and reuses each panel across many rows of x. With M ~ 10 rows (one
~10-token query) that packing is most of the work: OpenBLAS copies every weight matrix on every
call and then uses each copied element only M times, so a short query spends most of its time in
these copies.

``matmul_rows`` streams W instead, once, in its stored order, in sub-blocks of SUB_K rows (W's
rows are contiguous, so a sub-block is one contiguous stretch of memory). Within a sub-block it
walks the columns one tile of 4 vectors (64 float32) at a time, and for each group of 4 rows of x
keeps the 4 x 4 vectors of ``out`` in registers (kernels/simd.py) while it goes down the sub-block's
k: per k, 4 loads of W and 4 broadcasts of x feed 16 fused multiply-adds. The tile of W (4 KiB)
stays in L1 for the other row groups. While it computes one sub-block it asks for the next
one, in address order, into L2 (``prefetch_l2``): W comes from memory for a large model (DistilBERT's
layers are several times a typical L3), and without the hint the core waits for it instead of
computing meanwhile.

Same bits as BLAS. A text's embedding must not depend on whether it was encoded alone (this
kernel) or in a batch (BLAS); two fp32 summation orders of the same sums differ by ~1e-6 relative
after six layers, which is too much. So the kernel adds the products in the order OpenBLAS does:
each output is one chain of fused multiply-adds along k, restarted at every boundary of BLAS's
K blocks, and the block results are added in order:

    acc_b = fma(x[i, k1-1], W[k1-1, j], ... fma(x[i, k0], W[k0, j], 0))     for each block [k0, k1)
    out[i, j] = ((acc_0 + acc_1) + acc_2) + ...

(Storing a running sum between sub-blocks and loading it back is exact, so sub-blocks change nothing.)
The block boundaries are not guessed: ``blas_k_blocks`` finds them by running NumPy's BLAS and
this kernel on the same random probe and keeping the first candidate rule that matches bit for
bit (OpenBLAS's SkylakeX kernels on this machine: blocks of 448 rows of K, the last two halved).
If none matches (another BLAS, another CPU), it says so and the query takes BLAS. The K blocks
are independent, so the cores split them (each streams its own part of W); a single block
(K <= 448), or the blocks left over, are split by columns. Any split gives the same bits.
"""

import numpy as np

from .jit import njit, prange
from .simd import VECTOR_BYTES, fma, prefetch_l2, vfma, vload, vsplat, vstore, vzero

# Column 0 as a typed integer, not a literal 0: Numba types a literal argument as Literal[int](0) and
# compiles the kernel once more for it, seconds of a first run with an empty Numba cache.
FIRST_COLUMN = np.int64(0)

TILE_ROWS = 4  # rows of x per register tile (x is padded with zero rows to a multiple of 4)
TILE_VECTORS = 4  # vectors of out per tile row: 4 x 16 float32 = 64 columns, 4 cache lines of each W row
SUB_K = 16  # rows of W per sub-block: the fastest of 8-64 with W coming from memory (benchmarks/NOTES.md)

# ---------------------------------------------------------------- Numba kernels


@njit(cache=True, nogil=True, error_model="numpy")
def matmul_tiles_into(x, w, out, k0, k1, c0, c1, block, part):  # [M4, K], [K, N], [M4, N], ranges, int, [M4, N]
    """out[:, c0:c1] <- x[:, k0:k1] @ w[k0:k1, c0:c1]. M4, the rows of x, is a multiple of TILE_ROWS.
    ``block`` 0: each output is one FMA chain along k (no reassociation), as BLAS sums a K block
    (``part`` unused). Else one chain per ``block`` rows of W (a multiple of SUB_K), carried in
    ``part``, each chain added to the sum of those before it in ``out``: nearer the exact sum, for
    matmul_batch, which need not copy BLAS's order."""
    if (
        x.shape[0] % TILE_ROWS
        or x.shape[1] != w.shape[0]
        or out.shape[0] != x.shape[0]
        or out.shape[1] != w.shape[1]
        or w.strides[1] != w.itemsize
        or out.strides[1] != out.itemsize
        or not (0 <= k0 <= k1 <= w.shape[0] and 0 <= c0 <= c1 <= w.shape[1])
        or block < 0
        or block % SUB_K
        or part.shape[0] != out.shape[0]
        or part.shape[1] != out.shape[1]
        or part.strides[1] != part.itemsize
    ):  # no bounds checks inside
        raise ValueError(
            "matmul_tiles_into: x needs a multiple of 4 rows and w's rows as columns, out x's rows "
            "and w's columns (both with contiguous rows), and the k and column ranges must lie within w"
        )
    lanes = VECTOR_BYTES // w.itemsize
    tile = TILE_VECTORS * lanes  # columns per register tile
    unit = np.ones(1, dtype=w.dtype)[0]
    zero = unit - unit
    width = c1 - c0
    whole = c0 + width // tile * tile  # columns in whole tiles; the rest (none in the target models) scalar
    for i in range(x.shape[0]):  # (loops, not slice assignments: those cost ~3 s of compile time)
        for j in range(whole, c1):
            out[i, j] = 0
            part[i, j] = 0
    # fmt: off  (the register tile: one line per row of x, its four vectors side by side)
    for kk in range(k0, k1, SUB_K):
        ke = min(kk + SUB_K, k1)
        starts = block == 0 or (kk - k0) % block == 0  # a chain starts here (from 0, or BLAS's running sum)
        ends = block == 0 or ke == k1 or (ke - k0) % block == 0  # ... and ends here
        first = block == 0 or kk - k0 < block  # in the first chain: nothing to add it to yet
        acc = out if block == 0 or ends else part  # where the running chain is kept between sub-blocks
        ahead = min(ke + SUB_K, k1) - ke  # rows of the next sub-block, fetched while this one is computed
        pr, pc = 0, c0  # next line to prefetch: row ke + pr, column pc
        for j in range(c0, whole, tile):
            for i in range(0, x.shape[0], TILE_ROWS):
                src = out if block == 0 else part
                if (kk == k0) if block == 0 else starts:
                    c00 = c01 = c02 = c03 = c10 = c11 = c12 = c13 = vzero(out)
                    c20 = c21 = c22 = c23 = c30 = c31 = c32 = c33 = vzero(out)
                else:
                    c00, c01, c02, c03 = (
                        vload(src, i, j),
                        vload(src, i, j + lanes),
                        vload(src, i, j + 2 * lanes),
                        vload(src, i, j + 3 * lanes),
                    )
                    c10, c11, c12, c13 = (
                        vload(src, i + 1, j),
                        vload(src, i + 1, j + lanes),
                        vload(src, i + 1, j + 2 * lanes),
                        vload(src, i + 1, j + 3 * lanes),
                    )
                    c20, c21, c22, c23 = (
                        vload(src, i + 2, j),
                        vload(src, i + 2, j + lanes),
                        vload(src, i + 2, j + 2 * lanes),
                        vload(src, i + 2, j + 3 * lanes),
                    )
                    c30, c31, c32, c33 = (
                        vload(src, i + 3, j),
                        vload(src, i + 3, j + lanes),
                        vload(src, i + 3, j + 2 * lanes),
                        vload(src, i + 3, j + 3 * lanes),
                    )
                for k in range(kk, ke):
                    if i == 0 and pr < ahead:  # one tile's worth (4 cache lines) of the next sub-block
                        for line in range(TILE_VECTORS):
                            prefetch_l2(w, ke + pr, pc + line * lanes)
                        pc += tile
                        if pc >= c1:
                            pc -= width
                            pr += 1
                    w0, w1, w2, w3 = (
                        vload(w, k, j),
                        vload(w, k, j + lanes),
                        vload(w, k, j + 2 * lanes),
                        vload(w, k, j + 3 * lanes),
                    )
                    a = vsplat(x[i, k])  # each line: four fused multiply-adds, one row of x, in k order
                    c00, c01, c02, c03 = vfma(a, w0, c00), vfma(a, w1, c01), vfma(a, w2, c02), vfma(a, w3, c03)
                    a = vsplat(x[i + 1, k])
                    c10, c11, c12, c13 = vfma(a, w0, c10), vfma(a, w1, c11), vfma(a, w2, c12), vfma(a, w3, c13)
                    a = vsplat(x[i + 2, k])
                    c20, c21, c22, c23 = vfma(a, w0, c20), vfma(a, w1, c21), vfma(a, w2, c22), vfma(a, w3, c23)
                    a = vsplat(x[i + 3, k])
                    c30, c31, c32, c33 = vfma(a, w0, c30), vfma(a, w1, c31), vfma(a, w2, c32), vfma(a, w3, c33)
                if block and ends and not first:  # the chain added to the sum so far: 1 * c + out, one rounding
                    one = vsplat(unit)
                    c00, c01 = vfma(c00, one, vload(out, i, j)), vfma(c01, one, vload(out, i, j + lanes))
                    c02, c03 = (
                        vfma(c02, one, vload(out, i, j + 2 * lanes)),
                        vfma(c03, one, vload(out, i, j + 3 * lanes)),
                    )
                    c10, c11 = vfma(c10, one, vload(out, i + 1, j)), vfma(c11, one, vload(out, i + 1, j + lanes))
                    c12, c13 = (
                        vfma(c12, one, vload(out, i + 1, j + 2 * lanes)),
                        vfma(c13, one, vload(out, i + 1, j + 3 * lanes)),
                    )
                    c20, c21 = vfma(c20, one, vload(out, i + 2, j)), vfma(c21, one, vload(out, i + 2, j + lanes))
                    c22, c23 = (
                        vfma(c22, one, vload(out, i + 2, j + 2 * lanes)),
                        vfma(c23, one, vload(out, i + 2, j + 3 * lanes)),
                    )
                    c30, c31 = vfma(c30, one, vload(out, i + 3, j)), vfma(c31, one, vload(out, i + 3, j + lanes))
                    c32, c33 = (
                        vfma(c32, one, vload(out, i + 3, j + 2 * lanes)),
                        vfma(c33, one, vload(out, i + 3, j + 3 * lanes)),
                    )
                (
                    vstore(acc, i, j, c00),
                    vstore(acc, i, j + lanes, c01),
                    vstore(acc, i, j + 2 * lanes, c02),
                    vstore(acc, i, j + 3 * lanes, c03),
                )
                (
                    vstore(acc, i + 1, j, c10),
                    vstore(acc, i + 1, j + lanes, c11),
                    vstore(acc, i + 1, j + 2 * lanes, c12),
                    vstore(acc, i + 1, j + 3 * lanes, c13),
                )
                (
                    vstore(acc, i + 2, j, c20),
                    vstore(acc, i + 2, j + lanes, c21),
                    vstore(acc, i + 2, j + 2 * lanes, c22),
                    vstore(acc, i + 2, j + 3 * lanes, c23),
                )
                (
                    vstore(acc, i + 3, j, c30),
                    vstore(acc, i + 3, j + lanes, c31),
                    vstore(acc, i + 3, j + 2 * lanes, c32),
                    vstore(acc, i + 3, j + 3 * lanes, c33),
                )
        for i in range(x.shape[0]):  # columns past the last whole tile: the same chain, one output at a time
            for j in range(whole, c1):
                if block == 0:
                    s = out[i, j]
                else:
                    s = zero if starts else part[i, j]
                for k in range(kk, ke):
                    s = fma(x[i, k], w[k, j], s)
                if block and ends and not first:
                    s = out[i, j] + s
                if block and not ends:
                    part[i, j] = s
                else:
                    out[i, j] = s
    # fmt: on
    return out


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def check_blocks(x, w, blocks):  # raise unless blocks = [0, ..., K] cuts x's and w's shared K
    if w.shape[0] != x.shape[1]:
        raise ValueError("matmul_rows: x has a different number of columns than w has rows")
    if w.strides[1] != w.itemsize:
        raise ValueError("matmul_rows: w's rows must be contiguous (vector loads); pass np.ascontiguousarray(w)")
    if len(blocks) < 2 or blocks[0] != 0 or blocks[-1] != x.shape[1]:
        raise ValueError("matmul_rows: blocks must run from 0 to K")
    for b in range(len(blocks) - 1):
        if blocks[b + 1] <= blocks[b]:
            raise ValueError("matmul_rows: blocks must increase")


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def padded_rows(x):  # [M, K] -> [M4, K]: x and zero rows up to a multiple of TILE_ROWS (their sums are dropped)
    m = x.shape[0]
    padded = np.zeros((-(-m // TILE_ROWS) * TILE_ROWS, x.shape[1]), dtype=x.dtype)
    for i in range(m):
        for k in range(x.shape[1]):
            padded[i, k] = x[i, k]
    return padded


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def add_blocks(partial, m):  # [n_blocks, M4, N], int -> [M, N]: ((acc_0 + acc_1) + acc_2) + ..., BLAS's order
    out = partial[0]
    for b in range(1, partial.shape[0]):
        out += partial[b]
    return out[:m]  # a view of partial[0]: the other blocks are freed with it


@njit(cache=True, nogil=True, error_model="numpy")
def matmul_rows(x, w, blocks):  # [M, K], [K, N], [n_blocks + 1] -> [M, N], on the calling thread
    check_blocks(x, w, blocks)
    xp = padded_rows(x)
    partial = np.empty((len(blocks) - 1, xp.shape[0], w.shape[1]), dtype=x.dtype)
    for b in range(len(blocks) - 1):
        matmul_tiles_into(xp, w, partial[b], blocks[b], blocks[b + 1], FIRST_COLUMN, w.shape[1], 0, partial[b])
    return add_blocks(partial, x.shape[0])


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def column_share(n, t, parts, tile):  # columns of W for share t of parts: whole register tiles each
    tiles = -(-n // tile)  # a partial last tile counts as one
    step = -(-tiles // parts) * tile
    return min(t * step, n), min((t + 1) * step, n)


@njit(cache=True, nogil=True, error_model="numpy", parallel=True)
def blocks_over_threads(x, w, blocks, threads, partial):  # partial [n_blocks, M4, N] <- each block's sums
    # Only the prange loop lives in the parallel function: Numba's parallel compilation is slow
    # (seconds), and grows with what it has to analyse.
    n, n_blocks = w.shape[1], len(blocks) - 1
    whole = n_blocks - n_blocks % threads
    for t in prange(threads):
        for b in range(t, whole, threads):
            matmul_tiles_into(x, w, partial[b], blocks[b], blocks[b + 1], FIRST_COLUMN, n, 0, partial[b])
        c0, c1 = column_share(n, t, threads, TILE_VECTORS * VECTOR_BYTES // w.itemsize)
        for b in range(whole, n_blocks):
            matmul_tiles_into(x, w, partial[b], blocks[b], blocks[b + 1], c0, c1, 0, partial[b])
    return partial


@njit(cache=True, nogil=True, error_model="numpy")
def matmul_rows_split(x, w, blocks, threads):  # [M, K], [K, N], [n_blocks + 1], int -> [M, N]
    """The same sums as matmul_rows, dealt to ``threads`` Numba threads: whole K blocks in turn
    (each thread streams its own parts of W), and the blocks left over when they do not divide
    evenly shared by columns of W, so that no thread waits for another."""
    check_blocks(x, w, blocks)
    xp = padded_rows(x)
    partial = np.empty((len(blocks) - 1, xp.shape[0], w.shape[1]), dtype=x.dtype)
    return add_blocks(blocks_over_threads(xp, w, blocks, max(threads, 1), partial), x.shape[0])


# ---------------------------------------------------------------- a batch without BLAS

BATCH_ROWS = 32  # rows of x per pass over W: their [BATCH_ROWS, N] sums stay in L2 while W streams by
# Each output of a batch is one FMA chain per K_BLOCK of K, the chains added in order. One chain along
# all of K drifts from the exact sum about twice as far as BLAS; chains of 128 land nearer than BLAS.
K_BLOCK = 128


@njit(cache=True, nogil=True, error_model="numpy")
def matmul_batch(x, w):  # [M, K], [K, N] -> [M, N], on the calling thread
    """x @ W for a batch, where NumPy's BLAS does not use the CPU's widest vectors (its AVX2
    kernels on an AVX-512 CPU). A row's sums use only that row, in an order fixed by K alone: its
    bits do not depend on the other rows, how many there are, or how the columns are shared
    between threads, so a text gets the same bits alone or in any batch, with no BLAS order to copy."""
    check_blocks(x, w, np.array([0, x.shape[1]], dtype=np.int64))
    xp = padded_rows(x)
    out = np.empty((xp.shape[0], w.shape[1]), dtype=x.dtype)
    part = np.empty((BATCH_ROWS, w.shape[1]), dtype=x.dtype)
    for r in range(0, xp.shape[0], BATCH_ROWS):
        e = min(r + BATCH_ROWS, xp.shape[0])
        matmul_tiles_into(xp[r:e], w, out[r:e], 0, x.shape[1], FIRST_COLUMN, w.shape[1], K_BLOCK, part[: e - r])
    return out[: x.shape[0]]


@njit(cache=True, nogil=True, error_model="numpy", parallel=True)
def batch_over_threads(xp, w, out, threads):  # out [M4, N] <- xp @ w, the columns shared by threads
    n = w.shape[1]
    for t in prange(threads):
        c0, c1 = column_share(n, t, threads, TILE_VECTORS * VECTOR_BYTES // w.itemsize)
        part = np.empty((BATCH_ROWS, n), dtype=xp.dtype)
        for r in range(0, xp.shape[0], BATCH_ROWS):
            e = min(r + BATCH_ROWS, xp.shape[0])
            matmul_tiles_into(xp[r:e], w, out[r:e], 0, xp.shape[1], c0, c1, K_BLOCK, part[: e - r])
    return out


@njit(cache=True, nogil=True, error_model="numpy")
def matmul_batch_split(x, w, threads):  # [M, K], [K, N], int -> [M, N]: matmul_batch's bits, on threads
    check_blocks(x, w, np.array([0, x.shape[1]], dtype=np.int64))
    xp = padded_rows(x)
    out = np.empty((xp.shape[0], w.shape[1]), dtype=x.dtype)
    return batch_over_threads(xp, w, out, max(threads, 1))[: x.shape[0]]


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


ROW_TILES = (1, 2, 4, 6, 8, 12, 16, 24, 32)  # candidates for blas_row_tile; each divides 192
_row_tile = {}  # dtype -> int or None


def blas_row_tile(dtype=np.float32):  # dtype -> int or None
    """The row tile t of NumPy's BLAS, found by experiment: a row of a batch-sized x @ W gets the same
    bits in any call where it sits at the same place in a whole tile of t rows (tiles counted from
    row 0). minibert's identical-bits batch invariance rests on it: a batch is one matmul over its
    texts' rows. Call it with BLAS on one thread (minibert's workers run BLAS so): on two, the
    split of the rows between threads moves them.
    - 1: a row's bits never depend on the other rows: OpenBLAS's AVX-512 ("SkylakeX") kernels, as
      on the machines this was written on.
    - 12 (float32) or 2 (float64): OpenBLAS's AVX2 ("Haswell") kernels, chosen on CPUs with AVX2
      but not AVX-512. They sum a row by its place in the tile, and the rows past the last whole
      tile with other code. The encoder then starts each text on a tile boundary
      (minibert/encoder.py, ``tile_layout``).
    - None: no candidate gives the same bits (then a text's embedding may move with its batch by
      ~1e-6)."""
    key = np.dtype(dtype).str
    if key not in _row_tile:
        rng = np.random.default_rng(7)
        x = rng.standard_normal((192, 256)).astype(dtype)
        w = rng.standard_normal((256, 128)).astype(dtype)
        full = x @ w
        _row_tile[key] = None
        for t in ROW_TILES:
            n = -(-40 // t) * t  # >= 40 rows: M * N * K > 1e6, past OpenBLAS's small-matrix kernel
            slices = ((t, t + n), (0, n + t), (3 * t, 3 * t + n + 2 * t), (0, 192))
            if all(np.array_equal(x[a:b] @ w, full[a:b]) for a, b in slices):
                _row_tile[key] = t
                break
    return _row_tile[key]


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
