"""Numba kernels for the encoder, each beside a plain-NumPy twin that states the math.

Installed as ``minibert.kernels`` (see pyproject.toml: the folder sits at the top of the
repository, but PyPI's ``kernels`` package owns that top-level name, so it is never installed
under it).

Shape legend, used in every signature comment:
    B  texts (sequences) in a batch
    T  tokens of the longest text in a padded batch
    N  tokens of all texts of a batch packed one after another (N = sum of lengths, no padding)
    D  hidden size
    H  attention heads, Dh = D / H the size of one head
    F  inner size of the feed-forward block
    M, K  rows and inner size of a matmul x [M, K] @ W [K, N] (matmul.py)

Packed layout: the fast kernels never see padding. A batch is an [N, D] matrix of every text's
tokens back to back plus ``offsets`` [B + 1] (int64), so text b owns rows offsets[b]:offsets[b+1].
The NumPy twins use the padded [B, T, D] layout with a 0/1 ``mask`` [B, T], the way transformers
does it; the tests check that both agree, which is also the proof that padding changes nothing.

Naming: ``foo_ref`` is the NumPy twin (the oracle, and the page to read first); ``foo`` is the
Numba kernel with the same meaning. Kernels are compiled with ``cache=True`` once per dtype
(float32 and float64) and keep their own accumulators in float64 where a long sum is taken.
``foo_numpy`` does the kernel's own steps in NumPy, its approximations included (the vectorised
exp and erf), and runs while Numba has not started (kernels/jit.py): it gives the kernel's bits
but for rare last-bit differences. Where the twin already takes the kernel's steps (layer norm,
pooling) it serves as that too.
"""

from .activations import (
    gelu_erf, gelu_erf_ref, gelu_tanh, gelu_tanh_ref, relu, relu_ref, bias_act, bias_act_numpy, bias_act_ref,
)
from .layer_norm import layer_norm_ref, residual_layer_norm, residual_layer_norm_ref
from .attention import attention_packed, attention_ref, pack, softmax_ref, softmax_rows, softmax_rows_numpy, unpack
from .pooling import POOLING_MODES, pool, pool_numpy, pool_ref
from .matmul import matmul_ref, matmul_rows, matmul_rows_split

__all__ = [
    "gelu_erf", "gelu_erf_ref", "gelu_tanh", "gelu_tanh_ref", "relu", "relu_ref", "bias_act", "bias_act_numpy", "bias_act_ref",
    "layer_norm_ref", "residual_layer_norm", "residual_layer_norm_ref",
    "attention_packed", "attention_ref", "pack", "softmax_ref", "softmax_rows", "softmax_rows_numpy", "unpack",
    "POOLING_MODES", "pool", "pool_numpy", "pool_ref",
    "matmul_ref", "matmul_rows", "matmul_rows_split",
]
