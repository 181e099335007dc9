"""Exact-architecture stand-ins of the target models, built from a fixed seed with NumPy only.

No real DistilBERT or fp16 BERT weights are reachable from these machines, so we build models
with the same architecture, tensor names, dtypes on disk and sentence-transformers files, and
with realistic weight scales: default init (std 0.02) gives near-uniform attention and tiny
activations, which would hide bugs (a wrong softmax axis or a swapped GELU barely shows). Here:
weights N(0, 0.06), embeddings N(0, 0.5), layer-norm gains 1 + N(0, 0.2), biases N(0, 0.05).

    python -m minibert.parity.standins OUT_DIR [NAME ...]     writes each stand-in to OUT_DIR/NAME
"""

import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np

TOKENIZER_DIR = Path(__file__).resolve().parent / "tokenizer"  # the bert-base-uncased vocabulary (see its NOTICE)

# name -> what it stands in for. `tokenizer`: "json" ships tokenizer.json (with MiniLM's baked-in
# padding and truncation, a trap to disable), "vocab" ships only vocab.txt + tokenizer_config.json.
STANDINS = {
    "distilbert-mean": dict(  # msmarco-distilbert-base-v4 (and dot-v5 but for the score)
        arch="distilbert",
        dim=768,
        layers=6,
        heads=12,
        ffn=3072,
        pooling="mean",
        similarity="cosine",
        tokenizer="json",
        weights_dtype="F32",
        do_lower_case=False,
        max_seq_length=512,
        seed=1,
    ),
    "distilbert-cls": dict(  # msmarco-distilbert-base-tas-b
        arch="distilbert",
        dim=768,
        layers=6,
        heads=12,
        ffn=3072,
        pooling="cls",
        similarity="dot",
        tokenizer="vocab",
        weights_dtype="F32",
        do_lower_case=False,
        max_seq_length=512,
        seed=2,
    ),
    "bge-micro": dict(  # TaylorAI/bge-micro-v2: BERT 3 x 384, fp16 on disk though config says float32
        arch="bert",
        dim=384,
        layers=3,
        heads=12,
        ffn=1536,
        pooling="mean",
        similarity="cosine",
        tokenizer="json",
        weights_dtype="F16",
        do_lower_case=True,
        max_seq_length=512,
        seed=3,
    ),
}
VOCAB_SIZE, MAX_POSITIONS = 30522, 512


def standin_tensors(spec):  # dict -> {name: float32 array}, in the order transformers saves them
    rng = np.random.default_rng(spec["seed"])
    D, F = spec["dim"], spec["ffn"]
    normal = lambda shape, std: rng.standard_normal(shape, dtype=np.float32) * np.float32(std)
    gain = lambda: 1 + normal((D,), 0.2)
    t = {
        "embeddings.word_embeddings.weight": normal((VOCAB_SIZE, D), 0.5),
        "embeddings.position_embeddings.weight": normal((MAX_POSITIONS, D), 0.5),
    }
    if spec["arch"] == "bert":
        t["embeddings.token_type_embeddings.weight"] = normal((2, D), 0.5)
        names = dict(
            prefix="encoder.layer.{i}.",
            q="attention.self.query",
            k="attention.self.key",
            v="attention.self.value",
            o="attention.output.dense",
            ln1="attention.output.LayerNorm",
            f1="intermediate.dense",
            f2="output.dense",
            ln2="output.LayerNorm",
        )
    else:
        names = dict(
            prefix="transformer.layer.{i}.",
            q="attention.q_lin",
            k="attention.k_lin",
            v="attention.v_lin",
            o="attention.out_lin",
            ln1="sa_layer_norm",
            f1="ffn.lin1",
            f2="ffn.lin2",
            ln2="output_layer_norm",
        )
    t["embeddings.LayerNorm.weight"], t["embeddings.LayerNorm.bias"] = gain(), normal((D,), 0.1)
    for i in range(spec["layers"]):
        p = names["prefix"].format(i=i)
        for key, (rows, cols) in (
            ("q", (D, D)),
            ("k", (D, D)),
            ("v", (D, D)),
            ("o", (D, D)),
            ("f1", (F, D)),
            ("f2", (D, F)),
        ):
            t[p + names[key] + ".weight"] = normal((rows, cols), 0.06)
            t[p + names[key] + ".bias"] = normal((rows,), 0.05)
        for key in ("ln1", "ln2"):
            t[p + names[key] + ".weight"], t[p + names[key] + ".bias"] = gain(), normal((D,), 0.1)
    if spec["arch"] == "bert":  # BertModel saves a pooler, which a sentence encoder must ignore
        t["pooler.dense.weight"], t["pooler.dense.bias"] = normal((D, D), 0.06), normal((D,), 0.05)
    return t


def fingerprint(tensors):  # a short hash of the weights: fixtures record it to catch an RNG change
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(np.ascontiguousarray(tensors[name]).tobytes())
    return h.hexdigest()[:16]


def model_config(spec):  # dict -> config.json contents, as transformers writes them
    if spec["arch"] == "bert":
        return {
            "architectures": ["BertModel"],
            "model_type": "bert",
            "vocab_size": VOCAB_SIZE,
            "hidden_size": spec["dim"],
            "num_hidden_layers": spec["layers"],
            "num_attention_heads": spec["heads"],
            "intermediate_size": spec["ffn"],
            "hidden_act": "gelu",
            "hidden_dropout_prob": 0.1,
            "attention_probs_dropout_prob": 0.1,
            "max_position_embeddings": MAX_POSITIONS,
            "type_vocab_size": 2,
            "initializer_range": 0.02,
            "layer_norm_eps": 1e-12,
            "pad_token_id": 0,
            "position_embedding_type": "absolute",
            "torch_dtype": "float32",
        }
    return {
        "architectures": ["DistilBertModel"],
        "model_type": "distilbert",
        "vocab_size": VOCAB_SIZE,
        "dim": spec["dim"],
        "n_layers": spec["layers"],
        "n_heads": spec["heads"],
        "hidden_dim": spec["ffn"],
        "activation": "gelu",
        "dropout": 0.1,
        "attention_dropout": 0.1,
        "max_position_embeddings": MAX_POSITIONS,
        "sinusoidal_pos_embds": False,
        "initializer_range": 0.02,
        "pad_token_id": 0,
        "qa_dropout": 0.1,
        "seq_classif_dropout": 0.2,
        "tie_weights_": True,
        "torch_dtype": "float32",
    }


def write_standin(name, out_dir, spec=None):  # -> Path of the model directory
    from safetensors.numpy import save_file

    spec = spec or STANDINS[name]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = standin_tensors(spec)
    stored = {k: v.astype(np.float16) if spec["weights_dtype"] == "F16" else v for k, v in tensors.items()}
    save_file(stored, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(model_config(spec), indent=2))
    if spec["tokenizer"] == "json":
        shutil.copy(TOKENIZER_DIR / "tokenizer.json", out)
        shutil.copy(TOKENIZER_DIR / "special_tokens_map.json", out)
    shutil.copy(TOKENIZER_DIR / "vocab.txt", out)
    tok_cfg = json.loads((TOKENIZER_DIR / "tokenizer_config.json").read_text())
    tok_cfg["tokenizer_class"] = "DistilBertTokenizer" if spec["arch"] == "distilbert" else "BertTokenizer"
    (out / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2))
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    (out / "modules.json").write_text(json.dumps(modules, indent=2))
    (out / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": spec["max_seq_length"], "do_lower_case": spec["do_lower_case"]})
    )
    (out / "1_Pooling").mkdir(exist_ok=True)
    pooling = {"word_embedding_dimension": spec["dim"]}
    for key, mode in (
        ("pooling_mode_cls_token", "cls"),
        ("pooling_mode_mean_tokens", "mean"),
        ("pooling_mode_max_tokens", "max"),
        ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len_tokens"),
    ):
        pooling[key] = spec["pooling"] == mode
    (out / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2))
    (out / "config_sentence_transformers.json").write_text(
        json.dumps({"similarity_fn_name": spec["similarity"], "prompts": {}, "default_prompt_name": None})
    )
    (out / "STANDIN.json").write_text(json.dumps({"name": name, "fingerprint": fingerprint(tensors), **spec}, indent=2))
    return out


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(f"usage: python -m minibert.parity.standins OUT_DIR [{' '.join(STANDINS)}]")
    for n in sys.argv[2:] or list(STANDINS):
        if n not in STANDINS:
            sys.exit(f"unknown stand-in {n!r}; known: {', '.join(STANDINS)}")
        print(write_standin(n, Path(sys.argv[1]) / n))
