"""The sentence-transformers recipe around the encoder: which pooling, whether to normalize,
how long an input may be, and which score compares two embeddings.

A sentence-transformers directory lists its modules in ``modules.json``: Transformer (the
encoder; its files live in the module's ``path``), Pooling (``1_Pooling/config.json``) and
optionally Normalize (which has no config: a missing ``2_Normalize`` folder is normal). A directory
without ``modules.json`` is a plain transformers checkpoint, which sentence-transformers embeds
with mean pooling, and so do we.
"""

from dataclasses import dataclass
from pathlib import Path

from minibert.kernels import POOLING_MODES

from .errors import CheckpointError, UnsupportedModelError, read_json

SIMILARITY_FUNCTIONS = ("cosine", "dot", "euclidean", "manhattan")
_LEGACY_POOLING_KEYS = {  # in sentence-transformers' concatenation order
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
_POOLING_OTHER_KEYS = {"word_embedding_dimension", "embedding_dimension", "pooling_mode", "include_prompt"}


@dataclass(frozen=True)
class Pipeline:
    transformer_dir: Path  # where config.json, the weights and the tokenizer are
    max_seq_length: int | None  # tokens per text incl. [CLS]/[SEP]; None: the tokenizer's or the model's limit
    do_lower_case: bool  # sentence-transformers lower-cases text itself when set
    pooling_modes: tuple  # e.g. ("mean",); several modes are concatenated in this order
    normalize: bool  # a Normalize module follows pooling (unit-length embeddings)
    similarity_fn_name: str  # "cosine", "dot", "euclidean" or "manhattan"
    pooling_dim: int | None = None  # the token width 1_Pooling/config.json expects (checked against D)


def _module_kind(type_name):  # "sentence_transformers.models.Pooling" -> "Pooling"
    return (
        type_name.rsplit(".", 1)[-1]
        if isinstance(type_name, str) and type_name.startswith("sentence_transformers.")
        else None
    )


def pooling_modes_from_config(cfg, path):  # dict -> tuple of modes (sentence-transformers' rules)
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    unknown = sorted(k for k in cfg if k not in _LEGACY_POOLING_KEYS and k not in _POOLING_OTHER_KEYS)
    if unknown:
        raise UnsupportedModelError(f"{path}: unknown pooling option(s) {', '.join(map(repr, unknown))}")
    if "pooling_mode" in cfg:
        mode = cfg["pooling_mode"]
        modes = (mode,) if isinstance(mode, str) else tuple(mode) if isinstance(mode, list) else None
        if not modes:
            raise UnsupportedModelError(f"{path}: pooling_mode must be a mode name or a list of them, got {mode!r}")
    else:
        modes = tuple(m for k, m in _LEGACY_POOLING_KEYS.items() if cfg.get(k)) or ("mean",)
    for m in modes:
        if m not in POOLING_MODES:
            raise UnsupportedModelError(f"{path}: unknown pooling mode {m!r}; known: {', '.join(POOLING_MODES)}")
    return modes


def read_pipeline(model_dir):  # Path -> Pipeline
    model_dir = Path(model_dir)
    st_cfg = read_json(model_dir / "config_sentence_transformers.json", required=False) or {}
    sim = st_cfg.get("similarity_fn_name") or "cosine"
    if sim == "dot_product":
        sim = "dot"
    if sim not in SIMILARITY_FUNCTIONS:
        raise UnsupportedModelError(
            f"{model_dir / 'config_sentence_transformers.json'}: unknown similarity_fn_name {sim!r}; "
            f"known: {', '.join(SIMILARITY_FUNCTIONS)}"
        )
    modules = read_json(model_dir / "modules.json", required=False, what="a list")
    if modules is None:  # a plain transformers checkpoint
        return Pipeline(model_dir, None, False, ("mean",), False, sim)
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise CheckpointError(f"{model_dir / 'modules.json'}: expected a list of module objects")
    modules = sorted(modules, key=lambda m: int(m.get("idx", 0)))
    kinds = [_module_kind(m.get("type")) for m in modules]
    for m, kind in zip(modules, kinds):
        if kind not in ("Transformer", "Pooling", "Normalize"):
            raise UnsupportedModelError(
                f"{model_dir / 'modules.json'}: module type {m.get('type')!r} is not supported "
                "(minibert runs Transformer, Pooling and Normalize)"
            )
    if kinds[:2] != ["Transformer", "Pooling"] or kinds[2:] not in ([], ["Normalize"]):
        raise UnsupportedModelError(
            f"{model_dir / 'modules.json'}: module order {kinds} is not supported; "
            "expected Transformer, Pooling[, Normalize]"
        )
    transformer_dir = model_dir / modules[0].get("path", "")
    sbert = read_json(transformer_dir / "sentence_bert_config.json", required=False)
    if sbert is None and transformer_dir != model_dir:
        sbert = read_json(model_dir / "sentence_bert_config.json", required=False)
    sbert = sbert or {}
    pool_path = model_dir / modules[1].get("path", "1_Pooling") / "config.json"
    pool_cfg = read_json(pool_path)
    max_len = sbert.get("max_seq_length")
    if max_len is not None and (not isinstance(max_len, int) or max_len < 2):
        raise CheckpointError(f"sentence_bert_config.json: max_seq_length must be an integer >= 2, got {max_len!r}")
    return Pipeline(
        transformer_dir=transformer_dir,
        max_seq_length=max_len,
        do_lower_case=bool(sbert.get("do_lower_case", False)),
        pooling_modes=pooling_modes_from_config(pool_cfg, pool_path),
        normalize=kinds[-1] == "Normalize",
        similarity_fn_name=sim,
        pooling_dim=pool_cfg.get("embedding_dimension", pool_cfg.get("word_embedding_dimension")),
    )
