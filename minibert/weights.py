"""Reading ``model.safetensors`` without torch, and naming its tensors for the encoder.

A safetensors file is: 8 bytes (little-endian u64) = header length n, then n bytes of JSON
``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``, then the raw
little-endian tensor bytes, offsets relative to the end of the header, back to back.

A loaded model owns every weight it uses: each tensor is read once into memory the model owns,
and the file is closed when loading ends. A memory-mapped view would save the copy of the
embedding tables, but a file changed or truncated underneath it would change the embeddings
silently or kill the process (SIGBUS); model files are often replaced in place by downloads.
The header is checked as the reference ``safetensors`` library checks it (known dtypes, shapes,
no duplicate names, tensors back to back covering the data exactly) and the tensors against
config.json, before any tensor is read.
"""

import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import CheckpointError, parse_json
from .threads import n_workers

CACHE_LINE = 64  # bytes: the unit the transposing copy writes and the weights are aligned to

# safetensors dtype -> NumPy dtype of the stored bytes
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
# A BERT checkpoint's header is tens of KB; the format allows 100 MB, which a hostile file would
# spend on junk entries that cost seconds and gigabytes to parse.
MAX_HEADER_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class StoredTensor:
    name: str
    dtype: str  # safetensors dtype string, e.g. "F16"
    shape: tuple  # as stored
    offset: int  # where its bytes start in the file
    nbytes: int

    @property
    def size(self):  # elements
        return int(np.prod(self.shape, dtype=np.int64))


@dataclass(frozen=True)
class SafetensorsFile:
    path: Path
    tensors: dict  # name -> StoredTensor, in header order
    metadata: dict  # the header's "__metadata__" (str -> str)
    file_size: int
    mtime_ns: int


def _whole_int(value):  # a JSON integer (not a bool), or None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def read_safetensors(path):  # Path -> SafetensorsFile: the header, checked; no tensor data is read
    path = Path(path)
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            size = st.st_size
            if size < 8:
                raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes, no header)")
            n = int.from_bytes(f.read(8), "little")
            if 8 + n > size:
                raise CheckpointError(
                    f"{path}: corrupt or truncated safetensors file (header claims {n} bytes, file has {size})"
                )
            if n > MAX_HEADER_BYTES:
                raise CheckpointError(
                    f"{path}: safetensors header of {n} bytes is larger than minibert reads "
                    f"({MAX_HEADER_BYTES} bytes; a BERT checkpoint's is tens of KB)"
                )
            raw = f.read(n)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror or e})") from None
    if len(raw) != n:
        raise CheckpointError(f"{path}: truncated while reading its header")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{path}: corrupt safetensors header ({e})") from None
    header = parse_json(text, f"{path}: corrupt safetensors header", reject_duplicates=True)
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{path}: the safetensors header's __metadata__ must map names to strings")
    data_start, data_size = 8 + n, size - 8 - n
    tensors = {}
    for name, info in header.items():
        where = f"{path}: tensor {name!r}"
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise CheckpointError(f"{where} has a malformed header entry (expected dtype, shape, data_offsets)")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(dtype, str) or dtype not in _STORED:
            raise CheckpointError(f"{where} has unsupported dtype {dtype!r}; known: {', '.join(_STORED)}")
        if not isinstance(shape, list) or any(_whole_int(d) is None or d < 0 for d in shape):
            raise CheckpointError(f"{where} has shape {shape!r}; expected a list of non-negative integers")
        if not isinstance(offsets, list) or len(offsets) != 2 or any(_whole_int(o) is None for o in offsets):
            raise CheckpointError(f"{where} has data_offsets {offsets!r}; expected [begin, end] integers")
        begin, end = offsets
        nbytes = int(np.prod(shape, dtype=object)) * _STORED[dtype].itemsize  # exact, never overflows
        if not (0 <= begin <= end <= data_size) or end - begin != nbytes:
            raise CheckpointError(
                f"{where} ({dtype}, shape {tuple(shape)}) has data offsets [{begin}, {end}] "
                f"that do not fit the file ({data_size} data bytes): the file is truncated or corrupt"
            )
        tensors[name] = StoredTensor(name, dtype, tuple(shape), data_start + begin, nbytes)
    # As the reference library: tensors back to back from the start of the data, none overlapping
    # another (two tensors sharing bytes would be silently the same weights), no bytes left over.
    covered = 0
    for t in sorted(tensors.values(), key=lambda t: (t.offset, t.nbytes)):
        if t.offset - data_start != covered:
            problem = "overlaps the tensor before it" if t.offset - data_start < covered else "leaves a gap before it"
            raise CheckpointError(f"{path}: tensor {t.name!r} {problem} in the data section: the file is corrupt")
        covered += t.nbytes
    if covered != data_size:
        raise CheckpointError(
            f"{path}: the tensors cover {covered} of the file's {data_size} data bytes: "
            "the file is truncated or corrupt"
        )
    return SafetensorsFile(path, tensors, metadata, size, st.st_mtime_ns)


def read_tensor(fd, t, path):  # file descriptor, StoredTensor -> [shape] array in the stored dtype (owned)
    out = np.empty(t.shape, dtype=_STORED[t.dtype])
    view = memoryview(out.reshape(-1).view(np.uint8)) if t.nbytes else memoryview(b"")
    done = 0
    while done < t.nbytes:  # os.preadv: no shared file position, so layers may be read at once
        got = os.preadv(fd, [view[done:]], t.offset + done)
        if got <= 0:
            raise CheckpointError(f"{path}: truncated while reading tensor {t.name!r} (did the file change?)")
        done += got
    return out


def to_dtype(data, stored_dtype, dtype, name):  # array as stored, "F16", np.dtype -> array in dtype
    if stored_dtype not in FLOAT_DTYPES:
        raise CheckpointError(f"tensor {name!r} is {stored_dtype}, expected a floating-point tensor")
    if stored_dtype == "BF16":  # bfloat16 is the top half of a float32
        data = (data.astype(np.uint32) << 16).view(np.float32)
    return data if data.dtype == dtype else data.astype(dtype)


# ------------------------------------------------------------------ encoder weights


@dataclass
class LayerWeights:
    # Matrices are stored [in, out], transposed from torch's Linear [out, in], so a layer is `x @ W`
    # on a contiguous matrix: BLAS skips a transposed read, the query kernel streams W's rows in order.
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
# Tensors a checkpoint may carry that a sentence encoder does not use: buffers, and the heads of
# task models (pooler, masked-LM, classifiers). Anything else under the embeddings or the layers
# that the encoder does not read means the checkpoint is not what config.json describes.
_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")


class _TensorFinder:
    """Looks tensors up by their bare name, with or without the model prefix, checking shapes;
    remembers what it found, so that what is left over can be reported."""

    def __init__(self, st, arch, dtype):
        self.st, self.path, self.dtype = st, st.path, dtype
        self.prefixes = ("", arch + ".")  # "bert." / "distilbert." in checkpoints saved from a task model
        self.used = set()

    def find(self, name, shape):  # str, tuple -> StoredTensor, checked against config.json's shape
        candidates = [p + name for p in self.prefixes]
        for suffix, legacy in _LEGACY.items():
            if name.endswith(suffix) and "LayerNorm" in name:
                candidates += [p + name[: -len(suffix)] + legacy for p in self.prefixes]
        for key in candidates:
            if key in self.st.tensors:
                t = self.st.tensors[key]
                if t.shape != tuple(shape):
                    raise CheckpointError(
                        f"{self.path}: tensor {key!r} has shape {t.shape}, expected {tuple(shape)} from config.json"
                    )
                if t.dtype not in FLOAT_DTYPES:
                    raise CheckpointError(f"{self.path}: tensor {key!r} is {t.dtype}, expected a floating-point tensor")
                self.used.add(key)
                return t
        raise CheckpointError(f"{self.path}: missing tensor {name!r} (looked for {', '.join(map(repr, candidates))})")


def _layer_indices(st, arch):  # -> {int}: the block numbers the checkpoint holds tensors for
    prefix = re.escape(_LAYER_NAMES[arch]["prefix"].split("{")[0])
    pattern = re.compile(rf"^(?:{re.escape(arch)}\.)?{prefix}(\d+)\.")
    return {int(m.group(1)) for name in st.tensors if (m := pattern.match(name))}


def empty_aligned(shape, dtype):  # -> an uninitialised C-contiguous array starting on a cache line
    """np.empty starts 16 bytes into a cache line; then every 64-byte vector load of a weight row
    straddles two lines, and the query's matmuls (kernels/matmul.py) wait on twice the lines."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape))
    buffer = np.empty(n * dtype.itemsize + CACHE_LINE, dtype=np.uint8)
    start = -buffer.ctypes.data % CACHE_LINE
    return buffer[start : start + n * dtype.itemsize].view(dtype).reshape(shape)


def load_encoder_weights(path, cfg, dtype, matrix=None):  # Path, EncoderConfig, np.dtype -> EncoderWeights
    """``matrix``: applied to each dense layer's [out, in] matrix (the checkpoint's layout) as it is
    read, in place of the transposed [in, out] float copy (precision="int8" quantizes there, so that
    the float32 matrices never all exist at once)."""
    st = read_safetensors(path)
    held = _layer_indices(st, cfg.arch)
    if held != set(range(cfg.n_layers)):
        blocks = sorted(held)
        have = "none" if not held else f"{blocks[0]}-{blocks[-1]}" if len(held) == blocks[-1] + 1 else str(blocks[:8])
        raise CheckpointError(
            f"{path}: config.json describes {cfg.n_layers} encoder blocks, the checkpoint holds blocks {have}"
        )
    find = _TensorFinder(st, cfg.arch, dtype)
    D, F, names = cfg.dim, cfg.ffn_dim, _LAYER_NAMES[cfg.arch]
    # Every tensor is found and its shape checked before any is read: a bad checkpoint costs nothing.
    emb = {
        "word": find.find("embeddings.word_embeddings.weight", (cfg.vocab_size, D)),
        "position": find.find("embeddings.position_embeddings.weight", (cfg.max_positions, D)),
        "emb_ln_g": find.find("embeddings.LayerNorm.weight", (D,)),
        "emb_ln_b": find.find("embeddings.LayerNorm.bias", (D,)),
    }
    if cfg.arch == "bert":
        emb["token_type"] = find.find("embeddings.token_type_embeddings.weight", (cfg.type_vocab_size, D))
    linears = (("qkv", ("q", "k", "v"), (D, D, D), D), ("attn_out", ("attn_out",), (D,), D),
               ("ffn_in", ("ffn_in",), (F,), D), ("ffn_out", ("ffn_out",), (D,), F))  # fmt: skip
    plan = []
    for i in range(cfg.n_layers):
        p = names["prefix"].format(i=i)
        lins = {
            field: ([find.find(p + names[k] + ".weight", (o, d_in)) for k, o in zip(keys, outs)],
                    [find.find(p + names[k] + ".bias", (o,)) for k, o in zip(keys, outs)])
            for field, keys, outs, d_in in linears
        }  # fmt: skip
        lns = {key: (find.find(p + names[key] + ".weight", (D,)), find.find(p + names[key] + ".bias", (D,)))
               for key in ("attn_ln", "ffn_ln")}  # fmt: skip
        plan.append((lins, lns))
    encoder_parts = ("embeddings.", names["prefix"].split("{")[0])
    bare = {n: n.removeprefix(cfg.arch + ".") for n in st.tensors}
    unused = [n for n, b in bare.items() if n not in find.used and b not in _BUFFERS and b.startswith(encoder_parts)]
    if unused:
        raise CheckpointError(
            f"{path}: tensor(s) {', '.join(map(repr, unused[:5]))}{' ...' if len(unused) > 5 else ''} are not part of "
            f"the {cfg.arch} encoder config.json describes: the checkpoint and its config do not belong together"
        )

    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror or e})") from None
    try:

        def read(t):  # StoredTensor -> array in the compute dtype, owned
            return to_dtype(read_tensor(fd, t, path), t.dtype, dtype, t.name)

        def transposed(tensors):  # [out_i, in] tensors -> one contiguous [in, sum out_i] copy
            out = empty_aligned((tensors[0].shape[1], sum(t.shape[0] for t in tensors)), dtype)
            # A transposing copy reads one side with a stride. Taken 64 bytes of output columns at a
            # time, each pass writes exactly one cache line of every output row and reads a few whole
            # input rows, instead of touching a line per element.
            step = max(1, CACHE_LINE // out.itemsize)
            col = 0
            for t in tensors:  # one copy per tensor, straight into its columns
                w = read(t)
                for r in range(0, len(w), step):
                    out[:, col + r : col + min(r + step, len(w))] = w[r : r + step].T
                col += len(w)
            return out

        def layer(i):  # -> LayerWeights of block i
            lins, lns = plan[i]
            fields = {}
            for field, (ws, bs) in lins.items():
                try:
                    if matrix is None:
                        fields[field + "_w"] = transposed(ws)
                    else:  # [out, in] as stored: Q, K and V one after the other
                        rows = [read(t) for t in ws]
                        fields[field + "_w"] = matrix(rows[0] if len(rows) == 1 else np.concatenate(rows))
                except ValueError:  # (int8_matrix refuses NaN and inf)
                    raise CheckpointError(
                        f"{path}: block {i}'s {field} weights hold non-finite values (NaN or inf): "
                        "they cannot be quantized to int8"
                    ) from None
                fields[field + "_b"] = np.concatenate([read(b) for b in bs])
            for key, (g, b) in lns.items():
                fields[key + "_g"], fields[key + "_b"] = read(g), read(b)
            return LayerWeights(**fields)

        # Several blocks at a time, one per worker (MINIBERT_NUM_THREADS, else one per core): the
        # transposing copies are most of a load, and NumPy releases the GIL while it copies.
        # With ``matrix`` (int8) one at a time: each worker's malloc arena would keep its own block's
        # float32 copies, and the point of int8 is a smaller model.
        workers = 1 if matrix is not None else min(n_workers(), cfg.n_layers)
        if workers <= 1:
            layers = [layer(i) for i in range(cfg.n_layers)]
        else:
            with ThreadPoolExecutor(workers, thread_name_prefix="minibert-load") as pool:
                layers = list(pool.map(layer, range(cfg.n_layers)))
        token_type = read(emb["token_type"])[0] if cfg.arch == "bert" else np.zeros(D, dtype=dtype)
        weights = EncoderWeights(
            word=read(emb["word"]),
            position=read(emb["position"]),
            token_type=np.ascontiguousarray(token_type),
            emb_ln_g=read(emb["emb_ln_g"]),
            emb_ln_b=read(emb["emb_ln_b"]),
            layers=layers,
        )
        after = os.fstat(fd)
    finally:
        os.close(fd)
    if (after.st_size, after.st_mtime_ns) != (st.file_size, st.mtime_ns):
        raise CheckpointError(f"{path}: the file changed while it was being loaded; load it again")
    return weights
