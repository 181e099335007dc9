"""Hostile model files and inputs (issue 18): no crash, no hang, no silent wrong answer, one clear error.

Each defect the probe found has a test named after it. Cases that could kill or hang the process
run in a subprocess.
"""

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pytest

import minibert
from minibert import CheckpointError, MinibertError, UnsupportedModelError
from minibert.parity.standins import model_config, standin_tensors

from helpers import tiny_spec, write_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def default_sigint():  # a child as a terminal starts it: a shell's background job would ignore SIGINT
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_python(code, *args, timeout=120, **env):  # -> CompletedProcess of a fresh interpreter
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **{k: str(v) for k, v in env.items()}}
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT, preexec_fn=default_sigint)  # fmt: skip


def run_cli(*args, stdin=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "minibert", *map(str, args)], input=stdin, capture_output=True,
                          text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=timeout)  # fmt: skip


def one_error_line(p):  # the CLI's contract for a rejected input
    assert p.returncode == 1, (p.returncode, p.stdout[-500:], p.stderr[-2000:])
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    errors = [line for line in p.stderr.splitlines() if line.startswith("minibert: error:")]
    assert len(errors) == 1, p.stderr
    return errors[0]


def edit_json(path, change):  # change(obj) edits the parsed JSON in place
    obj = json.loads(path.read_text(encoding="utf-8"))
    change(obj)
    path.write_text(json.dumps(obj), encoding="utf-8")


def write_safetensors(path, header, data):  # a safetensors file with exactly this header (str or dict)
    raw = (header if isinstance(header, str) else json.dumps(header)).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data)


def split_safetensors(path):  # -> (header dict, data bytes)
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


@pytest.fixture
def tiny(tmp_path):
    return write_model(tmp_path / "m")


# ------------------------------------------------------------------ 1. zero-token texts


def test_a_text_with_no_tokens_is_refused_not_read_out_of_bounds(tmp_path):
    # tokenizer.json without a post-processor gives "" no tokens at all; the packed pooling kernel
    # used to read past its buffer for it: heap garbage for [CLS], NaN for max, a segfault at larger batches.
    d = write_model(tmp_path / "m", pooling={"word_embedding_dimension": 32, "pooling_mode": ["cls", "mean"]})
    edit_json(d / "tokenizer.json", lambda t: t.update(post_processor=None))
    code = """
import sys, minibert
m = minibert.load(sys.argv[1])
try:
    m.encode(['hello ' * 256] * 30 + ['hello hello', ''], batch_size=64)
except ValueError as e:
    print("refused:", e)
"""
    p = run_python(code, d, MINIBERT_NUM_THREADS=1, MINIBERT_NUMBA=1)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "refused: sentences[31] has no tokens" in p.stdout
    for mode in ("max", "lasttoken", "mean", "cls"):
        (d / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32, "pooling_mode": mode}))
        m = minibert.load(d)
        with pytest.raises(ValueError, match=r"sentences\[1\] has no tokens"):
            m.encode(["hello", ""])
        assert m.encode(["hello"]).shape == (1, 32)


def test_pooling_kernels_cannot_read_outside_their_tokens():
    from minibert.kernels import pool, pool_numpy

    tokens = np.arange(12, dtype=np.float32).reshape(4, 3)
    for fn in (pool, pool_numpy):
        for mode in ("cls", "max", "lasttoken"):
            with pytest.raises(ValueError, match="no tokens"):
                fn(tokens, np.array([0, 2, 2, 4]), mode)
    for offsets in ([0, 2, 9], [1, 4], [0, 3, 2, 4], [0, -2, 4]):
        with pytest.raises(ValueError, match="offsets"):
            pool(tokens, np.array(offsets), "mean")
    np.testing.assert_array_equal(pool(tokens, np.array([0, 2, 2, 4]), "mean")[1], 0)  # sentence-transformers' 0 / 1e-9


# ------------------------------------------------------------------ 2. the weights file changing after load


def test_weights_truncated_or_overwritten_after_load_change_nothing(tmp_path):
    d = write_model(tmp_path / "m")
    other = write_model(tmp_path / "other", tiny_spec(seed=99))
    code = """
import sys, shutil, numpy as np, minibert
d, other = sys.argv[1], sys.argv[2]
m = minibert.load(d)
texts = ["hello world", "the printing press", "x"]
want = m.encode(texts)
with open(d + "/model.safetensors", "r+b") as f:
    f.truncate(100)  # a download replacing the file in place
assert (m.encode(texts) == want).all(), "changed after truncation"
shutil.copyfile(other + "/model.safetensors", d + "/model.safetensors")  # other weights, same size
assert (m.encode(texts) == want).all(), "changed after overwrite"
print("ok")
"""
    p = run_python(code, d, other)
    assert p.returncode == 0 and "ok" in p.stdout, (p.returncode, p.stderr[-3000:])  # (SIGBUS: -7)


# ------------------------------------------------------------------ 3. layers beyond the checkpoint


@pytest.mark.parametrize("layers,match", [(10**9, "between 1 and 1000"), (1000, "describes 1000 encoder blocks")])
def test_num_hidden_layers_beyond_the_checkpoint_fails_at_once(tmp_path, layers, match):
    d = write_model(tmp_path / "m")
    edit_json(d / "config.json", lambda c: c.update(num_hidden_layers=layers))
    code = "import sys, minibert\ntry:\n    minibert.load(sys.argv[1])\nexcept minibert.CheckpointError as e:\n    print(e)"  # noqa: E501
    start = time.monotonic()
    p = run_python(code, d, timeout=60)
    assert p.returncode == 0 and match in p.stdout, p.stdout + p.stderr[-2000:]
    assert time.monotonic() - start < 60  # (it used to grow memory without bound)


# ------------------------------------------------------------------ 4. Ctrl-C while Numba starts


def test_ctrl_c_while_numba_starts_leaves_the_process_usable(tmp_path):
    d = write_model(tmp_path / "m")
    code = """
import importlib.abc, os, signal, sys
import minibert

class InterruptMidImport(importlib.abc.MetaPathFinder):  # Ctrl-C in the middle of `import numba`
    fired = False
    def find_spec(self, name, path=None, target=None):
        if name == "numba.core.typing" and not InterruptMidImport.fired:
            InterruptMidImport.fired = True
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.meta_path.insert(0, InterruptMidImport())
m = minibert.load(sys.argv[1])
texts = ["a text of a good many words " * 10] * 4  # a batch: it starts Numba
try:
    m.encode(texts)
    print("not interrupted")
except KeyboardInterrupt:
    print("interrupted")
print("fired", InterruptMidImport.fired, m.encode(texts).shape)
"""
    p = run_python(code, d, MINIBERT_NUMBA="auto")
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.splitlines()[:2] == ["interrupted", "fired True (4, 32)"], p.stdout


# ------------------------------------------------------------------ 5. the search cache


def test_search_cache_follows_every_model_file_and_is_checked(tmp_path):
    d = write_model(tmp_path / "m")
    corpus = tmp_path / "docs.txt"
    corpus.write_text("the cat sat on the mat\nstock markets fell today\na kitten sleeps on a rug\n")
    query = "a cat on a mat"

    def expected():  # the top score, from a model loaded afresh
        m = minibert.load(d)
        return float(m.similarity(m.encode([query]), m.encode(corpus.read_text().splitlines())).max())

    def searched(*extra):
        p = run_cli("search", "-m", d, "--corpus", corpus, "-k", "1", query, *extra)
        assert p.returncode == 0, p.stderr
        return float(p.stdout.splitlines()[1].split()[1]), p.stderr

    first, _ = searched()
    assert abs(first - expected()) < 1e-4
    # Switch the pooling to CLS and max_seq_length to 4: the cached embeddings no longer apply.
    (d / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32, "pooling_mode": "cls"}))
    (d / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 4, "do_lower_case": False}))
    second, err = searched()
    assert "from cache" not in err and abs(second - expected()) < 1e-4 and abs(second - first) > 1e-3
    assert "from cache" in searched()[1]
    cache = max(tmp_path.glob(".docs.txt.minibert-*.npz"), key=lambda c: c.stat().st_mtime_ns)  # the second's
    # A damaged cache is never used: a negated row, zeros, another dtype, junk.
    with np.load(cache) as f:
        saved = dict(f)
    for damage in (lambda e: np.concatenate([-e[:1], e[1:]]), np.zeros_like, lambda e: e.astype(np.float64)):
        np.savez(cache, **{**saved, "embeddings": damage(saved["embeddings"])})
        score, err = searched()
        assert "not usable" in err and abs(score - second) < 1e-6
    cache.write_bytes(b"junk")
    assert "not usable" in searched()[1]
    # `--corpus -` reads standard input (not a file named "-") and caches nothing.
    (tmp_path / "-").write_text("a file named dash\n")
    p = run_cli("search", "-m", d, "--corpus", "-", "-k", "1", query, stdin=corpus.read_text())
    assert p.returncode == 0 and "dash" not in p.stdout, p.stderr
    assert abs(float(p.stdout.splitlines()[1].split()[1]) - second) < 1e-6 and "from cache" not in p.stderr


# ------------------------------------------------------------------ 6. temporary files


def test_outputs_are_written_through_exclusive_unpredictable_temporary_files(tmp_path, tiny):
    from minibert import cli

    out, victim = tmp_path / "out.npy", tmp_path / "victim.txt"
    victim.write_text("keep me")
    os.symlink(victim, tmp_path / f".out.npy.{os.getpid()}.partial")  # the old predictable name, planted
    cli.save_embeddings(out, ["a"], np.ones((1, 4), np.float32))
    assert victim.read_text() == "keep me" and np.load(out).shape == (1, 4)
    # A replaced output keeps its mode; a new one gets the umask's.
    os.chmod(out, 0o640)
    p = run_cli("embed", "-m", tiny, "-o", out, "a text")
    assert p.returncode == 0, p.stderr
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o640 and np.load(out).shape == (1, 32)
    fresh = tmp_path / "fresh.npy"
    assert run_cli("embed", "-m", tiny, "-o", fresh, "a text").returncode == 0
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(fresh).st_mode) == 0o666 & ~umask
    leftovers = [f.name for f in tmp_path.iterdir() if f.name.endswith(".partial") and not f.is_symlink()]
    assert leftovers == []


def test_sigterm_leaves_no_partial_file(tmp_path, minilm_dir):
    src = tmp_path / "big.txt"
    src.write_text("\n".join(f"sentence number {i} about a fairly ordinary topic" for i in range(40000)))
    out = tmp_path / "out.npy"
    proc = subprocess.Popen([sys.executable, "-m", "minibert", "embed", "-m", str(minilm_dir), "-i", str(src),
                             "-o", str(out), "--progress"], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    seen = ""
    while "Batches" not in seen and proc.poll() is None:
        seen += proc.stderr.read(1)
    proc.send_signal(signal.SIGTERM)
    rest = proc.communicate(timeout=120)[1]
    assert proc.returncode == 143 and "terminated" in rest, rest[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.txt"]


# ------------------------------------------------------------------ 7. invalid checkpoints


def test_overlapping_tensors_and_duplicate_keys_are_refused(tmp_path, tiny):
    header, data = split_safetensors(tiny / "model.safetensors")
    names = [n for n in header if n != "__metadata__"]
    a, b = [n for n in names if n.endswith("LayerNorm.bias")][:2]
    header[b]["data_offsets"] = header[a]["data_offsets"]  # two tensors sharing bytes
    write_safetensors(tiny / "model.safetensors", header, data)
    with pytest.raises(CheckpointError, match="overlaps"):
        minibert.load(tiny)
    header, data = split_safetensors(write_model(tmp_path / "fresh") / "model.safetensors")
    text = json.dumps(header)
    first = json.dumps({a: header[a]})[1:-1]
    write_safetensors(tiny / "model.safetensors", "{" + first + ", " + text[1:], data)  # `a` twice
    with pytest.raises(CheckpointError, match=f"key '{a}' appears twice"):
        minibert.load(tiny)


@pytest.mark.parametrize("layers,match", [(1, "describes 1 encoder blocks, the checkpoint holds blocks 0-1"),
                                          (True, "must be an integer, got True")])  # fmt: skip
def test_num_hidden_layers_must_match_the_checkpoint(tiny, layers, match):
    edit_json(tiny / "config.json", lambda c: c.update(num_hidden_layers=layers))
    with pytest.raises(CheckpointError, match=match):
        minibert.load(tiny)


def test_unused_encoder_tensors_are_reported(tmp_path):
    t = standin_tensors(tiny_spec())
    t["encoder.layer.0.attention.self.distance_embedding.weight"] = np.zeros((7, 8), np.float32)
    with pytest.raises(CheckpointError, match="distance_embedding.weight.*not part of the bert encoder"):
        minibert.load(write_model(tmp_path / "m", tensors=t))


def test_a_huge_layer_norm_gain_never_gives_zero_embeddings(tmp_path):
    # Values near float32's limit: the squares in the norm overflowed after the non-finite check,
    # and every normalized embedding came out all zeros.
    t = standin_tensors(tiny_spec())
    t["encoder.layer.1.output.LayerNorm.weight"][:] = 1e30
    t["encoder.layer.1.output.LayerNorm.bias"][:] = 0
    d = write_model(tmp_path / "m", tensors=t, modules="normalize")
    texts = ["hello world", "the printing press"]
    for engine in ("fast", "reference"):
        emb = minibert.load(d, engine=engine).encode(texts)
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1, rtol=1e-5)
        np.testing.assert_allclose(emb, minibert.load(d, dtype="float64").encode(texts), atol=1e-5)
    t["encoder.layer.1.output.LayerNorm.weight"][:] = 3e38  # beyond float32 once multiplied: an error
    d = write_model(tmp_path / "big", tensors=t, modules="normalize")
    with pytest.raises(MinibertError, match="not finite"):
        minibert.load(d).encode(texts)


# ------------------------------------------------------------------ 8. input files split at newlines only


def test_input_files_are_split_at_newlines_only(tmp_path, tiny):
    texts = ["form\x0cfeed", "next\x85line", "line\u2028separator", "", "plain"]
    src = tmp_path / "in.txt"
    src.write_text("\n".join(texts) + "\n", encoding="utf-8")
    out = tmp_path / "out.npy"
    assert run_cli("embed", "-m", tiny, "-i", src, "-o", out).returncode == 0
    m = minibert.load(tiny)
    np.testing.assert_array_equal(np.load(out), m.encode(texts))
    js = tmp_path / "in.jsonl"
    js.write_text("\n".join(json.dumps({"text": t}, ensure_ascii=False) for t in texts) + "\n", encoding="utf-8")
    out2 = tmp_path / "out.jsonl"
    p = run_cli("embed", "-m", tiny, "-i", js, "-o", out2)
    assert p.returncode == 0, p.stderr
    again = tmp_path / "again.npy"  # minibert's own .jsonl output as its input
    p = run_cli("embed", "-m", tiny, "-i", out2, "--field", "text", "-o", again)
    assert p.returncode == 0, p.stderr
    np.testing.assert_array_equal(np.load(again), m.encode(texts))
    js.write_text('{"text": "ok"}\n{"text": "a\u2028b"}\n{oops\n', encoding="utf-8")
    assert "in.jsonl:3: not valid JSON" in one_error_line(run_cli("embed", "-m", tiny, "-i", js))


# ------------------------------------------------------------------ 9. module paths


@pytest.mark.parametrize("module,path", [(0, "../.."), (0, "/etc"), (1, "../elsewhere"), (0, "a/../../b")])
def test_module_paths_cannot_leave_the_model_directory(tiny, module, path):
    def change(mods):
        mods[module]["path"] = path

    edit_json(tiny / "modules.json", change)
    with pytest.raises(CheckpointError, match="leaves the model directory"):
        minibert.load(tiny)


# ------------------------------------------------------------------ 10. unclear exceptions


@pytest.mark.parametrize("field,raw,match", [
    ("hidden_size", "1" * 5001, "config.json: not valid JSON"),
    ("hidden_size", "Infinity", "'hidden_size' must be an integer, got inf"),
    ("hidden_size", "1e400", "'hidden_size' must be an integer, got inf"),
    ("hidden_size", '"abc"', "'hidden_size' must be an integer, got 'abc'"),
    ("hidden_size", "32.0", "'hidden_size' must be an integer, got 32.0"),
    ("vocab_size", "-3", "'vocab_size' must be between 1 and"),
    ("num_attention_heads", "[4]", "'num_attention_heads' must be an integer"),
    ("layer_norm_eps", "NaN", "'layer_norm_eps' must be a finite number"),
    ("layer_norm_eps", "-1.0", "'layer_norm_eps' must lie between"),
    ("hidden_act", '["gelu"]', "activation \\['gelu'\\] is not supported"),
])  # fmt: skip
def test_config_fields_are_named_when_wrong(tiny, field, raw, match):
    cfg = {**json.loads((tiny / "config.json").read_text()), field: "PLACEHOLDER"}
    (tiny / "config.json").write_text(json.dumps(cfg).replace('"PLACEHOLDER"', raw))
    with pytest.raises(MinibertError, match=match) as e:
        minibert.load(tiny)
    assert "config.json" in str(e.value)
    assert "config.json" in one_error_line(run_cli("embed", "-m", tiny, "x"))


def test_deeply_nested_json_is_named(tiny):
    (tiny / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CheckpointError, match="config.json: not valid JSON"):
        minibert.load(tiny)
    write_safetensors(tiny / "model.safetensors", '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}", b"")
    (tiny / "config.json").write_text(json.dumps(model_config(tiny_spec())))
    with pytest.raises(CheckpointError, match="model.safetensors: corrupt safetensors header"):
        minibert.load(tiny)
    assert "model.safetensors" in one_error_line(run_cli("embed", "-m", tiny, "x"))


@pytest.mark.parametrize("change,match", [
    (lambda h, n: h[n].update(shape=[-4, 8]), "shape \\[-4, 8\\]"),
    (lambda h, n: h[n].update(dtype=["F32"]), "unsupported dtype \\['F32'\\]"),
    (lambda h, n: h[n].update(data_offsets=[0, True]), "data_offsets"),
    (lambda h, n: h[n].update(extra=1), "malformed header entry"),
    (lambda h, n: h.update(__metadata__={"format": 3}), "__metadata__"),
])  # fmt: skip
def test_malformed_header_entries_are_named(tiny, change, match):
    header, data = split_safetensors(tiny / "model.safetensors")
    change(header, next(n for n in header if n != "__metadata__"))
    write_safetensors(tiny / "model.safetensors", header, data)
    with pytest.raises(CheckpointError, match=match):
        minibert.load(tiny)
    assert "model.safetensors" in one_error_line(run_cli("embed", "-m", tiny, "x"))


@pytest.mark.parametrize("entry,match", [
    ({"idx": 0, "type": 5, "path": ""}, "module 0's field 'type' must be a string"),
    ({"idx": 0, "type": "sentence_transformers.models.Transformer", "path": 3}, "field 'path' must be a string"),
    ({"idx": "x", "type": "sentence_transformers.models.Transformer", "path": ""}, "field 'idx' must be an integer"),
])  # fmt: skip
def test_bad_modules_json_entries_are_named(tiny, entry, match):
    edit_json(tiny / "modules.json", lambda mods: mods.__setitem__(0, entry))
    with pytest.raises(CheckpointError, match=match):
        minibert.load(tiny)
    assert "modules.json" in one_error_line(run_cli("embed", "-m", tiny, "x"))


def test_token_ids_beyond_the_embedding_table_are_refused(tiny):
    tok = json.loads((tiny / "tokenizer.json").read_text())
    saved = json.dumps(tok)
    tok["added_tokens"].append({"id": 40000, "content": "[NEW]", "single_word": False, "lstrip": False,
                                "rstrip": False, "normalized": False, "special": True})  # fmt: skip
    (tiny / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(CheckpointError, match=r"token id 3\d{4} but the embedding table only 30522 rows"):
        minibert.load(tiny)
    tok = json.loads(saved)  # a post-processor's [CLS] id beyond the table: found when encoding
    tok["post_processor"]["special_tokens"]["[CLS]"]["ids"] = [99999]
    (tiny / "tokenizer.json").write_text(json.dumps(tok))
    m = minibert.load(tiny)
    with pytest.raises(CheckpointError, match=r"gives sentences\[0\] the token id 99999"):
        m.encode(["hello"])
    assert "99999" in one_error_line(run_cli("embed", "-m", tiny, "hello"))


def test_a_tokenizer_panic_is_named(tiny, monkeypatch):
    m = minibert.load(tiny)
    PanicException = type("PanicException", (BaseException,), {})  # what pyo3 raises: not an Exception

    class Panicking:
        def __getattr__(self, name):
            return getattr(real, name)

        def encode_batch(self, texts):
            raise PanicException("AddedVocabulary bad split")

        def encode(self, text):
            if "bad" in text:
                raise PanicException("AddedVocabulary bad split")
            return real.encode(text)

    real = m.tokenizer.tok
    monkeypatch.setattr(m.tokenizer, "tok", Panicking())
    with pytest.raises(ValueError, match=r"sentences\[1\]: the tokenizer .* fails on this text \(PanicException"):
        m.encode(["good", "bad one"])


def test_lone_surrogates_are_named(tiny):
    m = minibert.load(tiny)
    with pytest.raises(ValueError, match=r"sentences\[1\] holds a lone surrogate \(U\+D800\) at character 3"):
        m.encode(["fine", "abc\ud800def"])


# ------------------------------------------------------------------ 11. configs misread


def test_pooling_and_sentence_bert_configs_are_read_strictly(tiny):
    pool = tiny / "1_Pooling" / "config.json"
    pool.write_text(json.dumps({"word_embedding_dimension": 32, "pooling_mode_mean_tokens": False,
                                "pooling_mode_cls_token": False}))  # fmt: skip
    with pytest.raises(UnsupportedModelError, match="every pooling mode is set to false"):
        minibert.load(tiny)
    pool.write_text(json.dumps({"word_embedding_dimension": "32", "pooling_mode": "mean"}))
    with pytest.raises(CheckpointError, match="'word_embedding_dimension' must be an integer, got '32'"):
        minibert.load(tiny)
    pool.write_text(json.dumps({"word_embedding_dimension": 32, "pooling_mode_mean_tokens": "yes"}))
    with pytest.raises(CheckpointError, match="'pooling_mode_mean_tokens' must be true or false"):
        minibert.load(tiny)
    pool.write_text(json.dumps({"word_embedding_dimension": 32, "pooling_mode": "mean"}))
    (tiny / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64, "do_lower_case": "false"}))
    with pytest.raises(CheckpointError, match="'do_lower_case' must be true or false, got 'false'"):
        minibert.load(tiny)
    (tiny / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64.5}))
    with pytest.raises(CheckpointError, match="'max_seq_length' must be an integer"):
        minibert.load(tiny)


# ------------------------------------------------------------------ 12. memory amplification


def full_tokenization(model, text):  # what tokenizers gives the whole text, truncated as minibert does
    tok = model.tokenizer.tok
    return np.asarray(tok.encode(text.strip()).ids, dtype=np.int64)


@pytest.mark.parametrize("kind", ["words", "no spaces", "punctuation", "cjk", "spaces between two words", "mixed"])
def test_a_long_text_is_cut_before_tokenizing_with_the_same_tokens(tiny, kind):
    rng = np.random.default_rng(0)
    words = ["the", "printing", "press", "Zürich", "naïve", "12345", "co-operate", "e.g.", "🍕", "北京"]
    text = {
        "words": " ".join(rng.choice(words, 40_000)),
        "no spaces": "abc" * 70_000,
        "punctuation": "a." * 100_000,
        "cjk": "北京是中国的首都" * 25_000,
        "spaces between two words": "first" + " " * 200_000 + "second",
        "mixed": "".join(rng.choice(list("ab .,!\u00e9\u4e2d\t\n"), 200_000)),
    }[kind]
    m = minibert.load(tiny)
    got = m.tokenize([text])[0]
    np.testing.assert_array_equal(got, full_tokenization(m, text))
    assert len(got) <= m.max_seq_length


def test_a_million_character_text_costs_bounded_memory(tiny):
    code = """
import resource, sys, minibert
m = minibert.load(sys.argv[1])
m.encode(["warm up"])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
m.encode(["hello world " * 350_000])  # 4.2 million characters
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""
    p = run_python(code, tiny)
    assert p.returncode == 0, p.stderr[-2000:]
    assert float(p.stdout.split()[-1]) < 100, p.stdout  # MiB; tokenizing all of it took ~700


def test_a_huge_safetensors_header_is_refused_before_parsing(tiny):
    junk = {f"junk{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(200_000)}
    write_safetensors(tiny / "model.safetensors", junk, b"")
    with pytest.raises(CheckpointError, match="larger than minibert reads"):
        minibert.load(tiny)


# ------------------------------------------------------------------ 13. a query on busy cores


def test_a_query_on_busy_cores_falls_back_to_one_thread(tiny, monkeypatch):
    # On 2 cores with a busy neighbour, a query split over both waited on the scheduler at every
    # split: 20x its one-thread time. The planner times queries and stops splitting when they slow.
    from minibert import plan
    from minibert.kernels.matmul import k_blocks_rule

    monkeypatch.setattr(plan, "_QUERY_TIMES", {})
    monkeypatch.setenv("MINIBERT_NUM_THREADS", "2")
    # (On a BLAS that queries do not stream on, stream them anyway: only the thread count is checked.)
    monkeypatch.setattr(plan, "row_tile", lambda dtype: 1)
    monkeypatch.setattr(plan, "_query_blocks", lambda model, split: {(k, n): k_blocks_rule(k, 448, 4)
                        for k, n in ((32, 96), (32, 32), (32, 64), (64, 32))})  # fmt: skip
    m = minibert.load(tiny)

    def threads_of_next_query():
        from minibert import engine

        seen = []
        real = engine.forward
        monkeypatch.setattr(engine, "forward", lambda *a: seen.append(a[-1].dense.threads) or real(*a))
        m.encode("a short query")
        monkeypatch.setattr(engine, "forward", real)
        return seen[0]

    assert threads_of_next_query() == 2
    times = plan._query_times(m)
    for _ in range(3):
        times.record(2, 100 * times.best_split)  # as if the other core were busy
    assert threads_of_next_query() == 1


# ------------------------------------------------------------------ 14. max_seq_length


def test_max_seq_length_is_a_validated_property_that_truncates(tiny):
    m = minibert.load(tiny)
    long = "word " * 100
    assert len(m.tokenize([long])[0]) == 64
    m.max_seq_length = 16
    assert m.max_seq_length == 16 and len(m.tokenize([long])[0]) == 16
    np.testing.assert_array_equal(m.encode(long), m.encode(" ".join(["word"] * 14)))
    for bad, error in ((0, ValueError), (-5, ValueError), (513, ValueError), ("abc", TypeError), (None, TypeError),
                       (True, TypeError), (2.5, TypeError)):  # fmt: skip
        with pytest.raises(error, match="max_seq_length"):
            m.max_seq_length = bad
    assert m.max_seq_length == 16
    m.max_seq_length = 2
    assert m.tokenize(["x y z"])[0].tolist() == [101, 102]
    with pytest.raises(ValueError, match="leaves no room"):
        m.max_seq_length = 1


# ------------------------------------------------------------------ what held up keeps holding


def test_nothing_is_executed_from_a_model_directory(tiny):
    (tiny / "modeling_evil.py").write_text("raise SystemExit('executed!')")
    (tiny / "__init__.py").write_text("raise SystemExit('executed!')")
    edit_json(tiny / "config.json", lambda c: c.update(auto_map={"AutoModel": "modeling_evil.Evil"}))
    assert minibert.load(tiny).encode("fine").shape == (32,)
    shutil.rmtree(tiny)
