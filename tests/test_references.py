"""End to end against sentence-transformers, from the committed fixtures (no torch needed).

For each model (all-MiniLM-L6-v2 with its real weights, and the stand-ins of the DistilBERT and
bge-micro targets) on texts with empty, whitespace-only, accented, CJK, emoji, code, URL, literal
[CLS] and 3,000+ character inputs:
- token ids equal sentence-transformers' exactly;
- fp32 embeddings are within twice torch fp32's own error, both measured against a float64 run
  of the same weights (the truth at fp32 precision is only known to ~1e-6 relative);
- dtype="float64" matches the float64 reference to 1e-12 relative.
"""

import numpy as np
import pytest

import minibert

from helpers import rel_err

MODELS = ["minilm", "distilbert-mean", "distilbert-cls", "bge-micro"]


@pytest.fixture(scope="module", params=MODELS)
def case(request, references, model_dirs):
    data, meta = references
    name = request.param
    model_dir = model_dirs[name]
    if "fingerprint" in meta[name]:
        found = __import__("json").loads((model_dir / "STANDIN.json").read_text())["fingerprint"]
        assert found == meta[name]["fingerprint"], "stand-in weights changed: rerun tests/make_fixtures.py"
    return name, model_dir, data, meta


def test_token_ids_equal_sentence_transformers(case):
    name, model_dir, data, meta = case
    model = minibert.load(model_dir)
    ids = model.tokenize(meta["texts"])
    offsets = data[f"{name}/offsets"]
    for i, got in enumerate(ids):
        want = data[f"{name}/ids"][offsets[i] : offsets[i + 1]]
        np.testing.assert_array_equal(got, want, err_msg=f"text {i}: {meta['texts'][i][:40]!r}")


@pytest.mark.parametrize("engine", ["fast", "reference"])
def test_fp32_within_twice_torch_error(case, engine):
    # engine="reference" is minibert/bert.py, the model to read: held to the same tolerance.
    name, model_dir, data, meta = case
    model = minibert.load(model_dir, engine=engine)
    emb = model.encode(meta["texts"])
    assert emb.dtype == np.float32 and emb.shape == data[f"{name}/st_fp32"].shape
    truth = data[f"{name}/st_fp64"]
    ours, torch_err = rel_err(emb, truth), rel_err(data[f"{name}/st_fp32"], truth)
    assert ours <= 2 * torch_err, f"{name}: minibert fp32 error {ours:.3g} vs torch fp32 {torch_err:.3g}"
    assert rel_err(emb, data[f"{name}/st_fp32"]) < 1e-5  # and hence close to sentence-transformers itself


@pytest.mark.parametrize("engine", ["fast", "reference"])
def test_fp64_matches_float64_reference(case, engine):
    name, model_dir, data, meta = case
    emb = minibert.load(model_dir, dtype="float64", engine=engine).encode(meta["texts"])
    assert emb.dtype == np.float64
    assert rel_err(emb, data[f"{name}/st_fp64"]) < 1e-12


@pytest.mark.parametrize("engine", ["fast", "reference"])
def test_token_embeddings_match(case, engine):
    name, model_dir, data, meta = case
    n = sum(1 for k in data.files if k.startswith(f"{name}/tokens"))
    tokens = minibert.load(model_dir, engine=engine).encode(meta["texts"][:n], output_value="token_embeddings")
    for i in range(n):
        want = data[f"{name}/tokens{i}"]
        assert tokens[i].shape == want.shape
        assert rel_err(tokens[i], want) < 1e-5


def test_minilm_published_similarities(minilm_dir):
    model = minibert.load(minilm_dir)
    emb = model.encode(["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."])
    sims = model.similarity(emb[:1], emb[1:])[0]
    assert sims == pytest.approx([0.6660, 0.1046], abs=6e-5)
    assert np.linalg.norm(emb, axis=1) == pytest.approx(1.0, abs=1e-6)  # the Normalize module


def test_a_long_text_alone_has_its_batch_bits(model_dirs):
    # Alone, a long text runs BLAS on two threads; in a batch, each worker runs it on one. For P V
    # with 449-500 keys OpenBLAS's threaded driver cuts the K sum elsewhere, so attention's matmuls
    # run on one thread in both (engine.self_attention).
    model = minibert.load(model_dirs["distilbert-mean"])
    for n in (449, 470, 500):
        text = "word " * (n - 2)
        assert len(model.tokenize([text])[0]) == n
        np.testing.assert_array_equal(model.encode(text), model.encode([text, "a short one"])[0], err_msg=f"{n} tokens")


@pytest.mark.parametrize("name", ["minilm", "distilbert-mean", "distilbert-cls", "bge-micro"])
def test_batch_invariance(name, model_dirs, references):
    # A text's embedding may not depend on its batch-mates (the issue allows 1e-6 relative; minibert
    # gives the same bits): alone, a short text's dense layers run in the streaming kernel, which
    # sums in BLAS's order; in a batch, in BLAS. Long texts are BLAS either way.
    # On a BLAS with a row tile (OpenBLAS's AVX2 kernels; .ci/run runs this under them too) the
    # encoder lays texts out on the tiles; without that, DistilBERT-base moved by up to 2.1e-6.
    _, meta = references
    model = minibert.load(model_dirs[name])
    texts = meta["texts"]
    assert min(len(ids) for ids in model.tokenize(texts)) <= 16  # some take the query kernel
    alone = np.stack([model.encode(t) for t in texts])
    for batch_size in (1, 3, 7, 32):
        np.testing.assert_array_equal(model.encode(texts, batch_size=batch_size), alone)
    np.testing.assert_array_equal(model.encode(texts[::-1])[::-1], alone)
