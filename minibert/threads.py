"""Using both cores without BLAS and Numba fighting over them.

A forward pass alternates BLAS matmuls with Numba kernels (GELU, layer norm, softmax). With a
multi-threaded BLAS, OpenBLAS's worker threads keep spinning on the other cores between calls, so
a Numba kernel gets one core at best, and a parallel Numba kernel fights the spinners. Instead, a
batch of several texts is split between worker threads, each running the whole forward pass on
its share with a single-threaded BLAS; Numba kernels release the GIL (``nogil=True``), NumPy's
matmuls too. One short text (a query) has its dense layers split over Numba's threads
(kernels/matmul.py) while BLAS is held at one thread. Which of these a call gets is minibert/plan.py's
to decide; this module holds the mechanisms: BLAS's thread count, the worker pool, the query split.

Only NumPy's bundled OpenBLAS is recognised (found among the loaded libraries); with any other
BLAS, minibert runs every batch on the calling thread and lets that BLAS thread as it likes.
"""

import contextlib
import ctypes
import os
import threading
from concurrent.futures import ThreadPoolExecutor

_SYMBOLS = [
    ("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
    ("openblas_set_num_threads64_", "openblas_get_num_threads64_"),
    ("openblas_set_num_threads", "openblas_get_num_threads"),
]
_lock = threading.Lock()
_pool = None
_blas = None
_single_users = 0  # encode calls inside single_threaded_blas() right now (they may overlap)
_saved_threads = None  # BLAS's thread count before the first of them entered
# One split matmul at a time: Numba's fallback "workqueue" threading layer aborts the process when
# two threads launch parallel kernels at once. A second concurrent query runs unsplit instead.
_split_lock = threading.Lock()
_split_used = False  # this process has run a split query (so Numba's thread pool exists)
_split_allowed = True  # False in a child forked after that: GNU OpenMP cannot run there


def _after_fork_in_child():
    # A forked child has only the forking thread. Worker threads, locks held by other threads and
    # GNU OpenMP's pool (Numba's threads) did not come along: submitting to the old pool would wait
    # forever, and Numba terminates a child that starts an OpenMP region its parent already used.
    global _pool, _lock, _split_lock, _single_users, _saved_threads, _split_allowed
    _pool, _lock, _split_lock, _single_users, _saved_threads = None, threading.Lock(), threading.Lock(), 0, None
    if _split_used:  # inherited, so a grandchild is covered too
        _split_allowed = False


os.register_at_fork(after_in_child=_after_fork_in_child)


def cores():  # the cores this process may run on
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def n_workers():  # MINIBERT_NUM_THREADS, else one worker per core
    value = os.environ.get("MINIBERT_NUM_THREADS", "")
    return max(1, int(value)) if value.isdigit() else cores()


def _find_openblas():  # -> (set_num_threads, get_num_threads) or None
    import numpy  # noqa: F401  (loads NumPy's BLAS, so that it shows in the process's maps)

    try:
        with open("/proc/self/maps") as f:
            paths = sorted({line.split()[-1] for line in f if "openblas" in line.lower() and "/" in line})
    except OSError:
        return None
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for set_name, get_name in _SYMBOLS:
            if hasattr(lib, set_name) and hasattr(lib, get_name):
                set_fn, get_fn = getattr(lib, set_name), getattr(lib, get_name)
                set_fn.argtypes, set_fn.restype, get_fn.restype = [ctypes.c_int], None, ctypes.c_int
                return set_fn, get_fn
    return None


def blas_controls():
    global _blas
    if _blas is None:
        _blas = _find_openblas() or False
    return _blas or None


@contextlib.contextmanager
def single_threaded_blas():  # yields True when BLAS is single-threaded inside the block
    controls = blas_controls()
    if controls is None:
        yield False
        return
    global _single_users, _saved_threads
    set_fn, get_fn = controls
    with _lock:  # counted, so that overlapping calls from several threads restore the count once, last
        if _single_users == 0:
            _saved_threads = get_fn()
            set_fn(1)
        _single_users += 1
    try:
        yield True
    finally:
        with _lock:
            _single_users -= 1
            if _single_users == 0:
                set_fn(_saved_threads)


def split_allowed():  # may this process split a query over Numba's threads?
    return _split_allowed


@contextlib.contextmanager
def split_query():  # yields True while this thread holds the query split, False when another does
    global _split_used
    if not _split_lock.acquire(blocking=False):
        yield False
        return
    _split_used = True
    try:
        yield True
    finally:
        _split_lock.release()


def map_shares(fn, shares):  # [fn(share) for share in shares], on the worker threads when several
    global _pool
    if len(shares) <= 1:
        return [fn(share) for share in shares]
    if _pool is None:
        _pool = ThreadPoolExecutor(n_workers(), thread_name_prefix="minibert")
    return list(_pool.map(fn, shares))
