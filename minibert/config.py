"""The encoder's hyper-parameters, read from a transformers ``config.json``."""

from dataclasses import dataclass
from pathlib import Path

from .errors import CheckpointError, UnsupportedModelError, read_json

# config names for the feed-forward activation -> the form minibert computes
_ACTIVATIONS = {
    "gelu": "gelu_erf",  # exact: x * Phi(x); BERT's and DistilBERT's
    "gelu_new": "gelu_tanh",  # the tanh approximation, under its several names
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "relu": "relu",
}


@dataclass(frozen=True)
class EncoderConfig:
    arch: str  # "bert" or "distilbert": decides tensor names and whether token-type embeddings exist
    vocab_size: int  # V, rows of the word-embedding table
    dim: int  # D, hidden size: the width of every token vector between blocks
    n_layers: int  # L, transformer blocks
    n_heads: int  # H, attention heads; each head works in D / H dimensions
    ffn_dim: int  # F, inner width of the feed-forward block (4 D in the BERT family)
    activation: str  # "gelu_erf", "gelu_tanh" or "relu": the feed-forward non-linearity
    layer_norm_eps: float  # added to the variance in every layer norm (1e-12 for BERT and DistilBERT)
    max_positions: int  # P, rows of the position table: no input may be longer than this
    type_vocab_size: int  # rows of the token-type table (BERT: 2, all zeros used); 0 when absent

    @property
    def head_dim(self):  # Dh
        return self.dim // self.n_heads


def _get(cfg, path, *keys, default=None, required=True):
    for key in keys:
        if key in cfg and cfg[key] is not None:
            return cfg[key]
    if required and default is None:
        raise CheckpointError(f"{path}: missing field {' / '.join(repr(k) for k in keys)}")
    return default


def config_from_dict(cfg, path="config.json"):  # dict -> EncoderConfig
    model_type = cfg.get("model_type")
    if model_type not in ("bert", "distilbert"):
        raise UnsupportedModelError(
            f"{path}: model_type {model_type!r} is not supported; minibert runs 'bert' and 'distilbert'"
        )
    if model_type == "bert":
        pos_type = cfg.get("position_embedding_type", "absolute")
        if pos_type != "absolute":
            raise UnsupportedModelError(
                f"{path}: position_embedding_type {pos_type!r} is not supported (only learned 'absolute')"
            )
        act_name = _get(cfg, path, "hidden_act", default="gelu")
        c = EncoderConfig(
            arch="bert",
            vocab_size=int(_get(cfg, path, "vocab_size")),
            dim=int(_get(cfg, path, "hidden_size")),
            n_layers=int(_get(cfg, path, "num_hidden_layers")),
            n_heads=int(_get(cfg, path, "num_attention_heads")),
            ffn_dim=int(_get(cfg, path, "intermediate_size")),
            activation=act_name,
            layer_norm_eps=float(_get(cfg, path, "layer_norm_eps", default=1e-12)),
            max_positions=int(_get(cfg, path, "max_position_embeddings", default=512)),
            type_vocab_size=int(_get(cfg, path, "type_vocab_size", default=2)),
        )
    else:
        if cfg.get("sinusoidal_pos_embds"):
            raise UnsupportedModelError(
                f"{path}: sinusoidal_pos_embds=true (fixed sinusoidal DistilBERT positions) is not supported"
            )
        act_name = _get(cfg, path, "activation", "hidden_act", default="gelu")
        c = EncoderConfig(
            arch="distilbert",
            vocab_size=int(_get(cfg, path, "vocab_size")),
            dim=int(_get(cfg, path, "dim", "hidden_size")),
            n_layers=int(_get(cfg, path, "n_layers", "num_hidden_layers")),
            n_heads=int(_get(cfg, path, "n_heads", "num_attention_heads")),
            ffn_dim=int(_get(cfg, path, "hidden_dim", "intermediate_size")),
            activation=act_name,
            # DistilBERT's config has no eps field: transformers hard-codes LayerNorm(eps=1e-12).
            layer_norm_eps=1e-12,
            max_positions=int(_get(cfg, path, "max_position_embeddings", default=512)),
            type_vocab_size=0,
        )
    if not isinstance(act_name, str) or act_name not in _ACTIVATIONS:
        raise UnsupportedModelError(
            f"{path}: activation {act_name!r} is not supported; known: {', '.join(sorted(_ACTIVATIONS))}"
        )
    c = EncoderConfig(**{**c.__dict__, "activation": _ACTIVATIONS[act_name]})
    for field in ("vocab_size", "dim", "n_layers", "n_heads", "ffn_dim", "max_positions"):
        if getattr(c, field) <= 0:
            raise CheckpointError(f"{path}: {field} must be positive, got {getattr(c, field)}")
    if c.dim % c.n_heads:
        raise CheckpointError(f"{path}: hidden size {c.dim} is not divisible by {c.n_heads} attention heads")
    return c


def load_config(path):  # Path to config.json -> EncoderConfig
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: not found (a transformers checkpoint needs config.json)")
    return config_from_dict(read_json(path), path)
