"""``minibert.SentenceTransformer``: sentence-transformers' class, for a user switching by one import.

    from minibert import SentenceTransformer, util   # was: from sentence_transformers import ...

It is a ``SentenceEncoder`` (model.py) built from sentence-transformers' constructor arguments,
with the few methods whose sentence-transformers form differs from minibert's own (``tokenize``
returns padded id matrices, ``device``, ``to``, ``eval``). Whatever minibert cannot do (another
device, remote code, another backend or architecture) is refused with an error that says so.
"""

from __future__ import annotations

import os

import numpy as np

from .model import SentenceEncoder, check_device, resolve_model
from .sources import DEFAULT_MODEL

# sentence-transformers' methods that minibert does not have, with what to do instead
_UNSUPPORTED = {
    **dict.fromkeys(
        ("fit", "old_fit", "train", "evaluate", "save", "save_pretrained", "save_to_hub", "push_to_hub"),
        "minibert only embeds; train and save with sentence-transformers",
    ),
    **dict.fromkeys(
        ("start_multi_process_pool", "stop_multi_process_pool", "encode_multi_process"),
        "minibert runs one worker thread per core itself (MINIBERT_NUM_THREADS)",
    ),
    **dict.fromkeys(
        ("cuda", "half", "bfloat16", "float", "compile"),
        "minibert runs on the CPU; for 8-bit speed use minibert.load(M, precision='int8')",
    ),
}


def _refuse(name, value, why):
    raise ValueError(f"SentenceTransformer({name}={value!r}): {why}")


class SentenceTransformer(SentenceEncoder):
    """sentence-transformers' ``SentenceTransformer`` on minibert (BERT and DistilBERT models, CPU)."""

    def __init__(
        self,
        model_name_or_path: str | os.PathLike | None = None,
        *,
        modules: object = None,
        device: str | None = None,
        prompts: dict[str, str] | None = None,
        default_prompt_name: str | None = None,
        cache_folder: str | os.PathLike | None = None,
        trust_remote_code: bool = False,
        revision: str | None = None,
        local_files_only: bool = False,
        token: bool | str | None = None,
        use_auth_token: bool | str | None = None,
        model_kwargs: dict | None = None,
        tokenizer_kwargs: dict | None = None,
        processor_kwargs: dict | None = None,
        config_kwargs: dict | None = None,
        model_card_data: object = None,
        backend: str = "torch",
        similarity_fn_name: str | None = None,
        truncate_dim: int | None = None,
        **kwargs,
    ) -> None:
        if kwargs:
            raise ValueError(
                f"SentenceTransformer() got arguments minibert does not support: {', '.join(sorted(kwargs))}"
            )
        if modules is not None:
            _refuse("modules", "...", "building a model from modules is not supported; give a model directory or id")
        if model_name_or_path is None:
            _refuse("model_name_or_path", None, f"minibert needs a model (e.g. {DEFAULT_MODEL!r})")
        check_device(device)
        if trust_remote_code:
            _refuse("trust_remote_code", True, "minibert never runs code from a model; it reads BERT/DistilBERT only")
        if backend != "torch":  # sentence-transformers' "onnx" / "openvino" name other runtimes
            _refuse("backend", backend, "minibert is its own engine; leave backend at its default")
        for name, value in (
            ("model_kwargs", model_kwargs),
            ("tokenizer_kwargs", tokenizer_kwargs),
            ("processor_kwargs", processor_kwargs),
            ("config_kwargs", config_kwargs),
        ):
            if value:
                _refuse(name, value, "transformers' loading options do not apply to minibert")
        if token is not None and use_auth_token is not None:
            raise ValueError("give token or use_auth_token, not both")
        found = resolve_model(
            model_name_or_path,
            revision=revision,
            cache_dir=cache_folder,
            local_files_only=local_files_only,
            token=token if token is not None else use_auth_token,
        )
        super().__init__(found.path, source=found.source)
        if prompts is not None:  # the user's prompts win over the model's, as in sentence-transformers
            if not isinstance(prompts, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in prompts.items()
            ):
                raise TypeError("prompts must map prompt names (str) to prompt texts (str)")
            self.prompts.update(prompts)
        if default_prompt_name is not None:
            self.default_prompt_name = default_prompt_name
        if self.default_prompt_name is not None and self.default_prompt_name not in self.prompts:
            raise ValueError(
                f"default_prompt_name {self.default_prompt_name!r} is not one of the prompts {sorted(self.prompts)}"
            )
        if similarity_fn_name is not None:
            self.similarity_fn_name = similarity_fn_name
        self.truncate_dim = truncate_dim
        self.model_card_data = model_card_data

    def __repr__(self) -> str:
        return "SentenceTransformer" + super().__repr__()[len("SentenceEncoder") :]

    def tokenize(self, texts) -> dict[str, np.ndarray]:  # list[str] -> {name: [B, T] int64}, padded as transformers'
        """What sentence-transformers' ``tokenize`` returns, as NumPy: ``input_ids`` padded with the
        [PAD] id 0, ``attention_mask``, and ``token_type_ids`` for BERT (DistilBERT has none)."""
        ids = super().tokenize(texts)
        width = max((len(x) for x in ids), default=0)
        input_ids = np.zeros((len(ids), width), dtype=np.int64)
        mask = np.zeros((len(ids), width), dtype=np.int64)
        for i, x in enumerate(ids):
            input_ids[i, : len(x)], mask[i, : len(x)] = x, 1
        out = {"input_ids": input_ids}
        if self.config.arch == "bert":
            out["token_type_ids"] = np.zeros_like(input_ids)
        out["attention_mask"] = mask
        return out

    def __getattr__(self, name):  # only for names the class does not have
        if name in _UNSUPPORTED:
            raise AttributeError(f"SentenceTransformer.{name} is not supported by minibert: {_UNSUPPORTED[name]}")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def device(self) -> str:
        return "cpu"

    def to(self, device) -> SentenceTransformer:  # only "cpu": minibert runs there
        check_device(device)
        return self

    def eval(self) -> SentenceTransformer:  # minibert only runs inference
        return self
