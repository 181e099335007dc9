"""NumPy first, Numba once it pays: which path a call takes.

Starting Numba (importing it, its typing registries, loading ~20 cached kernels) costs ~0.3 s
here, ~0.5 s with SciPy installed: 50-100 times one query's forward pass. A process that embeds
one query and exits would spend most of its life on it. So a process starts on the NumPy
versions of the kernels (kernels/jit.py; the matmuls are BLAS either way) and starts Numba at the
first call that makes it worth it:

- a call of more than ``NUMPY_CALL_TOKENS`` tokens (a batch: 3-4x slower on NumPy, whose float64
  GELU and softmax are many passes over memory, so Numba's start pays for itself within a few), or
- once short calls have spent ``NUMPY_SECONDS`` in total on NumPy, about what Numba's start
  costs. (Renting skis until the rent paid equals the price is never worse than twice the best
  choice made knowing the future: here, knowing how many queries the process will see.)

The two paths give the same float32 bits but for rare elements: each NumPy mirror takes the
kernel's own float64 steps and rounds once, so a float32 result can only differ where the float64
values (which differ by ~1e-16: fused multiply-adds, summation order) straddle a rounding
boundary. tests/test_kernels.py (op by op) and tests/test_startup.py (whole models) hold them to it.

``MINIBERT_NUMBA=1`` starts Numba at the first call; ``MINIBERT_NUMBA=0`` never does (every call
on NumPy, whatever its size: slower, but no JIT at all).
"""

import contextlib
import os
import threading
import time

from minibert.kernels import jit

NUMPY_CALL_TOKENS = 64  # a call of up to this many tokens may run on NumPy while Numba is not started
NUMPY_SECONDS = 0.3  # ... until such calls have taken this long in total (~ the cost of starting Numba)

_lock = threading.Lock()
_numpy_seconds = 0.0  # spent so far on the NumPy path
_forced = None  # True / False inside forced(): every call takes that path


def _setting():  # MINIBERT_NUMBA: "1" always Numba, "0" never, unset (or "auto") decide per call
    value = os.environ.get("MINIBERT_NUMBA", "auto").strip().lower()
    if value not in ("0", "1", "auto", ""):
        raise ValueError(f"MINIBERT_NUMBA must be 0, 1 or auto, got {os.environ['MINIBERT_NUMBA']!r}")
    return value or "auto"


def use_numba(n_tokens):  # tokens in this call -> True to run it on Numba (started here if need be)
    setting = {True: "1", False: "0"}.get(_forced) or _setting()
    if setting == "0":
        return False
    if jit.started():
        return True
    if setting == "auto" and n_tokens <= NUMPY_CALL_TOKENS and _numpy_seconds < NUMPY_SECONDS:
        return False
    jit.start()
    return True


def spent_on_numpy(seconds):  # a NumPy-path call took this long
    global _numpy_seconds
    with _lock:
        _numpy_seconds += seconds


@contextlib.contextmanager
def timed(numba):  # with timed(numba): <a call>  -- its time counts toward NUMPY_SECONDS if on NumPy
    start = time.perf_counter()
    try:
        yield
    finally:
        if not numba:
            spent_on_numpy(time.perf_counter() - start)


@contextlib.contextmanager
def forced(numba):  # with forced(True | False): every call in the block, on any thread, takes that path
    """For the parity suite and the tests, which compare the two paths; not for concurrent use."""
    global _forced
    saved, _forced = _forced, bool(numba)
    try:
        yield
    finally:
        _forced = saved
