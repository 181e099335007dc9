"""The BERT / DistilBERT encoder: token ids in, one contextual vector per token out.

Shape legend: B texts, N tokens of all texts packed back to back, D hidden, H heads, F FFN width,
L layers. ``offsets`` [B + 1] marks where each text starts in the packed [N, D] matrix.

    x = LN(word[id] + position[t] + token_type[0])                     embeddings
    for each of L blocks (post-LN, as in the original BERT):
        x = LN(x + Attention(x) W_o + b_o)                             self-attention sublayer
        x = LN(x + act(x W_1 + b_1) W_2 + b_2)                         feed-forward sublayer

DistilBERT is the same computation with different tensor names, no token-type table and
(usually) 6 layers. Dense layers are single NumPy matmuls over all N tokens of a batch (BLAS does
the heavy lifting); the per-token work between them runs in the Numba kernels. Two forward passes
live here: ``encode_packed`` (the fast one, what minibert runs) and ``encode_reference`` (padded
NumPy twins, the textbook form), which the tests hold against each other.
"""

import numpy as np

from minibert.kernels import (
    attention_packed, attention_ref, bias_act, bias_act_ref, layer_norm_ref, residual_layer_norm,
)
from minibert.kernels.activations import ACTIVATIONS


def positions_of(offsets):  # [B + 1] -> [N]: each token's index within its own text
    lengths = np.diff(offsets)
    return np.arange(offsets[-1], dtype=np.int64) - np.repeat(offsets[:-1], lengths)


def embed(ids, offsets, w, cfg):  # [N], [B + 1] -> [N, D]
    words = w.word[ids]  # a gather: only these rows of the (memory-mapped) table are touched
    out = np.empty_like(words)
    return residual_layer_norm(words, w.token_type, w.position[positions_of(offsets)],
                               w.emb_ln_g, w.emb_ln_b, cfg.layer_norm_eps, out)


def self_attention(x, offsets, lw, cfg):  # [N, D], [B + 1] -> [N, D] (before the output bias)
    qkv = x @ lw.qkv_w  # [N, 3D]: Q | K | V in one matmul
    qkv += lw.qkv_b
    ctx = attention_packed(qkv, offsets, cfg.n_heads, np.empty_like(x))  # [N, D], heads side by side
    return ctx @ lw.attn_out_w


def feed_forward(x, lw, cfg):  # [N, D] -> [N, D] (before the output bias)
    h = bias_act(x @ lw.ffn_in_w, lw.ffn_in_b, ACTIVATIONS[cfg.activation])  # [N, F]
    return h @ lw.ffn_out_w


def encoder_block(x, offsets, lw, cfg):  # [N, D], [B + 1] -> [N, D]
    eps = cfg.layer_norm_eps
    x = residual_layer_norm(self_attention(x, offsets, lw, cfg), lw.attn_out_b, x, lw.attn_ln_g, lw.attn_ln_b, eps, x)
    x = residual_layer_norm(feed_forward(x, lw, cfg), lw.ffn_out_b, x, lw.ffn_ln_g, lw.ffn_ln_b, eps, x)
    return x


def encode_packed(ids, offsets, w, cfg, all_layers=False):  # [N], [B + 1] -> [N, D] (or L + 1 of them)
    x = embed(ids, offsets, w, cfg)
    states = [x.copy()] if all_layers else None
    for lw in w.layers:
        x = encoder_block(x, offsets, lw, cfg)  # updates x in place
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
