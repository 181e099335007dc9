"""Activation functions of the feed-forward block, fused with the bias add that precedes them.

    gelu_erf(x)  = x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2))          config "gelu" (BERT, DistilBERT)
    gelu_tanh(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))     "gelu_new", "gelu_pytorch_tanh"
    relu(x)      = max(x, 0)                                            "relu"

The two GELUs differ by up to ~1e-3, far above fp32 noise: using the wrong one is a real bug,
which is why the config's exact name decides and nothing defaults silently.

Why erf is not simply ``math.erf``: libm's erf is a scalar call, and GELU runs on N x F values
per layer (4x the hidden width), so it cost as much as the matmuls around it. For float32 models
we evaluate erf with two Chebyshev fits in float64 (|z| <= 2: erf(z) = z P(z^2); 2 < |z| <= 4.5:
erf(z) = Q(z); beyond: +-1), whose error is below 1e-11: ~10^4 times finer than an fp32 ulp, so the
result is the exact GELU rounded once. The loop vectorises. float64 models keep libm's erf, since
they are compared with float64 torch at 1e-12.
"""

import math

import numpy as np
from .jit import njit

# Codes for the fused kernel (Numba cannot take a Python function as an argument cheaply).
GELU_ERF, GELU_TANH, RELU = 0, 1, 2
ACTIVATIONS = {"gelu_erf": GELU_ERF, "gelu_tanh": GELU_TANH, "relu": RELU}

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)

# Monomial coefficients, highest power first, of the Chebyshev fits made by fit_erf() below:
# erf(z) / z in u = z^2 / 2 - 1 for |z| <= 2, and erf(z) in u = (z - 3.25) / 1.25 for 2 < z <= 4.5.
ERF_SMALL = (6.529261760630186e-08, -4.3345667176482804e-07, 2.470110797946208e-06, -1.3909694069556508e-05, 7.180490875664177e-05, -0.00033516560074726845, 0.0014050900543264332, -0.00523486937891076, 0.01712834480051079, -0.04866277825806209, 0.11947913859553633, -0.26111186090231153, 0.6749332360398016)
ERF_LARGE = (-4.7415313762708246e-07, 1.916306652541446e-06, -8.792751322203336e-07, -9.726935101869941e-06, 2.8685570869473073e-05, -3.37011796946476e-05, -2.2263883022975283e-05, 0.0001933004346446651, -0.00048645887326751326, 0.0008105065898444254, -0.0010053201282665713, 0.0009576459929072053, -0.0006996284085696348, 0.00038243988201326574, -0.00014822566057275555, 3.64863024499857e-05, 0.9999956972214066)


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


def fit_erf(degree_small=12, degree_large=16):  # -> (ERF_SMALL, ERF_LARGE): how the constants were made
    from numpy.polynomial import chebyshev

    u = np.cos(np.pi * (np.arange(2000) + 0.5) / 2000)  # Chebyshev nodes on [-1, 1]
    z = np.sqrt((u + 1) * 2)  # u = z^2 / 2 - 1
    small = chebyshev.cheb2poly(chebyshev.chebfit(u, np.where(z > 0, _erf(z) / np.maximum(z, 1e-300), 2 / math.sqrt(math.pi)), degree_small))
    large = chebyshev.cheb2poly(chebyshev.chebfit(u, _erf(u * 1.25 + 3.25), degree_large))
    return tuple(small[::-1]), tuple(large[::-1])

# ---------------------------------------------------------------- NumPy mirror of the kernel


def erf_fast_numpy(z):  # float64 [...] -> [...]: erf_fast below, the same steps on arrays
    a = np.minimum(np.abs(z), 4.5)
    e = np.polyval(ERF_SMALL, a * a * 0.5 - 1.0) * a  # np.polyval is Horner's rule, as the kernel's
    # The second fit only where it is used (few GELU inputs have |z| > 2): the kernel computes both
    # and picks, branch-free, which vectorises there; here it would double the work.
    mid = (a > 2.0) & (a < 4.5)
    e[mid] = np.polyval(ERF_LARGE, (a[mid] - 3.25) * 0.8)
    e[a >= 4.5] = 1.0
    return np.where(z < 0, -e, e)


def bias_act_numpy(h, bias, activation):  # [N, F] (in place), [F], int code -> [N, F]
    """bias_act without Numba: the kernel's float64 steps, with its own erf for float32 (the
    twins above use libm's erf, so they differ from the kernel in the last bit of ~1e-4 of values)."""
    x = (h + bias).astype(np.float64)  # the bias added in h's dtype first, as the kernel does
    if activation == GELU_ERF:
        erf = _erf if h.dtype == np.float64 else erf_fast_numpy
        y = 0.5 * x * (1.0 + erf(x * _INV_SQRT_2))
    elif activation == GELU_TANH:
        y = 0.5 * x * (1.0 + np.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)))
    elif activation == RELU:
        y = np.maximum(x, 0.0)
    else:
        raise ValueError(f"bias_act_numpy: unknown activation code {activation}; known: {ACTIVATIONS}")
    h[...] = y
    return h


# ---------------------------------------------------------------- Numba kernels


# The polynomials are written out statement by statement (Horner's rule) rather than looped over a
# tuple: LLVM then vectorises the element loop; looping over the tuple it did not (5x slower).
@njit(cache=True, inline="always")
def erf_fast(z):  # float64 scalar -> float64, |error| < 2e-10 (the clamp at 4.5), branch-free
    a = min(abs(z), 4.5)
    u = a * a * 0.5 - 1.0  # |z| <= 2 mapped onto [-1, 1] through z^2
    small = 6.529261760630186e-08
    small = small * u + -4.3345667176482804e-07
    small = small * u + 2.470110797946208e-06
    small = small * u + -1.3909694069556508e-05
    small = small * u + 7.180490875664177e-05
    small = small * u + -0.00033516560074726845
    small = small * u + 0.0014050900543264332
    small = small * u + -0.00523486937891076
    small = small * u + 0.01712834480051079
    small = small * u + -0.04866277825806209
    small = small * u + 0.11947913859553633
    small = small * u + -0.26111186090231153
    small = small * u + 0.6749332360398016
    small *= a
    v = (a - 3.25) * 0.8  # 2 <= |z| <= 4.5 mapped onto [-1, 1]
    large = -4.7415313762708246e-07
    large = large * v + 1.916306652541446e-06
    large = large * v + -8.792751322203336e-07
    large = large * v + -9.726935101869941e-06
    large = large * v + 2.8685570869473073e-05
    large = large * v + -3.37011796946476e-05
    large = large * v + -2.2263883022975283e-05
    large = large * v + 0.0001933004346446651
    large = large * v + -0.00048645887326751326
    large = large * v + 0.0008105065898444254
    large = large * v + -0.0010053201282665713
    large = large * v + 0.0009576459929072053
    large = large * v + -0.0006996284085696348
    large = large * v + 0.00038243988201326574
    large = large * v + -0.00014822566057275555
    large = large * v + 3.64863024499857e-05
    large = large * v + 0.9999956972214066
    e = small if a <= 2.0 else large
    e = 1.0 if a >= 4.5 else e  # 1 - erf(4.5) = 2e-10
    return -e if z < 0 else e


@njit(cache=True, inline="always")
def gelu_erf(x):  # scalar -> scalar (libm erf: exact, used for float64)
    return 0.5 * x * (1.0 + math.erf(x * _INV_SQRT_2))


@njit(cache=True, inline="always")
def gelu_erf_fast(x):  # float64 scalar -> float64 (fast erf: used for float32 arrays)
    return 0.5 * x * (1.0 + erf_fast(x * _INV_SQRT_2))


@njit(cache=True, inline="always")
def gelu_tanh(x):  # scalar -> scalar
    return 0.5 * x * (1.0 + math.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)))


@njit(cache=True, inline="always")
def relu(x):  # scalar -> scalar
    return max(x, 0.0)


# error_model="numpy": no Python-style ZeroDivisionError checks, which would stop vectorisation.
def bias_act(h, bias, activation):  # [N, F] (in place), [F], int code -> [N, F]
    """h <- act(h + bias), computed in float64 and rounded once. In place: h is a fresh matmul output."""
    return _bias_act(h, bias, activation, h.dtype == np.float64)


# contract: each Horner step a * u + c becomes one fused multiply-add (one rounding, not two;
# half the instructions and a shorter dependency chain): 2.4 -> 1.7 ns per element (fp32, [1000, 3072]).
@njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
def _bias_act(h, bias, activation, exact):  # [N, F], [F], int, bool -> [N, F]
    n, f = h.shape
    for i in range(n):
        row = h[i]
        if activation == GELU_ERF and exact:
            for j in range(f):
                row[j] = gelu_erf(np.float64(row[j]) + bias[j])
        elif activation == GELU_ERF:
            for j in range(f):
                row[j] = gelu_erf_fast(np.float64(row[j] + bias[j]))
        elif activation == GELU_TANH:
            for j in range(f):
                row[j] = gelu_tanh(np.float64(row[j] + bias[j]))
        else:
            for j in range(f):
                row[j] = relu(np.float64(row[j] + bias[j]))
    return h
