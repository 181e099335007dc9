"""The `minibert` command, driven as a user would: in a subprocess."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

import minibert

from helpers import write_model


def run(*args, stdin=None, env=None):
    return subprocess.run(
        [sys.executable, "-m", "minibert", *map(str, args)],
        input=stdin,
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
        timeout=300,
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_model(tmp_path_factory.mktemp("cli") / "tiny")


def test_help_on_every_command():
    for cmd in ([], ["embed"], ["search"], ["info"]):
        p = run(*cmd, "--help")
        assert p.returncode == 0 and "usage: minibert" in p.stdout
    assert "--output" in run("embed", "--help").stdout and "-k" in run("search", "--help").stdout
    p = run()
    assert p.returncode == 2 and "COMMAND" in p.stderr


def test_embed_args_stdout(tiny):
    p = run("embed", "--model", tiny, "hello world", "second text")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert len(lines) == 2 and "'hello world'" in lines[0] and "(32 dims" in lines[0]
    assert "local directory" in p.stderr  # says where the model came from


def test_embed_outputs_match_the_api(tiny, tmp_path):
    texts = ["first line", "", "Café 北京 🍕"]
    want = minibert.load(tiny).encode(texts)
    src = tmp_path / "in.txt"
    src.write_text("\n".join(texts) + "\n", encoding="utf-8")
    out = tmp_path / "out.npy"
    p = run("embed", "-m", tiny, "--input", src, "--output", out)
    assert p.returncode == 0, p.stderr
    np.testing.assert_array_equal(np.load(out), want)
    # stdin, one text per line
    out2 = tmp_path / "out2.npy"
    assert run("embed", "-m", tiny, "-o", out2, stdin="\n".join(texts) + "\n").returncode == 0
    np.testing.assert_array_equal(np.load(out2), want)
    # jsonl in, jsonl out, with a chosen field
    js = tmp_path / "in.jsonl"
    js.write_text("\n".join(json.dumps({"id": i, "body": t}) for i, t in enumerate(texts)) + "\n", encoding="utf-8")
    out3 = tmp_path / "out.jsonl"
    p = run("embed", "-m", tiny, "-i", js, "--field", "body", "-o", out3)
    assert p.returncode == 0, p.stderr
    rows = [json.loads(x) for x in out3.read_text(encoding="utf-8").splitlines()]
    assert [r["text"] for r in rows] == texts
    np.testing.assert_allclose([r["embedding"] for r in rows], want, rtol=1e-6)
    # --normalize
    out4 = tmp_path / "n.npy"
    assert run("embed", "-m", tiny, "--normalize", "-o", out4, "a b c").returncode == 0
    assert abs(np.linalg.norm(np.load(out4)[0]) - 1) < 1e-6


@pytest.mark.parametrize(
    "args,match",
    [
        (["embed", "--model", "{tiny}", "--batch-size", "0", "x"], "--batch-size must be at least 1"),
        (["embed", "--model", "{tiny}", "--output", "{tmp}/out.csv", "x"], "use a .npy or .jsonl"),
        (["embed", "--model", "{tiny}", "--output", "{tmp}/no/such/dir/out.npy", "x"], "does not exist"),
        (["embed", "--model", "{tiny}", "--input", "{tmp}/missing.txt"], "input file .*missing.txt does not exist"),
        (["embed", "--model", "{tiny}", "--input", "{tmp}"], "is a directory"),
        (["embed", "--model", "{tiny}", "--input", "{tmp}/bad.txt"], "not UTF-8"),
        (["embed", "--model", "{tiny}", "--input", "{tmp}/bad.jsonl"], r"bad.jsonl:2: not valid JSON"),
        (
            ["embed", "--model", "{tiny}", "--input", "{tmp}/ok.jsonl", "--field", "nope"],
            r"ok.jsonl:1: no field 'nope'",
        ),
        (["embed", "--model", "{tmp}/nomodel", "x"], "no such directory|not found"),
        (["embed", "--model", "{tiny}", "--dtype", "float16", "x"], "invalid choice"),
        (["embed", "--bogus"], "unrecognized arguments"),
        (["search", "--model", "{tiny}", "--corpus", "{tmp}/ok.jsonl", "-k", "0", "q"], "-k must be at least 1"),
        (["search", "--model", "{tiny}", "q"], "--corpus"),
    ],
)
def test_bad_arguments_one_line_no_traceback(tiny, tmp_path, args, match):
    (tmp_path / "bad.txt").write_bytes(b"ok\n\xff\xfe broken\n")
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\n{oops\n')
    (tmp_path / "ok.jsonl").write_text('{"text": "a"}\n')
    p = run(*[a.format(tiny=tiny, tmp=tmp_path) for a in args])
    assert p.returncode in (1, 2), p.stdout
    assert "Traceback" not in p.stderr
    import re

    assert re.search(match, p.stderr), p.stderr
    errors = [line for line in p.stderr.splitlines() if "error" in line]
    assert len(errors) == 1


def test_debug_shows_traceback(tmp_path):
    p = run("--debug", "embed", "--model", tmp_path / "nomodel", "x")
    assert p.returncode != 0 and "Traceback" in p.stderr


def test_search_and_its_cache(tiny, tmp_path):
    corpus = tmp_path / "docs.txt"
    corpus.write_text("the cat sat on the mat\nstock markets fell today\na kitten sleeps on a rug\n", encoding="utf-8")
    p = run("search", "-m", tiny, "--corpus", corpus, "-k", "2", "a cat on a mat")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0] == "query: a cat on a mat" and len(lines) == 3
    m = minibert.load(tiny)
    scores = m.similarity(m.encode(["a cat on a mat"]), m.encode(corpus.read_text().splitlines()))[0]
    best = corpus.read_text().splitlines()[int(np.argmax(scores))]
    assert lines[1].endswith(best) and f"{scores.max():8.4f}" in lines[1]
    caches = list(tmp_path.glob(".docs.txt.minibert-*.npz"))
    assert len(caches) == 1
    p2 = run("search", "-m", tiny, "--corpus", corpus, "-k", "2", "a cat on a mat")
    assert p2.stdout == p.stdout and "from cache" in p2.stderr
    corpus.write_text("different content now\n", encoding="utf-8")  # new content, new key
    p3 = run("search", "-m", tiny, "--corpus", corpus, "q")
    assert p3.returncode == 0 and "different content now" in p3.stdout
    assert len(list(tmp_path.glob(".docs.txt.minibert-*.npz"))) == 2


def test_info(tiny):
    p = run("info", tiny)
    assert p.returncode == 0, p.stderr
    for field in (
        "architecture",
        "bert: 2 layers x 32 hidden",
        "pooling",
        "mean",
        "score function",
        "cosine",
        "max_seq_length",
        "64",
        "dtype on disk",
        "F32",
        "parameters",
        "files",
        str(tiny),
    ):
        assert field in p.stdout


def test_default_model_embeds_offline(tmp_path):
    # The README's first command: a real embedding with no network, from the installed package.
    p = run("embed", "The weather is lovely today.", env={"HF_HOME": str(tmp_path / "hf")})
    assert p.returncode == 0, p.stderr
    assert "installed Python package" in p.stderr and "(384 dims, norm 1.0000)" in p.stdout


def test_interrupted_run_leaves_no_output(tmp_path, minilm_dir):
    src = tmp_path / "big.txt"
    src.write_text("\n".join(f"sentence number {i} about a fairly ordinary topic" for i in range(40000)))
    out = tmp_path / "out.npy"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "minibert",
            "embed",
            "-m",
            str(minilm_dir),
            "-i",
            str(src),
            "-o",
            str(out),
            "--progress",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        # A shell starts a background job with SIGINT ignored, and a child inherits that (Python then
        # leaves it ignored): give the command the default disposition, as an interactive terminal would.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    seen = ""
    while "Batches" not in seen and proc.poll() is None:  # wait until it is really embedding
        seen += proc.stderr.read(1)
    proc.send_signal(signal.SIGINT)
    # The command exits as soon as its cleanup is done, without waiting for the worker threads'
    # batch (on a busy machine that wait was a minute): the time allowed is for a loaded machine.
    rest = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, rest
    assert "interrupted" in rest
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["big.txt"]  # no partial file either
