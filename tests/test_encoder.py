"""The packed Numba forward pass against the padded NumPy textbook twin, layer by layer."""

import numpy as np
import pytest

import minibert
from minibert.encoder import encode_reference
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
