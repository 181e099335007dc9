"""The planner (minibert/plan.py): one function decides how a call runs.

Among its rules: NumPy first, Numba once it pays (kernels/jit.py). A short call in a fresh process
runs the kernels' NumPy mirrors without importing Numba; a batch, or enough short calls, start
Numba. The two paths must give the same embeddings: the same bits for nearly every text, and
always within the batch-invariance bound of 1e-6.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import minibert
from minibert import plan, threads
from minibert.engine import BlasDense, NumbaDense, StreamingDense, TiledBlasDense
from minibert.kernels import jit
from minibert.kernels.matmul import blas_row_tile
from minibert.parity.hf import default_texts

from helpers import rel_err, write_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXTS = default_texts()


def run_fresh(code, *args, numba=None, **env_vars):  # run code in a fresh interpreter; MINIBERT_NUMBA as given
    env = {k: v for k, v in os.environ.items() if k != "MINIBERT_NUMBA"}
    if numba is not None:
        env["MINIBERT_NUMBA"] = numba
    env.update(env_vars)
    p = subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    return p.stdout


def test_a_short_first_call_does_not_start_numba_and_a_batch_does(minilm_dir):
    out = run_fresh(
        """
import sys, json, numpy as np, minibert
from minibert.kernels import jit
m = minibert.load(sys.argv[1])
first = m.encode(["hi", "what is the capital of france"])
assert "numba" not in sys.modules and not jit.started(), "a short first call imported Numba"
m.hidden_states(m.tokenize(["hello there"]))
assert "numba" not in sys.modules
m.encode(["a text of a good many words " * 4] * 3)  # 3 x ~30 tokens: a batch worth Numba
assert "numba" in sys.modules and jit.started()
again = m.encode(["hi", "what is the capital of france"])
print(json.dumps(float(np.abs(first - again).max() / np.abs(again).max())))
""",
        minilm_dir,
    )
    assert json.loads(out) <= 1e-6


def test_minibert_numba_0_never_starts_it_and_1_starts_it_at_once(minilm_dir):
    code = """
import sys, minibert
m = minibert.load(sys.argv[1])
m.encode(["a text of a good many words " * 20] * 8)
print("numba" in sys.modules)
"""
    assert run_fresh(code, minilm_dir, numba="0").strip() == "False"
    assert run_fresh(code.replace("* 20] * 8", "* 0] * 1"), minilm_dir, numba="1").strip() == "True"


def test_numpy_path_gives_the_numba_paths_embeddings(minilm_dir):
    m = minibert.load(minilm_dir)
    with plan.forced("numpy"):
        by_numpy = np.stack([m.encode(t) for t in TEXTS])
        batch_numpy = m.encode(TEXTS)
        states_numpy = m.hidden_states(m.tokenize(TEXTS[:3]))
    with plan.forced("numba"):
        by_numba = np.stack([m.encode(t) for t in TEXTS])
        batch_numba = m.encode(TEXTS)
        states_numba = m.hidden_states(m.tokenize(TEXTS[:3]))
    np.testing.assert_array_equal(by_numba, batch_numba)  # the Numba path's own batch invariance
    # Where both paths take BLAS for the dense layers, the mirrors give the kernels' bits for nearly
    # every text; where Numba's path takes minibert's own matmul (NumbaDense), the two sum in other
    # orders and agree within the batch-invariance bound only.
    with plan.plan(m, [40, 40], "sentence_embedding") as p:
        same_dense = p.kernels.name == "numba" and not isinstance(p.dense, NumbaDense)
    for a, b in ((by_numpy, by_numba), (batch_numpy, batch_numba)):
        assert max(rel_err(x, y) for x, y in zip(a, b)) <= 1e-6
        if same_dense:
            assert (a == b).all(axis=1).mean() >= 0.9, "the NumPy mirrors should give the kernels' bits"
    for a, b in zip(states_numpy, states_numba):  # [layers + 1, tokens, hidden]: one row per token and layer
        assert rel_err(a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])) <= 1e-6


class FakeModel:  # what the planner reads of a model
    def __init__(self, pooling_modes=("mean",), engine="fast"):
        self.pooling_modes, self.engine, self.dtype = pooling_modes, engine, np.dtype(np.float32)
        self.precision = "float32"


def kernels_of(lengths, output="sentence_embedding"):
    with plan.plan(FakeModel(), lengths, output) as p:
        return p.kernels.name


def test_numba_or_numpy(monkeypatch):
    started = []
    monkeypatch.setattr(jit, "started", lambda: bool(started))
    monkeypatch.setattr(jit, "start", lambda: started.append(True))
    monkeypatch.setattr(plan, "_numpy_seconds", 0.0)
    monkeypatch.setattr(plan, "row_tile", lambda dtype: 1)
    monkeypatch.setattr(plan, "_query_blocks", lambda model, split: None)  # (no model weights to probe here)
    monkeypatch.setenv("MINIBERT_NUMBA", "auto")
    assert kernels_of([plan.NUMPY_CALL_TOKENS]) == "numpy" and not started
    assert kernels_of([plan.NUMPY_CALL_TOKENS, 1]) == "numba" and started  # a batch starts Numba ...
    assert kernels_of([3]) == "numba"  # ... and from then on every call takes it
    started.clear()
    plan._spent_on_numpy(plan.NUMPY_SECONDS / 2)
    assert kernels_of([3]) == "numpy" and not started
    with plan.plan(FakeModel(), [3], "sentence_embedding"):  # a call's time on NumPy counts toward the start
        plan._spent_on_numpy(plan.NUMPY_SECONDS / 2)  # (as if the call had taken that long)
    assert kernels_of([3]) == "numba" and started  # short calls have spent what Numba's start costs
    started.clear()
    monkeypatch.setenv("MINIBERT_NUMBA", "0")
    assert kernels_of([10**6]) == "numpy" and not started
    monkeypatch.setenv("MINIBERT_NUMBA", "1")
    monkeypatch.setattr(plan, "_numpy_seconds", 0.0)
    assert kernels_of([1]) == "numba" and started
    started.clear()
    with plan.forced("numpy"):
        assert kernels_of([10**6]) == "numpy"
    monkeypatch.setenv("MINIBERT_NUMBA", "yes")
    with pytest.raises(ValueError, match="MINIBERT_NUMBA must be 0, 1 or auto, got 'yes'"):
        kernels_of([1])
    with pytest.raises(ValueError, match="output must be one of"):
        kernels_of([1], output="pooled")


def test_one_function_decides_each_call(tmp_path, monkeypatch):
    # What each kind of call gets; every rule of plan.py's docstring, seen from outside.
    monkeypatch.delenv("MINIBERT_NUM_THREADS", raising=False)
    mean = minibert.load(write_model(tmp_path / "mean"))
    cls = minibert.load(write_model(tmp_path / "cls", pooling={"word_embedding_dimension": 32, "pooling_mode": "cls"}))
    with threads.single_threaded_blas():
        tile = blas_row_tile(np.float32)
    cores = threads.n_workers()

    def decided(model, lengths, output="sentence_embedding"):
        with plan.plan(model, lengths, output) as p:
            return p

    batch, long_one, query = decided(mean, [20, 9, 3]), decided(mean, [200]), decided(mean, [9])
    if tile > 1 and plan.cpu_has("avx512f"):  # a BLAS without 512-bit kernels on a CPU with them: minibert's own
        assert isinstance(batch.dense, NumbaDense) and batch.dense.threads == 1 and batch.workers == cores
        assert isinstance(long_one.dense, NumbaDense) and long_one.workers == 1
        assert isinstance(query.dense, NumbaDense) and query.dense.threads in (1, cores)
    elif tile == 1:
        assert isinstance(batch.dense, BlasDense) and batch.workers == cores
        assert isinstance(long_one.dense, BlasDense) and long_one.workers == 1
        assert isinstance(query.dense, StreamingDense) and query.workers == 1 and query.dense.threads in (1, cores)
    else:  # a BLAS with a row tile: every call lays its rows out on the tiles
        assert all(isinstance(p.dense, TiledBlasDense) for p in (batch, long_one, query))
    assert not batch.first_token_only and decided(cls, [20, 9]).first_token_only
    assert not decided(cls, [20, 9], "token_embeddings").first_token_only  # token vectors need every token
    states = decided(mean, [5, 7], "hidden_states")
    assert states.all_layers and not states.first_token_only and not batch.all_layers
    with plan.forced("numpy"):  # the streaming kernel and minibert's own matmul are Numba's
        assert isinstance(decided(mean, [9]).dense, BlasDense if tile == 1 else TiledBlasDense)
    ref = minibert.load(write_model(tmp_path / "ref"), engine="reference")
    assert decided(ref, [20, 9]).reference and not batch.reference
    assert "reference" in plan.describe(decided(ref, [3])) and "kernels" in plan.describe(batch)


def test_query_threads_follow_how_busy_the_cores_are():
    # Split queries while they run near their best; a busy neighbour core makes every split wait
    # for the scheduler, so then run on one thread and try splitting again now and then, less and
    # less often while it keeps not paying.
    t = plan.QueryTimes()
    for _ in range(5):
        assert t.split_pays()
        t.record(2, 0.004)
    t.record(2, 0.2)  # one slow split query: not yet a trend
    assert t.split_pays()
    t.record(2, 0.2)  # two of the last three slow (their median): the cores are busy
    chosen = []
    for _ in range(8 + 16 + 32):
        chosen.append(t.split_pays())
        if chosen[-1]:
            t.record(2, 0.2)  # the probe: still slow
        else:
            t.record(1, 0.008)
    assert [i for i, c in enumerate(chosen) if c] == [7, 7 + 16, 7 + 16 + 32]  # probes after 8, 16, 32 queries
    while not t.split_pays():
        t.record(1, 0.008)
    t.record(2, 0.004)  # the neighbour left: the probe is faster than one thread
    assert all(t.split_pays() for _ in range(10))


def test_declared_kernels_start_numba_when_called():
    from minibert.kernels import layer_norm, residual_layer_norm  # the name as imported before any start

    x = np.ones((2, 4), np.float32)
    out = residual_layer_norm(
        x, np.zeros(4, np.float32), x, np.ones(4, np.float32), np.zeros(4, np.float32), 1e-12, np.empty_like(x)
    )
    assert jit.started() and (out == 0).all()
    assert isinstance(residual_layer_norm, jit.Declared) and "(started)" in repr(residual_layer_norm)
    # the kernel module's own name now holds the Numba function, so kernels calling it compile against it
    assert type(layer_norm.residual_layer_norm).__module__.startswith("numba")


def test_without_numba_a_clear_error_and_numpy_only_still_works(minilm_dir):
    code = """
import sys
sys.modules["numba"] = None  # as if Numba could not be imported
import minibert
m = minibert.load(sys.argv[1])
m.encode("a short call needs no Numba")
try:
    m.encode(["a text of a good many words " * 20] * 4)
except ImportError as e:
    print(e)
"""
    out = run_fresh(code, minilm_dir)
    assert "need Numba, which could not be imported" in out and "MINIBERT_NUMBA=0" in out
    assert run_fresh(code, minilm_dir, numba="0").strip() == ""  # NumPy only: every call works


def test_an_empty_numba_cache_compiles_each_kernel_once(model_dirs, tmp_path):
    # A first run compiles every kernel; a second signature of the same kernel is seconds of start-up
    # spent on the same machine code. Two such were found and fixed: a literal index 0 typed as
    # Literal[int](0) (the streaming matmul kernel twice, ~2 s with the parallel function that calls it), and a
    # read-only token-type row beside writable vectors (residual_layer_norm twice, ~0.3 s).
    code = """
import os, sys, minibert
from minibert.kernels import jit
for d in sys.argv[1:]:  # BERT fp32, BERT fp16 on disk, DistilBERT: every weight layout a target model has
    m = minibert.load(d)
    m.encode(["hi there"])  # a query: the streaming matmul kernels
    m.encode(["a text of a good many words " * 4] * 3)  # a batch: BLAS and the per-token kernels
os.environ["MINIBERT_NUM_THREADS"] = "1"
m.encode(["hi there"])  # a query on one thread: matmul_rows, on the same matmul_tiles_into
for k in jit._declared:
    overloads = getattr(k.compiled, "overloads", {})
    print(k.__name__, len(overloads))
"""
    out = run_fresh(code, *model_dirs.values(), numba="1", NUMBA_CACHE_DIR=str(tmp_path), MINIBERT_NUM_THREADS="2")
    compiled = {name: int(n) for name, n in (line.split() for line in out.splitlines())}
    assert {name: n for name, n in compiled.items() if n > 1} == {}
    with threads.single_threaded_blas():  # queries stream only where BLAS has no row tile (kernels/matmul.py)
        streaming = ("matmul_tiles_into", "matmul_rows", "matmul_rows_split") if blas_row_tile(np.float32) == 1 else ()
    for kernel in streaming + ("residual_layer_norm", "softmax_rows_fast", "_bias_act", "_pool_packed"):
        assert compiled[kernel] == 1, (kernel, compiled)  # each of these ran, so it compiled: the test saw it
