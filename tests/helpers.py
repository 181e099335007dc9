"""Small builders shared by the tests: tiny random checkpoints written in safetensors."""

import json
import shutil
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from minibert.parity.standins import TOKENIZER_DIR, model_config, standin_tensors

TINY = dict(
    arch="bert",
    dim=32,
    layers=2,
    heads=4,
    ffn=64,
    pooling="mean",
    similarity="cosine",
    tokenizer="json",
    weights_dtype="F32",
    do_lower_case=False,
    max_seq_length=64,
    seed=7,
)


def tiny_spec(**changes):
    return {**TINY, **changes}


def write_model(out, spec=None, tensors=None, config=None, modules=True, pooling=None, st_config=None, stored=None):
    """A tiny but complete model directory; every piece can be overridden to make it wrong."""
    spec = spec or tiny_spec()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tensors = standin_tensors(spec) if tensors is None else tensors
    if stored is not None:
        tensors = {k: stored(v) for k, v in tensors.items()}
    save_file(tensors, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(config or model_config(spec)))
    for f in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(TOKENIZER_DIR / f, out)
    if modules:
        mods = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        ]
        if modules == "normalize":
            mods.append(
                {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
            )
        elif isinstance(modules, list):
            mods = modules
        (out / "modules.json").write_text(json.dumps(mods))
        (out / "1_Pooling").mkdir(exist_ok=True)
        (out / "1_Pooling" / "config.json").write_text(
            json.dumps(pooling or {"word_embedding_dimension": spec["dim"], "pooling_mode_mean_tokens": True})
        )
        (out / "sentence_bert_config.json").write_text(
            json.dumps({"max_seq_length": spec["max_seq_length"], "do_lower_case": False})
        )
    if st_config is not None:
        (out / "config_sentence_transformers.json").write_text(json.dumps(st_config))
    return out


def rel_err(a, b):  # max over rows of max|a - b| / max|b|
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim == 1:
        a, b = a[None], b[None]
    return float((np.abs(a - b).max(axis=1) / np.abs(b).max(axis=1)).max())
