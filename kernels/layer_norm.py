"""Layer norm fused with the residual add (BERT is post-LN: LN(sublayer(x) + x)).

    y = (v - mean(v)) / sqrt(var(v) + eps) * gamma + beta,   v = x + bias + residual

eps is 1e-12 in BERT and DistilBERT. That is below fp32's resolution for any real variance, so it
only matters for a row that is (nearly) constant; it must still be the configured value, since a
float64 run compares at 1e-12 and a wrong eps (1e-5, say) moves small-variance rows visibly.
The row is summed and normalised in float64 even for fp32 inputs and rounded once on output: an
fp32 running sum over D = 768 values loses ~D * 6e-8 relative, which would be our own drift rather
than the model's.
"""

import math

import numpy as np

from .jit import njit

# ---------------------------------------------------------------- NumPy mirror of the kernel


def residual_layer_norm_numpy(x, bias, residual, gamma, beta, eps, out):  # as residual_layer_norm, without Numba
    """The kernel's float64 steps on whole arrays, rounded once on assignment to ``out``: the
    kernel's bits but for rare elements (its sums run in another order)."""
    v = x.astype(np.float64) + bias + residual
    mean = v.sum(axis=-1, keepdims=True) / v.shape[-1]
    c = v - mean
    var = (c * c).sum(axis=-1, keepdims=True) / v.shape[-1]  # biased variance, as torch's LayerNorm
    out[...] = c * (1.0 / np.sqrt(var + eps)) * gamma + beta
    return out


# ---------------------------------------------------------------- Numba kernel


# reassoc lets LLVM vectorise the two float64 sums (their order then differs from a plain loop by
# ~1e-16 relative, far below the fp32 rounding of the result); contract fuses the multiply-adds.
# No nnan/ninf: a NaN must still come out as NaN.
@njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc", "contract"})
def residual_layer_norm(x, bias, residual, gamma, beta, eps, out):  # [N, D], [D], [N, D], [D], [D], f, [N, D] -> [N, D]
    """out <- LN(x + bias + residual). ``out`` may be ``x`` or ``residual`` (row i is read before written)."""
    n, d = x.shape
    if (
        residual.shape != x.shape
        or out.shape != x.shape
        or bias.shape[0] != d
        or gamma.shape[0] != d
        or beta.shape[0] != d
    ):
        raise ValueError("residual_layer_norm: x, residual and out must be [N, D], bias, gamma and beta [D]")
    v = np.empty(d, dtype=np.float64)  # the row in float64: one rounding at the end, not three
    for i in range(n):
        for j in range(d):
            v[j] = np.float64(x[i, j]) + bias[j] + residual[i, j]
        total = 0.0
        for j in range(d):
            total += v[j]
        mean = total / d
        sq = 0.0
        for j in range(d):
            c = v[j] - mean
            sq += c * c
        write_normalised(v, mean, 1.0 / math.sqrt(sq / d + eps), gamma, beta, out[i])
    return out


# Not inlined, and without "reassoc": under it LLVM turns (v - mean) * (1 / std) back into
# (v - mean) / std, a division per element. contract still fuses * gamma + beta.
@njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
def write_normalised(v, mean, inv_std, gamma, beta, out):  # [D] float64, f, f, [D], [D], [D] -> out
    for j in range(len(v)):
        out[j] = (v[j] - mean) * inv_std * gamma[j] + beta[j]
    return out
