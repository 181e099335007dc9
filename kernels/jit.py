"""Numba, started only when a kernel first runs.

Importing Numba and loading its cached kernels takes longer than everything else a process that
embeds one query does (more again when SciPy is installed: Numba imports it to probe its BLAS).
Every kernel also has a NumPy mirror (``foo_numpy``, next to it), so minibert can run a short call
without Numba at all (``minibert/plan.py`` decides when).

So the kernel modules declare their kernels with ``njit`` and ``intrinsic`` from here, with
Numba's own options. A declaration is a placeholder. The first time any placeholder is called,
``start()`` imports Numba, makes the real Numba function for every declared kernel and puts it in
the placeholder's place in its module, so that kernels which call each other are compiled against
each other as if decorated directly. Nothing else changes: the same options, the same on-disk
cache (Numba keys it by the function's file and name), the same machine code.
"""

import contextlib
import os
import signal
import threading

_declared = []  # every placeholder, in declaration order
_lock = threading.Lock()
_started = False


class Declared:
    """A kernel (or intrinsic) whose Numba function is made by ``start()``. Calling it starts Numba."""

    def __init__(self, fn, make):
        self.py_func, self._make, self.compiled = fn, make, None
        self.__name__, self.__qualname__, self.__doc__ = fn.__name__, fn.__qualname__, fn.__doc__
        self.__module__ = fn.__module__
        _declared.append(self)

    def __call__(self, *args, **kwargs):
        if not _started:  # not ``self.compiled``: it is set before the module names are rebound
            start()
        return self.compiled(*args, **kwargs)

    def __repr__(self):
        state = "started" if _started else "Numba not started yet"
        return f"<kernel {self.__module__}.{self.__qualname__} ({state})>"


def njit(**options):  # the same options as numba.njit, always given as keywords
    def declare(fn):
        return Declared(fn, lambda numba: numba.njit(**options)(fn))

    return declare


def intrinsic(fn):  # numba.extending.intrinsic, declared the same way
    return Declared(fn, lambda numba: numba.extending.intrinsic(fn))


class _PRangePlaceholder:  # stands for numba.prange in the kernels' source until start() swaps it in
    def __repr__(self):
        return "<numba.prange, once Numba has started>"


prange = _PRangePlaceholder()


def started():  # has this process started Numba?
    return _started


@contextlib.contextmanager
def _interrupts_held():
    """Ctrl-C while Numba is being imported would leave it half-imported for the rest of the
    process (Python keeps partly initialised modules, and every later import finds them broken).
    So on the main thread, where Python raises KeyboardInterrupt, a SIGINT that arrives meanwhile
    waits until the import and the rebinding below are done, then interrupts as usual."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pending.append(frame))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if pending and callable(previous):
            previous(signal.SIGINT, pending[0])
        elif pending and previous == signal.SIG_DFL:
            os.kill(os.getpid(), signal.SIGINT)


def start():
    """Import Numba and put a Numba function in place of every declared kernel (idempotent)."""
    if _started:
        return
    with _lock, _interrupts_held():
        _start()


def _start():
    global _started
    if _started:
        return
    try:
        import numba
        import numba.extending  # noqa: F401
    except ImportError as e:  # numba is a dependency, but wheels can lag a new Python
        raise ImportError(
            f"minibert's kernels need Numba, which could not be imported ({e}). Install it "
            "(pip install numba), or set MINIBERT_NUMBA=0 to run every call on NumPy "
            "(the same results, slower on batches)"
        ) from e
    for kernel in _declared:
        kernel.compiled = kernel._make(numba)  # a dispatcher: it compiles (or loads) at first call
    for kernel in _declared:  # then every module global naming a placeholder names the real thing
        module_globals = kernel.py_func.__globals__
        for name, value in list(module_globals.items()):
            if isinstance(value, Declared):
                module_globals[name] = value.compiled
            elif value is prange:
                module_globals[name] = numba.prange
    _started = True


def _after_fork_in_child():  # a lock held by another thread at fork time would never be released
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
