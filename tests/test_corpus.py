"""Corpus embedding (minibert/corpus.py, `minibert embed --output DIR/`, `minibert search --corpus DIR/`):
shards equal to encode bit for bit, resumed after SIGKILL to the same bytes, refused when anything
changed, bounded memory, and every bad input a clear error."""

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import minibert
from minibert import corpus, util

from helpers import tiny_spec, write_model

WORDS = "the of a history science river stone light music city garden theory night paper king field".split()


def texts_of(n, seed=0):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 20))) for _ in range(n)]


def run(*args, env=None, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "minibert", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
        timeout=timeout,
    )


def file_hashes(d):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_model(tmp_path_factory.mktemp("corpus") / "tiny")


@pytest.fixture(scope="module")
def model(tiny):
    return minibert.load(tiny)


@pytest.fixture
def txt(tmp_path):
    texts = texts_of(1000)
    p = tmp_path / "docs.txt"
    p.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    return p, texts


def test_shards_equal_encode_bit_for_bit(model, txt, tmp_path):
    path, texts = txt
    out = tmp_path / "emb"
    m = corpus.embed(model, path, out, shard_size=300, parquet=True)
    assert m["complete"] and m["rows"] == 1000 and [s["rows"] for s in m["shards"]][-1] == [900, 1000]
    c = corpus.open_corpus(out)
    want = model.encode(texts)
    np.testing.assert_array_equal(c.embeddings(), want)
    # one text at a time: the same bits (nothing is padded, so no batch changes a text's result)
    for i in (0, 299, 300, 999):
        np.testing.assert_array_equal(c.embeddings()[i], model.encode([texts[i]])[0])
    assert m["model"]["fingerprint"] == model.fingerprint() and m["input"]["size"] == path.stat().st_size
    assert m["options"]["shard_size"] == 300 and m["embedding"] == {"dim": 32, "dtype": "float32", "ranges": None}
    # the parquet shards hold the same rows
    import pyarrow.parquet as pq

    tab = pq.read_table(out / "shard-00001.parquet")
    assert tab.column("row").to_pylist() == list(range(300, 600))
    np.testing.assert_array_equal(np.stack(tab.column("embedding").to_numpy(zero_copy_only=False)), want[300:600])


def test_search_is_exact_top_k(model, txt, tmp_path):
    path, texts = txt
    out = tmp_path / "emb"
    corpus.embed(model, path, out, shard_size=128)
    c = corpus.open_corpus(out)
    q = model.encode(["history of the river", "music at night"])
    got = c.search(q, k=7, block=50)  # blocks smaller than shards: the merge across them is exercised
    want = util.semantic_search(q, model.encode(texts), top_k=7)
    for g, w in zip(got, want):
        assert [row for _, row in g] == [h["corpus_id"] for h in w]
        np.testing.assert_allclose([s for s, _ in g], [h["score"] for h in w], rtol=1e-6)


def test_jsonl_ids_and_blank_lines(model, tmp_path):
    texts = texts_of(50, seed=3)
    src = tmp_path / "docs.jsonl"
    lines = [json.dumps({"doc": f"d{i}", "body": t}) for i, t in enumerate(texts)]
    lines.insert(10, "   ")  # a blank line is not a row
    src.write_text("\n".join(lines) + "\n")
    m = corpus.embed(model, src, tmp_path / "e", field="body", id_field="doc", shard_size=16)
    c = corpus.open_corpus(tmp_path / "e")
    assert m["rows"] == 50 and c.ids() == [f"d{i}" for i in range(50)]
    np.testing.assert_array_equal(c.embeddings(), model.encode(texts))
    assert c.text(33) == texts[33] and c.text(0) == texts[0] and c.id(33) == "d33" and c.id(49) == "d49"


def test_parquet_and_csv_inputs(model, tmp_path):
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    texts = texts_of(300, seed=5)
    texts[7] = 'a "quoted", text, with commas\nand a newline'
    table = pa.table({"key": list(range(300)), "text": texts})
    pq.write_table(table, tmp_path / "docs.parquet", row_group_size=70)
    pcsv.write_csv(table, tmp_path / "docs.csv")
    want = model.encode(texts)
    for name in ("docs.parquet", "docs.csv"):
        out = tmp_path / f"{name}.emb"
        corpus.embed(model, tmp_path / name, out, id_field="key", shard_size=64)
        c = corpus.open_corpus(out)
        np.testing.assert_array_equal(c.embeddings(), want)
        assert [int(x) for x in c.ids()] == list(range(300))
    # resuming from the middle of a row group reads on from the right row
    out = tmp_path / "resume.emb"
    with pytest.raises(KeyboardInterrupt):
        corpus.embed(model, tmp_path / "docs.parquet", out, shard_size=64, progress=interrupt_after(100))
    corpus.embed(model, tmp_path / "docs.parquet", out, shard_size=64)
    np.testing.assert_array_equal(corpus.open_corpus(out).embeddings(), want)


def test_progress_line():
    import io

    tty = io.StringIO()
    p = corpus.Progress(1000, 200, tty, True)
    p.last -= 1
    p.update(100, 2500)
    line = tty.getvalue()
    assert line.startswith("\r300/1,000 texts (30.0%)") and "texts/s" in line and "tokens/s" in line and "ETA" in line
    log = io.StringIO()
    p = corpus.Progress(1000, 0, log, False, log_every=10)
    p.update(10, 100)
    assert log.getvalue() == ""  # not yet: one line every 10 s off a terminal
    p.last -= 11
    p.update(10, 100)
    assert log.getvalue().startswith("minibert: 20/1,000 texts (2.0%)") and log.getvalue().endswith("\n")


def interrupt_after(n_texts):  # a progress that stops the run (as Ctrl-C would) after n_texts
    class Stop(corpus.Progress):
        def update(self, texts, tokens):
            super().update(texts, tokens)
            if self.texts >= n_texts:
                raise KeyboardInterrupt

    return lambda total, done: Stop(total, done, None, False)


def test_resume_recomputes_nothing_finished(model, txt, tmp_path):
    path, texts = txt
    out, ref = tmp_path / "emb", tmp_path / "ref"
    corpus.embed(model, path, ref, shard_size=100)
    with pytest.raises(KeyboardInterrupt):
        corpus.embed(model, path, out, shard_size=100, progress=interrupt_after(350))
    m = corpus.read_manifest(out)
    assert not m["complete"] and len(m["shards"]) == 3  # 300 rows kept; the shard being made is not listed
    encoded = []

    class Counting(corpus.Progress):
        def update(self, texts, tokens):
            encoded.append(texts)
            super().update(texts, tokens)

    logs = []
    corpus.embed(model, path, out, shard_size=100, progress=lambda t, d: Counting(t, d, None, False), log=logs.append)
    assert sum(encoded) == 700 and any("resuming after row 300" in line for line in logs)
    assert file_hashes(out) == file_hashes(ref)
    # a finished directory: nothing to do
    encoded.clear()
    corpus.embed(model, path, out, shard_size=100, progress=lambda t, d: Counting(t, d, None, False))
    assert encoded == [] and file_hashes(out) == file_hashes(ref)


def test_sigkill_at_random_moments_gives_the_same_bytes(tiny, tmp_path):
    texts = texts_of(8000, seed=11)
    src = tmp_path / "docs.txt"
    src.write_text("\n".join(texts) + "\n")
    ref, out = tmp_path / "ref", tmp_path / "out"
    cmd = [sys.executable, "-m", "minibert", "embed", "-q", "-m", str(tiny), "--input", str(src), "--shard-size", "400"]
    subprocess.run([*cmd, "--output", str(ref)], check=True, timeout=600)

    def shards_done():
        try:
            return len(json.loads((out / "manifest.json").read_text())["shards"])
        except (OSError, ValueError, KeyError):  # not there yet (or, never, half-written)
            return 0

    rng = random.Random(2)
    for kill in range(4):  # killed while shards are being computed and written, at random moments
        before = shards_done()
        p = subprocess.Popen([*cmd, "--output", str(out)])
        deadline = time.monotonic() + 300
        while shards_done() < before + 1 + kill % 2 and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 0.05))
        p.send_signal(signal.SIGKILL)
        assert p.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    assert 0 < shards_done() < 20
    subprocess.run([*cmd, "--output", str(out)], check=True, timeout=600)
    assert file_hashes(out) == file_hashes(ref)
    np.testing.assert_array_equal(corpus.open_corpus(out).embeddings(), minibert.load(tiny).encode(texts))


def test_a_changed_input_model_or_option_is_refused(model, tiny, txt, tmp_path):
    path, texts = txt
    out = tmp_path / "emb"
    with pytest.raises(KeyboardInterrupt):
        corpus.embed(model, path, out, shard_size=100, progress=interrupt_after(250))
    with pytest.raises(corpus.CorpusError, match="options.shard_size 100 -> 200"):
        corpus.embed(model, path, out, shard_size=200)
    with pytest.raises(corpus.CorpusError, match="options.normalize_embeddings False -> True"):
        corpus.embed(model, path, out, shard_size=100, normalize_embeddings=True)
    with pytest.raises(corpus.CorpusError, match="options.precision 'float32' -> 'int8'"):
        corpus.embed(model, path, out, shard_size=100, precision="int8")
    other = minibert.load(write_model(tmp_path / "other", tiny_spec(seed=8)))
    with pytest.raises(corpus.CorpusError, match=r"model.fingerprint .*model.weights_sha256"):
        corpus.embed(other, path, out, shard_size=100)
    path.write_text(path.read_text() + "one more line\n")
    with pytest.raises(corpus.CorpusError, match=r"input.sha256 .*input.size .*--overwrite"):
        corpus.embed(model, path, out, shard_size=100)
    m = corpus.embed(model, path, out, shard_size=100, overwrite=True)
    assert m["rows"] == 1001
    np.testing.assert_array_equal(corpus.open_corpus(out).embeddings(), model.encode([*texts, "one more line"]))


def test_corrupt_or_truncated_shards(model, txt, tmp_path):
    path, texts = txt
    out = tmp_path / "emb"
    corpus.embed(model, path, out, shard_size=300)
    ref = file_hashes(out)
    shard = out / "shard-00001.npy"
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0x40  # one bit of one embedding
    shard.write_bytes(bytes(data))
    with pytest.raises(corpus.CorpusError, match="shard-00001.npy does not match its checksum"):
        corpus.open_corpus(out).search(model.encode(["x"]), k=3)
    p = run("search", "--corpus", out, "x")
    assert p.returncode == 1 and "shard-00001.npy does not match its checksum" in p.stderr
    logs = []
    corpus.embed(model, path, out, shard_size=300, log=logs.append)  # repairs from that shard on
    assert any("recomputing from row 300" in line for line in logs) and file_hashes(out) == ref
    shard.write_bytes(shard.read_bytes()[:1000])  # truncated
    with pytest.raises(corpus.CorpusError, match="holds 1000 bytes, the manifest says"):
        corpus.open_corpus(out).embeddings()
    (out / "shard-00002.npy").unlink()
    corpus.embed(model, path, out, shard_size=300)
    assert file_hashes(out) == ref
    (out / "manifest.json").write_text("{not json")
    with pytest.raises(corpus.CorpusError, match="manifest.json is not readable JSON"):
        corpus.open_corpus(out)


def test_a_manifest_from_another_model_is_refused_by_search(tiny, txt, tmp_path):
    path, _ = txt
    out = tmp_path / "emb"
    assert run("embed", "-q", "-m", tiny, "--input", path, "--output", f"{out}/").returncode == 0
    other = write_model(tmp_path / "other", tiny_spec(seed=9))
    p = run("search", "--corpus", out, "-m", other, "history")
    assert p.returncode == 1 and "a different model" in p.stderr, p.stderr
    p = run("search", "--corpus", out, "history", "-k", "2")  # the manifest's own model by default
    assert p.returncode == 0 and p.stdout.count("row ") == 2, p.stderr


def test_bad_inputs_are_named_before_any_work(model, tmp_path):
    out = tmp_path / "emb"
    cases = [
        ("a.jsonl", '{"text": "ok"}\n{"txt": "no"}\n', "a.jsonl:2: no field 'text'"),
        ("b.jsonl", '{"text": "ok"}\n{"text": 5}\n', "b.jsonl:2: field 'text' is int, not a string"),
        ("c.jsonl", '{"text": "ok"}\n\n{"text": "x"\n', "c.jsonl:3: not valid JSON"),
        ("d.txt", "fine\n\xff\n", None),
        ("e.yaml", "x", "use a .txt, .jsonl, .parquet or .csv"),
    ]
    for name, content, message in cases:
        p = tmp_path / name
        if name == "d.txt":
            p.write_bytes(b"fine\n\xffbad\n")
            message = "d.txt:2: not UTF-8 text"
        else:
            p.write_text(content)
        with pytest.raises(corpus.CorpusError, match=message.replace("(", r"\(").replace(".", r"\.")):
            corpus.embed(model, p, out)
        assert not out.exists() or not list(out.glob("shard-*"))  # nothing written
    ids = tmp_path / "ids.jsonl"
    ids.write_text('{"text": "a", "id": 1}\n{"text": "b"}\n')
    with pytest.raises(corpus.CorpusError, match="ids.jsonl:2: no id field 'id'"):
        corpus.embed(model, ids, out, id_field="id")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["a", None, "c"]}), tmp_path / "n.parquet")
    with pytest.raises(corpus.CorpusError, match="n.parquet: row 2: column 'body' is empty"):
        corpus.embed(model, tmp_path / "n.parquet", out, field="body")
    with pytest.raises(corpus.CorpusError, match=r"no column 'text' \(it has 'body'\)"):
        corpus.embed(model, tmp_path / "n.parquet", out)
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(corpus.CorpusError, match="not a readable Parquet file"):
        corpus.embed(model, tmp_path / "broken.parquet", out)


def test_output_directory_problems(model, txt, tmp_path):
    path, _ = txt
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(corpus.CorpusError, match="exists and is not a directory"):
        corpus.embed(model, path, afile)
    with pytest.raises(corpus.CorpusError, match="cannot create the directory"):
        corpus.embed(model, path, afile / "sub")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.md").write_text("mine")
    with pytest.raises(corpus.CorpusError, match="is not empty .*notes.md.* holds no minibert corpus"):
        corpus.embed(model, path, busy)
    assert (busy / "notes.md").read_text() == "mine"
    locked = tmp_path / "locked"
    locked.mkdir()
    os.chmod(locked, 0o500)
    try:
        if os.geteuid() == 0:  # root writes anywhere: make the directory unwritable another way
            p = run("embed", "-q", "-m", model.path, "--input", path, "--output", "/proc/minibert-test/")
        else:
            p = run("embed", "-q", "-m", model.path, "--input", path, "--output", f"{locked}/")
        assert p.returncode == 1 and ("not writable" in p.stderr or "cannot create" in p.stderr), p.stderr
    finally:
        os.chmod(locked, 0o700)


@pytest.mark.parametrize("precision", ["float16", "int8", "uint8", "binary", "ubinary"])
def test_output_precisions(model, txt, tmp_path, precision):
    path, texts = txt
    out = tmp_path / precision
    m = corpus.embed(model, path, out, shard_size=400, precision=precision)
    got = corpus.open_corpus(out).embeddings()
    full = model.encode(texts)
    if precision == "float16":
        np.testing.assert_array_equal(got, full.astype(np.float16))
    elif precision.endswith("int8"):
        ranges = np.asarray(m["embedding"]["ranges"], dtype=np.float32)
        np.testing.assert_array_equal(ranges, util._quantization_ranges(full[:400], precision, None))
        assert m["embedding"]["ranges_from"] == "the first 400 rows"
        np.testing.assert_array_equal(got, util.quantize_embeddings(full, precision, ranges=ranges))
    else:
        np.testing.assert_array_equal(got, util.quantize_embeddings(full, precision))
    # search finds a text's own row first
    c = corpus.open_corpus(out)
    hits = c.search(full[[5, 777]], k=3)
    assert [h[0][1] for h in hits] == [5, 777] or precision.endswith("binary")
    if precision.endswith("binary"):
        assert all(h[0][0] == 32 for h in hits)  # every bit in common with itself


def test_calibration_file_sets_the_int8_ranges(model, txt, tmp_path):
    path, texts = txt
    cal = tmp_path / "cal.txt"
    cal.write_text("\n".join(texts_of(64, seed=99)) + "\n")
    m = corpus.embed(model, path, tmp_path / "e", precision="int8", calibration=cal)
    want = util._quantization_ranges(model.encode(texts_of(64, seed=99)), "int8", None)
    np.testing.assert_array_equal(np.asarray(m["embedding"]["ranges"], np.float32), want)
    assert m["options"]["calibration"]["rows"] == 64


def test_cli_corpus_round_trip(tiny, txt, tmp_path):
    path, texts = txt
    out = tmp_path / "emb"
    p = run("embed", "-m", tiny, "--input", path, "--output", f"{out}/", "--shard-size", "256", "--log-every", "0.001")
    assert p.returncode == 0, p.stderr
    assert "texts/s" in p.stderr and "tokens/s" in p.stderr
    assert "wrote 1,000 x 32 float32 embeddings in 4 shards" in p.stderr
    p = run("embed", "-m", tiny, "--input", path, "--output", out, "--shard-size", "256")
    assert p.returncode == 0 and "already complete" in p.stderr
    p = run("embed", "-m", tiny, "--input", path, "--output", out, "--shard-size", "100")
    assert p.returncode == 1 and "options.shard_size 256 -> 100" in p.stderr and "--overwrite" in p.stderr
    i = next(i for i in range(40, 1000) if len(texts[i]) > 20 and texts.count(texts[i]) == 1)
    p = run("search", "--corpus", out, texts[i], "-k", "1")
    assert p.returncode == 0 and f"row {i} " in p.stdout and texts[i] in p.stdout, p.stdout + p.stderr
    p = run("embed", "-m", tiny, "--output", f"{out}/", "some text")
    assert p.returncode == 1 and "from --input FILE" in p.stderr


def test_missing_pyarrow_is_a_clear_error(model, tmp_path):
    code = (
        "import sys; sys.modules['pyarrow'] = None\n"
        "import minibert\nfrom minibert import corpus\n"
        f"m = minibert.load({str(model.path)!r})\n"
        f"corpus.embed(m, {str(tmp_path / 'x.txt')!r}, {str(tmp_path / 'o')!r})\n"
        "print(sorted(p.name for p in (__import__('pathlib').Path(" + repr(str(tmp_path / "o")) + ")).iterdir()))\n"
        "for args in [('x.parquet', {}), ('x.txt', {'parquet': True})]:\n"
        "    try:\n"
        f"        corpus.embed(m, {str(tmp_path)!r} + '/' + args[0], {str(tmp_path / 'p')!r}, **args[1])\n"
        "    except corpus.CorpusError as e:\n        print(e)\n"
    )
    (tmp_path / "x.txt").write_text("a\nb\n")
    (tmp_path / "x.parquet").write_bytes(b"")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert "'shard-00000.npy'" in lines[0] and "parquet" not in lines[0]  # .npy shards need no pyarrow
    assert all("needs pyarrow: pip install 'minibert-numba[corpus]'" in line for line in lines[1:3]), lines


def test_memory_is_bounded_by_the_shard_not_the_corpus(tiny, tmp_path):
    """Peak RSS of a 10x larger corpus grows by far less than its embeddings and texts would take."""

    def peak_rss(n):
        src = tmp_path / f"{n}.txt"
        src.write_text("\n".join(texts_of(n, seed=n)) + "\n")
        code = (
            "import resource, sys\nfrom minibert.cli import main\n"
            f"rc = main(['embed', '-q', '-m', {str(tiny)!r}, '--input', {str(src)!r}, '--output', "
            f"{str(tmp_path / f'o{n}')!r} + '/', '--shard-size', '2000', '--batch-size', '64'])\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)\nsys.exit(rc)\n"
        )
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
        assert p.returncode == 0, p.stderr
        return int(p.stdout.split()[-1])

    small, large = peak_rss(10_000), peak_rss(100_000)
    # 90,000 more texts of ~60 bytes and their 32-float embeddings: ~17 MiB if held; a float32 row of
    # MiniLM's 384 would be 140 MiB more. The bound allows the allocator's noise, not the corpus.
    assert large - small < 12, (small, large)


def test_a_hand_edited_manifest_is_a_clear_error(model, txt, tmp_path):
    path, _ = txt
    out = tmp_path / "emb"
    corpus.embed(model, path, out, shard_size=400)
    good = json.loads((out / "manifest.json").read_text())
    edits = [
        (lambda m: m["shards"][1]["npy"].update(file="../../etc/passwd"), r"shards\[1\]\.npy\.file must be a file"),
        (lambda m: m["shards"][0].update(rows=[0, "400"]), r"shards\[0\]\.rows must be \[0, a larger"),
        (lambda m: m["shards"].insert(0, m["shards"][1]), r"shards\[0\]\.rows must be \[0"),
        (lambda m: m.update(shards="all of them"), "shards must be a list"),
        (lambda m: m["embedding"].update(dim=-3), "embedding.dim must be a positive whole number"),
        (lambda m: m["options"].update(precision="int4"), "options.precision must be one of"),
        (lambda m: m.pop("rows"), "the manifest has no 'rows' entry"),
    ]
    for edit, message in edits:
        m = json.loads(json.dumps(good))
        edit(m)
        (out / "manifest.json").write_text(json.dumps(m))
        with pytest.raises(corpus.CorpusError, match=message):
            corpus.open_corpus(out)
        with pytest.raises(corpus.CorpusError, match=message):
            corpus.embed(model, path, out, shard_size=400)


def test_a_failed_write_keeps_the_finished_shards(model, txt, tmp_path, monkeypatch):
    path, texts = txt
    out = tmp_path / "emb"
    real_save, calls = np.save, []

    def full_disk(f, arr, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real_save(f, arr, **kw)

    monkeypatch.setattr(np, "save", full_disk)
    with pytest.raises(corpus.CorpusError, match=r"cannot write .*shard-00002.npy \(No space left on device\)"):
        corpus.embed(model, path, out, shard_size=300)
    assert len(corpus.read_manifest(out)["shards"]) == 2 and not list(out.glob(".*.partial"))
    monkeypatch.setattr(np, "save", real_save)
    corpus.embed(model, path, out, shard_size=300)
    np.testing.assert_array_equal(corpus.open_corpus(out).embeddings(), model.encode(texts))


def test_two_runs_on_one_directory_and_an_empty_input(model, txt, tmp_path):
    path, _ = txt
    out = tmp_path / "emb"
    out.mkdir()
    held = corpus._lock(out)  # as a run in progress holds it
    try:
        with pytest.raises(corpus.CorpusError, match="another minibert embed is writing this directory"):
            corpus.embed(model, path, out)
    finally:
        os.close(held)
    corpus.embed(model, path, out, shard_size=500)  # free again
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    m = corpus.embed(model, empty, tmp_path / "none")
    c = corpus.open_corpus(tmp_path / "none")
    assert m["complete"] and m["rows"] == 0 and c.embeddings().shape == (0, 32)
    assert c.search(model.encode(["x"]), k=3) == [[]]
