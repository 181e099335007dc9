"""512-bit vectors for Numba kernels: what lets a matmul keep its running sums in registers.

Numba has no vector type. LLVM vectorises loops over contiguous elements, which is enough for
elementwise kernels, but a matmul's speed comes from keeping a tile of ``out`` in registers while
it walks down K (each loaded W value used by several rows of x, each output loaded and stored once
per tile instead of once per k). Written as a loop, the tile lives in memory, and LLVM does not lift
it out. So these intrinsics give Numba code a value that *is* one register:

    v = vload(a, i, j)           a[i, j : j + L]                     (L = LANES[dtype] elements)
    vstore(a, i, j, v)           a[i, j : j + L] <- v
    v = vsplat(s)                [s, s, ..., s]
    v = vzero(a)                 [0, 0, ..., 0] of a's dtype
    v = vfma(a, b, c)            a * b + c in each lane, one rounding (a fused multiply-add)
    v = vdpbusd(acc, a, b)       int32 lanes: acc + the dot product of a's 4 bytes (unsigned) and
                                 b's 4 bytes (signed) in each lane, exact (AVX-512 VNNI's vpdpbusd)
    v = vdequant(acc, s, z, c, t) (float32(acc) * s + z * c) * t per lane: int32 sums back to float32
    s = fma(a, b, c)             the same for scalars (never left to the compiler's contraction)
    prefetch_l2(a, i, j)         a hint: start loading the cache line of a[i, j] into L2

A vector is 64 bytes: 16 float32, 8 float64 or 16 int32, one AVX-512 register (where a CPU has only 256-bit
registers LLVM splits each into two: the same results, with fewer registers to hold them).
``vload``/``vstore`` assume a row's elements are adjacent (unit stride), which the caller checks.
"""

from .jit import intrinsic

VECTOR_BYTES = 64
LANES = {"float32": 16, "float64": 8, "int32": 16}  # elements per vector

_vector_types = {}  # dtype name -> Numba type, made once Numba has started (kernels/jit.py)


def vector_of(dtype):  # Numba scalar type (float32 or float64) -> the Numba type of its 64-byte vector
    name = str(dtype)
    if name not in LANES:
        return None
    if name not in _vector_types:
        from llvmlite import ir
        from numba import types
        from numba.extending import models, register_model

        class Vector(types.Type):
            def __init__(self):
                super().__init__(name=f"{name}x{LANES[name]}")

        element = {"float32": ir.FloatType(), "float64": ir.DoubleType(), "int32": ir.IntType(32)}[name]
        llvm_type = ir.VectorType(element, LANES[name])

        @register_model(Vector)
        class VectorModel(models.PrimitiveModel):  # a value held as LLVM's <L x float>, i.e. in a register
            def __init__(self, dmm, fe_type):
                super().__init__(dmm, fe_type, llvm_type)

        vector = Vector()
        vector.element, vector.llvm_type = getattr(types, name), llvm_type
        _vector_types[name] = vector
    return _vector_types[name]


def element_pointer(context, builder, array_type, array, inds):  # &a[i, j] (or &a[j]), no bounds check
    from numba.core import cgutils

    a = context.make_array(array_type)(context, builder, array)
    return cgutils.get_item_pointer2(
        context,
        builder,
        data=a.data,
        shape=cgutils.unpack_tuple(builder, a.shape),
        strides=cgutils.unpack_tuple(builder, a.strides),
        layout=array_type.layout,
        inds=inds,
        wraparound=False,
    )


def _is_matrix(a):
    from numba import types

    return isinstance(a, types.Array) and a.ndim == 2 and vector_of(a.dtype) is not None


@intrinsic
def vload(typingctx, a, i, j):  # [R, C], int, int -> vector a[i, j : j + L]
    if not _is_matrix(a):
        return None
    vector = vector_of(a.dtype)

    def codegen(context, builder, sig, args):
        p = element_pointer(context, builder, sig.args[0], args[0], args[1:])
        return builder.load(builder.bitcast(p, vector.llvm_type.as_pointer()), align=a.dtype.bitwidth // 8)

    return vector(a, i, j), codegen


@intrinsic
def vstore(typingctx, a, i, j, v):  # [R, C], int, int, vector -> a[i, j : j + L] <- v
    from numba import types

    if not _is_matrix(a) or v != vector_of(a.dtype):
        return None

    def codegen(context, builder, sig, args):
        p = element_pointer(context, builder, sig.args[0], args[0], args[1:3])
        builder.store(args[3], builder.bitcast(p, v.llvm_type.as_pointer()), align=a.dtype.bitwidth // 8)
        return context.get_dummy_value()

    return types.none(a, i, j, v), codegen


@intrinsic
def vsplat(typingctx, s):  # scalar -> vector [s, ..., s]
    vector = vector_of(s)
    if vector is None:
        return None

    def codegen(context, builder, sig, args):
        from llvmlite import ir

        lanes = vector.llvm_type.count
        one = builder.insert_element(
            ir.Constant(vector.llvm_type, ir.Undefined), args[0], ir.Constant(ir.IntType(32), 0)
        )
        return builder.shuffle_vector(one, one, ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes))

    return vector(s), codegen


@intrinsic
def vzero(typingctx, a):  # [R, C] -> a vector of zeros of a's dtype
    if not _is_matrix(a):
        return None
    vector = vector_of(a.dtype)

    def codegen(context, builder, sig, args):
        from llvmlite import ir

        zero = 0 if vector.element.name == "int32" else 0.0
        return ir.Constant(vector.llvm_type, [zero] * vector.llvm_type.count)

    return vector(a), codegen


@intrinsic
def vfma(typingctx, a, b, c):  # vector x3 -> a * b + c, rounded once per lane (llvm.fma)
    if a not in _vector_types.values() or b != a or c != a:
        return None

    def codegen(context, builder, sig, args):
        from llvmlite import ir
        from numba.core import cgutils

        t = a.llvm_type
        suffix = f"v{t.count}f{32 if a.element.bitwidth == 32 else 64}"
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(t, [t, t, t]), f"llvm.fma.{suffix}")
        return builder.call(fma, args)

    return a(a, b, c), codegen


@intrinsic
def fma(typingctx, a, b, c):  # float x3 (one dtype) -> a * b + c, rounded once (llvm.fma)
    if vector_of(a) is None or b != a or c != a:
        return None

    def codegen(context, builder, sig, args):
        from llvmlite import ir
        from numba.core import cgutils

        t = ir.FloatType() if a.bitwidth == 32 else ir.DoubleType()
        f = cgutils.get_or_insert_function(builder.module, ir.FunctionType(t, [t, t, t]), f"llvm.fma.f{a.bitwidth}")
        return builder.call(f, args)

    return a(a, b, c), codegen


@intrinsic
def prefetch_l2(typingctx, a, i, j):  # [R, C], int, int -> None: a hint, never a fault
    from numba import types

    if not _is_matrix(a):
        return None

    def codegen(context, builder, sig, args):
        from llvmlite import ir
        from numba.core import cgutils

        p = builder.bitcast(
            element_pointer(context, builder, sig.args[0], args[0], args[1:]), ir.IntType(8).as_pointer()
        )
        i32 = ir.IntType(32)
        prefetch = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [p.type, i32, i32, i32]), "llvm.prefetch.p0i8"
        )
        # read (0), locality 2 (x86's prefetcht1: into L2, not L1, where the current tile lives), data (1)
        builder.call(prefetch, [p, ir.Constant(i32, 0), ir.Constant(i32, 2), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.none(a, i, j), codegen


@intrinsic
def vdpbusd(typingctx, acc, a, b):  # int32 vectors x3 -> acc + sum of u8(a) * s8(b) over each lane's 4 bytes
    """vpdpbusd: only for a CPU with AVX-512 VNNI (the planner checks; elsewhere LLVM cannot emit it)."""
    i32 = vector_of("int32")
    if acc != i32 or a != i32 or b != i32:
        return None

    def codegen(context, builder, sig, args):
        from llvmlite import ir
        from numba.core import cgutils

        t = i32.llvm_type
        f = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(t, [t, t, t]), "llvm.x86.avx512.vpdpbusd.512"
        )
        return builder.call(f, args)

    return i32(acc, a, b), codegen


@intrinsic
def vdequant(typingctx, acc, s, z, c, t):  # int32 vector, float32 vectors x4 -> (float32(acc) * s + z * c) * t
    i32, f32 = vector_of("int32"), vector_of("float32")
    if acc != i32 or not s == z == c == t == f32:
        return None

    def codegen(context, builder, sig, args):
        # Plain IR multiplies and adds, never contracted to FMAs: the NumPy twin rounds each step.
        a, s_, z_, c_, t_ = args
        scaled = builder.fmul(builder.sitofp(a, f32.llvm_type), s_)
        return builder.fmul(builder.fadd(scaled, builder.fmul(z_, c_)), t_)

    return f32(acc, s, z, c, t), codegen
