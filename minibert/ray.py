"""Embedding a Ray Dataset: a class UDF for ``map_batches``, the model loaded once per actor.

    import ray, minibert.ray
    ds = ray.data.read_parquet("docs.parquet")
    ds = ds.map_batches(
        minibert.ray.Embedder,
        fn_constructor_kwargs={"model": "sentence-transformers/all-MiniLM-L6-v2"},
        concurrency=2,        # actors
        num_cpus=1,           # cores per actor: its worker threads
        batch_size=256,
    )
    ds.write_parquet("docs.emb/")   # every column of the input, plus "embedding"

Each actor runs as many worker threads as Ray gave it CPUs (``num_cpus``), so that N actors of C
CPUs use N x C cores and no more: actors do not fight over cores. Ray restarts an actor that dies
and retries its batch (Ray Data's default for actor pools); since every text's embedding is
computed alone, a retried batch gives the same bits. This module imports Ray only when asked for
the actor's resources; minibert never imports it otherwise.
"""

import os

import numpy as np

from .model import load


def _actor_cpus():  # -> the CPUs Ray assigned to this actor, or None outside Ray
    try:
        import ray

        if not ray.is_initialized():
            return None
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    except Exception:  # noqa: BLE001 (not in a Ray worker, or an older Ray without the call)
        return None
    return max(1, int(round(cpus))) if cpus else None


class Embedder:
    """``map_batches`` class UDF: ``column`` of each batch (texts) -> ``output_column`` ([n, dim]).

    ``threads`` defaults to the actor's CPUs (``num_cpus`` of map_batches, 1 unless given).
    ``model`` and the other keywords are ``minibert.load``'s (``dtype``, ``compute`` as its
    ``precision``, ``local_files_only``...); ``normalize_embeddings``, ``precision`` and
    ``encode_batch_size`` are ``encode``'s."""

    def __init__(
        self,
        model: str,
        *,
        column: str = "text",
        output_column: str = "embedding",
        threads: int | None = None,
        normalize_embeddings: bool = False,
        precision: str = "float32",
        compute: str = "float32",
        encode_batch_size: int = 32,
        **load_kwargs,
    ) -> None:
        n = threads or _actor_cpus() or None
        if n is not None:
            os.environ["MINIBERT_NUM_THREADS"] = str(n)  # read when the worker pool starts, on the first batch
            _limit_blas(n)
        self.model = load(model, precision=compute, **load_kwargs)
        self.column, self.output_column = column, output_column
        self.kwargs = dict(normalize_embeddings=normalize_embeddings, precision=precision, batch_size=encode_batch_size)

    def __call__(self, batch):  # {"text": [n] str, ...} -> the same columns plus "embedding": [n, dim]
        texts = _texts(batch, self.column)
        emb = self.model.encode(texts, **self.kwargs)
        if isinstance(batch, dict):
            return {**batch, self.output_column: emb}
        if hasattr(batch, "append_column"):  # batch_format="pyarrow"
            import pyarrow as pa

            flat = pa.array(np.ascontiguousarray(emb).reshape(-1))
            return batch.append_column(self.output_column, pa.FixedSizeListArray.from_arrays(flat, emb.shape[1]))
        out = batch.copy()  # batch_format="pandas"
        out[self.output_column] = list(emb)
        return out


def _texts(batch, column):  # a batch's text column -> list[str], or a clear error naming the row
    try:
        values = batch[column]
    except (KeyError, TypeError):
        names = list(batch.keys()) if isinstance(batch, dict) else list(getattr(batch, "column_names", batch))
        raise KeyError(f"minibert.ray.Embedder: the batch has no column {column!r} (it has {names})") from None
    if hasattr(values, "to_pylist"):
        values = values.to_pylist()
    elif hasattr(values, "tolist"):
        values = values.tolist()
    texts = []
    for i, t in enumerate(values):
        if isinstance(t, bytes):
            t = t.decode("utf-8")
        if not isinstance(t, str):
            raise TypeError(
                f"minibert.ray.Embedder: row {i} of the batch: column {column!r} is {type(t).__name__}, not a string"
            )
        texts.append(t)
    return texts


def _limit_blas(n):
    from . import threads

    controls = threads.blas_controls()
    if controls is not None:
        controls[0](n)
