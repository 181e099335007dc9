"""Reading ``model.safetensors`` without torch, and naming its tensors for the encoder.

A safetensors file is: 8 bytes (little-endian u64) = header length n, then n bytes of JSON
``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``, then the raw
little-endian tensor bytes, offsets relative to the end of the header. We memory-map the file and
hand out NumPy views of it, so an fp32 checkpoint run in fp32 costs no copy: pages of the
word-embedding table are only read for the tokens that actually occur.
"""

import json
import mmap
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import CheckpointError
from .threads import n_workers

CACHE_LINE = 64  # bytes: the unit the transposing copy writes and the weights are aligned to

# safetensors dtype -> (NumPy dtype of the stored bytes, bytes per element)
_STORED = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),  # NumPy has no bfloat16: read the raw 16 bits, widen in to_dtype()
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
_MAX_HEADER = 100 * 1024 * 1024  # the format's own limit


@dataclass
class StoredTensor:
    name: str
    dtype: str  # safetensors dtype string, e.g. "F16"
    data: np.ndarray  # a view of the memory-mapped file, in the stored dtype
    file_map: mmap.mmap = None  # the mapping it lives in, so its pages can be released after a copy
    file_offset: int = 0  # where its bytes start in the file

    def release(self):  # drop this tensor's pages from our resident memory (they stay in the page cache)
        if self.file_map is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        page = mmap.PAGESIZE
        start = self.file_offset // page * page
        self.file_map.madvise(mmap.MADV_DONTNEED, start, self.file_offset + self.data.nbytes - start)


def read_safetensors(path):  # Path -> dict[str, StoredTensor]
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            if size < 8:
                raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes, no header)")
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror or e})") from None
    n = int.from_bytes(mm[:8], "little")
    if n > _MAX_HEADER or 8 + n > size:
        raise CheckpointError(
            f"{path}: corrupt or truncated safetensors file (header claims {n} bytes, file has {size})"
        )
    try:
        header = json.loads(bytes(mm[8 : 8 + n]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: corrupt safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
    data_start, data_size = 8 + n, size - 8 - n
    buf = np.frombuffer(mm, dtype=np.uint8)
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], [int(s) for s in info["shape"]], info["data_offsets"]
        except (TypeError, KeyError, ValueError) as e:
            raise CheckpointError(f"{path}: tensor {name!r} has a malformed header entry ({e!r})") from None
        if dtype not in _STORED:
            raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {dtype!r}")
        np_dtype = _STORED[dtype]
        count = int(np.prod(shape, dtype=np.int64))
        if not (0 <= begin <= end <= data_size) or end - begin != count * np_dtype.itemsize:
            raise CheckpointError(
                f"{path}: tensor {name!r} ({dtype}, shape {tuple(shape)}) has data offsets [{begin}, {end}] "
                f"that do not fit the file ({data_size} data bytes): the file is truncated or corrupt"
            )
        raw = buf[data_start + begin : data_start + end]
        tensors[name] = StoredTensor(name, dtype, raw.view(np_dtype).reshape(shape), mm, data_start + begin)
    return tensors


def to_dtype(t, dtype):  # StoredTensor, np.dtype -> array in dtype (a view when no conversion is needed)
    if t.dtype not in FLOAT_DTYPES:
        raise CheckpointError(f"tensor {t.name!r} is {t.dtype}, expected a floating-point tensor")
    data = t.data
    if t.dtype == "BF16":  # bfloat16 is the top half of a float32
        data = (data.astype(np.uint32) << 16).view(np.float32)
    if data.dtype == dtype:
        return data
    return data.astype(dtype)


# ------------------------------------------------------------------ encoder weights


@dataclass
class LayerWeights:
    # Matrices are stored [in, out], transposed from torch's Linear [out, in], so a layer is `x @ W`
    # on a contiguous matrix: measured 7% faster than `x @ W.T` for a batch, 40% for one query.
    qkv_w: np.ndarray  # [D, 3D] query, key, value projections side by side (one matmul instead of three)
    qkv_b: np.ndarray  # [3D]
    attn_out_w: np.ndarray  # [D, D]
    attn_out_b: np.ndarray  # [D]
    attn_ln_g: np.ndarray  # [D]  layer norm after attention + residual
    attn_ln_b: np.ndarray  # [D]
    ffn_in_w: np.ndarray  # [D, F]
    ffn_in_b: np.ndarray  # [F]
    ffn_out_w: np.ndarray  # [F, D]
    ffn_out_b: np.ndarray  # [D]
    ffn_ln_g: np.ndarray  # [D]  layer norm after feed-forward + residual
    ffn_ln_b: np.ndarray  # [D]


@dataclass
class EncoderWeights:
    word: np.ndarray  # [V, D] word-piece embeddings
    position: np.ndarray  # [P, D] learned absolute positions
    token_type: np.ndarray  # [D] token-type 0's row (sentence embedding uses one segment); zeros for DistilBERT
    emb_ln_g: np.ndarray  # [D]
    emb_ln_b: np.ndarray  # [D]
    layers: list  # [L] LayerWeights


# Tensor names inside one block, relative to its prefix, per architecture.
_LAYER_NAMES = {
    "bert": dict(
        prefix="encoder.layer.{i}.",
        q="attention.self.query",
        k="attention.self.key",
        v="attention.self.value",
        attn_out="attention.output.dense",
        attn_ln="attention.output.LayerNorm",
        ffn_in="intermediate.dense",
        ffn_out="output.dense",
        ffn_ln="output.LayerNorm",
    ),
    "distilbert": dict(
        prefix="transformer.layer.{i}.",
        q="attention.q_lin",
        k="attention.k_lin",
        v="attention.v_lin",
        attn_out="attention.out_lin",
        attn_ln="sa_layer_norm",
        ffn_in="ffn.lin1",
        ffn_out="ffn.lin2",
        ffn_ln="output_layer_norm",
    ),
}
# Old TF-converted checkpoints name layer-norm parameters gamma/beta; transformers renames them too.
_LEGACY = {".weight": ".gamma", ".bias": ".beta"}


class _TensorFinder:
    """Looks tensors up by their bare name, with or without the model prefix, checking shapes."""

    def __init__(self, tensors, arch, path, dtype):
        self.tensors, self.path, self.dtype = tensors, path, dtype
        model_prefix = arch + "."  # "bert." / "distilbert." in checkpoints saved from a task model
        self.prefixes = ("", model_prefix)

    def get_transposed(self, names, shape):  # [out_i, in] tensors -> one contiguous [in, sum out_i] copy
        out = empty_aligned((shape[1], sum(shape[0])), self.dtype)
        # A transposing copy reads one side with a stride. Taken 64 bytes of output columns at a
        # time, each pass writes exactly one cache line of every output row and reads a few whole
        # input rows: DistilBERT-base loads in ~135 ms instead of ~205 (one unblocked copy).
        step = max(1, CACHE_LINE // out.itemsize)
        col = 0
        for n, rows in zip(names, shape[0]):  # one copy per tensor, straight into its columns
            w = self.get(n, (rows, shape[1]))
            for r in range(0, rows, step):
                out[:, col + r : col + min(r + step, rows)] = w[r : r + step].T
            col += rows
            self.stored(n).release()  # the file's pages were only needed for the copy
        return out

    def stored(self, name):
        return next(self.tensors[p + name] for p in self.prefixes if p + name in self.tensors)

    def get(self, name, shape):  # str, tuple -> array in the compute dtype
        candidates = [p + name for p in self.prefixes]
        for suffix, legacy in _LEGACY.items():
            if name.endswith(suffix) and "LayerNorm" in name:
                candidates += [p + name[: -len(suffix)] + legacy for p in self.prefixes]
        for key in candidates:
            if key in self.tensors:
                t = self.tensors[key]
                if tuple(t.data.shape) != tuple(shape):
                    raise CheckpointError(
                        f"{self.path}: tensor {key!r} has shape {tuple(t.data.shape)}, "
                        f"expected {tuple(shape)} from config.json"
                    )
                a = to_dtype(t, self.dtype)
                # Vectors (biases, layer-norm gains) are tiny: own writable copies keep the Numba
                # kernels to one compiled signature. Matrices stay zero-copy views for BLAS.
                return np.array(a) if a.ndim == 1 else a
        raise CheckpointError(f"{self.path}: missing tensor {name!r} (looked for {', '.join(map(repr, candidates))})")


def empty_aligned(shape, dtype):  # -> an uninitialised C-contiguous array starting on a cache line
    """np.empty starts 16 bytes into a cache line; then every 64-byte vector load of a weight row
    straddles two lines. Aligned, the query's matmuls (kernels/matmul.py) run 5-14% faster."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape))
    buffer = np.empty(n * dtype.itemsize + CACHE_LINE, dtype=np.uint8)
    start = -buffer.ctypes.data % CACHE_LINE
    return buffer[start : start + n * dtype.itemsize].view(dtype).reshape(shape)


def load_encoder_weights(path, cfg, dtype):  # Path, EncoderConfig, np.dtype -> EncoderWeights
    tensors = read_safetensors(path)
    find = _TensorFinder(tensors, cfg.arch, path, dtype)
    D, F = cfg.dim, cfg.ffn_dim
    if cfg.arch == "bert":
        types = find.get("embeddings.token_type_embeddings.weight", (cfg.type_vocab_size, D))
        token_type = np.array(types[0])  # an own writable copy, as find.get gives every vector
    else:
        token_type = np.zeros(D, dtype=dtype)
    names = _LAYER_NAMES[cfg.arch]

    def layer(i):  # -> LayerWeights of layer i
        p = names["prefix"].format(i=i)

        def lin(keys, out_dims, in_dim):  # one or more Linear layers -> ([in, sum out], [sum out])
            w = find.get_transposed([p + names[k] + ".weight" for k in keys], (out_dims, in_dim))
            b = np.concatenate([find.get(p + names[k] + ".bias", (o,)) for k, o in zip(keys, out_dims)])
            return w, b

        def ln(key):
            return find.get(p + names[key] + ".weight", (D,)), find.get(p + names[key] + ".bias", (D,))

        return LayerWeights(
            *lin(["q", "k", "v"], [D, D, D], D),
            *lin(["attn_out"], [D], D),
            *ln("attn_ln"),
            *lin(["ffn_in"], [F], D),
            *lin(["ffn_out"], [D], F),
            *ln("ffn_ln"),
        )

    # Several layers at a time, one per worker (MINIBERT_NUM_THREADS, else one per core): the
    # transposing copies are most of a load, and NumPy releases the GIL while it copies
    # (DistilBERT-base on 2 cores: load median 109 instead of 207 ms here, NOTES section 16). Errors
    # still come out in layer order; peak RSS is unchanged (each tensor's pages are released after
    # its copy, and a page two tensors share is read again from the page cache if dropped early).
    workers = min(n_workers(), cfg.n_layers)
    if workers <= 1:
        layers = [layer(i) for i in range(cfg.n_layers)]
    else:
        with ThreadPoolExecutor(workers, thread_name_prefix="minibert-load") as pool:
            layers = list(pool.map(layer, range(cfg.n_layers)))
    return EncoderWeights(
        word=find.get("embeddings.word_embeddings.weight", (cfg.vocab_size, D)),
        position=find.get("embeddings.position_embeddings.weight", (cfg.max_positions, D)),
        token_type=token_type,
        emb_ln_g=find.get("embeddings.LayerNorm.weight", (D,)),
        emb_ln_b=find.get("embeddings.LayerNorm.bias", (D,)),
        layers=layers,
    )
