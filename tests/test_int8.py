"""precision="int8": the VNNI kernel against its NumPy twins bit for bit, a text's bits alone and in
any batch, the path for CPUs without VNNI, and what it costs against float32."""

import numpy as np
import pytest

import minibert
from minibert import bert, plan
from minibert.engine import Int8Dense
from minibert.kernels.int8 import int8_matmul, int8_matmul_numpy, int8_matrix, quantize_columns
from minibert.parity.hf import default_texts

from helpers import tiny_spec, write_model

VNNI = plan.cpu_has("avx512_vnni")
needs_vnni = pytest.mark.skipif(not VNNI, reason="this CPU has no AVX-512 VNNI (the NumPy path is tested below)")


@pytest.mark.parametrize("shape", [(1, 384, 1152), (5, 384, 1536), (37, 1536, 384), (3, 30, 50), (64, 768, 2304)])
def test_kernel_gives_the_numpy_twins_bits(shape):
    m, k, n = shape
    rng = np.random.default_rng(m + k + n)
    x = (rng.standard_normal((m, k)) * rng.uniform(0.1, 10, (m, 1))).astype(np.float32)
    x[0, :] = 0  # an all-zero row: scale 0, output 0, no division by zero
    w = (rng.standard_normal((k, n)) * 0.05).astype(np.float32)
    q = int8_matrix(w)
    twin = int8_matmul_numpy(x, q)
    np.testing.assert_array_equal(twin, bert.int8_linear(x, q.q, q.scale, q.colsum))  # the model to read says the same
    np.testing.assert_array_equal(twin, x @ q)  # (bert.py's x @ W on an int8 matrix)
    assert not twin[0].any()
    if VNNI:
        np.testing.assert_array_equal(int8_matmul(x, q), twin)
        np.testing.assert_array_equal(int8_matmul(x, q, threads=2), twin)
        np.testing.assert_array_equal(int8_matmul(x[1:2], q), twin[1:2])  # a row's bits alone
    exact = x.astype(np.float64) @ w.astype(np.float64)
    assert np.abs(twin - exact).max() <= 0.03 * np.abs(exact).max()  # ~1/254 steps on both sides


def test_weights_quantized_per_column():
    w = np.array([[1.0, -0.01], [-127.0, 0.02], [63.5, 0.0]], dtype=np.float32)
    q, scale = quantize_columns(w)
    np.testing.assert_array_equal(scale, np.float32([127.0, 0.02]) / np.float32(127))
    np.testing.assert_array_equal(q[:, 0], [1, -127, 64])  # 63.5 rounds to even
    assert q.dtype == np.int8 and np.abs(q).max() <= 127
    with pytest.raises(ValueError, match="finite"):
        int8_matrix(np.array([[np.nan]], dtype=np.float32))
    # quantized from the checkpoint's [out, in] layout (as a load does): the same int8 values and scales
    for k, n in [(3, 2), (37, 70), (384, 1536)]:
        w = (np.random.default_rng(k).standard_normal((k, n)) * 0.05).astype(np.float32)
        m = int8_matrix(np.ascontiguousarray(w))
        q, scale = quantize_columns(w.copy())
        np.testing.assert_array_equal(m.q, q)
        np.testing.assert_array_equal(m.scale, scale)
        np.testing.assert_array_equal(m.colsum, q.sum(axis=0).astype(np.float32))


@pytest.fixture(scope="module")
def int8_pair(minilm_dir):
    return minibert.load(minilm_dir, precision="int8"), minibert.load(minilm_dir)


def test_a_text_gets_its_bits_alone_in_any_batch_and_on_any_path(int8_pair, monkeypatch):
    m, _ = int8_pair
    texts = default_texts()
    batch = m.encode(texts)
    for size in (1, 3, 7):
        np.testing.assert_array_equal(m.encode(texts, batch_size=size), batch)
    np.testing.assert_array_equal(np.stack([m.encode(t) for t in texts]), batch)
    with plan.plan(m, [12], "sentence_embedding") as p:
        assert isinstance(p.dense, Int8Dense) and p.dense.vnni == VNNI
    # a CPU without VNNI: the NumPy twin, the same exact sums
    monkeypatch.setattr(plan, "cpu_has", lambda flag: False if flag == "avx512_vnni" else plan.cpu_has(flag))
    with plan.plan(m, [12], "sentence_embedding") as p:
        assert isinstance(p.dense, Int8Dense) and not p.dense.vnni
    np.testing.assert_array_equal(m.encode(texts), batch)
    with plan.forced("numpy"):  # the NumPy mirrors of the other kernels: within their own rare last bits
        assert np.abs(m.encode(texts) - batch).max() <= 1e-2


def test_int8_costs_little_against_float32(int8_pair):
    m8, m32 = int8_pair
    texts = default_texts()
    a, b = m8.encode(texts), m32.encode(texts)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() >= 0.99, cos.min()
    assert not np.array_equal(a, b)  # really int8
    ref = minibert.load(m8.path, precision="int8", engine="reference").encode(texts[:5])
    cos_ref = (ref * a[:5]).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(a[:5], axis=1)
    # the model to read runs int8 too; its float steps round elsewhere, and a value near a step edge of
    # the next quantization then lands one step away
    assert cos_ref.min() >= 0.995
    dense = lambda m: sum(getattr(lw, f).nbytes for lw in m.weights.layers for f in ("qkv_w", "ffn_in_w"))  # noqa: E731
    assert dense(m8) < dense(m32)
    assert "precision=int8" in repr(m8) and m8.fingerprint() != m32.fingerprint()


def test_float32_is_untouched_by_int8(int8_pair, references):
    _, m32 = int8_pair
    assert m32.precision == "float32"
    with plan.plan(m32, [12, 40], "sentence_embedding") as p:
        assert not isinstance(p.dense, Int8Dense)


def test_bad_precision_is_a_clear_error(tmp_path):
    d = write_model(tmp_path / "m", tiny_spec())
    with pytest.raises(ValueError, match="precision must be one of"):
        minibert.load(d, precision="int4")
    with pytest.raises(ValueError, match="float64"):
        minibert.load(d, precision="int8", dtype="float64")
    bad = write_model(tmp_path / "nan", tiny_spec())
    from safetensors.numpy import load_file, save_file

    t = load_file(str(bad / "model.safetensors"))
    name = next(k for k in t if "intermediate.dense.weight" in k)
    t[name][0, 0] = np.nan
    save_file(t, str(bad / "model.safetensors"))
    with pytest.raises(minibert.CheckpointError, match="non-finite values.*int8"):
        minibert.load(bad, precision="int8")
    m = minibert.load(d, precision="int8")  # a tiny model (K and N not multiples of the tiles) runs
    assert m.encode(["a few words", "x"]).shape == (2, 32)


def test_command_line_compute_int8(tmp_path):
    import subprocess
    import sys

    d = write_model(tmp_path / "m", tiny_spec())
    out = tmp_path / "e.npy"
    run = lambda *a: subprocess.run([sys.executable, "-m", "minibert", *a], capture_output=True, text=True)  # noqa: E731
    r = run("embed", "--model", str(d), "--compute", "int8", "--output", str(out), "a few words", "more words")
    assert r.returncode == 0, r.stderr
    want = minibert.load(d, precision="int8").encode(["a few words", "more words"])
    np.testing.assert_array_equal(np.load(out), want)
    r = run("embed", "--model", str(d), "--compute", "int4", "x")
    assert r.returncode != 0 and "int4" in r.stderr and "Traceback" not in r.stderr
    # --precision is the embeddings' (sentence-transformers' encode(precision=...)), on the int8 model's output
    r = run("embed", "-m", str(d), "--compute", "int8", "--precision", "int8", "-o", str(out), "a b", "c d", "e")
    assert r.returncode == 0, r.stderr
    want = minibert.load(d, precision="int8").encode(["a b", "c d", "e"], precision="int8")
    np.testing.assert_array_equal(np.load(out), want)
