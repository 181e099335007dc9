"""``minibert.load`` and the model it returns: text in, sentence embeddings out.

    texts --tokenize--> ids --encoder--> token vectors --pool--> [normalize] --> embeddings

Texts are sorted by length and cut into batches of ``batch_size``; each batch is dealt to the
plan's worker threads, and each share runs packed (all its tokens in one [N, D] matrix, no
padding), so a text's embedding does not depend on its neighbours. minibert/plan.py decides how a
call runs, minibert/engine.py runs it (or minibert/bert.py, with ``engine="reference"``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

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
        self, path: str | os.PathLike, dtype: str = "float32", source: str | None = None, engine: str = "fast"
    ):
        self.dtype = _compute_dtype(dtype)
        self.engine = _engine_name(engine)
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
        self.weights = load_encoder_weights(weights_path, self.config, self.dtype)
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

    def __repr__(self) -> str:
        c = self.config
        return (
            f"SentenceEncoder({c.arch}, {c.n_layers} x {c.dim}, pooling={'+'.join(self.pooling_modes)}, "
            f"normalize={self.normalize}, score={self.similarity_fn_name}, max_seq_length={self.max_seq_length}, "
            f"dtype={self.dtype.name}, engine={self.engine}, from {self.source})"
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
        sentences: str | Sequence[str],
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        normalize_embeddings: bool = False,
        output_value: str = "sentence_embedding",
    ):
        """str -> [dim]; list[str] -> [n, dim]; output_value="token_embeddings" -> list of [n_i, D]."""
        texts, single = _check_texts(sentences)
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if output_value not in OUTPUT_VALUES:
            raise ValueError(f"output_value must be one of {', '.join(OUTPUT_VALUES)}, got {output_value!r}")
        results = self._run(
            self._tokenize(texts), output_value, batch_size, normalize_embeddings, bool(show_progress_bar)
        )
        return results[0] if single else results

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
        h.update(repr(settings).encode())
        return h.hexdigest()

    def similarity(self, a, b) -> np.ndarray:  # [n_a, dim], [n_b, dim] -> [n_a, n_b] with the model's own score
        return util.SIMILARITY[self.similarity_fn_name](a, b)


def _deal(items, n):  # list, int -> n lists: items dealt to n hands in a snake order, 0..n-1 then n-1..0
    hands = [[] for _ in range(n)]
    for pos, item in enumerate(items):
        row, col = divmod(pos, n)
        hands[col if row % 2 == 0 else n - 1 - col].append(item)
    return hands


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


def load(
    name_or_path: str | os.PathLike = DEFAULT_MODEL,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    dtype: str = "float32",
    engine: str = "fast",
) -> SentenceEncoder:
    """Load a sentence-transformers BERT/DistilBERT model from a directory or a hub id.

    ``dtype``: "float32" or "float64" (the whole encoder in that precision). ``engine``: "fast"
    (minibert/engine.py) or "reference" (minibert/bert.py: plain NumPy, one text at a time, slow;
    for reading and debugging)."""
    _compute_dtype(dtype)  # fail before any download
    _engine_name(engine)
    if local_files_only or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        local_files_only = True
    found = resolve(name_or_path, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only)
    return SentenceEncoder(found.path, dtype=dtype, source=found.source, engine=engine)
