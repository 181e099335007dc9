"""The encoder's hyper-parameters, read from a transformers ``config.json``."""

from dataclasses import dataclass
from pathlib import Path

from .errors import CheckpointError, UnsupportedModelError, integer, number, read_json

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


# Sanity bounds: far beyond any BERT-family model, and small enough that no shape computed from
# them overflows or asks for more memory than a machine has before the checkpoint is even read.
_LIMITS = {"vocab_size": 10_000_000, "dim": 65_536, "n_layers": 1_000, "n_heads": 65_536, "ffn_dim": 1_048_576,
           "max_positions": 1_048_576, "type_vocab_size": 1_000}  # fmt: skip


def _get(cfg, path, *keys, default=None, required=True):  # the first of keys that is set -> (value, its name)
    for key in keys:
        if key in cfg and cfg[key] is not None:
            return cfg[key], key
    if required and default is None:
        raise CheckpointError(f"{path}: missing field {' / '.join(repr(k) for k in keys)}")
    return default, keys[0]


def _int(cfg, path, field, *keys, default=None):
    value, key = _get(cfg, path, *keys, default=default)
    return integer(value, f"{path}: field {key!r}", 0 if field == "type_vocab_size" else 1, _LIMITS[field])


def config_from_dict(cfg, path="config.json"):  # dict -> EncoderConfig
    model_type = cfg.get("model_type")
    if model_type not in ("bert", "distilbert"):
        raise UnsupportedModelError(
            f"{path}: model_type {model_type!r} is not supported; minibert runs 'bert' and 'distilbert'"[:300]
        )
    if model_type == "bert":
        pos_type = cfg.get("position_embedding_type", "absolute")
        if pos_type != "absolute":
            raise UnsupportedModelError(
                f"{path}: position_embedding_type {pos_type!r} is not supported (only learned 'absolute')"[:300]
            )
        act_name, _ = _get(cfg, path, "hidden_act", default="gelu")
        eps, _ = _get(cfg, path, "layer_norm_eps", default=1e-12)
        c = EncoderConfig(
            arch="bert",
            vocab_size=_int(cfg, path, "vocab_size", "vocab_size"),
            dim=_int(cfg, path, "dim", "hidden_size"),
            n_layers=_int(cfg, path, "n_layers", "num_hidden_layers"),
            n_heads=_int(cfg, path, "n_heads", "num_attention_heads"),
            ffn_dim=_int(cfg, path, "ffn_dim", "intermediate_size"),
            activation=act_name,
            layer_norm_eps=number(eps, f"{path}: field 'layer_norm_eps'", 0.0, 1.0),
            max_positions=_int(cfg, path, "max_positions", "max_position_embeddings", default=512),
            type_vocab_size=_int(cfg, path, "type_vocab_size", "type_vocab_size", default=2),
        )
        if c.type_vocab_size < 1:
            raise CheckpointError(f"{path}: field 'type_vocab_size' must be at least 1 for BERT (token type 0 is used)")
    else:
        if cfg.get("sinusoidal_pos_embds"):
            raise UnsupportedModelError(
                f"{path}: sinusoidal_pos_embds=true (fixed sinusoidal DistilBERT positions) is not supported"
            )
        act_name, _ = _get(cfg, path, "activation", "hidden_act", default="gelu")
        c = EncoderConfig(
            arch="distilbert",
            vocab_size=_int(cfg, path, "vocab_size", "vocab_size"),
            dim=_int(cfg, path, "dim", "dim", "hidden_size"),
            n_layers=_int(cfg, path, "n_layers", "n_layers", "num_hidden_layers"),
            n_heads=_int(cfg, path, "n_heads", "n_heads", "num_attention_heads"),
            ffn_dim=_int(cfg, path, "ffn_dim", "hidden_dim", "intermediate_size"),
            activation=act_name,
            # DistilBERT's config has no eps field: transformers hard-codes LayerNorm(eps=1e-12).
            layer_norm_eps=1e-12,
            max_positions=_int(cfg, path, "max_positions", "max_position_embeddings", default=512),
            type_vocab_size=0,
        )
    if not isinstance(act_name, str) or act_name not in _ACTIVATIONS:
        raise UnsupportedModelError(
            f"{path}: activation {act_name!r} is not supported; known: {', '.join(sorted(_ACTIVATIONS))}"[:300]
        )
    c = EncoderConfig(**{**c.__dict__, "activation": _ACTIVATIONS[act_name]})
    if c.dim % c.n_heads:
        raise CheckpointError(f"{path}: hidden size {c.dim} is not divisible by {c.n_heads} attention heads")
    return c


def load_config(path):  # Path to config.json -> EncoderConfig
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: not found (a transformers checkpoint needs config.json)")
    return config_from_dict(read_json(path), path)
