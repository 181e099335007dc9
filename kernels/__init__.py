"""The engine's Numba kernels, each beside a NumPy mirror of its exact steps.

Installed as ``minibert.kernels`` (see pyproject.toml: the folder sits at the top of the
repository, but PyPI's ``kernels`` package owns that top-level name, so it is never installed
under it).

Shape legend, used in every signature comment:
    B  texts (sequences) in a batch
    T  tokens of one text, or of the longest text in a padded batch
    N  tokens of all texts of a batch packed one after another (N = sum of lengths, no padding)
    D  hidden size
    H  attention heads, Dh = D / H the size of one head
    F  inner size of the feed-forward block
    M, K  rows and inner size of a matmul x [M, K] @ W [K, N] (matmul.py)

Packed layout: the kernels never see padding. A batch is an [N, D] matrix of every text's tokens
back to back plus ``offsets`` [B + 1] (int64), so text b owns rows offsets[b]:offsets[b+1].

The math each kernel computes is stated once, in minibert/bert.py (the model to read), and the
tests hold every kernel to it. ``foo`` is the Numba kernel; ``foo_numpy`` takes the kernel's own
float64 steps in NumPy, its approximations included (the vectorised exp and erf), and runs while
Numba has not started (kernels/jit.py): it gives the kernel's bits but for rare last-bit
differences. Kernels are compiled with ``cache=True`` once per dtype (float32 and float64) and keep
their accumulators in float64 where a long sum is taken.
"""

from .activations import bias_act, bias_act_numpy
from .attention import attention_packed, pack, softmax_rows, softmax_rows_numpy, unpack
from .layer_norm import residual_layer_norm, residual_layer_norm_numpy
from .matmul import matmul_rows, matmul_rows_split
from .pooling import POOLING_MODES, pool, pool_numpy, pool_padded

__all__ = [
    "bias_act",
    "bias_act_numpy",
    "residual_layer_norm",
    "residual_layer_norm_numpy",
    "attention_packed",
    "pack",
    "softmax_rows",
    "softmax_rows_numpy",
    "unpack",
    "POOLING_MODES",
    "pool",
    "pool_numpy",
    "pool_padded",
    "matmul_rows",
    "matmul_rows_split",
]
