"""The Hugging Face side of every comparison: transformers and sentence-transformers on torch.

Only the parity suite and the fixture script import this (torch is never a minibert dependency).
Each text runs on its own (batch of one, no padding) for hidden states, so the reference itself
has no padding effects; sentence embeddings go through sentence-transformers' own ``encode``.
"""

import json
import warnings
from pathlib import Path

import numpy as np

TEXTS_FILE = Path(__file__).resolve().parent / "texts.json"


def default_texts():  # -> list[str]: tokenization edges, then lengths from 1 to 700+ words
    data = json.loads(TEXTS_FILE.read_text(encoding="utf-8"))
    return data["edges"] + data["lengths"]


def edge_texts():  # -> list[str]
    return json.loads(TEXTS_FILE.read_text(encoding="utf-8"))["edges"]


def _torch_dtype(dtype):
    import torch

    return {"float32": torch.float32, "float64": torch.float64}[dtype]


def load_sentence_transformer(model_dir, dtype="float32"):
    """sentence-transformers on the CPU with weights upcast to ``dtype`` (an fp16 checkpoint too:
    transformers 5 would otherwise keep it in fp16)."""
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(max(1, torch.get_num_threads()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = SentenceTransformer(str(model_dir), device="cpu", model_kwargs={"dtype": _torch_dtype(dtype)})
    return model.to(_torch_dtype(dtype)).eval()


def st_token_ids(st_model, texts):  # -> list of [n_i] int64: exactly what sentence-transformers feeds the model
    prepare = getattr(st_model, "preprocess", None) or st_model.tokenize  # `tokenize` before v6
    out = []
    for t in texts:
        features = prepare([t])
        ids, mask = features["input_ids"][0].numpy(), features["attention_mask"][0].numpy()
        out.append(ids[mask.astype(bool)].astype(np.int64))
    return out


def st_embeddings(st_model, texts, batch_size=32):  # -> [n, dim] in the model's dtype
    import torch

    with torch.inference_mode():
        emb = st_model.encode(
            list(texts), batch_size=batch_size, convert_to_numpy=False, convert_to_tensor=True, show_progress_bar=False
        )
    return emb.cpu().numpy()


def hf_hidden_states(st_model, ids_list):  # list of [n_i] -> list of [L + 1, n_i, D], transformers' AutoModel
    import torch

    auto_model = st_model[0].model  # the transformers model inside sentence-transformers' Transformer module
    out = []
    with torch.inference_mode():
        for ids in ids_list:
            t = torch.as_tensor(ids, dtype=torch.long)[None]
            res = auto_model(input_ids=t, attention_mask=torch.ones_like(t), output_hidden_states=True)
            out.append(torch.stack(res.hidden_states)[:, 0].cpu().numpy())
    return out
