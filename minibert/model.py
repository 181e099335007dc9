"""``minibert.load`` and the model it returns: text in, sentence embeddings out.

    texts --tokenize--> ids --encoder--> token vectors --pool--> [normalize] --> embeddings

Texts are sorted by length and cut into batches of ``batch_size``; each batch is dealt to the
plan's worker threads, and each share runs packed (all its tokens in one [N, D] matrix, no
padding), so a text's embedding does not depend on its neighbours. minibert/plan.py decides how a
call runs, minibert/engine.py runs it (or minibert/bert.py, with ``engine="reference"``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from minibert.kernels.int8 import int8_matrix_from_rows

from . import bert, engine, threads, util
from .config import load_config
from .errors import CheckpointError, MinibertError, read_json
from .pipeline import read_pipeline
from .plan import plan
from .sources import DEFAULT_MODEL, resolve
from .tokenizer import WordPieceTokenizer
from .weights import load_encoder_weights

_DTYPES = {"float32": np.float32, "float64": np.float64}
ENGINES = ("fast", "reference")
OUTPUT_VALUES = ("sentence_embedding", "token_embeddings")


def _check_texts(sentences):  # str | sequence of str -> (list[str], was_single)
    if sentences is None:
        raise TypeError("sentences is None; expected a str or a list of str")
    if isinstance(sentences, str):
        return [sentences], True
    if isinstance(sentences, (bytes, bytearray)):
        raise TypeError("sentences is bytes; decode it to str first")
    if isinstance(sentences, dict) or not hasattr(sentences, "__iter__"):
        raise TypeError(f"sentences must be a str or a list of str, got {type(sentences).__name__}")
    texts = list(sentences)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            what = (
                "a nested list (pairs and nested inputs are not supported)"
                if isinstance(t, (list, tuple))
                else type(t).__name__
            )
            raise TypeError(f"sentences[{i}] is {what}; every item must be a str")
    return texts, False


class SentenceEncoder:
    """A loaded BERT/DistilBERT sentence-transformers model. Build it with ``minibert.load``."""

    def __init__(
        self,
        path: str | os.PathLike,
        dtype: str = "float32",
        source: str | None = None,
        engine: str = "fast",
        precision: str = "float32",
    ):
        self.dtype = _compute_dtype(dtype)
        self.engine = _engine_name(engine)
        self.precision = _model_precision(precision, self.dtype)
        self.path, self.source = Path(path), source or f"local directory {path}"
        self.pipeline = read_pipeline(self.path)
        tdir = self.pipeline.transformer_dir
        self.config = load_config(tdir / "config.json")
        weights_path = tdir / "model.safetensors"
        if not weights_path.is_file():
            other = [
                n
                for n in ("pytorch_model.bin", "tf_model.h5", "model.safetensors.index.json", "onnx/model.onnx")
                if (tdir / n).exists()
            ]
            hint = ""
            if "pytorch_model.bin" in other:
                hint = (
                    ' It has pytorch_model.bin: convert it once with torch, e.g. `python -c "import torch; '
                    "from safetensors.torch import save_file; save_file({k: v.contiguous() for k, v in "
                    "torch.load('pytorch_model.bin', map_location='cpu').items()}, 'model.safetensors')\"`."
                )
            elif other:
                hint = f" Found only {', '.join(other)}."
            raise CheckpointError(f"{weights_path}: not found; minibert reads weights from model.safetensors.{hint}")
        p = self.pipeline
        if p.pooling_dim is not None and p.pooling_dim != self.config.dim:
            raise CheckpointError(
                f"{self.path}: the pooling config expects {p.pooling_dim}-dim tokens, "
                f"the encoder makes {self.config.dim}"
            )
        quantize = int8_matrix_from_rows if self.precision == "int8" else None
        self.weights = load_encoder_weights(weights_path, self.config, self.dtype, matrix=quantize)
        stat = weights_path.stat()  # load_encoder_weights checked that the file did not change while it read it
        self._weights_stat = (stat.st_size, stat.st_mtime_ns)
        # sentence-transformers: max_seq_length from sentence_bert_config.json, else the tokenizer's
        # model_max_length, capped by the position table (a longer input has no position vector).
        limit = p.max_seq_length or _tokenizer_max_length(tdir) or self.config.max_positions
        self.tokenizer = WordPieceTokenizer(tdir, min(int(limit), self.config.max_positions), p.do_lower_case)
        if self.tokenizer.largest_id >= self.config.vocab_size:
            raise CheckpointError(
                f"{self.tokenizer.path}: the tokenizer has token id {self.tokenizer.largest_id} but the embedding "
                f"table only {self.config.vocab_size} rows (config.json vocab_size): tokenizer and weights do not "
                "belong together"
            )
        self.pooling_modes, self.normalize = p.pooling_modes, p.normalize
        self.similarity_fn_name = p.similarity_fn_name
        self.dim = self.config.dim * len(self.pooling_modes)
        # sentence-transformers' prompts: "query" and "document" always exist (empty unless the model
        # has them), so encode_query never falls back to the default prompt.
        self.prompts = {"query": "", "document": "", **p.prompts}
        self.default_prompt_name = p.default_prompt_name
        self.include_prompt = p.include_prompt
        self._truncate_dim = None

    def __repr__(self) -> str:
        c = self.config
        return (
            f"SentenceEncoder({c.arch}, {c.n_layers} x {c.dim}, pooling={'+'.join(self.pooling_modes)}, "
            f"normalize={self.normalize}, score={self.similarity_fn_name}, max_seq_length={self.max_seq_length}, "
            f"dtype={self.dtype.name}, precision={self.precision}, engine={self.engine}, from {self.source})"
        )

    @property
    def max_seq_length(self) -> int:  # tokens per text, [CLS] and [SEP] included; longer texts are cut
        return self.tokenizer.max_seq_length

    @max_seq_length.setter
    def max_seq_length(self, value: int) -> None:  # as in sentence-transformers: later calls truncate there
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"max_seq_length must be an integer, got {value!r}")
        if not 1 <= value <= self.config.max_positions:
            raise ValueError(
                f"max_seq_length must be between 1 and {self.config.max_positions} (the model's positions), got {value}"
            )
        self.tokenizer.set_max_length(int(value))

    # ------------------------------------------------------------------ tokens

    def tokenize(self, sentences: str | Sequence[str]) -> list[np.ndarray]:  # -> list of [n_i] int64 id arrays
        texts, _ = _check_texts(sentences)
        return self._tokenize(texts)

    def _tokenize(self, texts):  # list[str] -> list of [n_i] int64, every id a row of the embedding table
        ids = self.tokenizer.encode(texts)
        for i, a in enumerate(ids):  # (a post-processor's special token ids are not in the vocabulary)
            if a.max() >= self.config.vocab_size or a.min() < 0:
                bad = int(a[(a >= self.config.vocab_size) | (a < 0)][0])
                raise CheckpointError(
                    f"{self.tokenizer.path}: the tokenizer gives sentences[{i}] the token id {bad}, but the embedding "
                    f"table has {self.config.vocab_size} rows: tokenizer and weights do not belong together"
                )
        return ids

    def _check_ids(self, ids, where):  # [n] ints -> [n] int64, or a clear error
        a = np.asarray(ids)
        if a.ndim != 1 or not (a.size == 0 or np.issubdtype(a.dtype, np.integer)):
            raise TypeError(f"{where} must be a 1-D sequence of integer token ids, got {a.dtype} with shape {a.shape}")
        if a.size == 0:
            raise ValueError(f"{where} is empty; a text has at least [CLS] and [SEP]")
        if a.size > self.config.max_positions:
            raise ValueError(f"{where} has {a.size} tokens; the model has only {self.config.max_positions} positions")
        bad = np.flatnonzero((a < 0) | (a >= self.config.vocab_size))
        if bad.size:
            raise ValueError(
                f"{where}[{bad[0]}] = {a[bad[0]]} is not a token id (vocabulary has {self.config.vocab_size})"
            )
        return a.astype(np.int64)

    def hidden_states(self, input_ids: Iterable[Sequence[int]]) -> list[np.ndarray]:  # -> list of [L + 1, n_i, D]
        """Every layer's output (embeddings first) for each given token-id sequence, no pooling."""
        if input_ids is None or isinstance(input_ids, (str, bytes)):
            raise TypeError("input_ids must be a list of token-id sequences")
        seqs = [self._check_ids(x, f"input_ids[{i}]") for i, x in enumerate(input_ids)]
        return self._run(seqs, "hidden_states", batch_size=max(len(seqs), 1)) if seqs else []

    # ------------------------------------------------------------------ embeddings

    def encode(
        self,
        sentences: str | Sequence[str] | None = None,
        prompt_name: str | None = None,
        prompt: str | None = None,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        output_value: str | None = "sentence_embedding",
        precision: str = "float32",
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        device: str | None = None,
        normalize_embeddings: bool = False,
        truncate_dim: int | None = None,
        pool: object = None,
        chunk_size: int | None = None,
        **kwargs,
    ):
        """str -> [dim]; list[str] -> [n, dim]; output_value="token_embeddings" -> list of [n_i, D].

        The arguments are sentence-transformers' ``encode``'s, with its meaning: ``prompt`` (or the
        ``prompt_name`` of one of ``self.prompts``) goes before every text; ``truncate_dim`` keeps
        the first dimensions (then ``normalize_embeddings`` normalizes what is left); ``precision``
        quantizes as ``util.quantize_embeddings``; ``convert_to_tensor`` returns a torch tensor
        (torch is imported only then); ``output_value=None`` returns one dict per text."""
        if sentences is None and "inputs" in kwargs:  # sentence-transformers' newer name for the first argument
            sentences = kwargs.pop("inputs")
        kwargs.pop("task", None)  # sentence-transformers routes a Router model by it; a BERT model has none
        if kwargs:
            raise ValueError(
                f"encode() got keyword arguments minibert does not support: {', '.join(sorted(kwargs))} "
                "(see the README's sentence-transformers table)"
            )
        texts, single = _check_texts(sentences)
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if output_value not in (*OUTPUT_VALUES, None):
            raise ValueError(f"output_value must be one of {', '.join(OUTPUT_VALUES)} or None, got {output_value!r}")
        if precision not in util.PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(util.PRECISIONS)}, got {precision!r}")
        if precision != "float32" and output_value is None:
            raise ValueError(f"precision {precision!r} needs output_value 'sentence_embedding' or 'token_embeddings'")
        check_device(device)
        if pool is not None:
            raise ValueError(
                "encode(pool=...): multi-process pools are not supported; minibert runs one worker thread "
                "per core itself (MINIBERT_NUM_THREADS)"
            )
        prompt = self._resolve_prompt(prompt, prompt_name)
        truncate_dim = self.truncate_dim if truncate_dim is None else _check_truncate_dim(truncate_dim)
        if truncate_dim is not None and truncate_dim >= self.dim:
            truncate_dim = None
        prompt_tokens = self.tokenizer.prompt_length(prompt) if prompt else 0
        skip = 0 if self.include_prompt else prompt_tokens  # prompt tokens left out of pooling
        if prompt:
            texts = [prompt + t for t in texts]  # as sentence-transformers: the prompt, then the text
        ids = self._tokenize(texts)
        progress = bool(show_progress_bar)
        if output_value == "sentence_embedding" and not skip:
            # Normalized in the workers when nothing is cut; after the cut otherwise (Matryoshka).
            result = self._run(ids, output_value, batch_size, normalize_embeddings and truncate_dim is None, progress)
            if truncate_dim is not None:
                result = result[:, :truncate_dim]
                if normalize_embeddings:
                    result = util.normalize_embeddings(result).astype(self.dtype)
        else:
            tokens = self._run(ids, "token_embeddings", batch_size, progress=progress)
            if output_value == "token_embeddings":
                result = tokens
            else:
                pooled = self._pool_tokens(tokens, skip)[:, :truncate_dim]  # (a cut at None keeps all)
                if output_value is None:
                    result = [
                        {
                            "input_ids": x,
                            "attention_mask": np.ones_like(x),
                            "token_embeddings": t,
                            "sentence_embedding": v,
                            **({"prompt_length": prompt_tokens} if prompt else {}),
                        }
                        for x, t, v in zip(ids, tokens, pooled)
                    ]
                else:
                    result = util.normalize_embeddings(pooled).astype(self.dtype) if normalize_embeddings else pooled
        if precision != "float32" and len(result):
            result = util.quantize_embeddings(result, precision)
        if output_value == "sentence_embedding":
            if convert_to_tensor:
                result = _torch().as_tensor(result)
            elif not convert_to_numpy:
                result = list(result)
        return result[0] if single else result

    def encode_query(self, sentences: str | Sequence[str] | None = None, prompt_name=None, prompt=None, **kwargs):
        """``encode`` with the "query" prompt when no other is given (sentence-transformers' rule)."""
        if prompt_name is None and prompt is None and "query" in self.prompts:
            prompt_name = "query"
        return self.encode(sentences, prompt_name=prompt_name, prompt=prompt, **kwargs)

    def encode_document(self, sentences: str | Sequence[str] | None = None, prompt_name=None, prompt=None, **kwargs):
        """``encode`` with the first of the "document", "passage", "corpus" prompts when no other is given."""
        if prompt_name is None and prompt is None:
            prompt_name = next((n for n in ("document", "passage", "corpus") if n in self.prompts), None)
        return self.encode(sentences, prompt_name=prompt_name, prompt=prompt, **kwargs)

    def _resolve_prompt(self, prompt, prompt_name):  # -> the prompt text to put before each text, or None
        if prompt is not None:
            if not isinstance(prompt, str):
                raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
            return prompt
        if prompt_name is not None:
            if prompt_name not in self.prompts:
                known = sorted(self.prompts)
                raise ValueError(f"prompt_name {prompt_name!r} is not one of this model's prompts {known}")
            return self.prompts[prompt_name]
        if self.default_prompt_name is not None:
            return self.prompts.get(self.default_prompt_name)
        return None

    def _pool_tokens(self, tokens, skip):  # n of [n_i, D], prompt tokens to leave out -> [n, dim]
        """Pooling as sentence-transformers' does it when a prompt is left out of it: [CLS] is then
        the first token after the prompt, and weighted mean keeps each token's place in the text."""
        out = np.empty((len(tokens), self.dim), dtype=self.dtype)
        for i, h in enumerate(tokens):
            if len(h) <= skip:
                raise ValueError(
                    f"sentences[{i}]: the prompt fills all its {len(h)} tokens (max_seq_length {self.max_seq_length}),"
                    " and the pooling config leaves prompt tokens out: nothing is left to pool"
                )
            rest = h[skip:]
            parts = []
            for mode in self.pooling_modes:
                if mode == "weightedmean":
                    w = np.arange(skip + 1, len(h) + 1, dtype=h.dtype)
                    parts.append(w @ rest / w.sum())
                elif mode == "lasttoken":
                    parts.append(h[-1])
                else:
                    parts.append(bert.pool(rest, mode))
            v = np.concatenate(parts)
            out[i] = bert.normalize(v) if self.normalize else v
        return out

    def _run(self, ids, output, batch_size, normalize=False, progress=False):  # list of [n_i] -> results in input order
        # Longest first, like sentence-transformers; packing means order affects speed only.
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        pooled = output == "sentence_embedding"
        results = np.empty((len(ids), self.dim), dtype=self.dtype) if pooled else [None] * len(ids)
        starts = range(0, len(ids), batch_size)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="Batches", unit="batch")
        with plan(self, [len(x) for x in ids], output) as p:
            for start in starts:
                idx = order[start : start + batch_size]
                # Texts dealt out in turn, there and back (longest first: 0 1 1 0 0 1 ...), so the
                # shares have about as many tokens. Nothing is padded, so a text's result does not
                # depend on which share it lands in.
                shares = _deal(idx, min(p.workers, len(idx)))
                outputs = threads.map_shares(
                    lambda share: self._forward(share, [ids[i] for i in share], p, output, normalize), shares
                )
                for share, out in zip(shares, outputs):
                    if pooled:
                        results[share] = out
                    else:
                        for i, o in zip(share, out):
                            results[i] = o
        return results

    def _forward(self, idx, batch, p, output, normalize):  # texts' indices, their ids, Plan -> their results
        if p.reference:
            return self._forward_reference(idx, batch, output, normalize)
        offsets = np.zeros(len(batch) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(x) for x in batch])
        states = engine.forward(np.concatenate(batch), offsets, self.weights, self.config, p)
        if p.first_token_only:  # one row per text, its [CLS] token: each text is now a text of one token
            offsets = np.arange(len(batch) + 1, dtype=np.int64)
        h = states[-1]
        self._check_finite(h, offsets, idx)
        if output == "sentence_embedding":
            pooled = self.pool(h, offsets, p, normalize)
            self._check_finite(pooled, np.arange(len(batch) + 1), idx)
            return pooled
        if output == "token_embeddings":
            return [h[offsets[b] : offsets[b + 1]].copy() for b in range(len(batch))]
        stacked = np.stack(states)  # [L + 1, N, D]
        return [stacked[:, offsets[b] : offsets[b + 1]] for b in range(len(batch))]

    def _forward_reference(self, idx, batch, output, normalize):  # minibert/bert.py, text by text
        w, cfg = self.weights, self.config
        states = [bert.hidden_states(ids, w, cfg) for ids in batch]
        for i, s in zip(idx, states):
            self._check_finite(s[-1], np.array([0, len(s[-1])]), [i])
        if output == "hidden_states":
            return states
        if output == "token_embeddings":
            return [s[-1] for s in states]
        vectors = [np.concatenate([bert.pool(s[-1], mode) for mode in self.pooling_modes]) for s in states]
        pooled = np.stack([bert.normalize(v) for v in vectors] if self.normalize or normalize else vectors)
        self._check_finite(pooled, np.arange(len(batch) + 1), idx)
        return pooled

    def _check_finite(
        self, h, offsets, idx
    ):  # NaN/inf weights (or an fp16 overflow) must never become a silent embedding
        bad = np.flatnonzero(~np.isfinite(h).all(axis=1))
        if bad.size:
            text = idx[int(np.searchsorted(offsets, bad[0], side="right")) - 1]
            raise MinibertError(
                f"the encoder output for text {text} is not finite (NaN or inf): the weights in "
                f"{self.path} hold non-finite values or overflow in {self.dtype.name}"
            )

    def pool(self, h, offsets, p, normalize_embeddings=False):  # [N, D], [B + 1], Plan -> [B, dim]
        pooled = engine.pool(h, offsets, self.pooling_modes, p)
        if self.normalize or normalize_embeddings:
            pooled = util.normalize_embeddings(pooled).astype(self.dtype)
        return pooled

    def fingerprint(self) -> str:  # sha256 hex of everything that decides this model's embeddings
        """Every file the model was built from (configs, tokenizer, pooling, weights) and its
        settings: two models with the same fingerprint give the same embeddings. The weights are
        hashed from the file, which must still be the one loaded."""
        h = hashlib.sha256()
        t = self.pipeline.transformer_dir
        files = [*self.pipeline.files, t / "config.json", self.tokenizer.path]
        files += [f for f in (t / "tokenizer_config.json", t / "special_tokens_map.json") if f.is_file()]
        for f in sorted(set(files)):
            h.update(f"{f.name}\0{f.stat().st_size}\0".encode())
            h.update(f.read_bytes())
        weights = t / "model.safetensors"
        before = weights.stat()
        if (before.st_size, before.st_mtime_ns) != self._weights_stat:
            raise CheckpointError(f"{weights}: the file changed since the model was loaded; load it again")
        with open(weights, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        settings = (self.dtype.name, self.engine, self.max_seq_length, self.pooling_modes, self.normalize)
        if self.precision != "float32":  # (so that a float32 model's fingerprint stays what it was)
            settings += (self.precision,)
        h.update(repr(settings).encode())
        return h.hexdigest()

    def similarity(self, a, b) -> np.ndarray:  # [n_a, dim], [n_b, dim] -> [n_a, n_b] with the model's own score
        return util.SIMILARITY[self.similarity_fn_name](a, b)

    def similarity_pairwise(self, a, b) -> np.ndarray:  # [n, dim], [n, dim] -> [n]: the score of a[i] and b[i]
        return util.PAIRWISE[self.similarity_fn_name](a, b)

    @property
    def similarity_fn_name(self) -> str:  # "cosine", "dot", "euclidean" or "manhattan"
        return self._similarity_fn_name

    @similarity_fn_name.setter
    def similarity_fn_name(self, value: str) -> None:
        value = getattr(value, "value", value)  # sentence-transformers' SimilarityFunction enum
        if value not in util.SIMILARITY:
            raise ValueError(f"similarity_fn_name must be one of {', '.join(util.SIMILARITY)}, got {value!r}")
        self._similarity_fn_name = value

    @property
    def truncate_dim(self) -> int | None:  # encode keeps this many dimensions (Matryoshka); None: all
        return self._truncate_dim

    @truncate_dim.setter
    def truncate_dim(self, value: int | None) -> None:
        self._truncate_dim = None if value is None else _check_truncate_dim(value)

    @contextlib.contextmanager
    def truncate_embeddings(self, truncate_dim: int | None):  # with model.truncate_embeddings(64): ...
        before, self.truncate_dim = self.truncate_dim, truncate_dim
        try:
            yield
        finally:
            self._truncate_dim = before

    def get_embedding_dimension(self) -> int:  # the width of encode's sentence embeddings
        return self.dim if self.truncate_dim is None else min(self.dim, self.truncate_dim)

    get_sentence_embedding_dimension = get_embedding_dimension  # sentence-transformers' older name


def _deal(items, n):  # list, int -> n lists: items dealt to n hands in a snake order, 0..n-1 then n-1..0
    hands = [[] for _ in range(n)]
    for pos, item in enumerate(items):
        row, col = divmod(pos, n)
        hands[col if row % 2 == 0 else n - 1 - col].append(item)
    return hands


def _check_truncate_dim(value):  # -> a positive int, or a clear error
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"truncate_dim must be a positive integer or None, got {value!r}")
    return int(value)


def check_device(device):  # minibert runs on the CPU; say so for any other device
    if device is None:
        return
    name = str(device)
    if isinstance(device, (list, tuple)):
        raise ValueError(f"device={device!r}: multi-process encoding is not supported; minibert uses threads")
    if name.split(":")[0] != "cpu":
        raise ValueError(f"device {name!r} is not supported: minibert runs on the CPU only (device='cpu')")


def _torch():  # torch, for convert_to_tensor only
    try:
        import torch
    except ImportError:
        raise ImportError(
            "convert_to_tensor=True needs torch, which minibert does not require; install it, or use the "
            "NumPy array minibert returns by default"
        ) from None
    return torch


MODEL_PRECISIONS = ("float32", "int8")


def _model_precision(precision, dtype):  # -> "float32" | "int8", or a clear error
    if precision not in MODEL_PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(map(repr, MODEL_PRECISIONS))}, got {precision!r}")
    if precision == "int8" and dtype != np.float32:
        raise ValueError("precision='int8' runs the rest of the model in float32; it cannot go with dtype='float64'")
    return precision


def _compute_dtype(dtype):  # "float32" | np.float32 | ... -> np.dtype, or a clear error
    try:
        name = np.dtype(dtype).name if dtype is not None else None
    except TypeError:
        name = None
    if name not in _DTYPES:
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    return np.dtype(name)


def _engine_name(engine):
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(map(repr, ENGINES))}, got {engine!r}")
    return engine


def _tokenizer_max_length(model_dir):  # tokenizer_config.json's model_max_length, when sane
    value = (read_json(Path(model_dir) / "tokenizer_config.json", required=False) or {}).get("model_max_length")
    return int(value) if isinstance(value, (int, float)) and 2 <= value < 1e6 else None


def resolve_model(name_or_path, revision=None, cache_dir=None, local_files_only=False, token=None):  # -> ResolvedModel
    """Find a model: a local directory, the Hugging Face cache, an installed copy, then the hub."""
    if local_files_only or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        local_files_only = True
    return resolve(name_or_path, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only, token=token)


def load(
    name_or_path: str | os.PathLike = DEFAULT_MODEL,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    dtype: str = "float32",
    engine: str = "fast",
    precision: str = "float32",
) -> SentenceEncoder:
    """Load a sentence-transformers BERT/DistilBERT model from a directory or a hub id.

    ``dtype``: "float32" or "float64" (the whole encoder in that precision). ``precision``:
    "int8" runs the dense layers in int8 (weights quantized at load, tokens as they come; faster
    on a CPU with AVX-512 VNNI, at a cost the parity suite measures). ``engine``: "fast"
    (minibert/engine.py) or "reference" (minibert/bert.py: plain NumPy, one text at a time, slow;
    for reading and debugging)."""
    _model_precision(precision, _compute_dtype(dtype))  # fail before any download
    _engine_name(engine)
    found = resolve_model(name_or_path, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only)
    return SentenceEncoder(found.path, dtype=dtype, source=found.source, engine=engine, precision=precision)
