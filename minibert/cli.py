"""The ``minibert`` command: embed, search and inspect models from the shell.

    minibert embed "A sentence." "Another one."            readable print
    minibert embed --input docs.txt --output docs.npy       one text per line -> [n, dim] array
    minibert search --corpus docs.txt "a query" -k 5        top-k with scores (corpus embeddings cached)
    minibert info sentence-transformers/all-MiniLM-L6-v2    what the model is and where it came from

Errors print one line (``minibert: error: ...``) and exit 1; ``--debug`` shows the traceback.
"""

import argparse
import gc
import hashlib
import json
import os
import sys
from pathlib import Path

from .sources import DEFAULT_MODEL

EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130
SHARED_DEFAULTS = {"debug": False, "quiet": False, "dtype": "float32"}


class CliError(Exception):
    """A problem with what the user asked for: shown as one line, no traceback."""


# ------------------------------------------------------------------ inputs and outputs


def read_texts(path, field=None):  # .txt: a text per line; .jsonl: a JSON object (or string) per line
    p = Path(path)
    try:
        raw = sys.stdin.read() if str(path) == "-" else p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CliError(f"input file {p} does not exist") from None
    except IsADirectoryError:
        raise CliError(f"input {p} is a directory, expected a .txt or .jsonl file") from None
    except PermissionError:
        raise CliError(f"input file {p} is not readable (permission denied)") from None
    except UnicodeDecodeError as e:
        raise CliError(f"input file {p} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    lines = raw.splitlines()
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
        except json.JSONDecodeError as e:
            raise CliError(f"{p}:{n}: not valid JSON ({e.msg})") from None
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


def write_atomically(path, write):  # write(tmp_path) then rename: an interrupted run leaves no partial file
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def check_output_path(path):  # before any work: a wrong name should not cost a model load
    path = Path(path)
    if path.suffix not in (".npy", ".jsonl"):
        raise CliError(f"--output {path}: use a .npy or .jsonl file name")
    if not path.resolve().parent.is_dir():
        raise CliError(f"--output {path}: directory {path.resolve().parent} does not exist")


def save_embeddings(path, texts, emb):
    import numpy as np

    path = Path(path)
    if path.suffix == ".npy":

        def write(tmp):
            with open(tmp, "wb") as f:
                np.save(f, emb)
    elif path.suffix == ".jsonl":

        def write(tmp):
            with open(tmp, "w", encoding="utf-8") as f:
                for t, e in zip(texts, emb):
                    f.write(json.dumps({"text": t, "embedding": [float(x) for x in e]}, ensure_ascii=False) + "\n")
    else:  # check_output_path() has already refused anything else
        raise CliError(f"--output {path}: use a .npy or .jsonl file name")
    write_atomically(path, write)


def show_progress(args, n_texts, batch_size):
    if args.progress is not None:
        return args.progress
    return sys.stderr.isatty() and n_texts > 4 * batch_size


def load_model(args):
    import minibert

    model = minibert.load(args.model, dtype=args.dtype)
    # This process is ours and short-lived: keep the objects the imports created out of every later
    # garbage collection, the one at exit included, which otherwise walks and frees them all. Numba
    # makes ~100k more when a batch starts it (~0.15 s at exit): frozen again after encoding. A
    # library must not do this to its caller; a CLI may.
    gc.freeze()
    if not args.quiet:
        print(f"minibert: {model.config.arch} model from {model.source}", file=sys.stderr)
    return model


# ------------------------------------------------------------------ commands


def cmd_embed(args):
    import numpy as np

    if args.text and args.input:
        raise CliError("give texts as arguments or --input, not both")
    if args.text:
        texts = args.text
    elif args.input:
        texts = read_texts(args.input, args.field)
    else:
        if sys.stdin.isatty():
            print("minibert: reading texts from standard input, one per line (Ctrl-D to end)", file=sys.stderr)
        texts = sys.stdin.read().splitlines()
    if args.field and not args.input:
        raise CliError("--field needs --input FILE.jsonl")
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


def corpus_cache_path(corpus, model, field, dtype):  # embeddings cached next to the corpus, keyed by both
    h = hashlib.sha256()
    h.update(Path(corpus).read_bytes())
    weights = model.pipeline.transformer_dir / "model.safetensors"
    st = weights.stat()
    h.update(f"{weights.resolve()}|{st.st_size}|{st.st_mtime_ns}|{field}|{dtype}".encode())
    h.update((model.pipeline.transformer_dir / "config.json").read_bytes())
    return Path(corpus).with_name(f".{Path(corpus).name}.minibert-{h.hexdigest()[:16]}.npy")


def cmd_search(args):
    import numpy as np

    from . import util

    if args.k < 1:
        raise CliError(f"-k must be at least 1, got {args.k}")
    docs = read_texts(args.corpus, args.field)
    if not docs:
        raise CliError(f"corpus {args.corpus} holds no texts")
    model = load_model(args)
    cache = corpus_cache_path(args.corpus, model, args.field, args.dtype)
    emb = None
    if cache.is_file():
        try:
            emb = np.load(cache)
        except (OSError, ValueError):
            emb = None  # a damaged cache is rebuilt, never trusted
        if emb is not None and emb.shape != (len(docs), model.dim):
            emb = None
    if emb is None:
        emb = model.encode(
            docs, batch_size=args.batch_size, show_progress_bar=show_progress(args, len(docs), args.batch_size)
        )
        gc.freeze()  # Numba's objects too, if this call started it (see load_model)
        try:
            write_atomically(cache, lambda tmp: np.save(open(tmp, "wb"), emb))
        except OSError as e:
            print(f"minibert: could not cache corpus embeddings at {cache}: {e.strerror}", file=sys.stderr)
    elif not args.quiet:
        print(f"minibert: corpus embeddings from cache {cache}", file=sys.stderr)
    score = util.SIMILARITY[model.similarity_fn_name]
    for query in args.query:
        hits = util.semantic_search(model.encode([query]), emb, top_k=args.k, score_function=score)[0]
        print(f"query: {query}")
        for rank, hit in enumerate(hits, 1):
            print(f"  {rank:>3}. {hit['score']:8.4f}  {docs[hit['corpus_id']]}")
    return 0


def cmd_info(args):
    import numpy as np

    from .weights import FLOAT_DTYPES, read_safetensors

    model = load_model(args)
    c, p = model.config, model.pipeline
    stored = read_safetensors(p.transformer_dir / "model.safetensors")
    floats = [t for t in stored.tensors.values() if t.dtype in FLOAT_DTYPES]  # not buffers such as position_ids
    dtypes = sorted({t.dtype for t in floats})
    weights_mib = (p.transformer_dir / "model.safetensors").stat().st_size / 2**20
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
        (
            "parameters",
            f"{n_params:,} in the checkpoint ({weights_mib:.1f} MiB)",
        ),
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
    e.add_argument("--input", "-i", help=".txt or .jsonl file of texts ('-' for stdin)")
    e.add_argument("--field", help="the .jsonl field holding the text (default: text)")
    e.add_argument("--output", "-o", help="write embeddings to a .npy ([n, dim] float array) or .jsonl file")
    e.add_argument("--normalize", action="store_true", help="scale every embedding to unit length")
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
    s.add_argument("--model", "-m", default=DEFAULT_MODEL, help="model directory or hub id")
    s.add_argument("--corpus", "-c", required=True, help="corpus file")
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


def main(argv=None):
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
    from .errors import MinibertError

    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("minibert: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        sys.stderr.close()  # `minibert embed ... | head`: not an error
        return 0
    except (CliError, MinibertError, ValueError, TypeError, OSError) as e:
        if args.debug:
            raise
        print(f"minibert: error: {e}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
