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
result is the exact GELU rounded once. Float32 rows run 8 values at a time (one 512-bit vector of
float64) through ``gelu_erf_fast_lanes``, which computes the second fit only for a vector that
holds a value needing it. float64 models keep libm's erf, since they are compared with float64
torch at 1e-12.
"""

import math

import numpy as np

from .jit import intrinsic, njit
from .simd import LANES, element_pointer

# Codes for the fused kernel (Numba cannot take a Python function as an argument cheaply).
GELU_ERF, GELU_TANH, RELU = 0, 1, 2
ACTIVATIONS = {"gelu_erf": GELU_ERF, "gelu_tanh": GELU_TANH, "relu": RELU}

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)

# Monomial coefficients, highest power first, of the Chebyshev fits made by fit_erf() below:
# erf(z) / z in u = z^2 / 2 - 1 for |z| <= 2, and erf(z) in u = (z - 3.25) / 1.25 for 2 < z <= 4.5.
ERF_SMALL = (
    6.529261760630186e-08,
    -4.3345667176482804e-07,
    2.470110797946208e-06,
    -1.3909694069556508e-05,
    7.180490875664177e-05,
    -0.00033516560074726845,
    0.0014050900543264332,
    -0.00523486937891076,
    0.01712834480051079,
    -0.04866277825806209,
    0.11947913859553633,
    -0.26111186090231153,
    0.6749332360398016,
)
ERF_WIDE_FROM = 2.0  # |z| beyond which erf needs ERF_LARGE
ERF_ONE_FROM = 4.5  # |z| from which erf is taken as +-1 (1 - erf(4.5) = 2e-10)
ERF_LARGE = (
    -4.7415313762708246e-07,
    1.916306652541446e-06,
    -8.792751322203336e-07,
    -9.726935101869941e-06,
    2.8685570869473073e-05,
    -3.37011796946476e-05,
    -2.2263883022975283e-05,
    0.0001933004346446651,
    -0.00048645887326751326,
    0.0008105065898444254,
    -0.0010053201282665713,
    0.0009576459929072053,
    -0.0006996284085696348,
    0.00038243988201326574,
    -0.00014822566057275555,
    3.64863024499857e-05,
    0.9999956972214066,
)


# ---------------------------------------------------------------- the fit, and the NumPy mirror of the kernel

_erf = np.vectorize(math.erf, otypes=[np.float64])  # NumPy has no erf; libm's is exact to ~1 ulp


def fit_erf(degree_small=12, degree_large=16):  # -> (ERF_SMALL, ERF_LARGE): how the constants were made
    from numpy.polynomial import chebyshev

    u = np.cos(np.pi * (np.arange(2000) + 0.5) / 2000)  # Chebyshev nodes on [-1, 1]
    z = np.sqrt((u + 1) * 2)  # u = z^2 / 2 - 1
    small = chebyshev.cheb2poly(
        chebyshev.chebfit(u, np.where(z > 0, _erf(z) / np.maximum(z, 1e-300), 2 / math.sqrt(math.pi)), degree_small)
    )
    large = chebyshev.cheb2poly(chebyshev.chebfit(u, _erf(u * 1.25 + 3.25), degree_large))
    return tuple(small[::-1]), tuple(large[::-1])


def erf_fast_numpy(z):  # float64 [...] -> [...]: erf_fast below, the same steps on arrays
    a = np.minimum(np.abs(z), ERF_ONE_FROM)
    e = np.polyval(ERF_SMALL, a * a * 0.5 - 1.0) * a  # np.polyval is Horner's rule, as the kernel's
    # The second fit only where it is used (few GELU inputs have |z| > 2): the kernel computes both
    # and picks, branch-free, which vectorises there; here it would double the work.
    mid = (a > ERF_WIDE_FROM) & (a < ERF_ONE_FROM)
    e[mid] = np.polyval(ERF_LARGE, (a[mid] - 3.25) * 0.8)
    e[a >= ERF_ONE_FROM] = 1.0
    return np.where(z < 0, -e, e)


def bias_act_numpy(h, bias, activation):  # [N, F] (in place), [F], int code -> [N, F]
    """bias_act without Numba: the kernel's float64 steps, with its own erf for float32 (the
    model to read, minibert/bert.py, uses libm's erf: it differs from both in the last bit of ~1e-4
    of float32 values)."""
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
    a = min(abs(z), ERF_ONE_FROM)
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
    e = small if a <= ERF_WIDE_FROM else large
    e = 1.0 if a >= ERF_ONE_FROM else e
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


GELU_LANES = LANES["float64"]  # values per call of gelu_erf_fast_lanes: one 512-bit vector of float64


# erf_fast computes both fits for every value and keeps one, so that LLVM can vectorise it; but
# few feed-forward inputs have |z| > 2 (a few percent, in about a fifth of 8-value vectors), so most
# of the wide fit's work is thrown away. This is gelu_erf_fast(h + bias) for 8 adjacent values at
# once, written in LLVM IR because Numba cannot branch on a whole vector: it computes the wide fit
# only when one of the 8 needs it. It does erf_fast's arithmetic (the same Horner FMAs, in the same
# order) and makes its choices, so the bits are those of the scalar loop; the tests hold the two
# to equality.
@intrinsic
def gelu_erf_fast_lanes(typingctx, h, i, j, bias):  # [N, F], int, int, [F] -> None: h[i, j:j+8] <- gelu(h + bias)
    from numba import types

    if not (
        isinstance(h, types.Array)
        and h.ndim == 2
        and h.dtype in (types.float32, types.float64)
        and isinstance(bias, types.Array)
        and bias.ndim == 1
        and bias.dtype == h.dtype
    ):
        return None

    def codegen(context, builder, sig, args):
        from llvmlite import ir
        from numba.core import cgutils

        h_type, _, _, bias_type = sig.args
        f64, n = ir.DoubleType(), GELU_LANES
        stored = ir.VectorType(ir.FloatType() if h.dtype == types.float32 else f64, n)
        vd = ir.VectorType(f64, n)
        const = lambda x: ir.Constant(vd, [x] * n)  # noqa: E731

        def call(name, *xs):  # an LLVM intrinsic on float64 vectors, e.g. llvm.fma.v8f64
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vd, [vd] * len(xs)), f"llvm.{name}.v{n}f64"
            )
            return builder.call(fn, xs)

        def horner(coefs, u):  # coefs highest power first -> P(u), one FMA per step as erf_fast's
            p = const(coefs[0])
            for c in coefs[1:]:
                p = call("fma", p, u, const(c))
            return p

        align = h.dtype.bitwidth // 8
        ph = builder.bitcast(
            element_pointer(context, builder, h_type, args[0], [args[1], args[2]]), stored.as_pointer()
        )
        pb = builder.bitcast(element_pointer(context, builder, bias_type, args[3], [args[2]]), stored.as_pointer())
        x = builder.fadd(builder.load(ph, align=align), builder.load(pb, align=align))
        x = builder.fpext(x, vd) if stored.element != f64 else x  # the bias added in h's dtype first
        z = builder.fmul(x, const(_INV_SQRT_2))
        # min(|z|, ERF_ONE_FROM); minnum differs from erf_fast's compare only for a NaN z, whose x makes y NaN anyway
        a = call("minnum", call("fabs", z), const(ERF_ONE_FROM))
        u = call("fma", builder.fmul(a, a), const(0.5), const(-1.0))  # the same bits as a * a * 0.5 - 1: x 0.5 is exact
        small = builder.fmul(horner(ERF_SMALL, u), a)
        narrow = builder.fcmp_ordered("<=", a, const(ERF_WIDE_FROM))
        any_wide = builder.icmp_unsigned(
            "!=", builder.bitcast(builder.not_(narrow), ir.IntType(n)), ir.Constant(ir.IntType(n), 0)
        )
        entry = builder.block
        with builder.if_then(any_wide, likely=False):  # a is at most 2 in every lane otherwise, so never ERF_ONE_FROM
            large = horner(ERF_LARGE, builder.fmul(builder.fsub(a, const(3.25)), const(0.8)))
            picked = builder.select(
                builder.fcmp_ordered(">=", a, const(ERF_ONE_FROM)), const(1.0), builder.select(narrow, small, large)
            )
            wide_block = builder.block
        e = builder.phi(vd)
        e.add_incoming(small, entry)
        e.add_incoming(picked, wide_block)
        e = call("copysign", e, z)  # -e where z < 0 (at z = -0 it gives -0 where erf_fast gives +0: 1 + e is the same)
        y = builder.fmul(builder.fmul(const(0.5), x), builder.fadd(const(1.0), e))
        y = builder.fptrunc(y, stored) if stored.element != f64 else y
        builder.store(y, ph, align=align)
        return context.get_dummy_value()

    return types.none(h, i, j, bias), codegen


def bias_act(h, bias, activation):  # [N, F] (in place), [F], int code -> [N, F]
    """h <- act(h + bias), computed in float64 and rounded once. In place: h is a fresh matmul output."""
    if h.ndim != 2 or bias.shape != h.shape[1:] or h.strides[1] != h.itemsize or bias.strides[0] != bias.itemsize:
        raise ValueError(
            f"bias_act: h must be [N, F] with contiguous rows and bias a contiguous [F] (the GELU kernel "
            f"loads 8 adjacent values at once), got {h.shape} strides {h.strides}, bias {bias.shape}"
        )
    if bias.dtype != h.dtype:
        raise ValueError(f"bias_act: bias is {bias.dtype} but h is {h.dtype}; they must match")
    return _bias_act(h, bias, activation, h.dtype == np.float64)


# error_model="numpy": no Python-style ZeroDivisionError checks, which would stop vectorisation.
# contract: each Horner step a * u + c becomes one fused multiply-add (one rounding, not two;
# half the instructions and a shorter dependency chain).
@njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
def _bias_act(h, bias, activation, exact):  # [N, F], [F], int, bool -> [N, F]
    n, f = h.shape
    for i in range(n):
        row = h[i]
        if activation == GELU_ERF and exact:
            for j in range(f):
                row[j] = gelu_erf(np.float64(row[j]) + bias[j])
        elif activation == GELU_ERF:
            whole = f - f % GELU_LANES
            for j in range(0, whole, GELU_LANES):
                gelu_erf_fast_lanes(h, i, j, bias)
            for j in range(whole, f):
                row[j] = gelu_erf_fast(np.float64(row[j] + bias[j]))
        elif activation == GELU_TANH:
            for j in range(f):
                row[j] = gelu_tanh(np.float64(row[j] + bias[j]))
        else:
            for j in range(f):
                row[j] = relu(np.float64(row[j] + bias[j]))
    return h
