"""The fast engine: minibert/bert.py's model on packed batches, each choice behind the plan.

Shape legend: B texts, N tokens of all B texts packed back to back (no padding), D hidden size,
H heads, F feed-forward width, L layers. ``offsets`` [B + 1]: text b owns rows
offsets[b]:offsets[b + 1] of every [N, ...] matrix, so tokens of different texts cannot mix and
no padding can change a result.

The blocks are bert.py's, block for block. What differs is how each step runs, and that is the
plan's to say (``minibert/plan.py`` decides it once per call):

- ``plan.dense``: how ``x @ W`` runs (a strategy below): BLAS over the whole batch; BLAS with each
  text laid out on the BLAS's row tiles; or, for one short query, minibert's streaming kernel.
- ``plan.kernels``: the per-token steps (bias + activation, residual + layer norm, softmax,
  pooling): Numba's kernels, or their NumPy mirrors for a call before Numba has started.
- ``plan.first_token_only``: the last block carries only each text's first token past attention.
- ``plan.all_layers``: keep every layer's output.

Every strategy gives a text the same bits alone or in any batch: that is what lets the planner
choose freely.
"""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from minibert.kernels import (
    attention_packed,
    bias_act,
    bias_act_numpy,
    pool,
    pool_numpy,
    residual_layer_norm,
    residual_layer_norm_numpy,
    softmax_rows,
    softmax_rows_numpy,
)
from minibert.kernels.activations import ACTIVATIONS
from minibert.kernels.int8 import int8_matmul, int8_matmul_numpy
from minibert.kernels.matmul import matmul_batch, matmul_batch_split, matmul_rows, matmul_rows_split
from minibert.threads import single_threaded_blas

# ------------------------------------------------------------------ strategies


@dataclass(frozen=True)
class Kernels:
    """The per-token steps, all from one family, so that a call never mixes them."""

    name: str  # "numba" or "numpy"
    bias_act: Callable  # (h [N, F] in place, bias [F], activation code) -> h
    residual_layer_norm: Callable  # (x, bias, residual, gain, beta, eps, out) -> out = LN(x + bias + residual)
    softmax_rows: Callable  # (scores [R, T] in place, scale, exact) -> scores
    pool: Callable  # (tokens [N, D], offsets [B + 1], mode) -> [B, D]


NUMBA_KERNELS = Kernels("numba", bias_act, residual_layer_norm, softmax_rows, pool)
# Each NumPy mirror takes its kernel's own float64 steps and rounds once: the same bits but for
# rare elements, for the calls a process makes before starting Numba pays (plan.py).
NUMPY_KERNELS = Kernels("numpy", bias_act_numpy, residual_layer_norm_numpy, softmax_rows_numpy, pool_numpy)


class BlasDense:
    """x @ W through NumPy's BLAS, whose result for a row does not depend on the other rows."""

    name = "blas"

    def __call__(self, x, w, offsets):  # [N, in], [in, out], [B + 1] -> [N, out]
        if len(x) == 1:  # NumPy gives [1, K] @ [K, N] to BLAS's gemv, which sums in another order than gemm
            return (np.concatenate([x, np.zeros_like(x)]) @ w)[:1]
        return x @ w


@dataclass(frozen=True)
class TiledBlasDense:
    """BLAS for a BLAS that sums a row by its place in a tile of ``tile`` rows (OpenBLAS's AVX2
    kernels; ``blas_row_tile`` in kernels/matmul.py): each text starts on a tile boundary, zero rows
    fill the rest of its last tile, so a row sits at the same place alone or in any batch and gets
    the same bits. It costs (tile - 1) / 2 zero rows per text on average, and BLAS on one thread
    (two would split the rows elsewhere)."""

    tile: int
    name = "blas-tiled"

    def __call__(self, x, w, offsets):  # [N, in], [in, out], [B + 1] -> [N, out]
        lengths = np.diff(offsets)
        padded = -(-lengths // self.tile) * self.tile
        rows = np.repeat(np.cumsum(padded) - padded - offsets[:-1], lengths) + np.arange(offsets[-1])
        laid_out = np.zeros((int(padded.sum()), x.shape[1]), dtype=x.dtype)
        laid_out[rows] = x
        return (laid_out @ w)[rows]


@dataclass(frozen=True)
class StreamingDense:
    """One short text: minibert's kernel streams W once instead of BLAS re-packing it for a few
    rows (kernels/matmul.py), split over ``threads``, summing in BLAS's own order so that the
    text gets its batch bits. ``blocks``: BLAS's K blocks for each (K, N) of the model; a matrix
    whose order was not found (None) takes BLAS."""

    threads: int
    blocks: dict  # (K, N) -> int64 block boundaries [0, ..., K], or None
    name = "streaming"

    def __call__(self, x, w, offsets):  # [N, in], [in, out], [B + 1] -> [N, out]
        blocks = self.blocks.get(w.shape)
        if blocks is None:
            return BlasDense()(x, w, offsets)
        if self.threads == 1:
            return matmul_rows(x, w, blocks)
        return matmul_rows_split(x, w, blocks, self.threads)  # the same bits as on one thread


@dataclass(frozen=True)
class NumbaDense:
    """minibert's own matmul for every call (kernels/matmul.py, ``matmul_batch``), in 512-bit
    vectors: for a BLAS whose kernels do not use the CPU's widest ones (OpenBLAS's AVX2 kernels on
    an AVX-512 CPU, as with OPENBLAS_CORETYPE=Haswell), where it is faster than that BLAS. A row's
    sums use only that row, so there are no tiles to lay texts out on, and a query gets its batch
    bits by construction."""

    threads: int  # 1 in a batch's workers (they share the texts); the cores, for one text alone
    name = "numba"

    def __call__(self, x, w, offsets):  # [N, in], [in, out], [B + 1] -> [N, out]
        if self.threads == 1:
            return matmul_batch(x, w)
        return matmul_batch_split(x, w, self.threads)  # the same bits as on one thread


@dataclass(frozen=True)
class Int8Dense:
    """x @ W in int8 (kernels/int8.py): W quantized at load, each token row of x as it comes, the
    products summed exactly in int32 by AVX-512 VNNI (``vnni``) or, on any other CPU, in float64
    by BLAS (exact for integers this small). Exact sums: the same bits either way, alone or in any
    batch, on any number of threads."""

    threads: int  # 1 in a batch's workers; the cores, for one text alone
    vnni: bool  # the VNNI kernel (Numba started, the CPU has it) or the NumPy twin
    name = "int8"

    def __call__(self, x, w, offsets):  # [N, in], Int8Matrix [in, out], [B + 1] -> [N, out]
        return int8_matmul(x, w, self.threads) if self.vnni else int8_matmul_numpy(x, w)


# ------------------------------------------------------------------ the model, block for block


def positions_of(offsets):  # [B + 1] -> [N]: each token's position within its own text
    return np.arange(offsets[-1], dtype=np.int64) - np.repeat(offsets[:-1], np.diff(offsets))


def embeddings(ids, offsets, w, cfg, plan):  # [N], [B + 1] -> [N, D]
    words = w.word[ids]
    position = w.position[positions_of(offsets)]
    # LN(word + token_type + position), the sum taken inside the fused kernel
    return plan.kernels.residual_layer_norm(
        words, w.token_type, position, w.emb_ln_g, w.emb_ln_b, cfg.layer_norm_eps, np.empty_like(words)
    )


def self_attention(x, offsets, lw, cfg, plan):  # [N, D], [B + 1] -> [N, D], before the output projection
    qkv = plan.dense(x, lw.qkv_w, offsets)  # [N, 3D]: Q | K | V side by side
    qkv += lw.qkv_b
    # Attention's own matmuls on one BLAS thread, as in a batch's workers: OpenBLAS's threaded driver
    # cuts some K sums (P V with 449-500 keys) elsewhere, and a long text alone would lose its batch bits.
    with single_threaded_blas():
        return attention_packed(qkv, offsets, cfg.n_heads, np.empty_like(x), plan.kernels.softmax_rows)


def feed_forward(x, offsets, lw, cfg, plan):  # [N, D], [B + 1] -> [N, D], before the output bias
    h = plan.kernels.bias_act(plan.dense(x, lw.ffn_in_w, offsets), lw.ffn_in_b, ACTIVATIONS[cfg.activation])  # [N, F]
    return plan.dense(h, lw.ffn_out_w, offsets)


def encoder_block(x, offsets, lw, cfg, plan, rows=None):  # [N, D], [B + 1] -> [N, D] (or [len(rows), D])
    """bert.encoder_block. ``rows``: the tokens carried on past attention (None: all). Attention
    needs every token as a key and a value; after it, each token's steps are its own, so a token
    left out changes no other token's bits."""
    eps = cfg.layer_norm_eps
    ctx = self_attention(x, offsets, lw, cfg, plan)
    if rows is not None:
        ctx, x, offsets = (
            ctx[rows],
            x[rows],
            np.arange(len(rows) + 1, dtype=np.int64),
        )  # each kept row a text of one token
    a = plan.dense(ctx, lw.attn_out_w, offsets)
    x = plan.kernels.residual_layer_norm(a, lw.attn_out_b, x, lw.attn_ln_g, lw.attn_ln_b, eps, x)  # in place
    f = feed_forward(x, offsets, lw, cfg, plan)
    return plan.kernels.residual_layer_norm(f, lw.ffn_out_b, x, lw.ffn_ln_g, lw.ffn_ln_b, eps, x)


def forward(ids, offsets, w, cfg, plan):  # [N], [B + 1] -> list of [N, D]: the last layer, or L + 1 of them
    """bert.hidden_states on a packed batch. With ``plan.first_token_only`` the last layer holds
    only each text's first token ([B, D]), which is all that [CLS] pooling reads: D^2 + 2 D F of the
    4 D^2 + 2 D F multiply-adds per token of the last block are skipped."""
    x = embeddings(ids, offsets, w, cfg, plan)
    states = [x.copy()] if plan.all_layers else []
    for i, lw in enumerate(w.layers):
        last = i == len(w.layers) - 1
        x = encoder_block(x, offsets, lw, cfg, plan, rows=offsets[:-1] if last and plan.first_token_only else None)
        if plan.all_layers:
            states.append(x.copy())
    return states if plan.all_layers else [x]


def pool(h, offsets, pooling_modes, plan):  # [N, D], [B + 1], tuple[str] -> [B, len(modes) * D]
    return np.concatenate([plan.kernels.pool(h, offsets, mode) for mode in pooling_modes], axis=1)
