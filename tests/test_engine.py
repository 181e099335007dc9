"""The fast engine (minibert/engine.py) against the model to read (minibert/bert.py), and the
engine's strategies against each other: every plan must give a text the same bits."""

import dataclasses

import numpy as np
import pytest

import minibert
from minibert import bert, engine, threads
from minibert.engine import NUMBA_KERNELS, NUMPY_KERNELS, BlasDense, NumbaDense, StreamingDense, TiledBlasDense
from minibert.kernels.matmul import blas_k_blocks, blas_row_tile
from minibert.plan import Plan

from helpers import rel_err, tiny_spec, write_model

TEXTS = ["a short one", "", "a somewhat longer text about the printing press and books", "x y z"]


@pytest.mark.parametrize("arch", ["bert", "distilbert"])
@pytest.mark.parametrize("dtype,tol", [("float64", 1e-12), ("float32", 2e-5)])
def test_engine_matches_the_model_to_read(tmp_path, arch, dtype, tol):
    d = write_model(tmp_path / arch, tiny_spec(arch=arch, pooling="mean"))
    model = minibert.load(d, dtype=dtype)
    ids = model.tokenize(TEXTS)
    for b, (got, x) in enumerate(zip(model.hidden_states(ids), ids)):  # [L + 1, n_b, D] each
        want = bert.hidden_states(x, model.weights, model.config)
        assert got.shape == want.shape == (model.config.n_layers + 1, len(x), model.config.dim)
        for layer in range(len(want)):
            assert rel_err(got[layer], want[layer]) < tol, f"text {b} layer {layer}"
    emb = model.encode(TEXTS)
    want = [bert.sentence_embedding(x, model.weights, model.config, model.pooling_modes, model.normalize) for x in ids]
    assert rel_err(emb, np.stack(want)) < tol


def test_reference_engine_runs_the_model_to_read(tmp_path):
    d = write_model(tmp_path / "m", modules="normalize")
    ref = minibert.load(d, engine="reference", dtype="float64")
    assert ref.engine == "reference" and "engine=reference" in repr(ref)
    ids = ref.tokenize(TEXTS)
    want = np.stack([bert.sentence_embedding(x, ref.weights, ref.config, ("mean",), True) for x in ids])
    np.testing.assert_array_equal(ref.encode(TEXTS), want)
    fast = minibert.load(d, dtype="float64")
    assert rel_err(ref.encode(TEXTS), fast.encode(TEXTS)) < 1e-12
    tokens = ref.encode(TEXTS[:2], output_value="token_embeddings")
    np.testing.assert_array_equal(tokens[0], bert.hidden_states(ids[0], ref.weights, ref.config)[-1])
    np.testing.assert_array_equal(ref.hidden_states(ids[:1])[0], bert.hidden_states(ids[0], ref.weights, ref.config))
    with pytest.raises(ValueError, match="engine must be one of 'fast', 'reference', got 'turbo'"):
        minibert.load(d, engine="turbo")


def test_hidden_states_last_layer_is_token_embeddings(tmp_path):
    model = minibert.load(write_model(tmp_path / "m"))
    states = model.hidden_states(model.tokenize(["hello world"]))[0]
    tokens = model.encode("hello world", output_value="token_embeddings")
    np.testing.assert_array_equal(states[-1], tokens)


def every_plan(model, n_texts):  # -> {name: Plan}: each dense strategy valid on this BLAS, with each kernel family
    w = model.weights.layers[0]
    shapes = {m.shape for m in (w.qkv_w, w.attn_out_w, w.ffn_in_w, w.ffn_out_w)}
    with threads.single_threaded_blas():
        tile = blas_row_tile(model.dtype)
    # On a BLAS with a row tile, only the tiled layout gives a row its bits wherever it sits;
    # on one without, any layout does.
    dense = {"blas-tiled": TiledBlasDense(tile)} if tile > 1 else {"blas": BlasDense(), "blas-tiled": TiledBlasDense(4)}
    if n_texts == 1 and tile == 1:  # the streaming kernel is for one text, on a BLAS whose order it can copy
        for n in (1, 2):
            blocks = {s: blas_k_blocks(*s, model.dtype, n > 1) for s in shapes}
            assert any(b is not None for b in blocks.values())  # (a matrix without an order takes BLAS)
            dense[f"streaming x{n}"] = StreamingDense(n, blocks)
    dense.update({"numba": NumbaDense(1), "numba x2": NumbaDense(2)})  # its rows are independent on any BLAS
    return {
        f"{k.name} kernels, {name}": Plan(False, k, d, 1, False, False)
        for k in (NUMBA_KERNELS, NUMPY_KERNELS)
        for name, d in dense.items()
        if not (k is NUMPY_KERNELS and name.startswith(("streaming", "numba")))
    }


@pytest.mark.parametrize("arch", ["bert", "distilbert"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_first_token_only_is_the_full_pass_first_rows(tmp_path, arch, dtype):
    # [CLS] pooling's shortcut: the last block carries only each text's first token past attention.
    # Each token's steps after attention are its own, so the shortcut is exact under every plan:
    # a batch, one long text alone (a one-row matmul), one short text alone on the streaming kernel.
    model = minibert.load(write_model(tmp_path / arch, tiny_spec(arch=arch, layers=3)), dtype=dtype)
    ids = model.tokenize(["a short one", "", "a somewhat longer text about the printing press " * 4, "x y z"])
    for batch in (ids, [ids[2]], [ids[0]]):
        offsets = np.cumsum([0] + [len(x) for x in batch])
        flat = np.concatenate(batch)
        for name, p in every_plan(model, len(batch)).items():
            full = engine.forward(flat, offsets, model.weights, model.config, p)[-1]
            cls = dataclasses.replace(p, first_token_only=True)
            first = engine.forward(flat, offsets, model.weights, model.config, cls)[-1]
            assert first.shape == (len(batch), model.config.dim)
            np.testing.assert_array_equal(first, full[offsets[:-1]], err_msg=name)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_every_plan_gives_a_text_its_batch_bits(tmp_path, dtype):
    # The planner may choose any strategy for a call because none changes a text's bits (the NumPy
    # mirrors but in rare last bits, held to that in test_kernels.py and test_plan.py).
    model = minibert.load(write_model(tmp_path / "m", tiny_spec(layers=3)), dtype=dtype)
    ids = model.tokenize(TEXTS)
    offsets = np.cumsum([0] + [len(x) for x in ids])
    with threads.single_threaded_blas():
        tile = blas_row_tile(model.dtype)
    # Two families of sums: BLAS's (BLAS, its tiles, the streaming kernel that copies its order) and
    # minibert's own matmul's. Within a family, a text gets the same bits alone or in a batch.
    blas = Plan(False, NUMBA_KERNELS, TiledBlasDense(tile) if tile > 1 else BlasDense(), 1, False, False)
    own = Plan(False, NUMBA_KERNELS, NumbaDense(1), 1, False, False)
    in_batch = {p.dense.name: engine.forward(np.concatenate(ids), offsets, model.weights, model.config, p)[-1]
                for p in (blas, own)}  # fmt: skip
    for b, x in enumerate(ids):
        for name, p in every_plan(model, 1).items():
            if p.kernels is NUMPY_KERNELS:
                continue  # (the other family of kernels: the same bits but for rare elements)
            alone = engine.forward(x, np.array([0, len(x)]), model.weights, model.config, p)[-1]
            want = in_batch["numba" if isinstance(p.dense, NumbaDense) else blas.dense.name]
            np.testing.assert_array_equal(alone, want[offsets[b] : offsets[b + 1]], err_msg=f"text {b}, {name}")


def test_one_row_blas_matmul_has_gemm_bits():
    # NumPy hands a one-row product to BLAS's gemv, whose sums run in another order than gemm's:
    # BlasDense keeps a text's row the same bits alone as among other rows. On a BLAS with a row
    # tile (OpenBLAS's AVX2 kernels) the planner takes TiledBlasDense instead, held to the same.
    rng = np.random.default_rng(0)
    with threads.single_threaded_blas():
        tile = blas_row_tile(np.float32)
        dense = BlasDense() if tile == 1 else TiledBlasDense(tile)
        for k, n in [(768, 768), (768, 3072), (3072, 768), (384, 1536)]:
            x, w = rng.standard_normal((8, k), dtype=np.float32), rng.standard_normal((k, n), dtype=np.float32)
            np.testing.assert_array_equal(
                dense(x[:1], w, np.array([0, 1])),
                dense(x, w, np.array([0, 1, 8]))[:1],
                err_msg=f"[1, {k}] @ [{k}, {n}]",
            )
