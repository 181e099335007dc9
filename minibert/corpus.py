"""Embed a corpus bigger than memory into shards, resumably, and search the shards.

    minibert.corpus.embed(model, "docs.jsonl", "docs.emb/", field="text")   # -> the manifest (a dict)
    corpus = minibert.corpus.open_corpus("docs.emb/")                       # memory-mapped shards
    corpus.search(model.encode(["a query"]), k=10)                           # exact top-k, shard by shard

The input is read shard by shard (``shard_size`` rows), so memory is bounded by a shard, not by the
corpus. Each shard is written to a temporary file and renamed into place, then the manifest that
lists it (with its checksum) is renamed over the previous one: a run killed at any moment, SIGKILL
included, leaves every listed shard complete, and the same call resumes after the last of them.
Every text's embedding is computed alone (nothing is padded), so shard boundaries, batch sizes and
threads cannot change a bit: a resumed run's output equals an uninterrupted one's.

Shard i holds rows [i * shard_size, (i + 1) * shard_size) as ``shard-0000i.npy`` ([rows, dim], the
output precision's dtype), ``shard-0000i.ids.json`` when the input has an id field, and with
``parquet=True`` (pyarrow) ``shard-0000i.parquet`` too: columns row, id and embedding.
"""

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from . import util
from .errors import MinibertError

FORMAT = "minibert-corpus/1"
MANIFEST = "manifest.json"
PRECISIONS = ("float32", "float16", "int8", "uint8", "binary", "ubinary")
INPUT_FORMATS = {".txt": "txt", ".jsonl": "jsonl", ".parquet": "parquet", ".csv": "csv"}
DEFAULT_SHARD_SIZE = 5_000
_BLOCK = 1 << 20  # bytes hashed at a time


class CorpusError(MinibertError, ValueError):
    """A problem with a corpus input, a corpus directory or its shards: the message names the file."""


# ------------------------------------------------------------------ reading the input, row by row


def input_format(path):  # -> "txt" | "jsonl" | "parquet" | "csv", from the file name
    fmt = INPUT_FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise CorpusError(f"{path}: use a .txt, .jsonl, .parquet or .csv file (a text per line or row)")
    return fmt


def _pyarrow(path):
    try:
        import pyarrow  # noqa: F401 (the optional extra)
    except ImportError:
        raise CorpusError(
            f"{path}: reading .parquet and .csv needs pyarrow: pip install 'minibert-numba[corpus]'"
        ) from None
    import pyarrow.csv
    import pyarrow.parquet

    return pyarrow


def _line_text(raw, path, line_no):  # bytes of one line -> str, "\n" and a "\r" before it removed
    if raw.endswith(b"\n"):
        raw = raw[:-1]
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorpusError(f"{path}:{line_no}: not UTF-8 text ({e.reason} at byte {e.start} of the line)") from None


def _json_row(line, path, line_no, field, id_field):  # one .jsonl line -> (text, id)
    try:
        obj = json.loads(line)
    except (json.JSONDecodeError, RecursionError, ValueError) as e:
        raise CorpusError(f"{path}:{line_no}: not valid JSON ({getattr(e, 'msg', 'nested too deeply')})") from None
    if isinstance(obj, str) and field is None and id_field is None:
        return obj, None
    key = field or "text"
    if not isinstance(obj, dict) or key not in obj:
        raise CorpusError(f"{path}:{line_no}: no field {key!r} (choose one with --field)")
    if not isinstance(obj[key], str):
        raise CorpusError(f"{path}:{line_no}: field {key!r} is {type(obj[key]).__name__}, not a string")
    ident = None
    if id_field is not None:
        if id_field not in obj:
            raise CorpusError(f"{path}:{line_no}: no id field {id_field!r}")
        ident = obj[id_field]
        if isinstance(ident, bool) or not isinstance(ident, (str, int)):
            raise CorpusError(f"{path}:{line_no}: id field {id_field!r} is {type(ident).__name__}, not a string or int")
    return obj[key], ident


def _lines(path, start):  # (line_no, bytes, end_offset) from byte offset start = (offset, line_no)
    offset, line_no = start
    with open(path, "rb") as f:
        f.seek(offset)
        for raw in f:
            offset += len(raw)
            line_no += 1
            yield line_no, raw, offset


def _arrow_batches(path, fmt, columns, start_row):  # -> pyarrow RecordBatches from row start_row on
    pa = _pyarrow(path)
    if fmt == "parquet":
        try:
            pf = pa.parquet.ParquetFile(path)
        except Exception as e:  # noqa: BLE001 (pyarrow raises several types for a damaged file)
            raise CorpusError(f"{path}: not a readable Parquet file ({e})") from None
        names = pf.schema_arrow.names
        _check_columns(path, names, columns)
        skip, groups = start_row, []
        for g in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            if skip >= n and not groups:
                skip -= n
                continue
            groups.append(g)
        if groups:
            for batch in pf.iter_batches(batch_size=8192, row_groups=groups, columns=columns):
                if skip >= batch.num_rows:
                    skip -= batch.num_rows
                    continue
                yield batch.slice(skip)
                skip = 0
        return
    try:
        reader = pa.csv.open_csv(
            path, convert_options=pa.csv.ConvertOptions(column_types={c: pa.string() for c in columns})
        )
    except Exception as e:  # noqa: BLE001
        raise CorpusError(f"{path}: not a readable CSV file ({e})") from None
    _check_columns(path, reader.schema.names, columns)
    skip = start_row
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            return
        except Exception as e:  # noqa: BLE001
            raise CorpusError(f"{path}: CSV parse error after row {start_row - skip} ({e})") from None
        if skip >= batch.num_rows:
            skip -= batch.num_rows
            continue
        yield batch.select(columns).slice(skip)
        skip = 0


def _check_columns(path, names, columns):
    for c in columns:
        if c not in names:
            has = ", ".join(map(repr, names))
            raise CorpusError(f"{path}: no column {c!r} (it has {has}); choose one with --field")


def iter_rows(path, fmt, field=None, id_field=None, start=(0, 0)):  # -> (text, id, position) per row
    """From ``start`` on (a byte offset and line number for text files, a row number otherwise); a
    row's position is where the next row starts, so that a resumed run can seek straight there."""
    if fmt == "txt":
        for line_no, raw, end in _lines(path, start):
            yield _line_text(raw, path, line_no), None, (end, line_no)
    elif fmt == "jsonl":
        for line_no, raw, end in _lines(path, start):
            line = _line_text(raw, path, line_no)
            if line.strip():  # blank lines are not rows
                text, ident = _json_row(line, path, line_no, field, id_field)
                yield text, ident, (end, line_no)
    else:
        key = field or "text"
        columns = [key] + ([id_field] if id_field is not None and id_field != key else [])
        row = start[0]
        for batch in _arrow_batches(path, fmt, columns, row):
            texts = batch.column(key).to_pylist()
            ids = batch.column(id_field).to_pylist() if id_field is not None else [None] * len(texts)
            for text, ident in zip(texts, ids):
                row += 1
                if text is None:  # (row numbers from 1, as a spreadsheet's data rows)
                    raise CorpusError(f"{path}: row {row}: column {key!r} is empty (null)")
                if id_field is not None and ident is None:
                    raise CorpusError(f"{path}: row {row}: id column {id_field!r} is empty (null)")
                yield str(text), ident, (row, row)


def scan_input(path, fmt, field=None, id_field=None):  # -> {"size", "sha256", "rows"}: every row checked first
    """Reads the whole input once before any embedding: its hash (a resumed run must see the same
    input) and its row count (for the ETA), and every row's check, so that a bad line stops the run
    before any work that would have to be thrown away when the file is fixed."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise CorpusError(f"input file {path} does not exist") from None
    if path.is_dir():
        raise CorpusError(f"input {path} is a directory, expected a file")
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(_BLOCK), b""):
                h.update(block)
    except PermissionError:
        raise CorpusError(f"input file {path} is not readable (permission denied)") from None
    rows = sum(1 for _ in iter_rows(path, fmt, field, id_field))
    return {"size": size, "sha256": h.hexdigest(), "rows": rows}


# ------------------------------------------------------------------ writing shards and the manifest


class _HashingFile:  # a file object that hashes what is written to it
    def __init__(self, f):
        self.f, self.sha256, self.size = f, hashlib.sha256(), 0

    closed = False

    def write(self, b):
        self.sha256.update(b)
        self.size += memoryview(b).nbytes
        return self.f.write(b)

    def tell(self):
        return self.size

    def flush(self):
        self.f.flush()

    def writable(self):
        return True


def _write_atomically(path, write):  # -> (size, sha256) of what write(file) wrote, renamed into place
    """Written to a temporary file, flushed to the disk and renamed: a file under its final name is
    complete, whenever the process dies."""
    try:
        return _write_then_rename(path, write)
    except OSError as e:  # a full disk, a quota, a directory removed under the run: what was done stays
        raise CorpusError(f"cannot write {path} ({e.strerror or e}); the shards already written are kept") from None


def _write_then_rename(path, write):
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        os.chmod(fd, 0o666 & ~_umask())  # (mkstemp's file is private; an output file gets the umask's mode)
        with os.fdopen(fd, "wb") as f:
            hf = _HashingFile(f)
            write(hf)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    finally:
        if tmp is not None:
            os.unlink(tmp)
    return hf.size, hf.sha256.hexdigest()


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _sync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _file_sha256(path):  # -> (size, hex digest)
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            h.update(block)
            size += len(block)
    return size, h.hexdigest()


def _out_dtype(precision, float_dtype):
    return {"float32": float_dtype, "float16": np.float16, "uint8": np.uint8, "ubinary": np.uint8}.get(
        precision, np.int8
    )


def quantize(emb, precision, ranges):  # [n, dim] floats -> the output precision (as util.quantize_embeddings)
    if precision == "float32":
        return emb
    if precision == "float16":
        return emb.astype(np.float16)
    return util.quantize_embeddings(emb, precision, ranges=ranges)


def _shard_name(i):
    return f"shard-{i:05d}"


def _write_shard(out, i, emb, ids, first_row, formats):  # -> the manifest's entry for this shard's files
    entry = {}
    size, digest = _write_atomically(out / f"{_shard_name(i)}.npy", lambda f: np.save(f, emb, allow_pickle=False))
    entry["npy"] = {"file": f"{_shard_name(i)}.npy", "bytes": size, "sha256": digest}
    if ids is not None:
        data = json.dumps(ids, ensure_ascii=False, default=str).encode("utf-8")
        size, digest = _write_atomically(out / f"{_shard_name(i)}.ids.json", lambda f: f.write(data))
        entry["ids"] = {"file": f"{_shard_name(i)}.ids.json", "bytes": size, "sha256": digest}
    if "parquet" in formats:
        import pyarrow as pa
        import pyarrow.parquet as pq

        cols = {"row": pa.array(np.arange(first_row, first_row + len(emb), dtype=np.int64))}
        if ids is not None:
            cols["id"] = pa.array(ids)
        flat = pa.array(np.ascontiguousarray(emb).reshape(-1))
        cols["embedding"] = pa.FixedSizeListArray.from_arrays(flat, emb.shape[1])
        table = pa.table(cols)
        # (Written by pyarrow to its own file, then hashed: no second copy of the shard in memory.
        # Embeddings do not repeat: dictionary encoding would only cost memory.)
        size, digest = _write_atomically(
            out / f"{_shard_name(i)}.parquet", lambda f: pq.write_table(table, f, use_dictionary=["id"])
        )
        del table, cols, flat
        entry["parquet"] = {"file": f"{_shard_name(i)}.parquet", "bytes": size, "sha256": digest}
    return entry


def _save_manifest(out, manifest):
    data = (json.dumps(manifest, indent=1, ensure_ascii=False) + "\n").encode("utf-8")
    _write_atomically(out / MANIFEST, lambda f: f.write(data))
    _sync_dir(out)


def read_manifest(out):  # Path -> the manifest dict, or a CorpusError naming what is wrong
    path = Path(out) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CorpusError(f"{out} holds no {MANIFEST}: not a corpus directory written by minibert embed") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorpusError(f"{path} is not readable JSON ({e}); rerun minibert embed with --overwrite") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CorpusError(f"{path}: not a {FORMAT} manifest")
    for key in ("model", "options", "input", "embedding", "shards", "rows"):
        if key not in manifest:
            raise CorpusError(f"{path}: the manifest has no {key!r} entry")
    _check_manifest(manifest, path)
    return manifest


def _check_manifest(m, path):  # the fields minibert reads, of the types it reads them as (it may be hand-edited)
    def bad(where, expected):
        return CorpusError(f"{path}: {where} must be {expected}; rerun minibert embed with --overwrite")

    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    for key in ("model", "options", "input", "embedding"):
        if not isinstance(m[key], dict):
            raise bad(key, "an object")
    if not is_int(m["rows"]):
        raise bad("rows", "a whole number")
    if not isinstance(m["shards"], list):
        raise bad("shards", "a list")
    e = m["embedding"]
    if not is_int(e.get("dim")) or e["dim"] == 0:
        raise bad("embedding.dim", "a positive whole number")
    try:
        np.dtype(e.get("dtype"))
    except TypeError:
        raise bad("embedding.dtype", "a NumPy dtype name") from None
    if m["options"].get("precision") not in PRECISIONS:
        raise bad("options.precision", f"one of {', '.join(PRECISIONS)}")
    if e.get("ranges") is not None:
        r = np.asarray(e["ranges"], dtype=object)
        if r.shape != (2, e["dim"]) or not all(isinstance(v, (int, float)) for v in r.ravel()):
            raise bad("embedding.ranges", f"[2, {e['dim']}] numbers")
    end = 0
    for i, shard in enumerate(m["shards"]):
        where = f"shards[{i}]"
        rows = shard.get("rows") if isinstance(shard, dict) else None
        if not (isinstance(rows, list) and len(rows) == 2 and all(map(is_int, rows)) and rows[0] == end < rows[1]):
            raise bad(f"{where}.rows", f"[{end}, a larger whole number] (shards follow each other)")
        end = rows[1]
        if shard.get("index") != i or not isinstance(shard.get("next"), list) or not all(map(is_int, shard["next"])):
            raise bad(f"{where}.index / next", f"{i} and a list of two whole numbers")
        for kind in ("npy", "ids", "parquet"):
            f = shard.get(kind)
            if f is None and kind != "npy":
                continue
            if not isinstance(f, dict) or not isinstance(f.get("file"), str) or not is_int(f.get("bytes")):
                raise bad(f"{where}.{kind}", "an object with file, bytes and sha256")
            if Path(f["file"]).name != f["file"] or f["file"] in ("", ".", ".."):
                raise bad(f"{where}.{kind}.file", "a file name inside the corpus directory")
            if not isinstance(f.get("sha256"), str):
                raise bad(f"{where}.{kind}.sha256", "a hex digest")
    if end > m["rows"]:
        raise bad("rows", f"at least the shards' {end}")


def _check_shard(out, shard):  # -> None when the shard's files are there and match their checksums, else why not
    for kind in ("npy", "ids", "parquet"):
        f = shard.get(kind)
        if f is None:
            continue
        path = Path(out) / f["file"]
        try:
            size, digest = _file_sha256(path)
        except FileNotFoundError:
            return f"{path} is missing"
        if size != f["bytes"]:
            return f"{path} holds {size} bytes, the manifest says {f['bytes']} (truncated or overwritten)"
        if digest != f["sha256"]:
            return f"{path} does not match its checksum in the manifest (corrupted)"
    return None


def _our_files(out):  # what a previous run may have left: shards, temporary files, the manifest
    return [
        p
        for p in Path(out).iterdir()
        if p.name == MANIFEST
        or (p.name.startswith("shard-") and p.suffix in (".npy", ".parquet", ".json"))
        or (p.name.startswith(".") and p.name.endswith(".partial"))
    ]


def _decisive(d):  # a manifest's parts without where things were (a moved input or model is the same one)
    if isinstance(d, dict):
        return {k: _decisive(v) for k, v in d.items() if k not in ("path", "name", "source")}
    return d


def _changes(old, new, prefix=""):  # two dicts -> "what: old -> new" for each value that differs
    changed = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += _changes(a, b, f"{prefix}{key}.")
        elif a != b:
            short = lambda v: (v[:12] + "...") if isinstance(v, str) and len(v) == 64 else v  # noqa: E731
            changed.append(f"{prefix}{key} {short(a)!r} -> {short(b)!r}")
    return changed


# ------------------------------------------------------------------ progress


class Progress:
    """texts/s, tokens/s and an ETA: redrawn in place on a terminal, a line every ``log_every``
    seconds otherwise (and one at the end)."""

    def __init__(self, total, done, stream, tty, log_every=60.0):
        self.total, self.done, self.stream, self.tty, self.log_every = total, done, stream, tty, log_every
        self.start = self.last = time.monotonic()
        self.texts = self.tokens = 0

    def update(self, texts, tokens):
        self.done += texts
        self.texts += texts
        self.tokens += tokens
        now = time.monotonic()
        if self.stream is None:
            return
        if self.tty and now - self.last >= 0.2:
            self.stream.write("\r" + self.line(now) + "\x1b[K")
            self.stream.flush()
            self.last = now
        elif not self.tty and self.log_every and now - self.last >= self.log_every:
            self.stream.write("minibert: " + self.line(now) + "\n")
            self.stream.flush()
            self.last = now

    def line(self, now):
        dt = max(now - self.start, 1e-9)
        rate = self.texts / dt
        left = max(self.total - self.done, 0)
        eta = f"ETA {_duration(left / rate)}" if rate > 0 and left else ""
        pct = f" ({100 * self.done / self.total:.1f}%)" if self.total else ""
        return (
            f"{self.done:,}/{self.total:,} texts{pct}  {rate:,.0f} texts/s  {self.tokens / dt:,.0f} tokens/s  {eta}"
        ).rstrip()

    def close(self):
        if self.stream is not None and self.tty:
            self.stream.write("\r" + self.line(time.monotonic()) + "\x1b[K\n")
            self.stream.flush()


def _duration(s):
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


# ------------------------------------------------------------------ embedding a corpus


def _model_entry(model, name):
    weights = model.pipeline.transformer_dir / "model.safetensors"
    return {
        "name": str(name),
        "path": str(model.path.resolve()),
        "source": str(model.source),
        "fingerprint": model.fingerprint(),
        "weights_sha256": _file_sha256(weights)[1],
        "arch": model.config.arch,
        "pooling": list(model.pooling_modes),
        "normalize": bool(model.normalize),
        "similarity": model.similarity_fn_name,
        "max_seq_length": model.max_seq_length,
        "dtype": model.dtype.name,
        "precision": model.precision,
    }


def embed(
    model,
    input_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    model_name: str | None = None,
    field: str | None = None,
    id_field: str | None = None,
    precision: str = "float32",
    normalize_embeddings: bool = False,
    shard_size: int = DEFAULT_SHARD_SIZE,
    batch_size: int = 32,
    parquet: bool = False,
    calibration: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: Progress | Callable | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Embeds every row of ``input_path`` into shards in ``out_dir`` and returns the manifest.

    Resumes a run the same arguments left unfinished; refuses (saying what changed) a directory
    made from another input, model or option unless ``overwrite``. ``precision`` quantizes as
    ``util.quantize_embeddings``: int8/uint8 need each dimension's range before the first shard is
    written, taken from the embeddings of ``calibration`` (a file of texts, as the input) or else of
    the first shard, and recorded in the manifest. ``parquet`` also writes each shard as Parquet
    (pyarrow's writer adds ~70 MiB to the process, hence not by default)."""
    log = log or (lambda message: None)
    input_path, out = Path(input_path), Path(out_dir)
    fmt = input_format(input_path)
    if precision not in PRECISIONS:
        raise CorpusError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise CorpusError(f"shard_size must be a positive integer, got {shard_size!r}")
    if fmt == "txt" and (field or id_field):
        raise CorpusError(f"{input_path}: --field and --id-field apply to .jsonl, .parquet and .csv input")
    if parquet:
        _pyarrow("--parquet")
    _prepare_output(out)

    lock = _lock(out)
    try:
        info = scan_input(input_path, fmt, field, id_field)
        import minibert

        manifest = {
            "format": FORMAT,
            "minibert_version": minibert.__version__,
            "model": _model_entry(model, model_name or model.source),
            "options": {
                "field": field,
                "id_field": id_field,
                "precision": precision,
                "normalize_embeddings": bool(normalize_embeddings),
                "shard_size": shard_size,
                "formats": ["npy", "parquet"] if parquet else ["npy"],
                "calibration": None,
            },
            "input": {"path": str(input_path.resolve()), "format": fmt, "size": info["size"], "sha256": info["sha256"]},
            "embedding": {"dim": model.get_embedding_dimension(), "dtype": None, "ranges": None},
            "rows": info["rows"],
            "shards": [],
            "complete": False,
        }
        if calibration is not None:
            c = Path(calibration)
            manifest["options"]["calibration"] = {"path": str(c.resolve()), **scan_input(c, input_format(c), field)}
        out_dtype = np.dtype(_out_dtype(precision, model.dtype))
        manifest["embedding"]["dtype"] = out_dtype.name
        manifest = _resume_or_start(out, manifest, overwrite, log)
        if manifest["complete"]:
            log(f"{out}: already complete ({manifest['rows']:,} rows in {len(manifest['shards'])} shards)")
            return manifest

        normalize = normalize_embeddings

        def encode(texts):  # -> float [n, dim], updating the progress in slices of a few batches
            emb = np.empty((len(texts), model.get_embedding_dimension()), dtype=model.dtype)
            step = max(batch_size * 16, 512)
            for s in range(0, len(texts), step):
                part = texts[s : s + step]
                emb[s : s + len(part)] = model.encode(part, batch_size=batch_size, normalize_embeddings=normalize)
                if progress is not None:
                    progress.update(len(part), sum(len(x) for x in model.tokenize(part)))
            return emb

        if precision in ("int8", "uint8") and manifest["embedding"]["ranges"] is None:
            if calibration is not None:
                c = Path(calibration)
                sample = [t for t, _, _ in iter_rows(c, input_format(c), field)]
                cal = model.encode(sample, batch_size=batch_size, normalize_embeddings=normalize_embeddings)
                source = f"{len(sample)} texts of {c}"
            else:
                first = [t for t, _, _ in _take(iter_rows(input_path, fmt, field, id_field), shard_size)]
                cal = model.encode(first, batch_size=batch_size, normalize_embeddings=normalize_embeddings)
                source = f"the first {len(first)} rows"
            if len(cal) < 2:
                raise CorpusError(f"{precision} output needs 2 or more calibration texts, got {len(cal)}")
            ranges = util._quantization_ranges(cal.astype(np.float32), precision, None)
            manifest["embedding"]["ranges"] = ranges.tolist()
            manifest["embedding"]["ranges_from"] = source
            _save_manifest(out, manifest)
        ranges = manifest["embedding"]["ranges"]
        ranges = None if ranges is None else np.asarray(ranges, np.float32)

        shards = manifest["shards"]
        start = tuple(shards[-1]["next"]) if shards else (0, 0)
        first_row = shards[-1]["rows"][1] if shards else 0
        rows = iter_rows(input_path, fmt, field, id_field, start)
        if progress is not None and not isinstance(progress, Progress):
            progress = progress(manifest["rows"], first_row)
        try:
            while True:
                chunk = _take(rows, shard_size)
                if not chunk:
                    break
                texts = [t for t, _, _ in chunk]
                ids = [i for _, i, _ in chunk] if id_field is not None else None
                emb = quantize(encode(texts), precision, ranges)
                i = len(shards)
                entry = {"index": i, "rows": [first_row, first_row + len(chunk)], "next": list(chunk[-1][2])}
                entry.update(_write_shard(out, i, emb, ids, first_row, manifest["options"]["formats"]))
                shards.append(entry)
                first_row += len(chunk)
                _save_manifest(out, manifest)
        finally:
            if isinstance(progress, Progress):
                progress.close()
        if first_row != manifest["rows"]:
            n = manifest["rows"]
            raise CorpusError(f"{input_path} changed while it was embedded: {first_row} rows, {n} at first")
        manifest["complete"] = True
        _save_manifest(out, manifest)
        return manifest
    finally:
        os.close(lock)  # (closing the file releases the lock)


def _take(it, n):  # the next n items of an iterator (fewer at its end)
    out = []
    for item in it:
        out.append(item)
        if len(out) == n:
            break
    return out


LOCK = ".minibert.lock"


def _lock(out):  # -> an fd holding DIR/.minibert.lock: two runs writing one directory would undo each other
    import fcntl

    fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise CorpusError(f"--output {out}: another minibert embed is writing this directory; wait for it") from None
    return fd


def _prepare_output(out):  # the directory exists (or is made) and is writable, before any work
    if out.exists() and not out.is_dir():
        raise CorpusError(f"--output {out} exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CorpusError(f"--output {out}: cannot create the directory ({e.strerror or e})") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".minibert-write-test.", suffix=".partial", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise CorpusError(f"--output {out} is not writable ({e.strerror or e})") from None


def _resume_or_start(out, manifest, overwrite, log):  # -> the manifest to continue from
    ours = _our_files(out)
    others = [p.name for p in out.iterdir() if p not in ours and p.name != LOCK]
    old = None
    if (out / MANIFEST).exists() and not overwrite:
        old = read_manifest(out)
        keys = ("format", "minibert_version", "model", "options", "input", "rows")
        changed = _changes(_decisive({k: old.get(k) for k in keys}), _decisive({k: manifest[k] for k in keys}))
        if changed:
            raise CorpusError(
                f"{out} holds embeddings made differently ({'; '.join(changed)}); "
                "rerun with --overwrite to replace them, or choose another --output"
            )
    elif others and not ours:
        raise CorpusError(
            f"--output {out} is not empty ({', '.join(sorted(others)[:3])}{', ...' if len(others) > 3 else ''}) "
            "and holds no minibert corpus: choose an empty or new directory"
        )
    if old is None:
        for p in ours:
            p.unlink()
        _save_manifest(out, manifest)
        return manifest
    # Resume: keep the shards that are complete and intact, drop anything after the first that is not.
    kept = []
    for shard in old["shards"]:
        problem = _check_shard(out, shard)
        if problem:
            log(f"{problem}: recomputing from row {shard['rows'][0]:,}")
            break
        kept.append(shard)
    listed = {f["file"] for s in kept for f in (s.get("npy"), s.get("ids"), s.get("parquet")) if f}
    for p in _our_files(out):
        if p.name != MANIFEST and p.name not in listed:
            p.unlink()  # an unlisted shard (killed before the manifest named it) or a temporary file
    old["complete"] = bool(old.get("complete")) and len(kept) == len(old["shards"])
    old["shards"] = kept
    if kept and not old["complete"]:
        log(f"{out}: resuming after row {kept[-1]['rows'][1]:,} ({len(kept)} shards done)")
    _save_manifest(out, old)
    return old


# ------------------------------------------------------------------ reading and searching a corpus


class Corpus:
    """A corpus directory: its manifest and its shards, memory-mapped one at a time."""

    def __init__(self, path, verify=True):
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        self.verify = verify
        if not self.manifest.get("complete"):
            done = self.manifest["shards"][-1]["rows"][1] if self.manifest["shards"] else 0
            raise CorpusError(
                f"{self.path} is incomplete ({done:,} of {self.manifest['rows']:,} rows): "
                "run the same minibert embed command again to finish it"
            )
        self.dim = self.manifest["embedding"]["dim"]
        self.dtype = np.dtype(self.manifest["embedding"]["dtype"])
        self.precision = self.manifest["options"]["precision"]
        ranges = self.manifest["embedding"].get("ranges")
        self.ranges = None if ranges is None else np.asarray(ranges, np.float32)

    def __len__(self):
        return self.manifest["rows"]

    def shards(self) -> Iterator[tuple[int, np.ndarray]]:  # -> (first row, [rows, dim or dim / 8] memory map)
        width = self.dim if self.precision not in ("binary", "ubinary") else (self.dim + 7) // 8
        for shard in self.manifest["shards"]:
            path = self.path / shard["npy"]["file"]
            if self.verify:
                problem = _check_shard(self.path, {"npy": shard["npy"]})
                if problem:
                    raise CorpusError(f"{problem}: run the minibert embed command again to repair it")
            try:
                emb = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as e:
                raise CorpusError(f"{path}: not a readable .npy shard ({e})") from None
            n = shard["rows"][1] - shard["rows"][0]
            if emb.shape != (n, width) or emb.dtype != self.dtype:
                raise CorpusError(f"{path} holds {emb.dtype} {emb.shape}, the manifest says {self.dtype} {(n, width)}")
            yield shard["rows"][0], emb

    def embeddings(self) -> np.ndarray:  # [rows, dim]: every shard in memory (a corpus that fits)
        parts = [np.asarray(e) for _, e in self.shards()]
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), self.dtype)

    def ids(self) -> list | None:  # the input's id field, row by row (None when it had none)
        if self.manifest["options"]["id_field"] is None:
            return None
        out = []
        for shard in self.manifest["shards"]:
            out += json.loads((self.path / shard["ids"]["file"]).read_text(encoding="utf-8"))
        return out

    def _shard_of(self, row):
        for shard in self.manifest["shards"]:
            if shard["rows"][0] <= row < shard["rows"][1]:
                return shard
        raise IndexError(f"row {row} is not in {self.path} ({len(self)} rows)")

    def id(self, row):  # the input's id of one row (None when it had no id field): reads only its shard's ids
        shard = self._shard_of(row)
        if "ids" not in shard:
            return None
        ids = json.loads((self.path / shard["ids"]["file"]).read_text(encoding="utf-8"))
        return ids[row - shard["rows"][0]]

    def dequantize(self, block):  # stored rows -> float32 rows the score functions take
        if self.precision in ("float32", "float16"):
            return np.asarray(block, dtype=np.float32)
        starts, steps = self.ranges[0], (self.ranges[1] - self.ranges[0]) / 255
        steps = np.where(steps == 0, 1, steps)
        buckets = block.astype(np.float32) + (128 if self.precision == "int8" else 0)
        return starts + (buckets + 0.5) * steps  # each bucket's middle

    def search(self, queries, k=10, score="cosine", block=65536):  # [q, dim] -> per query [(score, row)], best first
        """Exact top-k over every row, a block of rows at a time. int8/uint8 rows are scored as their
        buckets' middles; binary rows by the bits they share with the query's signs (dim minus the
        Hamming distance), as sentence-transformers' binary search does."""
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        if queries.shape[1] != self.dim:
            raise CorpusError(f"queries have {queries.shape[1]} dimensions, {self.path} holds {self.dim}")
        binary = self.precision in ("binary", "ubinary")
        if binary:
            qbits = np.unpackbits(np.packbits(queries > 0, axis=-1), axis=-1)[:, : self.dim].astype(np.float32)
        fn = util.SIMILARITY[score]
        best_s = np.full((len(queries), 0), -np.inf, dtype=np.float64)
        best_i = np.zeros((len(queries), 0), dtype=np.int64)
        for first, emb in self.shards():
            for s in range(0, len(emb), block):
                rows = emb[s : s + block]
                if binary:
                    raw = rows if self.precision == "ubinary" else (rows.astype(np.int16) + 128).astype(np.uint8)
                    bits = np.unpackbits(np.asarray(raw, dtype=np.uint8), axis=-1)[:, : self.dim].astype(np.float32)
                    scores = qbits @ bits.T + (1 - qbits) @ (1 - bits).T  # bits in common
                else:
                    scores = np.asarray(fn(queries, self.dequantize(rows)), dtype=np.float64)
                best_s = np.concatenate([best_s, scores.astype(np.float64)], axis=1)
                best_i = np.concatenate([best_i, np.broadcast_to(first + s + np.arange(len(rows)), scores.shape)], 1)
                if best_s.shape[1] > k:
                    keep = np.argpartition(-best_s, k - 1, axis=1)[:, :k]
                    best_s = np.take_along_axis(best_s, keep, 1)
                    best_i = np.take_along_axis(best_i, keep, 1)
        results = []
        for s, i in zip(best_s, best_i):
            order = np.lexsort((i, -s))  # best first; equal scores in row order
            results.append([(float(s[j]), int(i[j])) for j in order])
        return results

    def text(self, row):  # the input's text of a row, when the input is still there unchanged, else None
        inp = self.manifest["input"]
        path = Path(inp["path"])
        try:
            if path.stat().st_size != inp["size"]:
                return None
        except OSError:
            return None
        shard = self._shard_of(row)
        i = shard["index"]
        start = tuple(self.manifest["shards"][i - 1]["next"]) if i else (0, 0)
        o = self.manifest["options"]
        try:
            for n, (text, _, _) in enumerate(iter_rows(path, inp["format"], o["field"], o["id_field"], start)):
                if shard["rows"][0] + n == row:
                    return text
        except (CorpusError, OSError):
            return None
        return None


def open_corpus(path: str | os.PathLike, verify: bool = True) -> Corpus:  # a finished corpus directory
    return Corpus(path, verify)
