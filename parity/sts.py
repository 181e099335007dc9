"""``python -m minibert.parity.sts MODEL DATA``: STS Benchmark (test split) Spearman x 100 of cosine similarity.

Parity of quality, not only of numbers: embed both sentence columns, score each pair by cosine,
and rank-correlate with the gold scores. all-MiniLM-L6-v2 is published at 82.03 (MTEB);
sentence-transformers gives 82.05 on this file. Reports minibert and, when installed,
sentence-transformers side by side. DATA is the STS Benchmark test split as a TSV (genre, file,
year, id, gold score, sentence 1, sentence 2, ...; no header), as the STS Benchmark distributes it.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def read_sts(path):  # -> (sentences1, sentences2, gold scores [n])
    s1, s2, gold = [], [], []
    p = Path(path)
    if not p.is_file():
        raise SystemExit(f"parity.sts: the STS Benchmark file {p} does not exist (give the test split's TSV)")
    try:
        lines = p.read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as e:
        raise SystemExit(f"parity.sts: cannot read {p}: {e}") from None
    if lines and lines[-1] == "":
        lines.pop()
    for n, line in enumerate(lines, 1):
        cols = line.rstrip("\r").split("\t")  # tabs only: sentences contain quotes, so no CSV parser
        if len(cols) < 7:
            raise SystemExit(f"parity.sts: {path}:{n}: expected at least 7 tab-separated columns, got {len(cols)}")
        try:
            gold.append(float(cols[4]))
        except ValueError:
            raise SystemExit(f"parity.sts: {path}:{n}: gold score {cols[4]!r} is not a number") from None
        s1.append(cols[5])
        s2.append(cols[6])
    return s1, s2, np.array(gold)


def rank(x):  # ranks 1..n, ties get their average rank (as scipy.stats.rankdata)
    x = np.asarray(x)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    sorted_x = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(a, b):  # Spearman's rho: Pearson correlation of the ranks
    return float(np.corrcoef(rank(a), rank(b))[0, 1])


def cosine_pairs(e1, e2):  # [n, D], [n, D] -> [n]
    e1, e2 = np.asarray(e1, np.float64), np.asarray(e2, np.float64)
    return (e1 * e2).sum(1) / np.maximum(np.linalg.norm(e1, axis=1) * np.linalg.norm(e2, axis=1), 1e-12)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m minibert.parity.sts", description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="model directory or hub id")
    ap.add_argument("data", help="the STS Benchmark test split, a TSV file (e.g. stsbenchmark-test.tsv)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--no-st", action="store_true", help="skip sentence-transformers even if installed")
    ap.add_argument("--json", dest="json_out", metavar="OUT")
    ap.add_argument(
        "--precision", choices=["float32", "int8"], default="float32", help="int8: also score minibert int8"
    )
    args = ap.parse_args(argv)
    import minibert

    s1, s2, gold = read_sts(args.data)
    try:
        model = minibert.load(args.model)
    except (minibert.MinibertError, ValueError, TypeError) as e:
        raise SystemExit(f"parity.sts: {e}") from None
    t = time.perf_counter()
    e1, e2 = model.encode(s1, batch_size=args.batch_size), model.encode(s2, batch_size=args.batch_size)
    results = {
        "model": str(args.model),
        "pairs": len(gold),
        "minibert": {"spearman_x100": 100 * spearman(cosine_pairs(e1, e2), gold), "seconds": time.perf_counter() - t},
    }
    if args.precision != "float32":
        reduced = minibert.load(model.path, precision=args.precision)
        t = time.perf_counter()
        r1, r2 = reduced.encode(s1, batch_size=args.batch_size), reduced.encode(s2, batch_size=args.batch_size)
        results[f"minibert_{args.precision}"] = {
            "spearman_x100": 100 * spearman(cosine_pairs(r1, r2), gold),
            "seconds": time.perf_counter() - t,
        }
    if not args.no_st:
        try:
            from . import hf

            st = hf.load_sentence_transformer(model.path)
        except ImportError:
            st = None
        if st is not None:
            t = time.perf_counter()
            f1, f2 = hf.st_embeddings(st, s1, args.batch_size), hf.st_embeddings(st, s2, args.batch_size)
            results["sentence_transformers"] = {
                "spearman_x100": 100 * spearman(cosine_pairs(f1, f2), gold),
                "seconds": time.perf_counter() - t,
            }
    print(f"STS Benchmark test, {len(gold)} pairs, Spearman x100 of cosine similarity: {args.model}")
    for name in ("minibert", f"minibert_{args.precision}", "sentence_transformers"):
        if name in results:
            r = results[name]
            print(f"  {name:<22} {r['spearman_x100']:6.2f}   ({r['seconds']:.1f} s to embed)")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
