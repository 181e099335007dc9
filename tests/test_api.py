"""The public API: shapes, inputs good and bad, pipeline options, batch invariance, util."""

import json

import numpy as np
import pytest

import minibert
from minibert import UnsupportedModelError, util

from helpers import rel_err, write_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return minibert.load(write_model(tmp_path_factory.mktemp("api") / "m"))


def test_shapes(model):
    assert model.dim == 32 and model.max_seq_length == 64
    assert model.encode("one").shape == (32,)
    assert model.encode(["one", "two"]).shape == (2, 32)
    empty = model.encode([])
    assert empty.shape == (0, 32) and empty.dtype == np.float32
    assert model.encode(("a", "b")).shape == (2, 32)
    tok = model.encode(["one two three", "x"], output_value="token_embeddings")
    assert [t.shape for t in tok] == [(5, 32), (3, 32)]
    assert model.encode("one", output_value="token_embeddings").shape == (3, 32)


@pytest.mark.parametrize(
    "bad,error,match",
    [
        (None, TypeError, "sentences is None"),
        (42, TypeError, "got int"),
        (["ok", 3], TypeError, r"sentences\[1\] is int"),
        (["ok", None], TypeError, r"sentences\[1\] is NoneType"),
        (["ok", ["nested"]], TypeError, r"sentences\[1\] is a nested list"),
        ([("a", "b")], TypeError, r"sentences\[0\] is a nested list"),
        (b"bytes", TypeError, "bytes"),
        ({"a": 1}, TypeError, "got dict"),
    ],
)
def test_bad_sentences(model, bad, error, match):
    with pytest.raises(error, match=match):
        model.encode(bad)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": "8"}, "batch_size"),
        ({"batch_size": True}, "batch_size"),
        ({"output_value": "embeddings"}, "output_value"),
    ],
)
def test_bad_options(model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        model.encode(["x"], **kwargs)


def test_bad_dtype(tmp_path):
    d = write_model(tmp_path / "m")
    for bad in ("float16", "int8", None, "fp32x"):
        with pytest.raises(ValueError, match="dtype must be"):
            minibert.load(d, dtype=bad)
    assert minibert.load(d, dtype=np.float64).dtype == np.float64


def test_empty_and_whitespace_embed_cls_sep(model):
    ids = model.tokenize(["", "   \t\n "])
    assert [list(x) for x in ids] == [[101, 102], [101, 102]]
    e = model.encode(["", "   \t\n "])
    np.testing.assert_array_equal(e[0], e[1])
    assert np.isfinite(e).all()


def test_long_text_is_truncated_not_an_error(model):
    long = "word " * 5000
    ids = model.tokenize([long])[0]
    assert len(ids) == model.max_seq_length and ids[0] == 101 and ids[-1] == 102
    cut = model.tokenizer.tok.decode(ids[1:-1].tolist())
    np.testing.assert_allclose(model.encode(long), model.encode(cut), rtol=0, atol=1e-6)


def test_batch_invariance(model):
    # A text's embedding must not depend on which texts share its batch (1e-6 relative).
    texts = ["short", "a much longer sentence about many different things " * 3, "mid length text here", "", "x y"]
    alone = np.stack([model.encode(t) for t in texts])
    for bs in (1, 2, 3, 32):
        assert rel_err(model.encode(texts, batch_size=bs), alone) < 1e-6
    assert rel_err(model.encode(texts[::-1])[::-1], alone) < 1e-6


def test_order_is_preserved(model):
    texts = ["b b b b b b", "a", "c c c"]
    e = model.encode(texts, batch_size=2)
    for i, t in enumerate(texts):
        assert rel_err(e[i], model.encode(t)) < 1e-6


def test_normalize_embeddings_option(model):
    e = model.encode(["hello world", "another"], normalize_embeddings=True)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-6)
    raw = model.encode(["hello world"])
    assert abs(np.linalg.norm(raw) - 1.0) > 1e-3


def test_hidden_states_validation(model):
    n_layers = model.config.n_layers
    hs = model.hidden_states([[101, 7592, 102], np.array([101, 102])])
    assert [h.shape for h in hs] == [(n_layers + 1, 3, 32), (n_layers + 1, 2, 32)]
    with pytest.raises(ValueError, match=r"input_ids\[0\]\[1\] = 99999 is not a token id"):
        model.hidden_states([[101, 99999, 102]])
    with pytest.raises(ValueError, match=r"input_ids\[1\] is empty"):
        model.hidden_states([[101], []])
    with pytest.raises(TypeError, match=r"input_ids\[0\] must be a 1-D"):
        model.hidden_states([[1.5, 2.0]])
    with pytest.raises(ValueError, match="positions"):
        model.hidden_states([[101] * 600])


# ------------------------------------------------------------------ pipeline files


def pooled_model(tmp_path, **kw):
    return minibert.load(write_model(tmp_path / "m", **kw), dtype="float64")


@pytest.mark.parametrize(
    "cfg,modes",
    [
        ({"pooling_mode_cls_token": True}, ("cls",)),
        ({"pooling_mode_max_tokens": True}, ("max",)),
        ({"pooling_mode_mean_sqrt_len_tokens": True}, ("mean_sqrt_len_tokens",)),
        ({"pooling_mode_weightedmean_tokens": True}, ("weightedmean",)),
        ({"pooling_mode_lasttoken": True}, ("lasttoken",)),
        ({"pooling_mode_mean_tokens": True, "pooling_mode_cls_token": True}, ("cls", "mean")),
        ({"pooling_mode": "max"}, ("max",)),
        ({"pooling_mode": ["mean", "cls"]}, ("mean", "cls")),
        ({}, ("mean",)),  # no mode given at all: sentence-transformers' default
    ],
)
def test_pooling_configs(tmp_path, cfg, modes):
    m = pooled_model(tmp_path, pooling={"word_embedding_dimension": 32, **cfg})
    assert m.pooling_modes == modes
    text = "pooling modes test sentence"
    tokens = m.encode(text, output_value="token_embeddings")
    by_mode = {
        "cls": tokens[0],
        "lasttoken": tokens[-1],
        "max": tokens.max(0),
        "mean": tokens.mean(0),
        "mean_sqrt_len_tokens": tokens.sum(0) / np.sqrt(len(tokens)),
        "weightedmean": (tokens * np.arange(1, len(tokens) + 1)[:, None]).sum(0) / np.arange(1, len(tokens) + 1).sum(),
    }
    np.testing.assert_allclose(m.encode(text), np.concatenate([by_mode[x] for x in modes]), rtol=1e-12)
    assert m.dim == 32 * len(modes)


@pytest.mark.parametrize(
    "cfg,shortcut",
    [
        ({"pooling_mode_cls_token": True}, True),
        ({"pooling_mode_lasttoken": True}, False),
        ({"pooling_mode_mean_tokens": True, "pooling_mode_cls_token": True}, False),
    ],
)
def test_cls_pooling_computes_only_the_first_token_in_the_last_layer(tmp_path, monkeypatch, cfg, shortcut):
    # Only [CLS] pooling alone may skip the other tokens' last feed-forward block (model.py): the
    # embedding is then the full pass's first token, bit for bit, in a batch and alone.
    from minibert import engine

    seen = []
    real = engine.forward
    monkeypatch.setattr(engine, "forward", lambda *a: seen.append(a[-1].first_token_only) or real(*a))  # the plan
    m = minibert.load(write_model(tmp_path / "m", pooling={"word_embedding_dimension": 32, **cfg}))
    texts = ["first text of the batch", "a second, longer text " * 5, "x"]
    got = m.encode(texts)
    assert set(seen) == {shortcut}
    tokens = m.encode(texts, output_value="token_embeddings")
    assert not seen[-1]  # token embeddings always run the full pass
    if shortcut:
        np.testing.assert_array_equal(got, np.stack([t[0] for t in tokens]))
        np.testing.assert_array_equal(np.stack([m.encode(t) for t in texts]), got)


@pytest.mark.parametrize(
    "cfg,match",
    [
        ({"pooling_mode_median_tokens": True}, "unknown pooling option.*pooling_mode_median_tokens"),
        ({"pooling_mode": "median"}, "unknown pooling mode 'median'"),
        ({"pooling_mode": 3}, "pooling_mode must be"),
    ],
)
def test_bad_pooling(tmp_path, cfg, match):
    with pytest.raises(UnsupportedModelError, match=match):
        pooled_model(tmp_path, pooling={"word_embedding_dimension": 32, **cfg})


def test_pooling_dimension_mismatch(tmp_path):
    with pytest.raises(minibert.CheckpointError, match="expects 64-dim tokens"):
        pooled_model(tmp_path, pooling={"word_embedding_dimension": 64, "pooling_mode_mean_tokens": True})


def test_unknown_module_type_is_named(tmp_path):
    mods = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
    ]
    with pytest.raises(UnsupportedModelError, match="'sentence_transformers.models.Dense' is not supported"):
        pooled_model(tmp_path, modules=mods)


def test_missing_normalize_folder_is_normal(tmp_path):
    m = pooled_model(tmp_path, modules="normalize")
    assert m.normalize and not (m.path / "2_Normalize").exists()
    np.testing.assert_allclose(np.linalg.norm(m.encode(["a", "b c"]), axis=1), 1.0, rtol=1e-12)


def test_plain_transformers_checkpoint_means(tmp_path):
    plain = pooled_model(tmp_path / "plain", modules=False)
    st = pooled_model(tmp_path / "st")
    assert plain.pooling_modes == ("mean",) and not plain.normalize
    assert plain.max_seq_length == 512  # tokenizer_config's model_max_length, capped by the positions
    np.testing.assert_allclose(plain.encode("some text"), st.encode("some text"), rtol=1e-12)


@pytest.mark.parametrize(
    "name,fn",
    [
        (None, util.cos_sim),
        ("cosine", util.cos_sim),
        ("dot", util.dot_score),
        ("euclidean", util.euclidean_sim),
        ("manhattan", util.manhattan_sim),
    ],
)
def test_similarity_fn_name(tmp_path, name, fn):
    m = pooled_model(tmp_path, st_config={} if name is None else {"similarity_fn_name": name})
    e = m.encode(["a b", "c d e", "f"])
    assert m.similarity_fn_name == (name or "cosine")
    np.testing.assert_allclose(m.similarity(e, e), fn(e, e))


def test_unknown_similarity(tmp_path):
    with pytest.raises(UnsupportedModelError, match="similarity_fn_name 'jaccard'"):
        pooled_model(tmp_path, st_config={"similarity_fn_name": "jaccard"})


def test_do_lower_case(tmp_path):
    # A cased tokenizer (its normalizer keeps capitals) over the uncased vocabulary: "Hello WORLD"
    # becomes unknown pieces, unless sentence_bert_config.json's do_lower_case lower-cases it first.
    d = write_model(tmp_path / "m")
    tok = json.loads((d / "tokenizer.json").read_text())
    tok["normalizer"]["lowercase"] = False
    (d / "tokenizer.json").write_text(json.dumps(tok))
    lower = minibert.load(d).tokenize(["hello world"])[0].tolist()
    cased = minibert.load(d).tokenize(["Hello WORLD"])[0].tolist()
    assert cased != lower and lower == [101, 7592, 2088, 102]
    (d / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64, "do_lower_case": True}))
    assert minibert.load(d).tokenize(["Hello WORLD"])[0].tolist() == lower


def test_vocab_only_tokenizer_equals_tokenizer_json(tmp_path):
    d = write_model(tmp_path / "m")
    texts = [
        "Café résumé [CLS] literal",
        "北京 🍕 https://x.org/a?b=1",
        "Pneumonoultramicroscopicsilicovolcanoconiosis" * 3,
    ]
    want = minibert.load(d).tokenize(texts)
    (d / "tokenizer.json").unlink()
    got = minibert.load(d).tokenize(texts)
    assert [list(x) for x in got] == [list(x) for x in want]


# ------------------------------------------------------------------ util


def test_cos_and_dot():
    a = np.array([[1.0, 0.0], [1.0, 1.0]])
    b = np.array([[0.0, 2.0]])
    np.testing.assert_allclose(util.cos_sim(a, b), [[0.0], [np.sqrt(0.5)]])
    np.testing.assert_allclose(util.dot_score(a, b), [[0.0], [2.0]])
    assert util.cos_sim([1.0, 0.0], [[1.0, 0.0], [0.0, 1.0]]).shape == (1, 2)
    np.testing.assert_array_equal(util.cos_sim(np.zeros(2), a), [[0.0, 0.0]])  # zero vector: 0, not NaN
    with pytest.raises(ValueError, match="embedding sizes differ"):
        util.cos_sim(np.ones((2, 3)), np.ones((2, 4)))
    with pytest.raises(TypeError, match="None"):
        util.dot_score(None, a)
    with pytest.raises(TypeError, match="numeric"):
        util.dot_score(["a"], a)


@pytest.mark.parametrize("chunks", [(100, 500000), (3, 7), (1, 1)])
def test_semantic_search_matches_brute_force(chunks):
    rng = np.random.default_rng(0)
    q, c = rng.standard_normal((10, 8)), rng.standard_normal((50, 8))
    hits = util.semantic_search(q, c, query_chunk_size=chunks[0], corpus_chunk_size=chunks[1], top_k=5)
    scores = util.cos_sim(q, c)
    for i, h in enumerate(hits):
        want = np.argsort(-scores[i])[:5]
        assert [x["corpus_id"] for x in h] == list(want)
        np.testing.assert_allclose([x["score"] for x in h], scores[i, want])
    assert len(util.semantic_search(q, c[:3], top_k=10)[0]) == 3
    dots = util.semantic_search(q, c, top_k=2, score_function=util.dot_score)
    assert dots[0][0]["corpus_id"] == int(np.argmax(util.dot_score(q, c)[0]))
    with pytest.raises(ValueError, match="top_k"):
        util.semantic_search(q, c, top_k=0)


def test_worker_threads_equal_one_thread(model, monkeypatch):
    from minibert import threads

    texts = ["short", "a much longer sentence about many different things " * 4, "mid length", "", "x y z"] * 5
    many = model.encode(texts, batch_size=8)
    monkeypatch.setenv("MINIBERT_NUM_THREADS", "1")
    one = model.encode(texts, batch_size=8)
    assert rel_err(many, one) < 1e-6
    controls = threads.blas_controls()
    assert controls is not None, "NumPy's OpenBLAS was not found: minibert would run on one core"
    set_fn, get_fn = controls
    before = get_fn()
    monkeypatch.delenv("MINIBERT_NUM_THREADS")
    model.encode(texts)
    assert get_fn() == before  # BLAS's thread count is restored after encode


def test_deal_snakes_and_keeps_everything():
    from minibert.model import _deal

    assert _deal(list(range(7)), 2) == [[0, 3, 4], [1, 2, 5, 6]]
    assert _deal(list(range(7)), 3) == [[0, 5, 6], [1, 4], [2, 3]]
    assert _deal([5, 6], 1) == [[5, 6]]
    lengths = list(range(64, 0, -2))  # a length-sorted batch: the two hands get equal token counts
    assert [sum(h) for h in _deal(lengths, 2)] == [528, 528]


def test_overlapping_encodes_restore_blas_threads(model):
    from concurrent.futures import ThreadPoolExecutor

    from minibert import threads

    set_fn, get_fn = threads.blas_controls()
    before = get_fn()
    texts = ["some text here", "another one", "a third", "and a fourth text"] * 10
    want = model.encode(texts, batch_size=4)
    with ThreadPoolExecutor(4) as ex:
        results = list(ex.map(lambda _: model.encode(texts, batch_size=4), range(8)))
    for r in results:
        assert rel_err(r, want) < 1e-6
    assert get_fn() == before


def test_batches_are_bit_identical_whatever_the_batching(model):
    # Calls with two or more texts go through BLAS, whose result for a row does not depend on the
    # other rows or on the thread count (NumPy's OpenBLAS): every batching gives the same bits.
    texts = ["short", "a much longer sentence about many different things " * 3, "mid length text here", "", "x y"]
    want = model.encode(texts)
    for bs in (1, 2, 3):
        np.testing.assert_array_equal(model.encode(texts, batch_size=bs), want)
    np.testing.assert_array_equal(model.encode(texts[::-1])[::-1], want)
    np.testing.assert_array_equal(np.stack([model.encode([t, "company"])[0] for t in texts]), want)


def test_queries_take_the_streaming_kernel_and_agree(model, monkeypatch):
    # One short text alone runs its dense layers in kernels/matmul.py, not BLAS (split over the
    # cores unless another query holds them); the answer is the same either way, bit for bit.
    from minibert import engine, plan

    monkeypatch.setattr(plan, "_QUERY_TIMES", {})  # (earlier tests' query times, on a busy machine, must not decide)
    calls = []
    real = engine.matmul_rows_split
    monkeypatch.setattr(engine, "matmul_rows_split", lambda x, *rest: calls.append(len(x)) or real(x, *rest))
    query = "how many people live in london"
    assert len(model.tokenize([query])[0]) <= plan.SMALL_ROWS
    alone = model.encode(query)
    if plan.row_tile(model.dtype) == 1:
        assert calls and max(calls) <= plan.SMALL_ROWS
    else:  # a BLAS that sums a row by its place in a tile: no order to copy, so the query takes BLAS
        assert not calls
    calls.clear()
    model.encode([query, "a second text"])
    assert not calls  # a batch stays with BLAS
    monkeypatch.setenv("MINIBERT_NUM_THREADS", "1")
    np.testing.assert_array_equal(model.encode(query), alone)  # on one thread: matmul_rows
    monkeypatch.delenv("MINIBERT_NUM_THREADS")
    long_text = "word " * 40
    model.encode(long_text)
    assert not calls  # a long text alone stays with BLAS too
    np.testing.assert_array_equal(model.encode([query, "a second text"])[0], alone)  # BLAS's bits


def test_concurrent_queries_agree(model):
    from concurrent.futures import ThreadPoolExecutor

    queries = ["what is the capital of france", "how tall is mount everest", "who wrote hamlet", "x"] * 6
    want = [model.encode(q) for q in queries]
    with ThreadPoolExecutor(4) as ex:
        got = list(ex.map(model.encode, queries))
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("first", ["batch", "query"])
def test_encode_in_a_forked_child(model, first):
    # multiprocessing's default start method on Linux is fork: a child must be able to encode after
    # its parent did (the parent's worker threads and OpenMP pool do not exist in the child).
    import os
    import pickle
    import time

    texts = ["hello there", "a second text", "and a third one"]
    want_batch, want_query = model.encode(texts), model.encode("hello there")
    model.encode(texts) if first == "batch" else model.encode("hello there")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave without running the parent's cleanup
        try:
            out = pickle.dumps((model.encode(texts), model.encode("hello there")))
        except BaseException as e:
            out = pickle.dumps(repr(e))
        os.write(write_end, out)
        os._exit(0)
    os.close(write_end)
    deadline = time.time() + 60
    while time.time() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail(f"the forked child hung after the parent's {first}")
    with os.fdopen(read_end, "rb") as f:
        got = pickle.loads(f.read())
    assert status == 0 and not isinstance(got, str), got
    np.testing.assert_array_equal(got[0], want_batch)
    np.testing.assert_array_equal(got[1], want_query)


def test_queries_and_batches_from_many_threads(model):
    # Split queries (Numba's threads, BLAS held at one thread) and batches (worker threads) at once:
    # every result keeps its bits, and BLAS's thread count comes back when all have left.
    from concurrent.futures import ThreadPoolExecutor

    from minibert import threads

    _, get_fn = threads.blas_controls()
    before = get_fn()
    texts = ["what is the capital of france", "a much longer sentence about many different things " * 3, "x"]
    want_batch = model.encode(texts)
    want_query = [model.encode(t) for t in texts]
    jobs = [("batch", None), ("query", 0), ("query", 1), ("query", 2)] * 6
    run = lambda job: model.encode(texts) if job[0] == "batch" else model.encode(texts[job[1]])
    with ThreadPoolExecutor(4) as ex:
        results = list(ex.map(run, jobs))
    for job, got in zip(jobs, results):
        np.testing.assert_array_equal(got, want_batch if job[0] == "batch" else want_query[job[1]])
    assert get_fn() == before
