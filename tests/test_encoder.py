"""The packed Numba forward pass against the padded NumPy textbook twin, layer by layer."""

import numpy as np
import pytest

import minibert
from minibert import threads
from minibert.encoder import encode_packed, encode_reference, matmul, tile_layout
from minibert.kernels.matmul import blas_row_tile
from minibert.kernels import unpack

from helpers import rel_err, tiny_spec, write_model


@pytest.mark.parametrize("arch", ["bert", "distilbert"])
@pytest.mark.parametrize("dtype,tol", [("float64", 1e-12), ("float32", 2e-5)])
def test_packed_forward_matches_reference(tmp_path, arch, dtype, tol):
    spec = tiny_spec(arch=arch)
    model = minibert.load(write_model(tmp_path / arch, spec), dtype=dtype)
    texts = ["a short one", "", "a somewhat longer text about the printing press and books", "x y z"]
    ids = model.tokenize(texts)
    per_text = model.hidden_states(ids)  # list of [L + 1, n_i, D]
    offsets = np.cumsum([0] + [len(x) for x in ids])
    padded_ids, mask = unpack(np.concatenate(ids), offsets)
    ref = encode_reference(padded_ids, mask, model.weights, model.config)  # L + 1 of [B, T, D]
    assert len(ref) == spec["layers"] + 1
    for b, n in enumerate(len(x) for x in ids):
        for layer in range(spec["layers"] + 1):
            err = rel_err(per_text[b][layer], ref[layer][b, :n])
            assert err < tol, f"text {b} layer {layer}: {err:.3g}"


def test_hidden_states_last_layer_is_token_embeddings(tmp_path):
    model = minibert.load(write_model(tmp_path / "m"))
    states = model.hidden_states(model.tokenize(["hello world"]))[0]
    tokens = model.encode("hello world", output_value="token_embeddings")
    np.testing.assert_array_equal(states[-1], tokens)


@pytest.mark.parametrize("arch", ["bert", "distilbert"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("numba", [True, False])
def test_first_token_only_is_the_full_pass_first_rows(tmp_path, arch, dtype, numba):
    # [CLS] pooling's shortcut: the last block carries only each text's first token past attention.
    # Per-token steps and BLAS's gemm give a row the same bits whatever rows surround it, so the
    # shortcut is exact: one batch, one long text alone (a one-row BLAS matmul), one short text
    # alone on the streaming query kernel (1 and 2 threads).
    model = minibert.load(write_model(tmp_path / arch, tiny_spec(arch=arch, layers=3)), dtype=dtype)
    ids = model.tokenize(["a short one", "", "a somewhat longer text about the printing press " * 4, "x y z"])
    calls = [(ids, 0), ([ids[2]], 0)] + ([([ids[0]], 1), ([ids[0]], 2)] if numba else [])
    for batch, query_threads in calls:
        offsets = np.cumsum([0] + [len(x) for x in batch])
        flat = np.concatenate(batch)
        run = lambda first: encode_packed(flat, offsets, model.weights, model.config, query_threads=query_threads,  # noqa: E731
                                          numba=numba, first_token_only=first, row_tile=model.row_tile or 1)
        first = run(True)
        assert first.shape == (len(batch), model.config.dim)
        np.testing.assert_array_equal(first, run(False)[offsets[:-1]])


def test_first_token_only_refuses_what_it_cannot_do(tmp_path):
    model = minibert.load(write_model(tmp_path / "m"))
    ids = np.array([101, 102, 101, 102], dtype=np.int64)
    with pytest.raises(ValueError, match="all_layers"):
        encode_packed(ids, np.array([0, 2, 4]), model.weights, model.config, all_layers=True, first_token_only=True)
    with pytest.raises(ValueError, match="text 1 has no tokens"):
        encode_packed(ids, np.array([0, 2, 2, 4]), model.weights, model.config, first_token_only=True)


def test_one_row_blas_matmul_has_gemm_bits():
    # NumPy hands a one-row product to BLAS's gemv, whose sums run in another order than gemm's:
    # encoder.matmul keeps a text's row the same bits alone as among other rows.
    # On a BLAS with a row tile (OpenBLAS's AVX2 kernels) the encoder lays rows out on tiles instead.
    rng = np.random.default_rng(0)
    with threads.single_threaded_blas():
        tile = blas_row_tile(np.float32)
        alone, among = (tile_layout(np.array([0, 1]), tile), tile_layout(np.array([0, 1, 8]), tile)) if tile > 1 else (None, None)
        for k, n in [(768, 768), (768, 3072), (3072, 768), (384, 1536)]:
            x, w = rng.standard_normal((8, k), dtype=np.float32), rng.standard_normal((k, n), dtype=np.float32)
            np.testing.assert_array_equal(matmul(x[:1], w, 0, alone), matmul(x, w, 0, among)[:1],
                                          err_msg=f"[1, {k}] @ [{k}, {n}]")
            if tile == 1:
                np.testing.assert_array_equal(matmul(x[:1], w, 0), (x @ w)[:1], err_msg=f"[1, {k}] @ [{k}, {n}]")
