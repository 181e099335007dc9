"""The BERT / DistilBERT encoder: token ids in, one contextual vector per token out.

Shape legend: B texts, N tokens of all texts packed back to back, D hidden, H heads, F FFN width,
L layers. ``offsets`` [B + 1] marks where each text starts in the packed [N, D] matrix.

    x = LN(word[id] + position[t] + token_type[0])                     embeddings
    for each of L blocks (post-LN, as in the original BERT):
        x = LN(x + Attention(x) W_o + b_o)                             self-attention sublayer
        x = LN(x + act(x W_1 + b_1) W_2 + b_2)                         feed-forward sublayer

DistilBERT is the same computation with different tensor names, no token-type table and
(usually) 6 layers. Dense layers are single NumPy matmuls over all N tokens of a batch (BLAS does
the heavy lifting), except for a handful of tokens (one short query), where a Numba kernel that
streams the weights once is faster; the per-token work between them runs in the Numba kernels.
Two forward passes live here: ``encode_packed`` (the fast one, what minibert runs) and
``encode_reference`` (padded NumPy twins, the textbook form), which the tests hold against each
other. ``encode_packed(..., numba=False)`` runs the same steps with the NumPy mirror of each Numba
kernel, for a short call before Numba has started (minibert/startup.py): same bits in practice.
"""

import contextlib

import numpy as np

from minibert.kernels import (
    attention_packed, attention_ref, bias_act, bias_act_numpy, bias_act_ref, layer_norm_ref, residual_layer_norm,
    residual_layer_norm_ref,
)
from minibert.kernels.activations import ACTIVATIONS
from minibert.kernels.matmul import blas_k_blocks, matmul_rows, matmul_rows_split
from minibert.threads import single_threaded_blas

# One text of up to this many tokens, alone in its call (a query), has its dense layers done by the
# streaming Numba kernel instead of BLAS: on 2 cores, with the weights coming from memory as they do
# for a query, it takes 35-65% of BLAS's time at 12 rows, 60-90% at 32 and 90-95% at 48
# (kernels/matmul.py; benchmarks/NOTES.md sections 9 and 15). It sums in BLAS's own order, so a
# text's embedding is the same, bit for bit, alone or in any batch.
SMALL_ROWS = 32


def positions_of(offsets):  # [B + 1] -> [N]: each token's index within its own text
    lengths = np.diff(offsets)
    return np.arange(offsets[-1], dtype=np.int64) - np.repeat(offsets[:-1], lengths)


def layer_norm(x, bias, residual, gamma, beta, eps, out, numba):  # [N, D], [D], [N, D], [D], [D], f, [N, D] -> out
    """out <- LN(x + bias + residual): the Numba kernel, or its NumPy twin (the same float64 steps)."""
    if numba:
        return residual_layer_norm(x, bias, residual, gamma, beta, eps, out)
    out[...] = residual_layer_norm_ref(x, bias, residual, gamma, beta, eps)
    return out


def embed(ids, offsets, w, cfg, numba=True):  # [N], [B + 1] -> [N, D]
    words = w.word[ids]  # a gather: only these rows of the (memory-mapped) table are touched
    return layer_norm(words, w.token_type, w.position[positions_of(offsets)], w.emb_ln_g, w.emb_ln_b,
                      cfg.layer_norm_eps, np.empty_like(words), numba)


def tile_layout(offsets, tile):  # [B + 1], int -> ([N] each token's row in a padded matrix, its row count)
    """Each text from a tile boundary, zero rows up to the next one. For a BLAS that sums a row by
    its place in a tile of rows (kernels/matmul.py, ``blas_row_tile``; OpenBLAS's AVX2 kernels):
    laid out so, a row sits at the same place in a whole tile alone or in any batch, so it gets the
    same bits. What it costs: (tile - 1) / 2 zero rows per text on average."""
    lengths = np.diff(offsets)
    padded = -(-lengths // tile) * tile
    starts = np.cumsum(padded) - padded
    return np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1]), int(padded.sum())


def matmul(x, w, query_threads, layout=None):  # [N, in], [in, out], int, tile_layout or None -> [N, out]
    """x @ w: BLAS for a batch (query_threads=0); for one short text the streaming kernel, summing
    in BLAS's order (when that order could be found; else BLAS). Same bits either way. ``layout``:
    on a BLAS with a row tile, the rows go through BLAS laid out by ``tile_layout``."""
    if layout is not None:  # (the streaming kernel cannot match such a BLAS: its order depends on the row)
        rows, n_rows = layout
        padded = np.zeros((n_rows, x.shape[1]), dtype=x.dtype)
        padded[rows] = x
        return (padded @ w)[rows]
    blocks = blas_k_blocks(w.shape[0], w.shape[1], w.dtype, query_threads > 1) if query_threads else None
    if blocks is None:
        if len(x) == 1:  # NumPy gives [1, K] @ [K, N] to BLAS's gemv, which sums in another order than gemm
            return (np.concatenate([x, np.zeros_like(x)]) @ w)[:1]
        return x @ w
    if query_threads == 1:
        return matmul_rows(x, w, blocks)
    return matmul_rows_split(x, w, blocks, query_threads)  # the same bits as on one thread


def self_attention(x, offsets, lw, cfg, query_threads, numba, first_token_only=False, layouts=(None, None)):  # [N, D], [B + 1] -> [N, D] (or [B, D]), before the output bias
    qkv = matmul(x, lw.qkv_w, query_threads, layouts[0])  # [N, 3D]: Q | K | V in one matmul
    qkv += lw.qkv_b
    # BLAS on one thread, as in a batch's workers: for P V with 449-500 keys, OpenBLAS's threaded
    # driver cuts the K sum at another place than its one-thread driver, so a long text alone (BLAS
    # on two threads) got other bits than in a batch (benchmarks/NOTES.md section 21).
    with single_threaded_blas():
        ctx = attention_packed(qkv, offsets, cfg.n_heads, np.empty_like(x), numba)  # [N, D], heads side by side
    if first_token_only:
        ctx = ctx[offsets[:-1]]  # [B, D]: each text's first token
    return matmul(ctx, lw.attn_out_w, query_threads, layouts[1] if first_token_only else layouts[0])


def feed_forward(x, lw, cfg, query_threads, numba, layout=None):  # [N, D] -> [N, D] (before the output bias)
    activation = bias_act if numba else bias_act_numpy
    h = activation(matmul(x, lw.ffn_in_w, query_threads, layout), lw.ffn_in_b, ACTIVATIONS[cfg.activation])  # [N, F]
    return matmul(h, lw.ffn_out_w, query_threads, layout)


def encoder_block(x, offsets, lw, cfg, query_threads, numba, first_token_only=False, layouts=(None, None)):  # [N, D], [B + 1] -> [N, D] (or [B, D])
    """``first_token_only``: attention runs as always (every token is a key and a value), then only
    each text's first token ([CLS]) goes on through the output projection, the feed-forward block
    and the layer norms. Those act on each token by itself, so its row comes out the same bits as
    in the full block (BLAS's gemm sums a row in the same order whatever the number of rows; on a
    BLAS with a row tile, each first token starts a tile, as it does in the full block)."""
    eps = cfg.layer_norm_eps
    a = self_attention(x, offsets, lw, cfg, query_threads, numba, first_token_only, layouts)
    if first_token_only:
        x = x[offsets[:-1]]  # [B, D]: the residual of each text's first token (a copy)
    x = layer_norm(a, lw.attn_out_b, x, lw.attn_ln_g, lw.attn_ln_b, eps, x, numba)
    f = feed_forward(x, lw, cfg, query_threads, numba, layouts[1] if first_token_only else layouts[0])
    x = layer_norm(f, lw.ffn_out_b, x, lw.ffn_ln_g, lw.ffn_ln_b, eps, x, numba)
    return x


def encode_packed(ids, offsets, w, cfg, all_layers=False, query_threads=0, numba=True, first_token_only=False,
                  row_tile=1):  # [N], [B + 1] -> [N, D] (or L + 1 of them, or [B, D])
    """``query_threads``: 0 for a batch (BLAS); for one short text, the threads its matmuls split
    over (Numba's streaming kernel). ``numba=False``: NumPy only (then query_threads must be 0).
    ``first_token_only``: return only each text's first token, [B, D], which is all that [CLS]
    pooling reads; the last block then skips the other tokens' output projection and feed-forward
    block (their keys and values are still needed): D^2 + 2 D F of 4 D^2 + 2 D F multiply-adds per
    token (9 of 12 D^2 with F = 4D), bit for bit the same first rows as the full pass.
    ``row_tile``: NumPy's BLAS's row tile (kernels/matmul.py, ``blas_row_tile``); above 1, every
    matmul lays its rows out with ``tile_layout`` (and [CLS]-only rows as texts of one token), on
    one BLAS thread."""
    if query_threads and not numba:
        raise ValueError("encode_packed: query_threads needs Numba's streaming kernel; pass 0 with numba=False")
    if first_token_only and all_layers:
        raise ValueError("encode_packed: all_layers returns every token of every layer; first_token_only cannot apply")
    if first_token_only and (np.diff(offsets) == 0).any():
        raise ValueError(f"encode_packed: text {int(np.argmax(np.diff(offsets) == 0))} has no tokens, so no first token")
    layouts = (None, None)
    if row_tile > 1:
        layouts = (tile_layout(offsets, row_tile), tile_layout(np.arange(len(offsets)), row_tile))
    # With a row tile, BLAS must also run on one thread: splitting a matmul's rows between its
    # threads would move them within their tiles (one long text alone then uses one core).
    with single_threaded_blas() if row_tile > 1 else contextlib.nullcontext():
        x = embed(ids, offsets, w, cfg, numba)
        states = [x.copy()] if all_layers else None
        for i, lw in enumerate(w.layers):
            last = first_token_only and i == len(w.layers) - 1
            x = encoder_block(x, offsets, lw, cfg, query_threads, numba, last, layouts)  # updates x in place
            if all_layers:
                states.append(x.copy())
    return states if all_layers else x


# ------------------------------------------------------------------ the textbook twin


def encode_reference(ids, mask, w, cfg):  # [B, T], [B, T] -> list of L + 1 arrays [B, T, D]
    """The same model on a padded batch with NumPy only: slow, plain, and the oracle in tests."""
    B, T = ids.shape
    D, H, Dh, eps = cfg.dim, cfg.n_heads, cfg.head_dim, cfg.layer_norm_eps
    x = layer_norm_ref(w.word[ids] + w.token_type + w.position[np.arange(T)], w.emb_ln_g, w.emb_ln_b, eps)
    states = [x]
    split_heads = lambda a: a.reshape(B, T, H, Dh).transpose(0, 2, 1, 3)  # [B, T, D] -> [B, H, T, Dh]
    for lw in w.layers:
        q, k, v = np.split(x @ lw.qkv_w + lw.qkv_b, 3, axis=-1)  # 3 x [B, T, D]
        ctx = attention_ref(split_heads(q), split_heads(k), split_heads(v), mask)  # [B, H, T, Dh]
        ctx = ctx.transpose(0, 2, 1, 3).reshape(B, T, D)
        x = layer_norm_ref(x + ctx @ lw.attn_out_w + lw.attn_out_b, lw.attn_ln_g, lw.attn_ln_b, eps)
        h = bias_act_ref(x @ lw.ffn_in_w, lw.ffn_in_b, cfg.activation)  # [B, T, F]
        x = layer_norm_ref(x + h @ lw.ffn_out_w + lw.ffn_out_b, lw.ffn_ln_g, lw.ffn_ln_b, eps)
        states.append(x)
    return states
