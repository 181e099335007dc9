"""``minibert.load`` and the model it returns: text in, sentence embeddings out.

    texts --tokenize--> ids --encoder--> token vectors --pool--> [normalize] --> embeddings

Texts are sorted by length and cut into batches of ``batch_size``; each batch runs packed (all its
tokens in one [N, D] matrix, no padding), so a text's embedding does not depend on its neighbours.
"""

import os
from pathlib import Path

import numpy as np

from minibert.kernels import pool, pool_numpy
from minibert.kernels.matmul import blas_row_tile

from . import startup, threads, util
from .config import load_config
from .encoder import SMALL_ROWS, encode_packed
from .errors import CheckpointError, MinibertError, read_json
from .pipeline import read_pipeline
from .sources import DEFAULT_MODEL, resolve
from .tokenizer import WordPieceTokenizer
from .weights import load_encoder_weights

_DTYPES = {"float32": np.float32, "float64": np.float64}
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
            what = "a nested list (pairs and nested inputs are not supported)" if isinstance(t, (list, tuple)) \
                else type(t).__name__
            raise TypeError(f"sentences[{i}] is {what}; every item must be a str")
    return texts, False


class SentenceEncoder:
    """A loaded BERT/DistilBERT sentence-transformers model. Build it with ``minibert.load``."""

    def __init__(self, path, dtype="float32", source=None):
        self.dtype = _compute_dtype(dtype)
        self.path, self.source = Path(path), source or f"local directory {path}"
        self.pipeline = read_pipeline(self.path)
        tdir = self.pipeline.transformer_dir
        self.config = load_config(tdir / "config.json")
        weights_path = tdir / "model.safetensors"
        if not weights_path.is_file():
            other = [n for n in ("pytorch_model.bin", "tf_model.h5", "model.safetensors.index.json", "onnx/model.onnx")
                     if (tdir / n).exists()]
            hint = ""
            if "pytorch_model.bin" in other:
                hint = (" It has pytorch_model.bin: convert it once with torch, e.g. `python -c \"import torch; "
                        "from safetensors.torch import save_file; save_file({k: v.contiguous() for k, v in "
                        "torch.load('pytorch_model.bin', map_location='cpu').items()}, 'model.safetensors')\"`.")
            elif other:
                hint = f" Found only {', '.join(other)}."
            raise CheckpointError(f"{weights_path}: not found; minibert reads weights from model.safetensors.{hint}")
        self.weights = load_encoder_weights(weights_path, self.config, self.dtype)
        # 1 where NumPy's BLAS gives a row the same bits in any batch; else the encoder lays texts out
        # on its row tiles so that they still do; None: no tile found (kernels/matmul.py). Probed as
        # the workers run BLAS, on one thread.
        with threads.single_threaded_blas():
            self.row_tile = blas_row_tile(self.dtype)
        p = self.pipeline
        if p.pooling_dim is not None and p.pooling_dim != self.config.dim:
            raise CheckpointError(
                f"{self.path}: the pooling config expects {p.pooling_dim}-dim tokens, the encoder makes {self.config.dim}")
        # sentence-transformers: max_seq_length from sentence_bert_config.json, else the tokenizer's
        # model_max_length, capped by the position table (a longer input has no position vector).
        limit = p.max_seq_length or _tokenizer_max_length(tdir) or self.config.max_positions
        self.max_seq_length = min(int(limit), self.config.max_positions)
        self.tokenizer = WordPieceTokenizer(tdir, self.max_seq_length, p.do_lower_case)
        if self.tokenizer.vocab_size > self.config.vocab_size:
            raise CheckpointError(
                f"{tdir}: the tokenizer has {self.tokenizer.vocab_size} tokens but the embedding table only "
                f"{self.config.vocab_size} rows (config.json vocab_size): tokenizer and weights do not belong together")
        self.pooling_modes, self.normalize = p.pooling_modes, p.normalize
        self.similarity_fn_name = p.similarity_fn_name
        self.dim = self.config.dim * len(self.pooling_modes)

    def __repr__(self):
        c = self.config
        return (f"SentenceEncoder({c.arch}, {c.n_layers} x {c.dim}, pooling={'+'.join(self.pooling_modes)}, "
                f"normalize={self.normalize}, score={self.similarity_fn_name}, max_seq_length={self.max_seq_length}, "
                f"dtype={self.dtype.name}, from {self.source})")

    # ------------------------------------------------------------------ tokens

    def tokenize(self, sentences):  # list[str] -> list of [n_i] int64 id arrays
        texts, _ = _check_texts(sentences)
        return self.tokenizer.encode(texts)

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
            raise ValueError(f"{where}[{bad[0]}] = {a[bad[0]]} is not a token id (vocabulary has {self.config.vocab_size})")
        return a.astype(np.int64)

    def _run(self, batch_ids, all_layers=False, query_threads=0, numba=True, first_token_only=False):  # list of [n_i] -> packed [N, D] (or L + 1 of them), [B + 1]
        offsets = np.zeros(len(batch_ids) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(x) for x in batch_ids])
        flat = np.concatenate(batch_ids)
        h = encode_packed(flat, offsets, self.weights, self.config, all_layers, query_threads, numba,
                          first_token_only, self.row_tile or 1)
        if first_token_only:  # one row per text, its [CLS] token: each text is now a text of one token
            offsets = np.arange(len(batch_ids) + 1, dtype=np.int64)
        return h, offsets

    def hidden_states(self, input_ids):  # list of [n_i] id sequences -> list of [L + 1, n_i, D]
        """Every layer's output (embeddings first) for each given token-id sequence, no pooling."""
        if input_ids is None or isinstance(input_ids, (str, bytes)):
            raise TypeError("input_ids must be a list of token-id sequences")
        seqs = [self._check_ids(x, f"input_ids[{i}]") for i, x in enumerate(input_ids)]
        if not seqs:
            return []
        numba = startup.use_numba(sum(map(len, seqs)))
        with startup.timed(numba):
            if numba and len(seqs) == 1 and len(seqs[0]) <= SMALL_ROWS:  # computed as encode computes a query
                with threads.plan(1, True) as (_, query_threads):
                    states, offsets = self._run(seqs, all_layers=True, query_threads=query_threads)
            else:
                states, offsets = self._run(seqs, all_layers=True, numba=numba)
        stacked = np.stack(states)  # [L + 1, N, D]
        return [stacked[:, offsets[b]:offsets[b + 1]] for b in range(len(seqs))]

    # ------------------------------------------------------------------ embeddings

    def encode(self, sentences, batch_size=32, show_progress_bar=None, normalize_embeddings=False,
               output_value="sentence_embedding"):
        """str -> [dim]; list[str] -> [n, dim]; output_value="token_embeddings" -> list of [n_i, D]."""
        texts, single = _check_texts(sentences)
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if output_value not in OUTPUT_VALUES:
            raise ValueError(f"output_value must be one of {', '.join(OUTPUT_VALUES)}, got {output_value!r}")
        tokens = output_value == "token_embeddings"
        # [CLS] pooling reads one token per text: the last layer computes only that one (encoder.py).
        first_token_only = not tokens and self.pooling_modes == ("cls",)
        ids = self.tokenizer.encode(texts)
        # Longest first, like sentence-transformers; packing means order affects speed only.
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        results = [None] * len(ids) if tokens else np.empty((len(ids), self.dim), dtype=self.dtype)
        starts = range(0, len(ids), batch_size)
        if show_progress_bar:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="Batches", unit="batch")
        numba = startup.use_numba(sum(map(len, ids)))  # a short call may run without Numba (startup.py)
        short = numba and max(map(len, ids), default=0) <= SMALL_ROWS  # the streaming kernel is Numba's
        with startup.timed(numba), threads.plan(len(ids), short) as (workers, query_threads):
            for start in starts:
                idx = order[start:start + batch_size]
                # Texts dealt out in turn, there and back (longest first: 0 1 1 0 0 1 ...), so
                # the shares have about as many tokens. Nothing is padded, so a text's result
                # does not depend on which share it lands in.
                shares = _deal(idx, min(workers, len(idx)))
                run = lambda share: self._run([ids[i] for i in share], query_threads=query_threads, numba=numba,  # noqa: E731
                                              first_token_only=first_token_only)
                outputs = threads.map_shares(run, shares)
                for share, (h, offsets) in zip(shares, outputs):
                    self._collect(share, h, offsets, results, tokens, normalize_embeddings, numba)
        return results[0] if single else results

    def _collect(self, idx, h, offsets, results, tokens, normalize_embeddings, numba):  # packed outputs -> per text
        bad = np.flatnonzero(~np.isfinite(h).all(axis=1))
        if bad.size:  # NaN/inf weights (or an fp16 overflow) must never become a silent embedding
            text = idx[int(np.searchsorted(offsets, bad[0], side="right")) - 1]
            raise MinibertError(
                f"the encoder output for text {text} is not finite (NaN or inf): the weights in "
                f"{self.path} hold non-finite values or overflow in {self.dtype.name}")
        if tokens:
            for b, i in enumerate(idx):
                results[i] = h[offsets[b]:offsets[b + 1]].copy()
        else:
            results[idx] = self.pool(h, offsets, normalize_embeddings, numba)

    def pool(self, h, offsets, normalize_embeddings=False, numba=True):  # [N, D], [B + 1] -> [B, dim]
        pool_texts = pool if numba else pool_numpy
        pooled = np.concatenate([pool_texts(h, offsets, mode) for mode in self.pooling_modes], axis=1)
        if self.normalize or normalize_embeddings:
            pooled = util.normalize_embeddings(pooled).astype(self.dtype)
        return pooled

    def similarity(self, a, b):  # [n_a, dim], [n_b, dim] -> [n_a, n_b] with the model's own score
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


def _tokenizer_max_length(model_dir):  # tokenizer_config.json's model_max_length, when sane
    value = (read_json(Path(model_dir) / "tokenizer_config.json", required=False) or {}).get("model_max_length")
    return int(value) if isinstance(value, (int, float)) and 2 <= value < 1e6 else None


def load(name_or_path=DEFAULT_MODEL, *, revision=None, cache_dir=None, local_files_only=False, dtype="float32"):
    """Load a sentence-transformers BERT/DistilBERT model from a directory or a hub id."""
    _compute_dtype(dtype)  # fail before any download
    if local_files_only or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        local_files_only = True
    found = resolve(name_or_path, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only)
    return SentenceEncoder(found.path, dtype=dtype, source=found.source)
