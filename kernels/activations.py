"""Activation functions of the feed-forward block, fused with the bias add that precedes them.

    gelu_erf(x)  = x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2))          config "gelu" (BERT, DistilBERT)
    gelu_tanh(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))     "gelu_new", "gelu_pytorch_tanh"
    relu(x)      = max(x, 0)                                            "relu"

The two GELUs differ by up to ~1e-3, far above fp32 noise: using the wrong one is a real bug,
which is why the config's exact name decides and nothing defaults silently.
"""

import math

import numpy as np
from numba import njit, prange

# Codes for the fused kernel (Numba cannot take a Python function as an argument cheaply).
GELU_ERF, GELU_TANH, RELU = 0, 1, 2
ACTIVATIONS = {"gelu_erf": GELU_ERF, "gelu_tanh": GELU_TANH, "relu": RELU}

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)

# ---------------------------------------------------------------- NumPy twins (the math)

_erf = np.vectorize(math.erf, otypes=[np.float64])  # NumPy has no erf; libm's is exact to ~1 ulp


def gelu_erf_ref(x):  # [...] -> [...]
    return (0.5 * x * (1.0 + _erf(x.astype(np.float64) * _INV_SQRT_2))).astype(x.dtype)


def gelu_tanh_ref(x):  # [...] -> [...]
    return 0.5 * x * (1.0 + np.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x**3)))


def relu_ref(x):  # [...] -> [...]
    return np.maximum(x, 0)


def bias_act_ref(h, bias, activation):  # [N, F], [F], str -> [N, F]
    return {"gelu_erf": gelu_erf_ref, "gelu_tanh": gelu_tanh_ref, "relu": relu_ref}[activation](h + bias)

# ---------------------------------------------------------------- Numba kernels


@njit(cache=True, inline="always")
def gelu_erf(x):  # scalar -> scalar
    return 0.5 * x * (1.0 + math.erf(x * _INV_SQRT_2))


@njit(cache=True, inline="always")
def gelu_tanh(x):  # scalar -> scalar
    return 0.5 * x * (1.0 + math.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)))


@njit(cache=True, inline="always")
def relu(x):  # scalar -> scalar
    return x if x > 0 else 0.0 * x


@njit(cache=True, parallel=True)
def bias_act(h, bias, activation):  # [N, F] (in place), [F], int code -> [N, F]
    """h <- act(h + bias), row-parallel. Works in place: h is the fresh matmul output."""
    n, f = h.shape
    for i in prange(n):
        row = h[i]
        if activation == GELU_ERF:
            for j in range(f):
                row[j] = gelu_erf(row[j] + bias[j])
        elif activation == GELU_TANH:
            for j in range(f):
                row[j] = gelu_tanh(row[j] + bias[j])
        else:
            for j in range(f):
                row[j] = relu(row[j] + bias[j])
    return h
