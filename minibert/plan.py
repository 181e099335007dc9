"""How a call runs, decided in one place: ``plan(model, lengths, output)`` yields the Plan.

The engine (minibert/engine.py) computes whatever the plan says and decides nothing itself. The
rules, each with its reason:

1. ``engine="reference"`` at load: minibert/bert.py, one text at a time, plain NumPy.
2. Numba or its NumPy mirrors. Starting Numba (importing it and loading ~20 cached kernels) costs
   50-100 times one query's forward pass, so a process starts on the mirrors and starts Numba at
   the first call of more than ``NUMPY_CALL_TOKENS`` tokens (a batch, 3-4x slower on NumPy), or
   once short calls have spent ``NUMPY_SECONDS`` on NumPy, about Numba's start-up (renting skis
   until the rent paid equals the price is never worse than twice the best choice in hindsight).
   ``MINIBERT_NUMBA=1`` starts Numba at the first call, ``0`` never.
3. The dense layers. A model loaded with ``precision="int8"`` takes the int8 strategy: the VNNI
   kernel on Numba on a CPU that has AVX-512 VNNI, else its NumPy twin (the same exact integer
   sums, by BLAS in float64). For float32, a BLAS whose row bits depend on the row's place in a tile (OpenBLAS's AVX2
   kernels) is also one that does not use 512-bit vectors: on a CPU that has them, minibert's own
   matmul is faster, and its rows never depend on each other, so every call on Numba takes it;
   without Numba, or on a CPU without AVX-512, each text is laid out on the BLAS's tiles, on one
   BLAS thread. With a BLAS whose rows are independent, one short text alone (a query of at most
   ``SMALL_ROWS`` tokens) on Numba takes the streaming kernel, where BLAS's summation order could
   be found; everything else takes BLAS.
4. A query's threads: all the cores, unless this process cannot split (a child forked after its
   parent used Numba's threads), another query holds the split, or the cores are busy (below).
5. Worker threads: a call of several texts deals them to one worker per core, each with BLAS on
   one thread (a BLAS whose idle threads spin would fight the Numba kernels between its calls).
6. [CLS] pooling alone reads one token per text: the last block carries only those.

Any of these choices gives a text the same embedding bits (the engine's strategies are built so),
but for the NumPy mirrors, which differ in the last bit of rare elements, and for the precision,
which is the model's.
"""

import contextlib
import os
import statistics
import threading
import time
from collections import deque
from dataclasses import dataclass

from minibert.kernels import jit
from minibert.kernels.matmul import blas_k_blocks, blas_row_tile

from . import threads
from .engine import (
    NUMBA_KERNELS,
    NUMPY_KERNELS,
    BlasDense,
    Int8Dense,
    Kernels,
    NumbaDense,
    StreamingDense,
    TiledBlasDense,
)

NUMPY_CALL_TOKENS = 64  # a call of up to this many tokens may run on NumPy while Numba is not started
NUMPY_SECONDS = 0.3  # ... until such calls have taken this long in total (about Numba's start-up)
# One text of up to this many tokens, alone in its call, has its dense layers streamed by
# kernels/matmul.py: with few rows, BLAS's re-packing of W on every call is most of its work.
SMALL_ROWS = 32
OUTPUTS = ("sentence_embedding", "token_embeddings", "hidden_states")


@dataclass(frozen=True)
class Plan:
    reference: bool  # run minibert/bert.py (engine="reference"): none of the fields below apply
    kernels: Kernels  # the per-token steps: Numba's kernels, or their NumPy mirrors
    dense: object  # how x @ W runs: engine.BlasDense, TiledBlasDense, StreamingDense, NumbaDense or Int8Dense
    workers: int  # threads sharing the call's texts (1: all on the calling thread)
    first_token_only: bool  # the last block carries only each text's first token ([CLS] pooling)
    all_layers: bool  # keep every layer's output (hidden_states), not only the last


_lock = threading.Lock()
_numpy_seconds = 0.0  # spent so far on the NumPy mirrors
_forced = None  # "numba" / "numpy" inside forced(): every call takes those kernels


@contextlib.contextmanager
def plan(model, lengths, output):  # SentenceEncoder, tokens per text, one of OUTPUTS -> Plan (held for the call)
    """Decide the call's path and hold what it needs (BLAS's thread count, the query split) while
    the caller runs it; the time it took informs the next decisions (rules 2 and 4)."""
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
    first_token_only = output == "sentence_embedding" and tuple(model.pooling_modes) == ("cls",)
    all_layers = output == "hidden_states"
    if model.engine == "reference":
        yield Plan(True, NUMPY_KERNELS, BlasDense(), 1, False, all_layers)
        return
    numba = _use_numba(sum(lengths))
    kernels = NUMBA_KERNELS if numba else NUMPY_KERNELS
    query = numba and len(lengths) == 1 and lengths[0] <= SMALL_ROWS
    with contextlib.ExitStack() as held:
        tile = row_tile(model.dtype)
        if model.precision == "int8":
            vnni = numba and cpu_has("avx512_vnni")
            n = _query_threads(model, held) if vnni and len(lengths) == 1 else 1
            dense, workers = Int8Dense(n, vnni), _workers(len(lengths), held)
        elif numba and tile and tile > 1 and cpu_has("avx512f"):
            n = _query_threads(model, held) if len(lengths) == 1 else 1
            dense, workers = NumbaDense(n), _workers(len(lengths), held)
        elif tile and tile > 1:
            dense, workers = TiledBlasDense(tile), _workers(len(lengths), held)
            held.enter_context(threads.single_threaded_blas())  # two BLAS threads would move rows in their tiles
        elif query and (blocks := _query_blocks(model, split=False)) is not None:
            n = _query_threads(model, held)
            if n > 1:
                blocks = _query_blocks(model, split=True)
            dense, workers = StreamingDense(n, blocks), 1
        else:
            dense, workers = BlasDense(), _workers(len(lengths), held)
        start = time.perf_counter()
        yield Plan(False, kernels, dense, workers, first_token_only, all_layers)
        seconds = time.perf_counter() - start
    if not numba:
        _spent_on_numpy(seconds)
    if isinstance(dense, (StreamingDense, NumbaDense, Int8Dense)) and len(lengths) == 1 and lengths[0] <= SMALL_ROWS:
        _query_times(model).record(dense.threads, seconds)


@contextlib.contextmanager
def forced(kernels):  # with forced("numba" | "numpy"): every call in the block takes those kernels
    """For the parity suite and the tests, which compare the two families; not for concurrent use."""
    global _forced
    if kernels not in ("numba", "numpy"):
        raise ValueError(f"forced() takes 'numba' or 'numpy', got {kernels!r}")
    saved, _forced = _forced, kernels
    try:
        yield
    finally:
        _forced = saved


# ------------------------------------------------------------------ rule 2: Numba or NumPy


def numba_setting():  # MINIBERT_NUMBA: "1" always Numba, "0" never, "auto" (or unset) decide per call
    value = os.environ.get("MINIBERT_NUMBA", "auto").strip().lower()
    if value not in ("0", "1", "auto", ""):
        raise ValueError(f"MINIBERT_NUMBA must be 0, 1 or auto, got {os.environ['MINIBERT_NUMBA']!r}")
    return value or "auto"


def _use_numba(n_tokens):  # tokens in this call -> True to run it on Numba (started here if need be)
    setting = {"numba": "1", "numpy": "0"}.get(_forced) or numba_setting()
    if setting == "0":
        return False
    if jit.started():
        return True
    if setting == "auto" and n_tokens <= NUMPY_CALL_TOKENS and _numpy_seconds < NUMPY_SECONDS:
        return False
    jit.start()
    return True


def _spent_on_numpy(seconds):
    global _numpy_seconds
    with _lock:
        _numpy_seconds += seconds


# ------------------------------------------------------------------ rule 3: the dense layers


_row_tiles = {}  # dtype -> row tile, and (shapes, dtype, split) -> blocks: facts of this process's BLAS
_blocks = {}


def row_tile(dtype):  # -> NumPy's BLAS's row tile for dtype (kernels/matmul.py), probed as the workers run it
    if dtype not in _row_tiles:
        with threads.single_threaded_blas():
            _row_tiles[dtype] = blas_row_tile(dtype)
    return _row_tiles[dtype]


_cpu_flags = []


def cpu_has(flag):  # does this CPU have an instruction set, e.g. "avx512f", "avx512_vnni" (/proc/cpuinfo)?
    if not _cpu_flags:
        try:
            with open("/proc/cpuinfo") as f:
                flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
        except OSError:
            flags = []
        _cpu_flags.append(frozenset(flags))
    return flag in _cpu_flags[0]


def _query_blocks(model, split):  # -> {(K, N): BLAS's K blocks or None} for the model's matrices; None if none
    w = model.weights.layers[0]
    key = (tuple(m.shape for m in (w.qkv_w, w.attn_out_w, w.ffn_in_w, w.ffn_out_w)), model.dtype, split)
    if key not in _blocks:
        blocks = {(k, n): blas_k_blocks(k, n, model.dtype, split) for k, n in set(key[0])}
        _blocks[key] = None if all(b is None for b in blocks.values()) else blocks
    return _blocks[key]


# ------------------------------------------------------------------ rules 4 and 5: threads


def _workers(n_texts, held):  # -> worker threads for a call of n_texts (BLAS held at one thread if several)
    workers = threads.n_workers() if n_texts > 1 else 1
    if workers > 1 and not held.enter_context(threads.single_threaded_blas()):
        return 1  # a BLAS minibert cannot hold at one thread: let it thread as it likes
    return workers


def _query_threads(model, held):  # -> threads to split one query's matmuls over
    n = threads.n_workers()
    if n == 1 or not threads.split_allowed():
        return 1
    if not _query_times(model).split_pays():
        return 1
    if not held.enter_context(threads.split_query()):
        return 1  # another query holds the split: run this one on its own thread
    held.enter_context(threads.single_threaded_blas())  # so that BLAS's idle threads do not spin against Numba's
    return n


class QueryTimes:
    """Whether splitting a query over the cores pays right now, from the times of recent queries.

    On an idle machine a split query runs ~1.5x faster. But a split matmul waits for its slowest
    thread, and when another process keeps a core busy, each of a query's ~25 splits waits for the
    scheduler to give that thread its core back: measured, 20x slower than one thread. So: split
    while split queries run within ``SLOWER`` times the best seen; once the median of the last
    ``RECENT`` is slower than that, run queries on one thread, and try a split again after
    ``PROBE_FIRST`` queries, then twice as many each time it still does not pay, up to
    ``PROBE_LAST``: a busy spell costs a few slow queries, not a slow query in every few."""

    RECENT, SLOWER, PROBE_FIRST, PROBE_LAST = 3, 2.0, 8, 512

    def __init__(self):
        self.split, self.one = deque(maxlen=self.RECENT), deque(maxlen=self.RECENT)
        self.best_split = float("inf")
        self.splitting, self.wait, self.probe_after = True, 0, self.PROBE_FIRST
        self.lock = threading.Lock()

    def split_pays(self):  # -> split the next query?
        with self.lock:
            if self.splitting:
                return True
            self.wait += 1
            return self.wait >= self.probe_after  # a probe

    def record(self, n_threads, seconds):
        with self.lock:
            if n_threads == 1:
                self.one.append(seconds)
                return
            self.split.append(seconds)
            self.best_split = min(self.best_split, seconds)
            if not self.splitting:  # a probe: does splitting pay again?
                self.wait = 0
                if self.one and seconds < statistics.median(self.one):
                    self.splitting, self.probe_after = True, self.PROBE_FIRST
                    self.split.clear()
                    self.split.append(seconds)
                else:
                    self.probe_after = min(2 * self.probe_after, self.PROBE_LAST)
            elif len(self.split) == self.RECENT and statistics.median(self.split) > self.SLOWER * self.best_split:
                self.splitting, self.wait = False, 0


def _query_times(model):  # -> the QueryTimes of this model's queries
    return _QUERY_TIMES.setdefault((model.config, model.dtype.str, model.precision), QueryTimes())


_QUERY_TIMES = {}  # (EncoderConfig, dtype, precision) -> QueryTimes: queries of one model shape cost alike


def describe(p):  # Plan -> one line, for the parity report and the tests
    if p.reference:
        return "reference (minibert/bert.py, NumPy, one text at a time)"
    threads = isinstance(p.dense, (StreamingDense, NumbaDense)) and p.dense.threads > 1
    dense = p.dense.name + (f" x{p.dense.threads} threads" if threads else "")
    return f"{p.kernels.name} kernels, {dense} dense layers, {p.workers} worker(s)" + (
        ", [CLS]-only last block" if p.first_token_only else ""
    )
