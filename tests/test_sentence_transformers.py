"""minibert.SentenceTransformer and minibert.util against sentence-transformers itself: the same
arguments give the same outputs (float32 within the parity bound, quantized and integer outputs
equal), and what minibert does not support is one clear error."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minibert
from minibert import util

from helpers import tiny_spec, write_model

st = pytest.importorskip("sentence_transformers")
torch = pytest.importorskip("torch")
st_util = st.util

SEEDS = Path(__file__).resolve().parents[2] / "shared" / "seeds"
TEXTS = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.",
    "How many people live in London? " * 30,
]
TOL = 1e-5  # float32 outputs: minibert and torch each stay within ~1e-6 of float64 (the parity suite)


def np_(x):  # sentence-transformers' output -> NumPy
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, list):
        return [np_(v) for v in x]
    return np.asarray(x)


def close(a, b, tol=TOL):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    assert np.abs(a - b).max() <= tol * max(np.abs(b).max(), 1e-30), np.abs(a - b).max()


@pytest.fixture(scope="module", params=["minilm", "distilbert-mean", "distilbert-cls", "bge-micro"])
def pair(request, model_dirs):  # (sentence-transformers' model, minibert's), the same directory
    d = str(model_dirs[request.param])
    return st.SentenceTransformer(d, device="cpu"), minibert.SentenceTransformer(d, device="cpu")


@pytest.fixture(scope="module")
def minilm_pair(minilm_dir):
    d = str(minilm_dir)
    return st.SentenceTransformer(d, device="cpu"), minibert.SentenceTransformer(d)


# ------------------------------------------------------------------ encode


def test_encode_defaults_and_single_text(pair):
    ref, mb = pair
    a, b = mb.encode(TEXTS), ref.encode(TEXTS)
    assert isinstance(a, np.ndarray) and a.dtype == np.float32
    close(a, b)
    one, ref_one = mb.encode(TEXTS[0]), ref.encode(TEXTS[0])
    assert one.shape == ref_one.shape == (mb.get_sentence_embedding_dimension(),)
    close(one, ref_one)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(normalize_embeddings=True),
        dict(truncate_dim=16),
        dict(truncate_dim=16, normalize_embeddings=True),
        dict(batch_size=3, show_progress_bar=False),
        dict(convert_to_numpy=True, device="cpu"),
        dict(prompt="query: "),
    ],
    ids=str,
)
def test_encode_keywords_as_sentence_transformers(pair, kwargs):
    ref, mb = pair
    close(mb.encode(TEXTS, **kwargs), ref.encode(TEXTS, **kwargs))


def test_truncate_dim_cuts_after_the_models_normalize(minilm_pair):
    ref, mb = minilm_pair  # all-MiniLM-L6-v2 ends in Normalize: a cut vector is shorter than 1
    a = mb.encode(TEXTS, truncate_dim=32)
    close(a, ref.encode(TEXTS, truncate_dim=32))
    assert (np.linalg.norm(a, axis=1) < 0.99).all()
    assert np.allclose(np.linalg.norm(mb.encode(TEXTS, truncate_dim=32, normalize_embeddings=True), axis=1), 1)


def test_convert_to_tensor_and_lists(pair):
    ref, mb = pair
    t = mb.encode(TEXTS, convert_to_tensor=True)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    close(t.numpy(), np_(ref.encode(TEXTS, convert_to_tensor=True)))
    rows = mb.encode(TEXTS, convert_to_numpy=False)
    assert isinstance(rows, list) and len(rows) == len(TEXTS)
    close(np.stack(rows), np.stack(np_(ref.encode(TEXTS, convert_to_numpy=False))))


def test_token_embeddings_and_output_value_none(pair):
    ref, mb = pair
    for a, b in zip(
        mb.encode(TEXTS, output_value="token_embeddings"), ref.encode(TEXTS, output_value="token_embeddings")
    ):
        close(a, np_(b))
    mine, theirs = mb.encode(TEXTS[:4], output_value=None), ref.encode(TEXTS[:4], output_value=None)
    for a, b in zip(mine, theirs):
        n = int(np_(b["attention_mask"]).sum())
        assert a["input_ids"].tolist() == np_(b["input_ids"])[:n].tolist()
        close(a["token_embeddings"], np_(b["token_embeddings"])[:n])
        close(a["sentence_embedding"], np_(b["sentence_embedding"]))


@pytest.mark.parametrize("precision", ["float32", "int8", "uint8", "binary", "ubinary"])
def test_precision_as_sentence_transformers(pair, precision):
    ref, mb = pair
    a, b = mb.encode(TEXTS, precision=precision), ref.encode(TEXTS, precision=precision)
    assert a.dtype == b.dtype and a.shape == b.shape
    if precision == "float32":
        return close(a, b)
    # The same floats quantize to the same bits (below); minibert's and torch's floats differ by
    # ~1e-7, which moves a value across a bucket edge or zero only rarely, and then by one step.
    if precision.endswith("int8"):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    assert (a == b).mean() >= 0.98
    with pytest.raises(ValueError, match="single embedding"):
        mb.encode(TEXTS[0], precision="int8")


def test_quantize_embeddings_bit_for_bit():
    rng = np.random.default_rng(3)
    e = rng.standard_normal((50, 40)).astype(np.float32)
    calib = rng.standard_normal((200, 40)).astype(np.float32)
    ranges = np.vstack([calib.min(0), calib.max(0)])
    for precision in ("float32", "int8", "uint8", "binary", "ubinary"):
        for kw in ({}, {"calibration_embeddings": calib}, {"ranges": ranges}):
            a = util.quantize_embeddings(e, precision, **kw)
            b = st_util.quantize_embeddings(e, precision, **kw)
            assert a.dtype == b.dtype and np.array_equal(a, b), (precision, kw)
        assert np.array_equal(
            util.quantize_embeddings(torch.from_numpy(e), precision), st_util.quantize_embeddings(e, precision)
        )
    tokens = [e[:7], e[7:20]]  # token matrices share one set of buckets
    for a, b in zip(util.quantize_embeddings(tokens, "int8"), st_util.quantize_embeddings(tokens, "int8")):
        assert np.array_equal(a, b)


def test_max_seq_length_takes_effect_as_in_sentence_transformers(minilm_pair):
    ref, mb = minilm_pair
    before = (ref.max_seq_length, mb.max_seq_length)
    try:
        ref.max_seq_length = mb.max_seq_length = 8
        close(mb.encode(TEXTS), ref.encode(TEXTS))
    finally:
        ref.max_seq_length, mb.max_seq_length = before


def test_tokenize_as_sentence_transformers(pair):
    ref, mb = pair
    mine, theirs = mb.tokenize(TEXTS), ref.tokenize(TEXTS)
    assert sorted(mine) == sorted(k for k in theirs if k in ("input_ids", "attention_mask", "token_type_ids"))
    for k, v in mine.items():
        assert v.tolist() == np_(theirs[k]).tolist(), k


def test_dimension_similarity_and_truncation_context(pair):
    ref, mb = pair
    assert mb.get_sentence_embedding_dimension() == ref.get_embedding_dimension()
    assert mb.get_embedding_dimension() == ref.get_embedding_dimension()
    assert mb.similarity_fn_name == ref.similarity_fn_name
    a, b = mb.encode(TEXTS[:5]), mb.encode(TEXTS[5:])
    close(mb.similarity(a, b), np_(ref.similarity(a, b)))
    close(mb.similarity_pairwise(a, b), np_(ref.similarity_pairwise(a, b)))
    with mb.truncate_embeddings(8), ref.truncate_embeddings(8):
        assert mb.get_sentence_embedding_dimension() == ref.get_embedding_dimension() == 8
        close(mb.encode(TEXTS), ref.encode(TEXTS))
    assert mb.get_sentence_embedding_dimension() == ref.get_embedding_dimension()
    for name in ("dot", "euclidean", "manhattan"):
        mb.similarity_fn_name = name
        ref.similarity_fn_name = name
        close(mb.similarity(a, b), np_(ref.similarity(a, b)))
        close(mb.similarity_pairwise(a, b), np_(ref.similarity_pairwise(a, b)))
    mb.similarity_fn_name = ref.similarity_fn_name = None or mb.pipeline.similarity_fn_name


def test_constructor_options(minilm_dir):
    d = str(minilm_dir)
    prompts = {"query": "query: ", "passage": "passage: ", "classification": "Classify: "}
    kw = dict(device="cpu", prompts=prompts, default_prompt_name="classification", truncate_dim=64)
    ref, mb = st.SentenceTransformer(d, **kw), minibert.SentenceTransformer(d, **kw)
    assert mb.prompts == ref.prompts and mb.default_prompt_name == ref.default_prompt_name
    assert mb.get_sentence_embedding_dimension() == ref.get_embedding_dimension() == 64
    close(mb.encode(TEXTS), ref.encode(TEXTS))  # the default prompt, cut to 64
    close(mb.encode_query(TEXTS), ref.encode_query(TEXTS))
    close(mb.encode_document(TEXTS), ref.encode_document(TEXTS))
    close(mb.encode(TEXTS, prompt_name="query"), ref.encode(TEXTS, prompt_name="query"))
    close(mb.encode(TEXTS, prompt=""), ref.encode(TEXTS, prompt=""))
    sim = dict(device="cpu", similarity_fn_name="dot")
    assert (
        minibert.SentenceTransformer(d, **sim).similarity_fn_name == st.SentenceTransformer(d, **sim).similarity_fn_name
    )
    with pytest.raises(ValueError, match="prompt_name 'nope'"):
        mb.encode("x", prompt_name="nope")
    with pytest.raises(ValueError, match="default_prompt_name"):
        minibert.SentenceTransformer(d, default_prompt_name="nope")


def test_prompts_from_the_models_config(tmp_path, standin_dirs):
    d = tmp_path / "m"
    shutil.copytree(standin_dirs["distilbert-mean"], d)
    cfg = {"prompts": {"query": "query: ", "document": "passage: "}, "default_prompt_name": None}
    (d / "config_sentence_transformers.json").write_text(json.dumps(cfg))
    ref, mb = st.SentenceTransformer(str(d), device="cpu"), minibert.SentenceTransformer(d)
    assert mb.prompts == ref.prompts
    close(mb.encode_query(TEXTS), ref.encode_query(TEXTS))
    close(mb.encode_document(TEXTS), ref.encode_document(TEXTS))
    assert not np.allclose(mb.encode_query(TEXTS), mb.encode(TEXTS))  # the prompt is really there


POOLING_FLAGS = {
    "cls": "pooling_mode_cls_token",
    "mean": "pooling_mode_mean_tokens",
    "max": "pooling_mode_max_tokens",
    "mean_sqrt_len_tokens": "pooling_mode_mean_sqrt_len_tokens",
    "weightedmean": "pooling_mode_weightedmean_tokens",
    "lasttoken": "pooling_mode_lasttoken",
}


@pytest.mark.parametrize("mode", list(POOLING_FLAGS))
def test_prompt_left_out_of_pooling(tmp_path, mode):
    pooling = {"word_embedding_dimension": 32, POOLING_FLAGS[mode]: True, "include_prompt": False}
    d = write_model(tmp_path / mode, tiny_spec(), pooling=pooling, st_config={"prompts": {"query": "search query: "}})
    ref, mb = st.SentenceTransformer(str(d), device="cpu"), minibert.SentenceTransformer(d)
    close(mb.encode_query(TEXTS), ref.encode_query(TEXTS))
    close(
        mb.encode(TEXTS, prompt="a longer prompt of many words: "),
        ref.encode(TEXTS, prompt="a longer prompt of many words: "),
    )
    close(mb.encode(TEXTS), ref.encode(TEXTS))


# ------------------------------------------------------------------ util


def inputs(x):  # the same embeddings as NumPy, a list and a torch tensor
    return [x, x.tolist(), torch.from_numpy(x)]


def test_util_scores_as_sentence_transformers():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((6, 24)).astype(np.float32), rng.standard_normal((9, 24)).astype(np.float32)
    for name in ("cos_sim", "pytorch_cos_sim", "dot_score", "euclidean_sim", "manhattan_sim"):
        for x, y in zip(inputs(a), inputs(b)):
            mine = getattr(util, name)(x, y)
            assert isinstance(mine, np.ndarray) and mine.dtype == np.float32
            close(mine, np_(getattr(st_util, name)(x, y)))
        close(getattr(util, name)(a[0], b), np_(getattr(st_util, name)(a[0], b)))  # one query, 1-D
    for name in ("pairwise_cos_sim", "pairwise_dot_score", "pairwise_euclidean_sim", "pairwise_manhattan_sim"):
        for x, y in zip(inputs(a), inputs(b[:6])):
            close(getattr(util, name)(x, y), np_(getattr(st_util, name)(x, y)))
    close(util.normalize_embeddings(a), np_(st_util.normalize_embeddings(torch.from_numpy(a))))
    assert util.dot_score(a.astype(np.float64), b).dtype == np.float64  # as torch: float64 in, float64 out


def hits(result):  # semantic_search's hits, ids and rounded scores
    return [[(h["corpus_id"], round(h["score"], 5)) for h in q] for q in result]


def test_semantic_search_paraphrase_mining_and_communities(minilm_pair):
    ref, mb = minilm_pair
    corpus = mb.encode(TEXTS * 3)
    queries = mb.encode(["a man eats", "music", "horses"])
    for kw in (
        {},
        {"top_k": 4, "score_function": util.dot_score},
        {"top_k": 50, "query_chunk_size": 2, "corpus_chunk_size": 7},
    ):
        theirs = dict(kw)
        if "score_function" in theirs:
            theirs["score_function"] = st_util.dot_score
        mine, expected = util.semantic_search(queries, corpus, **kw), st_util.semantic_search(queries, corpus, **theirs)
        for m, e in zip(mine, expected):  # the same scores; ids may differ only among tied scores
            assert [round(h["score"], 5) for h in m] == [round(h["score"], 5) for h in e]
            bar = round(m[-1]["score"], 5)
            assert {h["corpus_id"] for h in m if round(h["score"], 5) > bar} == {
                h["corpus_id"] for h in e if round(h["score"], 5) > bar
            }
    for x in inputs(queries):
        assert hits(util.semantic_search(x, corpus, top_k=3)) == hits(util.semantic_search(queries, corpus, top_k=3))
    mine = util.paraphrase_mining(mb, TEXTS, top_k=3)
    expected = st_util.paraphrase_mining(ref, TEXTS, top_k=3)
    assert [(i, j) for _, i, j in mine] == [(i, j) for _, i, j in expected]
    close([s for s, _, _ in mine], [s for s, _, _ in expected])
    emb = mb.encode(TEXTS * 4)
    for kw in ({"threshold": 0.5, "min_community_size": 3}, {"threshold": 0.9, "min_community_size": 4}):
        mine, expected = util.community_detection(emb, **kw), st_util.community_detection(emb, **kw)
        assert [sorted(c) for c in mine] == [sorted(c) for c in expected] and mine, kw


def test_util_never_imports_torch(minilm_dir):
    code = """
import sys, numpy as np, minibert
from minibert import SentenceTransformer, util
m = SentenceTransformer(sys.argv[1])
e = m.encode(["a", "b c", "d e f"], precision="int8")
q = m.encode(["a", "b"])
util.cos_sim(q, q); util.semantic_search(q, q); util.paraphrase_mining(m, ["a", "b", "c"])
util.community_detection(q, min_community_size=1)
print("torch" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code, str(minilm_dir)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------------ what minibert does not do


def test_unsupported_is_one_clear_error(minilm_dir, tmp_path, monkeypatch):
    d = str(minilm_dir)
    cases = [
        (dict(device="cuda"), "CPU only"),
        (dict(device="mps"), "CPU only"),
        (dict(trust_remote_code=True), "never runs code"),
        (dict(backend="onnx"), "its own engine"),
        (dict(model_kwargs={"torch_dtype": "float16"}), "model_kwargs"),
        (dict(no_such_option=1), "no_such_option"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            minibert.SentenceTransformer(d, **kwargs)
    m = minibert.SentenceTransformer(d, device="cpu")
    for kwargs, message in [
        (dict(device="cuda:0"), "CPU only"),
        (dict(device=["cpu", "cpu"]), "multi-process"),
        (dict(pool={"input": None}), "multi-process"),
        (dict(frobnicate=True), "frobnicate"),
        (dict(precision="float16"), "precision"),
        (dict(truncate_dim=0), "truncate_dim"),
        (dict(output_value="nope"), "output_value"),
    ]:
        with pytest.raises(ValueError, match=message):
            m.encode(["a text"], **kwargs)
    roberta = tmp_path / "roberta"
    write_model(roberta, tiny_spec(), config={"model_type": "roberta", "hidden_size": 32})
    with pytest.raises(minibert.MinibertError, match="roberta"):
        minibert.SentenceTransformer(roberta)
    for name in ("fit", "encode_multi_process", "half", "push_to_hub"):
        with pytest.raises(AttributeError, match="not supported by minibert"):
            getattr(m, name)
    monkeypatch.setitem(sys.modules, "torch", None)  # as if torch were not installed
    with pytest.raises(ImportError, match="convert_to_tensor=True needs torch"):
        m.encode(["a text"], convert_to_tensor=True)


# ------------------------------------------------------------------ the model cards


def model_card_snippets():  # (seed file, snippet) for each sentence-transformers snippet of the cards
    """A card's code is either fenced (```python) or pasted as plain lines among the prose; there,
    the snippet is the longest run of lines from its import that still compiles."""
    for f in sorted(SEEDS.glob("*.txt")):
        text = f.read_text()
        fenced = re.findall(r"```python\n(.*?)```", text, flags=re.S)
        blocks = [b for b in fenced if "from sentence_transformers import" in b]
        if not blocks:
            lines = text.splitlines()
            for start in (i for i, line in enumerate(lines) if line.startswith("from sentence_transformers import")):
                ends = [e for e in range(start + 1, min(start + 80, len(lines)) + 1) if _compiles(lines[start:e])]
                blocks.append("\n".join(lines[start : max(ends)]) + "\n")
        for block in blocks:
            yield f.name, block


def _compiles(lines):
    try:
        compile("\n".join(lines), "<card>", "exec")
    except SyntaxError:
        return False
    return True


CARD_MODELS = {  # the card's model -> the stand-in of its architecture and pooling
    "msmarco-distilbert-base-tas-b": "distilbert-cls",
    "msmarco-distilbert-dot-v5": "distilbert-mean",
    "msmarco-distilbert-base-v4": "distilbert-mean",
    "bge-micro-v2": "bge-micro",
}


def run_snippet(code):
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_model_card_snippets_run_with_only_the_import_changed(standin_dirs):
    snippets = list(model_card_snippets())
    assert len(snippets) >= 2, f"expected the cards' snippets in {SEEDS}"
    for name, code in snippets:
        model = next(m for m in CARD_MODELS if m in code)
        code = re.sub(
            r"['\"]sentence-transformers/" + model + r"['\"]", repr(str(standin_dirs[CARD_MODELS[model]])), code
        )
        theirs = run_snippet(code)
        ours = run_snippet(
            code.replace("from sentence_transformers import", "from minibert import").replace(".cpu()", "")
        )
        numbers = [re.findall(r"-?\d+\.\d+(?:e-?\d+)?", out) for out in (ours, theirs)]
        assert len(numbers[0]) == len(numbers[1]) > 0, (name, ours, theirs)
        assert [line.split(" ", 1)[1] for line in ours.splitlines()] == [
            line.split(" ", 1)[1] for line in theirs.splitlines()
        ], name  # the same documents in the same order
        close([float(x) for x in numbers[0]], [float(x) for x in numbers[1]])
