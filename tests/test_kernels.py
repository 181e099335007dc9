"""Each Numba kernel against the model to read (minibert/bert.py, run in float64), on random shapes.

Tolerances: float64 agrees to 1e-12 relative (only summation order differs); float32 to 2e-6
relative, a few fp32 ulps of the values involved. The NumPy mirrors that run before Numba starts
are held to the kernels' own bits (at the end of this file).
"""

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minibert import bert, threads
from minibert.kernels import (
    POOLING_MODES,
    attention_packed,
    bias_act,
    pool,
    residual_layer_norm,
    residual_layer_norm_numpy,
    unpack,
)
from minibert.kernels.activations import ACTIVATIONS
from minibert.kernels.matmul import (
    blas_k_blocks,
    blas_row_tile,
    k_blocks_rule,
    matmul_batch,
    matmul_batch_split,
    matmul_rows,
    matmul_rows_split,
    matmul_tiles_into,
)

TOL = {np.float32: 2e-6, np.float64: 1e-12}
dtypes = st.sampled_from([np.float32, np.float64])
lengths_st = st.lists(st.integers(1, 40), min_size=1, max_size=6)


def bias_act_oracle(h, bias, activation):  # [N, F], [F], str -> [N, F]: bert.py's activation of h + bias
    return bert.ACTIVATIONS[activation](h + bias)


def residual_layer_norm_oracle(x, bias, residual, gamma, beta, eps):  # bert.layer_norm(x + bias + residual)
    return bert.layer_norm(x + bias + residual, gamma, beta, eps)


def close(fast, ref, dtype, scale=None):
    scale = np.abs(ref).max() if scale is None else scale
    err = np.abs(np.asarray(fast, np.float64) - np.asarray(ref, np.float64)).max() / max(scale, 1e-30)
    assert err <= TOL[dtype], f"relative error {err:.3g} > {TOL[dtype]:g}"


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 50),
    f=st.integers(1, 300),
    act=st.sampled_from(sorted(ACTIVATIONS)),
    dtype=dtypes,
    seed=st.integers(0, 2**31),
)
def test_bias_act_matches_the_model(n, f, act, dtype, seed):
    rng = np.random.default_rng(seed)
    h = (rng.standard_normal((n, f)) * 3).astype(dtype)
    b = rng.standard_normal(f).astype(dtype)
    ref = bias_act_oracle(h.astype(np.float64), b.astype(np.float64), act)
    fast = bias_act(h.copy(), b, ACTIVATIONS[act])
    assert fast.dtype == dtype
    # Scale: the inputs' size. GELU(x) for x < -5 is ~1e-7 from 1 + tanh(z) cancelling, so a lone
    # such value, judged against itself, magnifies one ulp of tanh into 1e-9.
    close(fast, ref, dtype, scale=max(np.abs(ref).max(), np.abs(h.astype(np.float64) + b).max()))


def test_gelu_forms_differ_where_it_matters():
    # Using the tanh form where erf is configured is a real bug: it must be visible above fp32 noise.
    x = np.linspace(-4, 4, 1001)
    zero = np.zeros(1)
    diff = np.abs(bias_act_oracle(x, zero, "gelu_erf") - bias_act_oracle(x, zero, "gelu_tanh")).max()
    assert 1e-4 < diff < 1e-2
    assert bias_act_oracle(np.array([0.0, 1.0, -1.0]), zero, "gelu_erf") == pytest.approx(
        [0.0, 0.8413447460685429, -0.15865525393145707]
    )


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 40),
    d=st.integers(2, 200),
    dtype=dtypes,
    eps=st.sampled_from([1e-12, 1e-5]),
    seed=st.integers(0, 2**31),
)
def test_residual_layer_norm_matches_the_model(n, d, dtype, eps, seed):
    rng = np.random.default_rng(seed)
    x, r = (rng.standard_normal((2, n, d)) * 2).astype(dtype)
    bias, gamma, beta = rng.standard_normal((3, d)).astype(dtype)
    ref = residual_layer_norm_oracle(*(a.astype(np.float64) for a in (x, bias, r, gamma, beta)), eps)
    out = residual_layer_norm(x, bias, r, gamma, beta, eps, np.empty_like(x))
    close(out, ref, dtype)
    # in place on the residual (how the encoder calls it) gives the same
    r2 = r.copy()
    residual_layer_norm(x, bias, r2, gamma, beta, eps, r2)
    np.testing.assert_array_equal(r2, out)


def test_layer_norm_eps_is_used():
    # a constant row has zero variance: the output is beta, and eps decides how close we get to it
    x = np.full((1, 8), 3.0) + np.arange(8) * 1e-7
    g, b, z = np.ones(8), np.zeros(8), np.zeros(8)
    a = residual_layer_norm(x, z, np.zeros_like(x), g, b, 1e-12, np.empty_like(x))
    c = residual_layer_norm(x, z, np.zeros_like(x), g, b, 1e-5, np.empty_like(x))
    assert np.abs(a - c).max() > 0.1


@settings(max_examples=30, deadline=None)
@given(
    lengths=lengths_st,
    heads=st.sampled_from([1, 2, 4]),
    dh=st.sampled_from([1, 4, 8, 16]),
    dtype=dtypes,
    seed=st.integers(0, 2**31),
)
def test_attention_packed_matches_the_model(lengths, heads, dh, dtype, seed):
    rng = np.random.default_rng(seed)
    D = heads * dh
    qkv = (rng.standard_normal((sum(lengths), 3 * D)) * 2).astype(dtype)
    offsets = np.cumsum([0] + lengths).astype(np.int64)
    out = attention_packed(qkv, offsets, heads, np.empty((len(qkv), D), dtype))
    close(out, attention_oracle(qkv, offsets, heads), dtype)


def attention_oracle(
    qkv, offsets, heads
):  # [N, 3D], [B + 1], int -> [N, D]: bert.attention text by text, head by head, in float64
    out = []
    for b in range(len(offsets) - 1):
        q, k, v = np.split(qkv[offsets[b] : offsets[b + 1]].astype(np.float64), 3, axis=-1)
        out.append(
            np.concatenate(
                [bert.attention(*h) for h in zip(*(np.split(a, heads, axis=-1) for a in (q, k, v)))], axis=-1
            )
        )
    return np.concatenate(out)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_attention_heads_in_rounds(dtype, monkeypatch):
    # Long texts take their heads a few at a time (scores kept near L2's size); the rounds must
    # change nothing: the model agrees, and so does the same call done in one round.
    from minibert.kernels import attention

    rng = np.random.default_rng(7)
    lengths, heads, dh = [300, 300, 9], 6, 8
    qkv = (rng.standard_normal((sum(lengths), 3 * heads * dh)) * 2).astype(dtype)
    offsets = np.cumsum([0] + lengths).astype(np.int64)
    out = attention.attention_packed(qkv, offsets, heads, np.empty((len(qkv), heads * dh), dtype))
    assert 2 * 300 * 300 * qkv.itemsize * heads > attention.SCORES_BYTES  # several rounds were taken
    close(out, attention_oracle(qkv, offsets, heads), dtype)
    monkeypatch.setattr(attention, "SCORES_BYTES", 1 << 40)
    one_round = attention.attention_packed(qkv, offsets, heads, np.empty((len(qkv), heads * dh), dtype))
    np.testing.assert_array_equal(out, one_round)


def test_attention_edge_cases():
    rng = np.random.default_rng(1)
    qkv = rng.standard_normal((5, 12)).astype(np.float32)
    offsets = np.array([0, 2, 2, 5])  # an empty text in the middle: nothing to attend, no error
    out = attention_packed(qkv, offsets, 2, np.empty((5, 4), np.float32))
    np.testing.assert_array_equal(out[:2], attention_packed(qkv[:2], np.array([0, 2]), 2, np.empty((2, 4), np.float32)))
    with pytest.raises(ValueError, match="C-contiguous"):
        attention_packed(qkv, offsets, 2, np.empty((4, 5), np.float32).T)
    with pytest.raises(ValueError, match=r"\[5, 4\]"):
        attention_packed(qkv, offsets, 2, np.empty((5, 3), np.float32))
    with pytest.raises(ValueError, match="multiple of n_heads=3"):
        attention_packed(qkv, offsets, 3, np.empty((5, 4), np.float32))
    with pytest.raises(ValueError, match=r"\[N, 3D\]"):
        attention_packed(qkv[:, :11], offsets, 1, np.empty((5, 4), np.float32))


def test_attention_never_mixes_texts():
    # changing one text's tokens must leave every other text's output bit-identical
    rng = np.random.default_rng(0)
    qkv = rng.standard_normal((9, 3 * 8))
    offsets = np.array([0, 4, 9])
    a = attention_packed(qkv, offsets, 2, np.empty((9, 8)))
    qkv2 = qkv.copy()
    qkv2[4:] = rng.standard_normal((5, 24))
    b = attention_packed(qkv2, offsets, 2, np.empty((9, 8)))
    np.testing.assert_array_equal(a[:4], b[:4])
    assert not np.allclose(a[4:], b[4:])


@settings(max_examples=40, deadline=None)
@given(
    lengths=lengths_st,
    d=st.integers(1, 64),
    mode=st.sampled_from(POOLING_MODES),
    dtype=dtypes,
    seed=st.integers(0, 2**31),
)
def test_pool_matches_the_model(lengths, d, mode, dtype, seed):
    rng = np.random.default_rng(seed)
    packed = (rng.standard_normal((sum(lengths), d)) * 3).astype(dtype)
    offsets = np.cumsum([0] + lengths).astype(np.int64)
    out = pool(packed, offsets, mode)
    assert out.shape == (len(lengths), d) and out.dtype == dtype
    want = [bert.pool(packed[offsets[b] : offsets[b + 1]].astype(np.float64), mode) for b in range(len(lengths))]
    close(out, np.stack(want), dtype)


def test_pool_padded_excludes_padding():
    # sentence-transformers' padded form (the NumPy mirror's): a huge pad value would show any leak.
    from minibert.kernels import pool_padded

    rng = np.random.default_rng(5)
    lengths = [3, 1, 7]
    packed = rng.standard_normal((sum(lengths), 4))
    offsets = np.cumsum([0] + lengths).astype(np.int64)
    padded, mask = unpack(packed, offsets, fill=1e6)
    for mode in POOLING_MODES:
        np.testing.assert_allclose(
            pool_padded(padded, mask, mode), pool(packed, offsets, mode), rtol=1e-13, err_msg=mode
        )


def test_pool_modes_by_hand():
    tokens = np.array([[1.0, 2.0], [3.0, -4.0], [5.0, 0.0]])
    offsets = np.array([0, 3])
    expect = {
        "cls": [1, 2],
        "lasttoken": [5, 0],
        "mean": [3, -2 / 3],
        "max": [5, 2],
        "mean_sqrt_len_tokens": [9 / np.sqrt(3), -2 / np.sqrt(3)],
        "weightedmean": [(1 + 6 + 15) / 6, (2 - 8) / 6],
    }
    for mode, want in expect.items():
        np.testing.assert_allclose(pool(tokens, offsets, mode)[0], want, rtol=1e-15, err_msg=mode)
    with pytest.raises(ValueError, match="unknown pooling mode 'median'"):
        pool(tokens, offsets, "median")


@settings(max_examples=30, deadline=None)
@given(
    rows=st.integers(1, 20), t=st.integers(1, 80), dtype=dtypes, scale=st.floats(0.05, 2.0), seed=st.integers(0, 2**31)
)
def test_softmax_rows_matches_the_model(rows, t, dtype, scale, seed):
    from minibert.kernels import softmax_rows

    rng = np.random.default_rng(seed)
    s = (rng.standard_normal((rows, t)) * 20).astype(dtype)  # wide scores: exp underflow must not hurt
    ref = bert.softmax(s.astype(np.float64) * scale)
    out = softmax_rows(s.copy(), scale, dtype == np.float64)
    close(out, ref, dtype, scale=1.0)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=4e-7 if dtype == np.float32 else 1e-14)


def test_exp_shifted_against_libm():
    from minibert.kernels.attention import exp_shifted

    x = -np.linspace(0, 100, 200001)
    got = np.empty_like(x)
    total = exp_shifted(x, 0.0, 1.0, got)
    want = np.exp(x)
    assert (np.abs(got - want) <= 1e-11 * want + 2e-35).all()  # relative 1e-11 down to -80, then 0
    assert (got[x < -80] == 0).all()
    assert total == pytest.approx(got.sum(), rel=1e-14)  # the sum comes with the values
    # the shift and scale are applied in float64 before the exp; float32 rows are widened first
    row = np.array([3.0, 1.5, -np.inf], np.float32)
    got = np.empty(3)
    total = exp_shifted(row, 3.0, 0.5, got)
    np.testing.assert_allclose(got, [1.0, np.exp(-0.75), 0.0], rtol=1e-11)
    assert total == pytest.approx(1.0 + np.exp(-0.75), rel=1e-11)


@settings(max_examples=60, deadline=None)
@given(
    t=st.integers(0, 70),
    seed=st.integers(0, 2**31),
    specials=st.lists(st.sampled_from([np.inf, -np.inf, 0.0, -0.0, 1e-45, -1e-45, 3.4e38, -3.4e38]), max_size=3),
)
def test_max_float32_is_exact(t, seed, specials):
    from minibert.kernels.attention import max_float32

    rng = np.random.default_rng(seed)
    row = (rng.standard_normal(t) * 10.0 ** rng.integers(-30, 30, t)).astype(np.float32)
    for s, j in zip(specials, rng.integers(0, max(t, 1), len(specials))):
        if t:
            row[j] = s
    got = max_float32(row)
    if t:
        assert got == row.max()  # (+0 and -0 compare equal; either is the max of the other)
    else:
        assert np.isnan(got)  # an empty row has no max: NaN, which makes a softmax NaN rather than wrong


def test_fast_softmax_is_correctly_rounded_almost_always():
    # The float64 softmax rounded once to float32 is the best a float32 softmax can return. The
    # vectorised exp (1e-11) leaves a handful of near-ties a unit off (measured: 2e-5 of values);
    # an exp a few orders worse would move thousands.
    from minibert.kernels import softmax_rows

    rng = np.random.default_rng(0)
    off, total = 0, 0
    for t in (5, 13, 64, 256, 512):
        s = (rng.standard_normal((200, t)) * rng.choice([1, 5, 20], size=(200, 1))).astype(np.float32)
        best = bert.softmax(s.astype(np.float64) * 0.125).astype(np.float32)
        out = softmax_rows(s.copy(), 0.125, False)
        ulps = np.abs(out.view(np.int32).astype(np.int64) - best.view(np.int32).astype(np.int64))
        assert ulps.max() <= 1
        off, total = off + int((ulps > 0).sum()), total + ulps.size
    assert off <= 1e-4 * total, f"{off} of {total} values not correctly rounded"


def test_softmax_rows_specials():
    from minibert.kernels import softmax_rows

    for exact, dtype in ((False, np.float32), (True, np.float32), (True, np.float64)):
        x = np.array([[1, np.nan, 2], [np.inf, 1, 2], [-np.inf, 0, 1], [-1e4, 0, 1]], dtype)
        out = softmax_rows(x, 1.0, exact)
        assert np.isnan(out[:2]).all(), "a NaN or +inf score makes its row NaN, as in torch"
        np.testing.assert_allclose(out[2:], [[0, 0.2689414213699951, 0.7310585786300049]] * 2, rtol=1e-7)
        assert (out[2:, 0] == 0).all(), "a -inf (masked) score gets exactly zero weight"
    with pytest.raises(ValueError, match="float32 scores"):
        softmax_rows(np.zeros((2, 3)), 1.0, False)


# The float32 GELU runs 8 values at a time through gelu_erf_fast_lanes (LLVM IR, the wide erf fit
# only for vectors that need it); the rest of a row through the scalar gelu_erf_fast. The two must
# give the same bits: checked against a plain loop of the scalar one (the kernel's flags), on rows
# of every width from 1 to 40, values that need the wide fit in any lanes, and the edge values
# (|z| at 2 and 4.5, +-0, NaN, +-inf, float32's largest).
@pytest.mark.parametrize("scale", [0.3, 1.3, 4.0])
def test_gelu_vector_lanes_give_the_scalar_bits(scale):
    from minibert.kernels.jit import start

    start()
    import numba

    from minibert.kernels.activations import gelu_erf_fast

    @numba.njit(error_model="numpy", fastmath={"contract"})
    def scalar_gelu(h, bias):  # the kernel's loop before the vector lanes: one value at a time
        for i in range(h.shape[0]):
            for j in range(h.shape[1]):
                h[i, j] = gelu_erf_fast(np.float64(h[i, j] + bias[j]))
        return h

    rng = np.random.default_rng(int(scale * 10))
    edges = np.array(
        [
            0,
            -0.0,
            2 * np.sqrt(2),
            -2 * np.sqrt(2),
            4.5 * np.sqrt(2),
            -4.5 * np.sqrt(2),
            9,
            -9,
            np.nan,
            np.inf,
            -np.inf,
            3.4e38,
            -3.4e38,
            1e-30,
            2.8284271,
            -2.8284273,
        ],
        np.float32,
    )
    for f in range(1, 41):
        h = (rng.standard_normal((60, f)) * scale).astype(np.float32)
        h.ravel()[rng.integers(0, h.size, 12)] = rng.choice(edges, 12)
        bias = np.where(rng.random(f) < 0.3, 0, rng.standard_normal(f) * 0.1).astype(np.float32)
        with np.errstate(invalid="ignore", over="ignore"):
            got = bias_act(h.copy(), bias, ACTIVATIONS["gelu_erf"])
            want = scalar_gelu(h.copy(), bias)
        np.testing.assert_array_equal(got.view(np.int32), want.view(np.int32), err_msg=f"width {f}")


def test_bias_act_refuses_strided_rows_and_mixed_dtypes():
    h, b = np.zeros((4, 16), np.float32), np.zeros(16, np.float32)
    for args in ((h[:, ::2], b[::2]), (h[:, :8], b[::2]), (h, b[:8]), (h[0], b)):
        with pytest.raises(ValueError, match="contiguous"):
            bias_act(*args, ACTIVATIONS["gelu_erf"])
    with pytest.raises(ValueError, match="bias is float64 but h is float32"):
        bias_act(h, b.astype(np.float64), ACTIVATIONS["gelu_erf"])


def test_erf_constants_are_the_documented_fit():
    # The erf coefficients in activations.py are what fit_erf() computes; and erf_fast is exact to 2e-10.
    import math

    from minibert.kernels.activations import ERF_LARGE, ERF_SMALL, erf_fast, fit_erf

    small, large = fit_erf()
    np.testing.assert_allclose(small, ERF_SMALL, rtol=0, atol=1e-12)
    np.testing.assert_allclose(large, ERF_LARGE, rtol=0, atol=1e-12)
    z = np.linspace(-7, 7, 20001)
    assert max(abs(erf_fast(v) - math.erf(v)) for v in z) < 2e-10


# The streaming matmul must give BLAS's bits: a text alone (this kernel) and in a batch (BLAS)
# must embed identically. Checked against NumPy's matmul on the same rows inside a batch-sized
# product (M * N * K >= 2e6: below ~1e6 OpenBLAS switches to a small-matrix kernel, and for N = 1
# NumPy calls gemv; a dense layer of a real batch is neither), for the K of real models and ragged
# ones, ragged N and M, both dtypes, one thread and several.
@settings(max_examples=40, deadline=None)
@given(
    m=st.integers(1, 20),
    k=st.sampled_from([64, 300, 384, 512, 768, 900, 1536, 3072]),
    n=st.one_of(st.integers(1, 48).map(lambda t: 64 * t), st.integers(16, 1100)),
    dtype=dtypes,
    seed=st.integers(0, 2**31),
)
def test_matmul_rows_gives_blas_bits(m, k, n, dtype, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((m, k)).astype(dtype)
    w = rng.standard_normal((k, n)).astype(dtype)
    others = max(64, -(-2_000_000 // (n * k)))
    batch = np.concatenate([x, rng.standard_normal((others, k)).astype(dtype)])
    want = (batch @ w)[:m]
    blocks = blas_k_blocks(k, n, dtype)
    if blocks is None:  # no rule reproduces this BLAS here: then the planner gives queries BLAS's own matmul
        from minibert.engine import BlasDense

        rows = x if m > 1 else np.concatenate([x, np.zeros_like(x)])  # one row goes to gemm as two, not to gemv
        np.testing.assert_array_equal(BlasDense()(x, w, np.array([0, m])), (rows @ w)[:m])
        return
    for fast in (matmul_rows(x, w, blocks), *(matmul_rows_split(x, w, blocks, t) for t in (0, 1, 2, 3))):
        assert fast.shape == (m, n) and fast.dtype == dtype
        np.testing.assert_array_equal(fast, want)


def test_blas_order_is_found_for_the_model_shapes():
    # On NumPy's OpenBLAS with its AVX-512 kernels, every K of the target models has a reproducible
    # order; if this fails, queries still work (through BLAS) but lose the fast path. A BLAS with a
    # row tile (OpenBLAS's AVX2 kernels; .ci/run's second pass) sums a row by its place in the tile:
    # no single order matches it, so there queries must take BLAS laid out on tiles, and a row must
    # get its batch bits that way instead.
    from minibert.engine import TiledBlasDense

    rng = np.random.default_rng(4)
    for dtype in (np.float32, np.float64):
        with threads.single_threaded_blas():
            tile = blas_row_tile(dtype)
            for k, n in (
                (384, 1152),
                (384, 384),
                (384, 1536),
                (1536, 384),
                (768, 2304),
                (768, 768),
                (768, 3072),
                (3072, 768),
            ):
                if tile == 1:
                    blocks = blas_k_blocks(k, n, dtype)
                    assert blocks is not None, f"K={k} {np.dtype(dtype).name}: BLAS's summation order not found"
                    assert blocks[0] == 0 and blocks[-1] == k and (np.diff(blocks) > 0).all()
                    continue
                x, w = rng.standard_normal((40, k)).astype(dtype), rng.standard_normal((k, n)).astype(dtype)
                dense = TiledBlasDense(tile)
                alone = dense(x[5:12], w, np.array([0, 7]))  # one 7-token text
                among = dense(x, w, np.array([0, 5, 12, 40]))  # the same text between two others
                np.testing.assert_array_equal(alone, among[5:12], err_msg=f"K={k} {np.dtype(dtype).name}")


def test_blas_row_tile_is_found():
    # What minibert's identical-bits batch invariance rests on (a batch is one matmul over its texts'
    # rows): either BLAS gives a row the same bits wherever it sits (tile 1, OpenBLAS's AVX-512
    # kernels), or wherever it sits at the same place of a whole tile (OpenBLAS's AVX2 kernels),
    # which the encoder then lays texts out on. Probed as minibert runs BLAS, on one thread.
    with threads.single_threaded_blas():
        for dtype in (np.float32, np.float64):
            assert blas_row_tile(dtype) is not None, (
                f"NumPy's BLAS sums a row of a {np.dtype(dtype).name} matmul differently depending on the rows that "
                "share its call, in no tile pattern tried: a text's embedding may then move with its batch by ~1e-6"
            )


def _openblas_avx2_available():  # NumPy's own OpenBLAS, on a CPU that can run its AVX2 kernel
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]["name"]
        flags = {f for line in open("/proc/cpuinfo") if line.startswith("flags") for f in line.split()}
    except (OSError, KeyError, TypeError):
        return False
    return "openblas" in blas and {"avx2", "fma"} <= flags


@pytest.mark.skipif(not _openblas_avx2_available(), reason="needs NumPy's OpenBLAS on an x86 CPU with AVX2")
def test_blas_row_tile_of_openblas_avx2_kernel():
    # OpenBLAS's Haswell kernels (chosen on CPUs with AVX2 but not AVX-512) sum a row by its place in
    # a tile of 12 rows (sgemm) or 2 (dgemm). OPENBLAS_CORETYPE forces them here; the batch tests
    # run under them too in .ci/run.
    code = (
        "import numpy as np; from minibert import threads; from minibert.kernels.matmul import blas_row_tile as f\n"
        "with threads.single_threaded_blas(): print(f(np.float32), f(np.float64))"
    )
    p = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "OPENBLAS_CORETYPE": "Haswell"}
    )
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.split() == ["12", "2"]


def test_k_blocks_rule():
    assert k_blocks_rule(384, 448, 4).tolist() == [0, 384]
    assert k_blocks_rule(768, 448, 4).tolist() == [0, 384, 768]  # < 2 Q left: two halves
    assert k_blocks_rule(1536, 448, 4).tolist() == [0, 448, 896, 1216, 1536]


def test_matmul_rows_checks_shapes():
    # No bounds checks run inside the loops, so a mismatched K or bad blocks must be refused first.
    x, w = np.ones((2, 5), np.float32), np.ones((4, 3), np.float32)
    for call in (lambda: matmul_rows(x, w, np.array([0, 4])), lambda: matmul_rows_split(x, w, np.array([0, 4]), 2)):
        with pytest.raises(ValueError, match="columns"):
            call()
    x = np.ones((2, 4), np.float32)
    for blocks in ([0, 3], [1, 4], [0, 2, 2, 4], [0]):
        with pytest.raises(ValueError, match="blocks"):
            matmul_rows(x, w, np.array(blocks, dtype=np.int64))
    x4, out = np.ones((4, 4), np.float32), np.zeros((4, 3), np.float32)
    for args in (
        (x4[:3], w, out[:3], 0, 4, 0, 3, 0, out),
        (x4, w, out[:, :2], 0, 4, 0, 3, 0, out),
        (x4, w, out, 0, 5, 0, 3, 0, out),
        (x4, w, out, 0, 4, 1, 4, 0, out),
        (x4, w, out, 3, 2, 0, 3, 0, out),
    ):
        with pytest.raises(ValueError, match="matmul_tiles_into"):
            matmul_tiles_into(*args)


# The vector intrinsics under the query kernel, one by one: a row segment loaded, splat, fused
# multiply-add, stored, at an offset that is not on a vector boundary, in both dtypes. Values are
# small integers and halves, so a * b + c is exact and the expected result needs no rounding model.
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vector_intrinsics(dtype):
    from minibert.kernels.jit import start

    start()  # the intrinsics are Numba's from here on (imported before, they would be placeholders)
    import numba

    from minibert.kernels.simd import LANES, fma, vfma, vload, vsplat, vstore, vzero

    @numba.njit
    def fma_rows(a, b, s, out, j):  # out[1, j:j+L] <- s * a[0, j:j+L] + b[2, j:j+L]; out[0, j:j+L] <- 0
        vstore(out, 1, j, vfma(vsplat(s), vload(a, 0, j), vload(b, 2, j)))
        vstore(out, 0, j, vzero(out))

    lanes = LANES[np.dtype(dtype).name]
    rng = np.random.default_rng(0)
    a = rng.integers(-50, 50, (3, 40)).astype(dtype)
    b = rng.integers(-50, 50, (3, 40)).astype(dtype) / 2
    out = np.full((2, 40), 7, dtype=dtype)
    fma_rows(a, b, dtype(1.5), out, 3)
    want = np.full((2, 40), 7, dtype=dtype)
    want[1, 3 : 3 + lanes] = 1.5 * a[0, 3 : 3 + lanes] + b[2, 3 : 3 + lanes]
    want[0, 3 : 3 + lanes] = 0
    np.testing.assert_array_equal(out, want)  # and nothing outside the L lanes was touched
    # fma rounds once where a multiply then an add round twice: (1 + eps)(1 - eps) - 1 = -eps^2 exactly
    eps = dtype(2.0) ** -(np.finfo(dtype).nmant // 2 + 2)  # eps^2 below half the spacing under 1
    scalar_fma = numba.njit(lambda a, b, c: fma(a, b, c))
    assert scalar_fma(dtype(1) + eps, dtype(1) - eps, dtype(-1)) == -eps * eps
    assert (dtype(1) + eps) * (dtype(1) - eps) - dtype(1) == 0  # what an unfused multiply-add gives
    with pytest.raises(numba.core.errors.TypingError):
        numba.njit(lambda x: vsplat(x))(np.int64(3))  # integers have no vector type here
    with pytest.raises(numba.core.errors.TypingError):
        numba.njit(lambda x: vload(x, 0, 0))(np.zeros(8, dtype))  # 2-D arrays only


# Columns past the last whole register tile (64 float32, 32 float64) take a scalar loop. No target
# model has such a width (BLAS order is only looked for at multiples of 64), but the kernel takes
# any W: each output's chain depends on its own column alone, so the scalar columns must equal, bit
# for bit, the same columns computed inside a tile of a zero-padded W, on any split of the work.
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 17, 100, 200])
def test_matmul_rows_ragged_columns_sum_as_the_tiles_do(dtype, n):
    rng = np.random.default_rng(n)
    k, m = 1000, 7
    x = rng.standard_normal((m, k)).astype(dtype)
    padded = np.zeros((k, 256), dtype=dtype)
    padded[:, :n] = rng.standard_normal((k, n))
    blocks = k_blocks_rule(k, 448, 4)  # three blocks: two threads split the third by columns
    want = matmul_rows(x, padded, blocks)[:, :n]
    for w in (np.ascontiguousarray(padded[:, :n]), padded[:, :n]):  # own rows, and rows of a wider array
        for got in (matmul_rows(x, w, blocks), *(matmul_rows_split(x, w, blocks, t) for t in (1, 2, 3))):
            np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(
        want,
        x.astype(np.float64) @ padded[:, :n].astype(np.float64),
        rtol=1e-4 if dtype == np.float32 else 1e-12,
        atol=1e-3 if dtype == np.float32 else 1e-10,
    )


def test_matmul_rows_refuses_strided_weight_rows():
    x, w = np.ones((2, 8), np.float32), np.ones((8, 128), np.float32)
    for call in (matmul_rows, lambda *a: matmul_rows_split(*a, 2)):
        with pytest.raises(ValueError, match="contiguous"):
            call(x, w[:, ::2], np.array([0, 8]))


# ---------------------------------------------------------------- NumPy mirrors: the kernels' bits
# Before Numba starts, minibert runs each kernel's NumPy mirror (minibert/plan.py). A mirror
# takes the kernel's own float64 steps and rounds once, so in float32 the two differ only where
# their float64 values (apart by ~1e-16: fused multiply-adds, summation order) straddle a rounding
# boundary: measured 0 of 1.1 x 10^6 values below (2 of 6 x 10^6 GELU values in a larger sample);
# allowed: one ulp, in at most 1e-5 of the values.
# float64 results are not rounded any further, so there they differ by those ~1e-16 themselves:
# allowed 4 ulps of the largest value. So does GELU's tanh form in float32, where 1 + tanh(z)
# cancels for negative inputs and magnifies libm's and NumPy's last-bit differences in tanh.


def assert_mirror(mirror, kernel, same_bits):
    assert mirror.dtype == kernel.dtype and mirror.shape == kernel.shape
    same = (mirror == kernel) | (np.isnan(mirror) & np.isnan(kernel))
    if not same_bits:
        assert (np.abs(mirror[~same].astype(np.float64) - kernel[~same]) <= 4 * np.spacing(np.abs(kernel).max())).all()
        return
    off = np.abs(mirror[~same].astype(np.float64) - kernel[~same]) / np.spacing(np.abs(kernel[~same]))
    assert off.size <= 1e-5 * mirror.size and (off <= 1).all(), (
        f"{off.size} of {mirror.size} values differ, by up to {off.max()} ulp"
    )


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bias_act_numpy_gives_the_kernels_bits(act, dtype):
    from minibert.kernels import bias_act_numpy

    rng = np.random.default_rng(1)
    h = (rng.standard_normal((200, 1536)) * rng.choice([0.3, 2, 6], size=(200, 1))).astype(dtype)
    h[0, :6] = [0.0, -0.0, 4.5 * 2**0.5, -2 * 2**0.5, 40.0, -40.0]  # the erf fit's seams and tails
    b = rng.standard_normal(1536).astype(dtype)
    assert_mirror(
        bias_act_numpy(h.copy(), b, ACTIVATIONS[act]),
        bias_act(h.copy(), b, ACTIVATIONS[act]),
        same_bits=dtype == np.float32 and act != "gelu_tanh",
    )
    with pytest.raises(ValueError, match="unknown activation code 7"):
        bias_act_numpy(h.copy(), b, 7)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_rows_numpy_gives_the_kernels_bits(dtype):
    from minibert.kernels import softmax_rows, softmax_rows_numpy

    rng = np.random.default_rng(2)
    for t in (1, 7, 64, 300):
        s = (rng.standard_normal((400, t)) * rng.choice([1, 5, 30], size=(400, 1))).astype(dtype)
        exact = dtype == np.float64
        assert_mirror(
            softmax_rows_numpy(s.copy(), 0.125, exact),
            softmax_rows(s.copy(), 0.125, exact),
            same_bits=dtype == np.float32,
        )


def test_softmax_rows_numpy_specials():
    from minibert.kernels import softmax_rows_numpy

    for exact, dtype in ((False, np.float32), (True, np.float32), (True, np.float64)):
        x = np.array([[1, np.nan, 2], [np.inf, 1, 2], [-np.inf, 0, 1], [-1e4, 0, 1]], dtype)
        out = softmax_rows_numpy(x, 1.0, exact)
        assert np.isnan(out[:2]).all()
        assert (out[2:, 0] == 0).all()
        np.testing.assert_allclose(out[2:], [[0, 0.2689414213699951, 0.7310585786300049]] * 2, rtol=1e-7)


def test_exp_and_erf_mirrors_against_libm_and_kernels():
    import math

    from minibert.kernels.activations import erf_fast, erf_fast_numpy
    from minibert.kernels.attention import exp_shifted, exp_shifted_numpy

    x = -np.linspace(0, 100, 200001)
    got = exp_shifted_numpy(x)
    assert (np.abs(got - np.exp(x)) <= 1e-11 * np.exp(x) + 2e-35).all() and (got[x < -80] == 0).all()
    # r = y - n ln2 is one fused multiply-add in the kernel, two roundings here: up to |n| x 1.1e-16
    kernel = np.empty_like(x)
    exp_shifted(x, 0.0, 1.0, kernel)
    np.testing.assert_allclose(got, kernel, rtol=2e-14, atol=0)
    z = np.linspace(-6, 6, 24001)
    erf = erf_fast_numpy(z)
    assert np.abs(erf - np.array([math.erf(v) for v in z])).max() < 2e-10  # the fit, and the clamp at 4.5
    assert max(abs(erf[i] - erf_fast(z[i])) for i in range(0, len(z), 97)) <= 4e-16


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layer_norm_and_pool_mirrors_give_the_kernels_bits(dtype):
    rng = np.random.default_rng(3)
    x, r = (rng.standard_normal((2, 500, 768)) * 2).astype(dtype)
    bias, gamma, beta = rng.standard_normal((3, 768)).astype(dtype)
    assert_mirror(
        residual_layer_norm_numpy(x, bias, r, gamma, beta, 1e-12, np.empty_like(x)),
        residual_layer_norm(x, bias, r, gamma, beta, 1e-12, np.empty_like(x)),
        same_bits=dtype == np.float32,
    )
    from minibert.kernels import pool_numpy

    lengths = [1, 2, 30, 128, 7, 300]
    packed = (rng.standard_normal((sum(lengths), 384)) * 3).astype(dtype)
    offsets = np.cumsum([0] + lengths).astype(np.int64)
    for mode in POOLING_MODES:  # the same sums in the same order: the same bits, float64 too
        np.testing.assert_array_equal(pool_numpy(packed, offsets, mode), pool(packed, offsets, mode), err_msg=mode)


# minibert's own matmul for batches (where BLAS's kernels do not use the CPU's widest vectors): a
# row's sums use only that row, in an order fixed by K, so any slice of rows and any thread count
# give the same bits; and its blocked sums land nearer the exact product than BLAS's.
@settings(max_examples=25, deadline=None)
@given(m=st.integers(1, 90), k=st.sampled_from([16, 100, 128, 384, 768, 1536]), n=st.sampled_from([64, 100, 384, 1152]),
       dtype=dtypes, seed=st.integers(0, 2**31))  # fmt: skip
def test_matmul_batch_rows_are_independent(m, k, n, dtype, seed):
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((k, n)).astype(dtype)
    full = matmul_batch(x, w)
    assert full.shape == (m, n) and full.dtype == dtype
    a, b = sorted(rng.integers(0, m + 1, 2))
    if b > a:
        np.testing.assert_array_equal(matmul_batch(x[a:b], w), full[a:b])
    for threads_ in (1, 2, 3):
        np.testing.assert_array_equal(matmul_batch_split(x, w, threads_), full)
    close(full, x.astype(np.float64) @ w.astype(np.float64), dtype)


def test_matmul_batch_is_nearer_the_exact_product_than_blas():
    rng = np.random.default_rng(0)
    for k, n in ((768, 768), (768, 3072), (3072, 768)):
        x = (rng.standard_normal((256, k)) * 0.5 + 0.1).astype(np.float32)
        w = (rng.standard_normal((k, n)) * 0.06).astype(np.float32)
        exact = x.astype(np.float64) @ w.astype(np.float64)
        with threads.single_threaded_blas():
            blas = np.abs(x @ w - exact).max()
        assert np.abs(matmul_batch(x, w) - exact).max() <= blas, (k, n)
