"""minibert.ray.Embedder on a local Ray cluster (2 CPUs), over a real corpus: the STS Benchmark
test split's 2,758 sentences. Every row bit-identical to ``model.encode`` of its text, one worker
thread per actor CPU, and a run that survives an actor SIGKILLed mid-way."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minibert
import minibert.ray

ray = pytest.importorskip("ray")  # (CI installs the ray extra and refuses any skipped test)
STS = Path(__file__).resolve().parents[2] / "shared" / "data" / "stsbenchmark-test.tsv"


@pytest.fixture(scope="module")
def texts():
    if not STS.is_file():
        pytest.fail(f"the real corpus {STS} is missing (../shared/data holds the STS Benchmark test split)")
    rows = [line.rstrip("\n").split("\t") for line in STS.read_text(encoding="utf-8").splitlines()]
    out = [r[5] for r in rows] + [r[6] for r in rows]
    assert len(out) >= 2000
    return out


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the test's UDF, for the workers
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


class KilledOnce(minibert.ray.Embedder):
    """Kills its own actor (SIGKILL, as the OOM killer or a lost node would) on the batch holding
    row ``kill_row``, once: a marker file remembers that it did. Also reports its worker threads."""

    def __init__(self, marker, kill_row, **kwargs):
        super().__init__(**kwargs)
        self.marker, self.kill_row = marker, kill_row

    def __call__(self, batch):
        if self.kill_row in batch["id"] and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        from minibert import threads

        out = super().__call__(batch)
        out["workers"] = np.full(len(batch["id"]), threads.n_workers())
        return out


def embedded(path):  # a written dataset -> (ids, [n, dim] embeddings, the other columns), in id order
    rows = sorted(ray.data.read_parquet(str(path)).take_all(), key=lambda r: r["id"])
    return [r["id"] for r in rows], np.stack([r["embedding"] for r in rows]), rows


def test_embedder_on_a_local_cluster_equals_encode(cluster, texts, minilm_dir, tmp_path):
    ds = ray.data.from_items([{"id": i, "text": t} for i, t in enumerate(texts)])
    ds = ds.map_batches(
        minibert.ray.Embedder,
        fn_constructor_kwargs={"model": str(minilm_dir)},
        concurrency=2,
        num_cpus=1,
        batch_size=200,
    )
    ds.write_parquet(str(tmp_path / "out"))
    ids, emb, rows = embedded(tmp_path / "out")
    assert ids == list(range(len(texts))) and [r["text"] for r in rows] == texts
    want = minibert.load(minilm_dir).encode(texts)
    assert emb.dtype == np.float32 and emb.shape == want.shape
    np.testing.assert_array_equal(emb, want)  # bit for bit


def test_an_actor_killed_mid_way_is_retried_and_the_output_is_complete(cluster, texts, minilm_dir, tmp_path):
    marker = tmp_path / "killed"
    ds = ray.data.from_items([{"id": i, "text": t} for i, t in enumerate(texts)])
    ds = ds.map_batches(
        KilledOnce,
        fn_constructor_kwargs={"marker": str(marker), "kill_row": 1500, "model": str(minilm_dir)},
        concurrency=2,
        num_cpus=1,
        batch_size=250,
    )
    ds.write_parquet(str(tmp_path / "out"))
    assert marker.exists()  # the actor did die
    ids, emb, rows = embedded(tmp_path / "out")
    assert ids == list(range(len(texts)))  # every row once: none lost, none twice
    np.testing.assert_array_equal(emb, minibert.load(minilm_dir).encode(texts))
    assert {int(r["workers"]) for r in rows} == {1}  # one thread per actor CPU: 2 actors on 2 cores


def test_embedder_batch_formats_and_errors(tiny_model_dir):
    import pandas as pd
    import pyarrow as pa

    e = minibert.ray.Embedder(model=str(tiny_model_dir), threads=1)
    want = minibert.load(tiny_model_dir).encode(["a b", "c"])
    np.testing.assert_array_equal(e({"text": np.array(["a b", "c"], dtype=object)})["embedding"], want)
    df = e(pd.DataFrame({"text": ["a b", "c"], "n": [1, 2]}))
    np.testing.assert_array_equal(np.stack(df["embedding"]), want) and list(df["n"]) == [1, 2]
    tab = e(pa.table({"text": ["a b", "c"]}))
    np.testing.assert_array_equal(np.stack(tab.column("embedding").to_numpy(zero_copy_only=False)), want)
    with pytest.raises(KeyError, match=r"no column 'text' \(it has \['body'\]\)"):
        e({"body": np.array(["x"])})
    with pytest.raises(TypeError, match="row 1 of the batch: column 'text' is NoneType, not a string"):
        e({"text": np.array(["x", None], dtype=object)})


def test_minibert_never_imports_ray():
    code = (
        "import sys, minibert, minibert.ray, minibert.corpus, minibert.cli\n"
        "from minibert.parity.standins import TOKENIZER_DIR\n"
        "assert 'ray' not in sys.modules and 'pyarrow' not in sys.modules, "
        "[m for m in sys.modules if m.startswith(('ray', 'pyarrow'))]\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from helpers import write_model

    return write_model(tmp_path_factory.mktemp("ray") / "tiny")
