"""The ``minibert`` command: embed, search and inspect models from the shell.

    minibert embed "A sentence." "Another one."            readable print
    minibert embed --input docs.txt --output docs.npy       one text per line -> [n, dim] array
    minibert embed --input docs.jsonl --output docs.emb/    a corpus of any size -> shards + manifest, resumable
    minibert search --corpus docs.txt "a query" -k 5        top-k with scores (corpus embeddings cached)
    minibert search --corpus docs.emb/ "a query"            exact top-k over the shards, memory-mapped
    minibert info sentence-transformers/all-MiniLM-L6-v2    what the model is and where it came from

Errors print one line (``minibert: error: ...``) and exit 1; ``--debug`` shows the traceback.
"""

import argparse
import gc
import hashlib
import json
import os
import signal
import stat
import sys
import tempfile
from pathlib import Path

from .sources import DEFAULT_MODEL

EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 1, 2, 130, 143
SHARED_DEFAULTS = {"debug": False, "quiet": False, "dtype": "float32", "compute": "float32"}


class CliError(Exception):
    """A problem with what the user asked for: shown as one line, no traceback."""


class Terminated(BaseException):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt so that cleanup (``finally``) runs."""


# ------------------------------------------------------------------ inputs and outputs


def split_lines(raw):  # str -> lines, split at "\n" only (and a "\r" before it), as files are written
    """``str.splitlines`` also splits at \x0c, \x85, U+2028 and more: a text holding one of them
    would become two rows, and a valid JSON line holding U+2028 two invalid ones."""
    lines = raw.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def read_input(path):  # file name or "-" -> its text (UTF-8), or a CliError naming the problem
    p = Path(path)
    try:
        raw = sys.stdin.buffer.read() if str(path) == "-" else p.read_bytes()
    except FileNotFoundError:
        raise CliError(f"input file {p} does not exist") from None
    except IsADirectoryError:
        raise CliError(f"input {p} is a directory, expected a .txt or .jsonl file") from None
    except PermissionError:
        raise CliError(f"input file {p} is not readable (permission denied)") from None
    except OSError as e:
        raise CliError(f"input file {p} cannot be read ({e.strerror or e})") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        name = "standard input" if str(path) == "-" else f"input file {p}"
        raise CliError(f"{name} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def read_texts(path, field=None):  # .txt: a text per line; .jsonl: a JSON object (or string) per line
    p = Path(path)
    if p.suffix.lower() in (".parquet", ".csv"):
        from . import corpus

        return [text for text, _, _ in corpus.iter_rows(p, corpus.input_format(p), field)]
    lines = split_lines(read_input(path))
    if p.suffix != ".jsonl":
        if field:
            raise CliError("--field only applies to .jsonl input")
        return lines
    texts = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except (json.JSONDecodeError, RecursionError, ValueError) as e:
            raise CliError(f"{p}:{n}: not valid JSON ({getattr(e, 'msg', 'nested too deeply')})") from None
        if isinstance(obj, str) and not field:
            texts.append(obj)
            continue
        key = field or "text"
        if not isinstance(obj, dict) or key not in obj:
            raise CliError(f"{p}:{n}: no field {key!r} (choose one with --field)")
        if not isinstance(obj[key], str):
            raise CliError(f"{p}:{n}: field {key!r} is {type(obj[key]).__name__}, not a string")
        texts.append(obj[key])
    return texts


def write_atomically(path, write):  # write(file object) into a temporary file, then rename it over path
    """An interrupted run (Ctrl-C, SIGTERM, an error) leaves no partial file. The temporary file has
    an unpredictable name and is created exclusively (``mkstemp``: O_EXCL, never through a planted
    symlink); a replaced file keeps its permissions, a new one gets the umask's."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.resolve().parent)
    try:
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
        except FileNotFoundError:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            fd = None
            write(f)
        os.replace(tmp, path)
        tmp = None
    finally:
        if fd is not None:
            os.close(fd)
        if tmp is not None:
            os.unlink(tmp)


def is_corpus_dir(path):  # --output DIR/ (or an existing directory, or a name without a suffix): shards
    return str(path).endswith(("/", os.sep)) or Path(path).is_dir() or not Path(path).suffix


def check_output_path(path):  # before any work: a wrong name should not cost a model load
    path = Path(path)
    if path.suffix not in (".npy", ".jsonl"):
        raise CliError(f"--output {path}: use a .npy or .jsonl file name, or a directory (DIR/) for shards")
    if not path.resolve().parent.is_dir():
        raise CliError(f"--output {path}: directory {path.resolve().parent} does not exist")
    if path.is_dir():
        raise CliError(f"--output {path} is a directory")


def save_embeddings(path, texts, emb):
    import numpy as np

    path = Path(path)
    if path.suffix == ".npy":

        def write(f):
            np.save(f, emb)
    elif path.suffix == ".jsonl":

        def write(f):
            for t, e in zip(texts, emb):
                row = {"text": t, "embedding": [float(x) for x in e]}
                f.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
    else:  # check_output_path() has already refused anything else
        raise CliError(f"--output {path}: use a .npy or .jsonl file name")
    write_atomically(path, write)


def show_progress(args, n_texts, batch_size):
    if args.progress is not None:
        return args.progress
    return sys.stderr.isatty() and n_texts > 4 * batch_size


def load_model(args):
    import minibert

    model = minibert.load(args.model, dtype=args.dtype, precision=args.compute)
    # This process is ours and short-lived: keep the objects the imports created out of every later
    # garbage collection, the one at exit included, which otherwise walks and frees them all. Numba
    # makes many more when a batch starts it: frozen again after encoding. A library must not do
    # this to its caller; a CLI may.
    gc.freeze()
    if not args.quiet:
        print(f"minibert: {model.config.arch} model from {model.source}", file=sys.stderr)
    return model


# ------------------------------------------------------------------ commands


def cmd_embed(args):
    import numpy as np

    if args.text and args.input:
        raise CliError("give texts as arguments or --input, not both")
    if args.field and not args.input:
        raise CliError("--field needs --input FILE.jsonl")
    if args.output and is_corpus_dir(args.output):
        return embed_corpus(args)
    corpus_only = {"--id-field": args.id_field, "--overwrite": args.overwrite, "--calibration": args.calibration}
    for flag, value in corpus_only.items():
        if value:
            raise CliError(f"{flag} applies to a corpus directory (--output DIR/)")
    if args.text:
        texts = args.text
    elif args.input:
        texts = read_texts(args.input, args.field)
    else:
        if sys.stdin.isatty():
            print("minibert: reading texts from standard input, one per line (Ctrl-D to end)", file=sys.stderr)
        texts = split_lines(read_input("-"))
    if args.output:
        check_output_path(args.output)
    model = load_model(args)
    emb = model.encode(
        texts,
        batch_size=args.batch_size,
        normalize_embeddings=args.normalize,
        show_progress_bar=show_progress(args, len(texts), args.batch_size),
    )
    gc.freeze()  # Numba's objects too, if this call started it (see load_model)
    if args.precision != "float32":
        from .corpus import quantize

        if args.precision in ("int8", "uint8") and len(emb) < 2:
            raise CliError(f"--precision {args.precision} computes its ranges from the texts: give at least 2")
        emb = quantize(emb, args.precision, None)
    if args.output:
        save_embeddings(args.output, texts, emb)
        if not args.quiet:
            print(f"minibert: wrote {emb.shape[0]} x {emb.shape[1]} embeddings to {args.output}", file=sys.stderr)
        return 0
    with np.printoptions(precision=4, suppress=True, linewidth=1000):
        for i, (t, e) in enumerate(zip(texts, emb)):
            shown = t if len(t) <= 48 else t[:45] + "..."
            head = " ".join(f"{x:+.4f}" for x in e[:6])
            print(f"{i:>4}  {shown!r:<52} [{head} ...]  ({len(e)} dims, norm {np.linalg.norm(e):.4f})")
    return 0


def embed_corpus(args):  # --input FILE --output DIR/: shards and a manifest, resumed when interrupted
    from . import corpus

    if args.text or not args.input or args.input == "-":
        raise CliError("a corpus directory (--output DIR/) is embedded from --input FILE, so that it can resume")
    fmt = corpus.input_format(args.input)  # before the model loads: a wrong name should not cost that
    if args.shard_size < 1:
        raise CliError(f"--shard-size must be at least 1, got {args.shard_size}")
    if args.parquet:
        corpus._pyarrow(args.input)
    del fmt
    model = load_model(args)
    tty = sys.stderr.isatty() if args.progress is None else args.progress
    stream = None if args.quiet or args.progress is False and not args.log_every else sys.stderr

    def progress(total, done):
        return corpus.Progress(total, done, stream, tty, args.log_every)

    def log(message):
        if not args.quiet:
            print(f"minibert: {message}", file=sys.stderr)

    manifest = corpus.embed(
        model,
        args.input,
        args.output,
        model_name=args.model,
        field=args.field,
        id_field=args.id_field,
        precision=args.precision,
        normalize_embeddings=args.normalize,
        shard_size=args.shard_size,
        batch_size=args.batch_size,
        parquet=args.parquet,
        calibration=args.calibration,
        overwrite=args.overwrite,
        progress=progress,
        log=log,
    )
    gc.freeze()
    e = manifest["embedding"]
    shards = len(manifest["shards"])
    log(f"wrote {manifest['rows']:,} x {e['dim']} {e['dtype']} embeddings in {shards} shards to {args.output}")
    return 0


def corpus_cache_key(corpus_bytes, model, field):  # -> hex digest of everything the embeddings depend on
    import minibert

    h = hashlib.sha256()
    for part in (model.fingerprint(), field or "", minibert.__version__):
        h.update(part.encode() + b"\0")
    h.update(corpus_bytes)
    return h.hexdigest()


def load_cached(cache, key, shape, dtype):  # -> embeddings, or None (absent), or raises CliError (damaged)
    import numpy as np

    if not cache.is_file():
        return None
    try:
        with np.load(cache, allow_pickle=False) as f:
            stored_key, digest, emb = str(f["key"]), str(f["sha256"]), f["embeddings"]
    except Exception as e:  # noqa: BLE001 (a damaged file can fail in many ways: every one means rebuild)
        raise CliError(f"unreadable ({type(e).__name__})") from None
    if stored_key != key:
        raise CliError("made for another corpus or model")
    if emb.dtype != dtype or emb.shape != shape:
        raise CliError(f"holds {emb.dtype} {emb.shape}, expected {dtype} {shape}")
    if hashlib.sha256(np.ascontiguousarray(emb).tobytes()).hexdigest() != digest:
        raise CliError("its embeddings do not match their checksum")
    return emb


def cmd_search(args):
    import numpy as np

    from . import util

    if args.k < 1:
        raise CliError(f"-k must be at least 1, got {args.k}")
    if args.corpus != "-" and Path(args.corpus).is_dir():
        return search_corpus(args)
    if args.model is None:
        args.model = DEFAULT_MODEL
    stdin = args.corpus == "-"
    raw = read_input(args.corpus)
    docs = read_texts(args.corpus, args.field) if not stdin else split_lines(raw)
    if not docs:
        raise CliError(f"corpus {args.corpus} holds no texts")
    model = load_model(args)
    emb, cache = None, None
    if not stdin:  # a corpus from standard input has no file to keep its embeddings beside
        key = corpus_cache_key(raw.encode("utf-8"), model, args.field)
        corpus = Path(args.corpus)
        cache = corpus.with_name(f".{corpus.name}.minibert-{key[:16]}.npz")
        try:
            emb = load_cached(cache, key, (len(docs), model.dim), model.dtype)
        except CliError as e:
            print(f"minibert: the cached corpus embeddings {cache} are not usable ({e}): recomputing", file=sys.stderr)
    if emb is None:
        emb = model.encode(
            docs, batch_size=args.batch_size, show_progress_bar=show_progress(args, len(docs), args.batch_size)
        )
        gc.freeze()  # Numba's objects too, if this call started it (see load_model)
        if cache is not None:
            digest = hashlib.sha256(np.ascontiguousarray(emb).tobytes()).hexdigest()
            try:
                write_atomically(
                    cache, lambda f: np.savez(f, embeddings=emb, key=np.array(key), sha256=np.array(digest))
                )
            except OSError as e:
                print(f"minibert: could not cache corpus embeddings at {cache}: {e.strerror or e}", file=sys.stderr)
    elif not args.quiet:
        print(f"minibert: corpus embeddings from cache {cache}", file=sys.stderr)
    score = util.SIMILARITY[model.similarity_fn_name]
    for query in args.query:
        hits = util.semantic_search(model.encode([query]), emb, top_k=args.k, score_function=score)[0]
        print(f"query: {query}")
        for rank, hit in enumerate(hits, 1):
            print(f"  {rank:>3}. {hit['score']:8.4f}  {docs[hit['corpus_id']]}")
    return 0


def search_corpus(args):  # --corpus DIR/: exact top-k over the shards, with the model that embedded them
    from . import corpus

    c = corpus.open_corpus(args.corpus, verify=not args.no_verify)
    made = c.manifest["model"]
    if args.model is None:
        args.model = made["path"] if Path(made["path"]).is_dir() else made["name"]
    if args.compute == "float32" and made.get("precision", "float32") != "float32":
        args.compute = made["precision"]
    model = load_model(args)
    model.max_seq_length = made["max_seq_length"]
    if model.fingerprint() != made["fingerprint"]:
        raise CliError(
            f"{args.corpus} was embedded with {made['name']} ({made['precision']}, max_seq_length "
            f"{made['max_seq_length']}), a different model from {args.model}: its queries would not match"
        )
    queries = model.encode(args.query, normalize_embeddings=c.manifest["options"]["normalize_embeddings"])
    hits = c.search(queries, k=args.k, score=made["similarity"])
    for query, found in zip(args.query, hits):
        print(f"query: {query}")
        for rank, (score, row) in enumerate(found, 1):
            text = c.text(row)
            ident = c.id(row)
            label = f"row {row}" + (f" id {ident}" if ident is not None else "")
            print(f"  {rank:>3}. {score:8.4f}  {label}" + (f"  {text}" if text is not None else ""))
    return 0


def cmd_info(args):
    from .weights import FLOAT_DTYPES, read_safetensors

    model = load_model(args)
    c, p = model.config, model.pipeline
    stored = read_safetensors(p.transformer_dir / "model.safetensors")
    floats = [t for t in stored.tensors.values() if t.dtype in FLOAT_DTYPES]  # not buffers such as position_ids
    dtypes = sorted({t.dtype for t in floats})
    weights_mib = stored.file_size / 2**20
    n_params = sum(t.size for t in floats)
    rows = [
        ("model", args.model),
        ("source", model.source),
        (
            "architecture",
            f"{c.arch}: {c.n_layers} layers x {c.dim} hidden, {c.n_heads} heads, FFN {c.ffn_dim}, {c.activation}",
        ),
        ("vocabulary", f"{c.vocab_size} tokens, {c.max_positions} positions"),
        ("embedding dim", str(model.dim)),
        ("pooling", " + ".join(model.pooling_modes) + (", then normalize" if model.normalize else "")),
        ("score function", model.similarity_fn_name),
        ("max_seq_length", str(model.max_seq_length)),
        ("dtype on disk", ", ".join(dtypes)),
        ("compute dtype", model.dtype.name),
        ("parameters", f"{n_params:,} in the checkpoint ({weights_mib:.1f} MiB)"),
        ("files", str(p.transformer_dir)),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0


# ------------------------------------------------------------------ parser


def build_parser():
    # Shared options may stand before or after the command. SUPPRESS keeps a sub-command's default
    # from overwriting a value given before it (argparse's parents otherwise reset it).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show the full traceback on errors"
    )
    common.add_argument(
        "--quiet", "-q", action="store_true", default=argparse.SUPPRESS, help="no status lines on stderr"
    )
    common.add_argument(
        "--dtype", choices=["float32", "float64"], default=argparse.SUPPRESS, help="compute dtype (default float32)"
    )
    common.add_argument(
        "--compute",
        choices=["float32", "int8"],
        default=argparse.SUPPRESS,
        help="int8: the model's dense layers in 8 bits (faster with AVX-512 VNNI; see the parity suite for the cost)",
    )

    def batch(p):
        p.add_argument("--batch-size", type=int, default=32, help="texts per batch (default 32)")
        p.add_argument(
            "--progress",
            action="store_true",
            default=None,
            help="show a progress bar even when stderr is not a terminal",
        )
        p.add_argument("--no-progress", dest="progress", action="store_false", help="never show a progress bar")

    ap = argparse.ArgumentParser(
        prog="minibert",
        parents=[common],
        description=(
            "BERT and DistilBERT sentence embeddings in NumPy and Numba, equal to sentence-transformers'. "
            f"The default model is {DEFAULT_MODEL}."
        ),
    )
    ap.add_argument("--version", action="version", version=f"minibert {__import__('minibert').__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    e = sub.add_parser(
        "embed",
        parents=[common],
        help="embed texts",
        description=(
            "Embed TEXT arguments, or --input FILE (.txt: a text per line; .jsonl: a JSON object per line), "
            "or standard input (a text per line). Prints a readable summary, or writes --output (.npy or .jsonl)."
        ),
    )
    e.add_argument("text", nargs="*", help="texts to embed")
    e.add_argument("--model", "-m", default=DEFAULT_MODEL, help="model directory or hub id")
    e.add_argument("--input", "-i", help=".txt, .jsonl, .parquet or .csv file of texts ('-' for stdin)")
    e.add_argument("--field", help="the .jsonl field (.parquet/.csv column) holding the text (default: text)")
    e.add_argument(
        "--output", "-o", help="a .npy ([n, dim] array) or .jsonl file, or DIR/ (shards + manifest, resumable)"
    )
    e.add_argument("--normalize", action="store_true", help="scale every embedding to unit length")
    e.add_argument(
        "--precision",
        choices=["float32", "float16", "int8", "uint8", "binary", "ubinary"],
        default="float32",
        help="the embeddings written, as sentence-transformers' quantize_embeddings (default float32)",
    )
    c = e.add_argument_group("corpus directory (--output DIR/)")
    c.add_argument("--id-field", help="a .jsonl field or .parquet/.csv column to keep beside each embedding")
    c.add_argument("--shard-size", type=int, default=5_000, help="rows per shard (default 5000)")
    c.add_argument("--overwrite", action="store_true", help="replace a corpus directory made differently")
    c.add_argument("--calibration", help="texts (a file like --input) whose embeddings set int8/uint8 ranges")
    c.add_argument("--log-every", type=float, default=60.0, help="seconds between progress lines off a terminal")
    c.add_argument("--parquet", action="store_true", help="also write each shard as Parquet (needs pyarrow)")
    batch(e)
    e.set_defaults(run=cmd_embed)

    s = sub.add_parser(
        "search",
        parents=[common],
        help="top-k corpus texts for a query",
        description=(
            "Embed a corpus (.txt: a text per line; .jsonl with --field) and print the k best matches for each "
            "query with the model's own score. Corpus embeddings are cached next to the corpus file, keyed by "
            "the model and the file's content."
        ),
    )
    s.add_argument("query", nargs="+", help="query text(s)")
    s.add_argument("--model", "-m", default=None, help="model directory or hub id (a corpus directory knows its own)")
    s.add_argument("--corpus", "-c", required=True, help="corpus file, or a directory written by minibert embed")
    s.add_argument("--no-verify", action="store_true", help="skip the shards' checksums (a corpus directory)")
    s.add_argument("--field", help="the .jsonl field holding the text (default: text)")
    s.add_argument("-k", type=int, default=5, help="how many results (default 5)")
    batch(s)
    s.set_defaults(run=cmd_search)

    i = sub.add_parser(
        "info",
        parents=[common],
        help="describe a model",
        description=(
            "Architecture, dimensions, pooling, score function, max_seq_length, dtype on disk, parameter count "
            "and where the files are."
        ),
    )
    i.add_argument("model", nargs="?", default=DEFAULT_MODEL, help="model directory or hub id")
    i.set_defaults(run=cmd_info)
    return ap


def main(argv=None):  # -> exit code; every error is one "minibert: error:" line (--debug: the traceback)
    ap = build_parser()
    args = ap.parse_args(argv)
    for name, default in SHARED_DEFAULTS.items():
        if not hasattr(args, name):
            setattr(args, name, default)
    if not getattr(args, "run", None):
        ap.print_help(sys.stderr)
        return EXIT_USAGE
    if getattr(args, "batch_size", 1) < 1:
        ap.error(f"--batch-size must be at least 1, got {args.batch_size}")
    previous = signal.signal(signal.SIGTERM, _terminate) if _on_main_thread() else None
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("minibert: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Terminated:
        print("minibert: terminated", file=sys.stderr)
        return EXIT_TERMINATED
    except BrokenPipeError:
        sys.stderr.close()  # `minibert embed ... | head`: not an error
        return 0
    except Exception as e:  # noqa: BLE001 (the command line shows every failure as one line)
        if args.debug:
            raise
        from .errors import MinibertError

        plain = (CliError, MinibertError, OSError, ValueError, TypeError)
        message = str(e) if isinstance(e, plain) else f"{type(e).__name__}: {e}"
        print(f"minibert: error: {' '.join(message.split())[:2000]}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _on_main_thread():
    import threading

    return threading.current_thread() is threading.main_thread()


def _terminate(signum, frame):
    raise Terminated()


def entry():  # the `minibert` command
    code = main()
    if code in (EXIT_INTERRUPTED, EXIT_TERMINATED):
        # Cleanup is done (no partial file is left); do not wait for worker threads to finish the
        # batch they hold, which on a busy machine can take long after the user asked to stop.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
