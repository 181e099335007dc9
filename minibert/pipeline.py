"""The sentence-transformers recipe around the encoder: which pooling, whether to normalize,
how long an input may be, and which score compares two embeddings.

A sentence-transformers directory lists its modules in ``modules.json``: Transformer (the
encoder; its files live in the module's ``path``), Pooling (``1_Pooling/config.json``) and
optionally Normalize (which has no config: a missing ``2_Normalize`` folder is normal). A directory
without ``modules.json`` is a plain transformers checkpoint, which sentence-transformers embeds
with mean pooling, and so do we.
"""

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath

from minibert.kernels import POOLING_MODES

from .errors import CheckpointError, UnsupportedModelError, boolean, integer, read_json, text

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
    include_prompt: bool = True  # False: a prompt's tokens are left out of pooling (Pooling's include_prompt)
    prompts: dict = field(default_factory=dict)  # name -> text put before a text (config_sentence_transformers.json)
    default_prompt_name: str | None = None  # the prompt used when encode is given none
    files: tuple = ()  # the files read for all this (each decides the embeddings)


def _module_kind(type_name):  # "sentence_transformers.models.Pooling" -> "Pooling"
    return type_name.rsplit(".", 1)[-1] if type_name.startswith("sentence_transformers.") else None


def _inside(model_dir, relative, where):  # a module's "path" -> the directory it names inside model_dir
    """A module's folder must lie inside the model directory: ``..`` or an absolute path would
    read configs, weights and a tokenizer from elsewhere while the model claims to be this one."""
    p = PurePosixPath(relative.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or PureWindowsPath(relative).drive or relative.startswith("~"):
        raise CheckpointError(f"{where}: path {relative!r} leaves the model directory; module paths must be relative")
    return model_dir / p


def pooling_modes_from_config(cfg, path):  # dict -> tuple of modes (sentence-transformers' rules)
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    unknown = sorted(k for k in cfg if k not in _LEGACY_POOLING_KEYS and k not in _POOLING_OTHER_KEYS)
    if unknown:
        raise UnsupportedModelError(f"{path}: unknown pooling option(s) {', '.join(map(repr, unknown))}"[:300])
    if "pooling_mode" in cfg:
        mode = cfg["pooling_mode"]
        modes = (mode,) if isinstance(mode, str) else tuple(mode) if isinstance(mode, list) else None
        if not modes or not all(isinstance(m, str) for m in modes):
            raise UnsupportedModelError(
                f"{path}: pooling_mode must be a mode name or a list of them, got {mode!r}"[:300]
            )
    else:
        flags = {k: boolean(cfg[k], f"{path}: field {k!r}") for k in _LEGACY_POOLING_KEYS if k in cfg}
        modes = tuple(_LEGACY_POOLING_KEYS[k] for k, on in flags.items() if on)
        if not modes and flags:
            # sentence-transformers' own versions disagree here (6 means, older ones fail): say so.
            raise UnsupportedModelError(
                f"{path}: every pooling mode is set to false; set one to true (or pooling_mode) to say how to pool"
            )
        modes = modes or ("mean",)  # no mode given at all: sentence-transformers' default
    for m in modes:
        if m not in POOLING_MODES:
            raise UnsupportedModelError(f"{path}: unknown pooling mode {m!r}; known: {', '.join(POOLING_MODES)}"[:300])
    return modes


def _similarity(st_cfg, where):  # config_sentence_transformers.json -> one of SIMILARITY_FUNCTIONS
    sim = st_cfg.get("similarity_fn_name")
    if sim is None:
        return "cosine"
    sim = {"dot_product": "dot"}.get(sim, sim) if isinstance(sim, str) else sim
    if sim not in SIMILARITY_FUNCTIONS:
        raise UnsupportedModelError(
            f"{where}: unknown similarity_fn_name {sim!r}; known: {', '.join(SIMILARITY_FUNCTIONS)}"[:300]
        )
    return sim


def _prompts(st_cfg, where):  # -> ({name: prompt text}, default prompt name or None)
    prompts = st_cfg.get("prompts") or {}
    if not isinstance(prompts, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in prompts.items()):
        raise CheckpointError(f"{where}: field 'prompts' must map prompt names to strings")
    default = st_cfg.get("default_prompt_name")
    if default is not None and (not isinstance(default, str) or default not in prompts):
        raise CheckpointError(
            f"{where}: default_prompt_name {default!r} is not one of its prompts {sorted(prompts)}"[:300]
        )
    return dict(prompts), default


def read_pipeline(model_dir):  # Path -> Pipeline
    model_dir = Path(model_dir)
    st_path = model_dir / "config_sentence_transformers.json"
    st_cfg = read_json(st_path, required=False) or {}
    sim, (prompts, default_prompt) = _similarity(st_cfg, st_path), _prompts(st_cfg, st_path)
    modules_path = model_dir / "modules.json"
    modules = read_json(modules_path, required=False, what="a list")
    if modules is None:  # a plain transformers checkpoint
        files = (st_path,) if st_path.is_file() else ()
        return Pipeline(
            model_dir,
            None,
            False,
            ("mean",),
            False,
            sim,
            prompts=prompts,
            default_prompt_name=default_prompt,
            files=files,
        )
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise CheckpointError(f"{modules_path}: expected a list of module objects")
    for i, m in enumerate(modules):
        text(m.get("type"), f"{modules_path}: module {i}'s field 'type'")
        text(m.get("path", ""), f"{modules_path}: module {i}'s field 'path'")
        integer(m.get("idx", i), f"{modules_path}: module {i}'s field 'idx'", 0)
    modules = sorted(modules, key=lambda m: m.get("idx", 0))
    kinds = [_module_kind(m["type"]) for m in modules]
    for m, kind in zip(modules, kinds):
        if kind not in ("Transformer", "Pooling", "Normalize"):
            raise UnsupportedModelError(
                f"{modules_path}: module type {m['type']!r} is not supported "
                "(minibert runs Transformer, Pooling and Normalize)"[:300]
            )
    if kinds[:2] != ["Transformer", "Pooling"] or kinds[2:] not in ([], ["Normalize"]):
        raise UnsupportedModelError(
            f"{modules_path}: module order {kinds} is not supported; expected Transformer, Pooling[, Normalize]"
        )
    transformer_dir = _inside(model_dir, modules[0].get("path", ""), modules_path)
    sbert_path = transformer_dir / "sentence_bert_config.json"
    if not sbert_path.is_file() and transformer_dir != model_dir:
        sbert_path = model_dir / "sentence_bert_config.json"
    sbert = read_json(sbert_path, required=False) or {}
    max_len = sbert.get("max_seq_length")
    if max_len is not None:
        integer(max_len, f"{sbert_path}: field 'max_seq_length'", 2)
    pool_path = _inside(model_dir, modules[1].get("path", "1_Pooling"), modules_path) / "config.json"
    pool_cfg = read_json(pool_path)
    modes = pooling_modes_from_config(pool_cfg, pool_path)
    dim = pool_cfg.get("embedding_dimension", pool_cfg.get("word_embedding_dimension"))
    return Pipeline(
        transformer_dir=transformer_dir,
        max_seq_length=max_len,
        do_lower_case=boolean(sbert.get("do_lower_case", False), f"{sbert_path}: field 'do_lower_case'"),
        pooling_modes=modes,
        normalize=kinds[-1] == "Normalize",
        similarity_fn_name=sim,
        pooling_dim=None if dim is None else integer(dim, f"{pool_path}: field 'word_embedding_dimension'", 1),
        include_prompt=boolean(pool_cfg.get("include_prompt", True), f"{pool_path}: field 'include_prompt'"),
        prompts=prompts,
        default_prompt_name=default_prompt,
        files=tuple(f for f in (st_path, modules_path, sbert_path, pool_path) if f.is_file()),
    )
