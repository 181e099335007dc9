"""BERT and DistilBERT sentence encoders, the whole model in plain NumPy: the page to read first.

Shape legend: T tokens of one text, D hidden size, H attention heads, Dh = D / H, F feed-forward
width, L layers. Weights are the arrays of ``minibert/weights.py`` (``EncoderWeights``, one
``LayerWeights`` per block), matrices stored [in, out] so that a dense layer is ``x @ W + b``.

    x = LN(word[ids] + position[0 .. T-1] + token_type[0])         embeddings
    for each of the L blocks (post-LN, as in the original BERT):
        x = LN(x + SelfAttention(x))                                 attention sublayer
        x = LN(x + FeedForward(x))                                   feed-forward sublayer
    embedding = normalize(pool(x))                                   sentence-transformers' recipe

DistilBERT is the same computation with other tensor names and no token-type table. With
``precision="int8"`` each W is an int8 matrix (kernels/int8.py) and ``x @ W`` is ``int8_linear``
below; everything else stays float32. One text at
a time, no padding, no engine: this file is the oracle that the fast engine (``minibert/engine.py``,
the same blocks on packed batches) is tested against, and ``minibert.load(M, engine="reference")``
runs a real checkpoint through it, so that a reader can step through it in a debugger.
"""

import math

import numpy as np

# ------------------------------------------------------------------ the pieces


def layer_norm(x, gain, bias, eps):  # [T, D], [D], [D], float -> [T, D]
    # eps (1e-12 in BERT) is far below any real variance: it only keeps a constant row finite.
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)  # the biased variance, as torch's LayerNorm
    return (x - mean) / np.sqrt(var + eps) * gain + bias


_erf = np.vectorize(math.erf, otypes=[np.float64])  # NumPy has no erf; libm's is exact to ~1 ulp


def gelu_erf(x):  # [...] -> [...]: x * Phi(x), the exact GELU ("gelu" in BERT's and DistilBERT's configs)
    return (0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))).astype(x.dtype)


def gelu_tanh(x):  # [...] -> [...]: the tanh approximation ("gelu_new", "gelu_pytorch_tanh"), ~1e-3 from the exact one
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def relu(x):  # [...] -> [...]
    return np.maximum(x, 0)


ACTIVATIONS = {"gelu_erf": gelu_erf, "gelu_tanh": gelu_tanh, "relu": relu}  # config.py's names


def softmax(x):  # [..., T] -> [..., T], each row sums to 1
    e = np.exp(x - x.max(axis=-1, keepdims=True))  # shifting by the max changes nothing but overflow
    return e / e.sum(axis=-1, keepdims=True)


def attention(q, k, v):  # [T, Dh], [T, Dh], [T, Dh] -> [T, Dh]
    scores = q @ k.T / math.sqrt(q.shape[-1])  # [T, T]: how much each token attends to each other token
    return softmax(scores) @ v


def self_attention(x, lw, n_heads):  # [T, D] -> [T, D]
    # The query, key and value projections are stored side by side: one [D, 3D] matrix.
    q, k, v = np.split(x @ lw.qkv_w + lw.qkv_b, 3, axis=-1)  # 3 x [T, D]
    # Each head attends in its own Dh = D / H columns; their outputs are laid side by side again.
    heads = [attention(qh, kh, vh) for qh, kh, vh in zip(*(np.split(a, n_heads, axis=-1) for a in (q, k, v)))]
    return np.concatenate(heads, axis=-1) @ lw.attn_out_w + lw.attn_out_b


def feed_forward(x, lw, activation):  # [T, D], LayerWeights, str -> [T, D]
    return ACTIVATIONS[activation](x @ lw.ffn_in_w + lw.ffn_in_b) @ lw.ffn_out_w + lw.ffn_out_b  # through [T, F]


def embeddings(ids, w, cfg):  # [T] -> [T, D]
    # token_type[0]: a sentence embedding has one segment (DistilBERT has no table: zeros).
    x = w.word[ids] + w.position[: len(ids)] + w.token_type
    return layer_norm(x, w.emb_ln_g, w.emb_ln_b, cfg.layer_norm_eps)


def encoder_block(x, lw, cfg):  # [T, D] -> [T, D]
    # Post-LN: the residual is added first, then normalised (pre-LN models normalise inside).
    x = layer_norm(x + self_attention(x, lw, cfg.n_heads), lw.attn_ln_g, lw.attn_ln_b, cfg.layer_norm_eps)
    return layer_norm(x + feed_forward(x, lw, cfg.activation), lw.ffn_ln_g, lw.ffn_ln_b, cfg.layer_norm_eps)


def hidden_states(ids, w, cfg):  # [T] -> [L + 1, T, D]: the embeddings, then every block's output
    states = [embeddings(ids, w, cfg)]
    for lw in w.layers:
        states.append(encoder_block(states[-1], lw, cfg))
    return np.stack(states)


# ------------------------------------------------------------------ int8 dense layers


def quantize_rows(x):  # [T, K] -> [T, K] uint8, [T], [T]: each token's values in 255 steps from its minimum
    low = x.min(axis=-1)
    step = (x.max(axis=-1) - low) / np.float32(255)
    u = np.rint((x - low[:, None]) / np.where(step > 0, step, np.float32(1))[:, None])
    return np.clip(u, 0, 255).astype(np.uint8), step, low  # x ~ u * step + low


def int8_linear(x, q, scale, colsum):  # [T, K], [K, N] int8, [N], [N] -> [T, N]: x @ W in 8 bits
    """W was quantized once, per output column (W ~ q * scale; colsum = sum_k q[k, n]); x is
    quantized per token as it comes (x ~ u * step + low). The products are summed as integers,
    exactly, and scaled back to float32 once: x @ W ~ (u @ q * step + low * colsum) * scale."""
    u, step, low = quantize_rows(x)
    acc = (u.astype(np.int64) @ q.astype(np.int64)).astype(np.float32)
    return (acc * step[:, None] + low[:, None] * colsum) * scale


# ------------------------------------------------------------------ from token vectors to one vector


def pool(h, mode):  # [T, D], str -> [D]
    """One vector for the text, as sentence-transformers' Pooling. Only the text's own tokens
    count: a padded batch would have to exclude its padding (here there is none), or a text's
    vector would depend on the longest text beside it."""
    positions = np.arange(1, len(h) + 1, dtype=h.dtype)  # 1-based
    return {
        "cls": lambda: h[0],  # the [CLS] token
        "lasttoken": lambda: h[-1],  # the last real token ([SEP] for BERT)
        "mean": lambda: h.mean(axis=0),
        "mean_sqrt_len_tokens": lambda: h.sum(axis=0) / math.sqrt(len(h)),
        "max": lambda: h.max(axis=0),  # per channel
        "weightedmean": lambda: positions @ h / positions.sum(),  # later tokens weigh more
    }[mode]()


def normalize(v):  # [D] -> [D] of length 1
    # 1e-12 as torch.nn.functional.normalize: an all-zero vector stays zero instead of becoming NaN.
    # The norm in float64: the squares of large float32 values would overflow to inf.
    return (v / max(float(np.linalg.norm(v.astype(np.float64))), 1e-12)).astype(v.dtype)


def sentence_embedding(ids, w, cfg, pooling_modes, normalized):  # [T], ..., tuple[str], bool -> [len(modes) * D]
    h = hidden_states(ids, w, cfg)[-1]
    v = np.concatenate([pool(h, mode) for mode in pooling_modes])  # several modes side by side, in order
    return normalize(v) if normalized else v
