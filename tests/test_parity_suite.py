"""The parity suite itself: it passes on minibert as it is, and catches planted bugs at the right place.

Needs torch, transformers and sentence-transformers (the parity extra); CI installs them.
"""

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

import minibert

pytest.importorskip("sentence_transformers", reason="the parity suite needs the [parity] extra")
from minibert.parity import hf  # noqa: E402
from minibert.parity.compare import collect_reference, compare  # noqa: E402

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent
TEXTS = hf.edge_texts()[:12] + hf.default_texts()[-8:-4]  # edges plus a few long ones (up to ~500 tokens)


@pytest.fixture(scope="module")
def bge(standin_dirs):
    d = standin_dirs["bge-micro"]
    return d, collect_reference(d, TEXTS, "float32")


def test_clean_model_passes(bge):
    d, ref = bge
    r = compare(minibert.load(d), TEXTS, ref)
    assert r["pass"], r["failures"]
    assert r["tokens"]["mismatches"] == 0
    assert len(r["layers"]) == 4 and all(row["pass"] for row in r["layers"])
    assert r["embedding"]["min_cosine"] > 1 - 1e-6
    assert 0 < r["oracle"]["torch_max_abs"] < 1e-4 and 0 < r["oracle"]["minibert_max_abs"] < 1e-4


def broken(d, **config_changes):
    m = minibert.load(d)
    m.config = dataclasses.replace(m.config, **config_changes)
    return m


def test_tanh_gelu_is_caught_at_block_1(bge):
    d, ref = bge
    r = compare(broken(d, activation="gelu_tanh"), TEXTS, ref)
    assert not r["pass"] and r["first_failing_layer"] == 1
    assert r["layers"][0]["pass"]


def test_wrong_eps_is_caught_at_the_embeddings(bge):
    d, ref = bge
    r = compare(broken(d, layer_norm_eps=1e-5), TEXTS, ref)
    assert not r["pass"] and r["first_failing_layer"] == 0


def test_padding_in_the_mean_is_caught_at_the_embedding(bge):
    d, ref = bge
    m = minibert.load(d)
    real_pool = m.pool

    def pool_counting_padding(h, offsets, p, normalize_embeddings=False):  # sum / longest length in the batch
        lengths = np.diff(offsets)
        return real_pool(h, offsets, p, normalize_embeddings) * (lengths / lengths.max())[:, None].astype(h.dtype)

    m.pool = pool_counting_padding
    r = compare(m, TEXTS, ref)
    assert not r["pass"] and r["first_failing_layer"] is None  # every layer is right ...
    assert not r["embedding"]["pass"]  # ... the pooled embedding is not
    assert any(f.startswith("embedding") for f in r["failures"])


def test_wrong_token_id_is_caught_in_tokens(bge):
    d, ref = bge
    m = minibert.load(d)
    real_encode = m.tokenizer.encode

    def encode_with_a_wrong_id(texts):
        ids = real_encode(texts)
        if len(ids) > 2 and len(ids[2]) > 2:
            ids[2] = ids[2].copy()
            ids[2][1] += 1
        return ids

    m.tokenizer.encode = encode_with_a_wrong_id
    r = compare(m, TEXTS, ref)
    assert not r["pass"] and r["tokens"]["mismatches"] == 1
    assert r["tokens"]["first_mismatch"]["text"] == 2 and r["tokens"]["first_mismatch"]["position"] == 1
    assert r["failures"][0].startswith("tokens")


def test_cli_json_and_exit_code(bge, tmp_path):
    d, _ = bge
    texts = tmp_path / "texts.json"
    texts.write_text(json.dumps(TEXTS[:6]))
    out = tmp_path / "report.json"
    p = subprocess.run(
        [sys.executable, "-m", "minibert.parity", str(d), "--texts", str(texts), "--json", str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "verdict     PASS" in p.stdout and "block 3" in p.stdout
    r = json.loads(out.read_text())
    for key in ("model", "dtype", "tokens", "layers", "embedding", "oracle", "pass"):
        assert key in r
    assert r["pass"] is True and r["tokens"]["mismatches"] == 0
    assert set(r["layers"][0]) >= {"layer", "max_abs", "max_rel"}
    assert set(r["embedding"]) >= {"max_abs", "min_cosine"} and set(r["oracle"]) >= {
        "minibert_max_abs",
        "torch_max_abs",
    }
    # txt input, float64
    txt = tmp_path / "texts.txt"
    txt.write_text("first text\n\nthird, after an empty one\n")
    p = subprocess.run(
        [sys.executable, "-m", "minibert.parity", str(d), "--texts", str(txt), "--dtype", "float64"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "3 texts" in p.stdout


def test_cli_bad_arguments(tmp_path):
    p = subprocess.run(
        [sys.executable, "-m", "minibert.parity", str(tmp_path / "missing")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert p.returncode != 0 and "parity:" in p.stderr and "Traceback" not in p.stderr
    bad = tmp_path / "t.json"
    bad.write_text('{"not": "a list"}')
    p = subprocess.run(
        [sys.executable, "-m", "minibert.parity", str(tmp_path), "--texts", str(bad)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert p.returncode != 0 and "list of strings" in p.stderr
