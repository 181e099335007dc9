"""Reading weights and configs: every dtype, every naming, and a clear error for every bad file."""

import json

import numpy as np
import pytest

import minibert
from minibert import CheckpointError, UnsupportedModelError
from minibert.parity.standins import standin_tensors
from minibert.weights import read_safetensors

from helpers import rel_err, tiny_spec, write_model

TEXTS = ["the printing press", "", "Café 北京 🍕"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = write_model(tmp_path_factory.mktemp("base") / "m")
    return d, minibert.load(d, dtype="float64").encode(TEXTS)


def to_bf16(a):  # float32 -> the raw top 16 bits, rounded to nearest even, as torch stores bfloat16
    bits = a.astype(np.float32).view(np.uint32).astype(np.uint64)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def write_bf16(path, tensors):  # safetensors.numpy cannot write BF16: write the format by hand
    header, blobs, offset = {}, [], 0
    for name, a in tensors.items():
        raw = to_bf16(a).tobytes()
        header[name] = {"dtype": "BF16", "shape": list(a.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    h = json.dumps(header).encode()
    path.write_bytes(len(h).to_bytes(8, "little") + h + b"".join(blobs))


@pytest.mark.parametrize("stored,tol", [("F16", 5e-3), ("BF16", 5e-2), ("F64", 1e-12)])
def test_dtypes_on_disk(tmp_path, base, stored, tol):
    base_dir, want = base
    t = standin_tensors(tiny_spec())
    if stored == "BF16":
        d = write_model(tmp_path / "m", tensors=t)
        write_bf16(d / "model.safetensors", t)
        rounded = {k: (to_bf16(v).astype(np.uint32) << 16).view(np.float32) for k, v in t.items()}
    else:
        np_dtype = {"F16": np.float16, "F64": np.float64}[stored]
        d = write_model(tmp_path / "m", tensors=t, stored=lambda v: v.astype(np_dtype))
        rounded = {k: v.astype(np_dtype).astype(np.float64) for k, v in t.items()}
    assert {x.dtype for x in read_safetensors(d / "model.safetensors").tensors.values()} == {stored}
    m = minibert.load(d, dtype="float64")
    # weights are upcast exactly: the model equals one built from the rounded values in float64
    exact = write_model(tmp_path / "exact", tensors={k: np.asarray(v, np.float64) for k, v in rounded.items()})
    assert rel_err(m.encode(TEXTS), minibert.load(exact, dtype="float64").encode(TEXTS)) < 1e-12
    assert rel_err(m.encode(TEXTS), want) < tol  # and close to the unrounded model


@pytest.mark.parametrize("rename", ["prefix", "legacy_ln", "extra"])
def test_tensor_naming_variants(tmp_path, base, rename):
    base_dir, want = base
    t = standin_tensors(tiny_spec())
    if rename == "prefix":  # saved from BertForMaskedLM & co: "bert." in front, plus an MLM head
        t = {"bert." + k: v for k, v in t.items()}
        t["cls.predictions.bias"] = np.zeros(30522, np.float32)
    elif rename == "legacy_ln":  # TF-era names
        t = {
            k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
            for k, v in t.items()
        }
    else:  # buffers and heads an encoder does not use
        t["embeddings.position_ids"] = np.arange(512, dtype=np.int64)[None]
    d = write_model(tmp_path / "m", tensors=t)
    assert rel_err(minibert.load(d, dtype="float64").encode(TEXTS), want) < 1e-12


def test_missing_tensor_is_named(tmp_path):
    t = standin_tensors(tiny_spec())
    del t["encoder.layer.1.attention.self.key.weight"]
    d = write_model(tmp_path / "m", tensors=t)
    with pytest.raises(CheckpointError, match=r"missing tensor 'encoder\.layer\.1\.attention\.self\.key\.weight'"):
        minibert.load(d)


def test_misshaped_tensor_is_named_with_shapes(tmp_path):
    t = standin_tensors(tiny_spec())
    t["encoder.layer.0.intermediate.dense.weight"] = np.zeros((63, 32), np.float32)
    d = write_model(tmp_path / "m", tensors=t)
    with pytest.raises(
        CheckpointError,
        match=r"'encoder\.layer\.0\.intermediate\.dense\.weight' has shape \(63, 32\), expected \(64, 32\)",
    ):
        minibert.load(d)


def test_integer_weights_rejected(tmp_path):
    t = standin_tensors(tiny_spec())
    t["embeddings.LayerNorm.bias"] = np.zeros(32, np.int32)
    with pytest.raises(CheckpointError, match="embeddings.LayerNorm.bias.*I32"):
        minibert.load(write_model(tmp_path / "m", tensors=t))


@pytest.mark.parametrize(
    "damage,match",
    [
        (lambda b: b[: len(b) // 2], "truncated or corrupt"),
        (lambda b: b[:5], "truncated safetensors file"),
        (lambda b: (10**9).to_bytes(8, "little") + b[8:], "header claims"),
        (lambda b: b[:8] + b"\xff" + b[9:], "corrupt safetensors header"),
        (lambda b: b[:8] + b"[" + b[9:], "corrupt safetensors header"),
        (lambda b: b"", "truncated safetensors file"),
    ],
)
def test_corrupt_safetensors(tmp_path, damage, match):
    d = write_model(tmp_path / "m")
    f = d / "model.safetensors"
    f.write_bytes(damage(f.read_bytes()))
    with pytest.raises(CheckpointError, match=match) as e:
        minibert.load(d)
    assert "model.safetensors" in str(e.value)


def test_directory_without_weights(tmp_path):
    d = write_model(tmp_path / "m")
    (d / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors: not found"):
        minibert.load(d)
    (d / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="convert it"):
        minibert.load(d)


def test_directory_without_config_or_tokenizer(tmp_path):
    d = write_model(tmp_path / "m")
    for f in ("tokenizer.json", "vocab.txt"):
        (d / f).unlink()
    with pytest.raises(CheckpointError, match="no tokenizer"):
        minibert.load(d)
    (d / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json: not found"):
        minibert.load(d)


def test_missing_path_and_file_path(tmp_path):
    with pytest.raises(CheckpointError, match="no such directory"):
        minibert.load(str(tmp_path / "nope" / "deeper" / "model"))
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(CheckpointError, match="is a file"):
        minibert.load(f)


@pytest.mark.parametrize(
    "change,error,match",
    [
        ({"model_type": "roberta"}, UnsupportedModelError, "model_type 'roberta' is not supported"),
        ({"model_type": None}, UnsupportedModelError, "model_type None"),
        ({"hidden_act": "swish"}, UnsupportedModelError, "activation 'swish' is not supported"),
        ({"position_embedding_type": "relative_key"}, UnsupportedModelError, "relative_key"),
        ({"num_attention_heads": 5}, CheckpointError, "not divisible by 5"),
        ({"hidden_size": None}, CheckpointError, "missing field 'hidden_size'"),
    ],
)
def test_bad_config(tmp_path, change, error, match):
    spec = tiny_spec()
    from minibert.parity.standins import model_config

    cfg = {**model_config(spec), **change}
    cfg = {k: v for k, v in cfg.items() if v is not None or k == "model_type"}
    with pytest.raises(error, match=match):
        minibert.load(write_model(tmp_path / "m", spec, config=cfg))


def test_sinusoidal_distilbert_rejected(tmp_path):
    spec = tiny_spec(arch="distilbert")
    from minibert.parity.standins import model_config

    with pytest.raises(UnsupportedModelError, match="sinusoidal"):
        minibert.load(write_model(tmp_path / "m", spec, config={**model_config(spec), "sinusoidal_pos_embds": True}))


def test_activation_names(tmp_path):
    from minibert.parity.standins import model_config

    spec = tiny_spec()
    out = {}
    for act in ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu"):
        m = minibert.load(write_model(tmp_path / act, spec, config={**model_config(spec), "hidden_act": act}))
        out[act] = m.encode(TEXTS)
        assert m.config.activation == {"gelu": "gelu_erf", "relu": "relu"}.get(act, "gelu_tanh")
    np.testing.assert_array_equal(out["gelu_new"], out["gelu_pytorch_tanh"])
    assert not np.allclose(out["gelu"], out["gelu_new"], atol=1e-6)
    assert not np.allclose(out["gelu"], out["relu"], atol=1e-3)


def test_invalid_config_json(tmp_path):
    d = write_model(tmp_path / "m")
    (d / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json: not valid JSON"):
        minibert.load(d)


def test_nan_weights_never_give_a_silent_embedding(tmp_path):
    t = standin_tensors(tiny_spec())
    t["encoder.layer.1.output.dense.weight"][3, 5] = np.nan
    m = minibert.load(write_model(tmp_path / "m", tensors=t))
    with pytest.raises(minibert.MinibertError, match="text 0 is not finite"):
        m.encode(["hello"])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("arch", ["bert", "distilbert"])
def test_matrices_are_exact_transposed_copies(tmp_path, arch, dtype):
    # Widths that are not multiples of the transposing copy's 16 (float32) or 8 (float64) columns
    # per pass, so that every tensor ends in a partial pass and Q | K | V share the fused matrix.
    spec = tiny_spec(arch=arch, dim=36, heads=4, ffn=70)
    t = standin_tensors(spec)
    w = minibert.load(write_model(tmp_path / "m", spec=spec, tensors=t), dtype=dtype).weights
    names = {
        "bert": (
            "encoder.layer.{i}.",
            "attention.self.query",
            "attention.self.key",
            "attention.self.value",
            "attention.output.dense",
            "intermediate.dense",
            "output.dense",
        ),
        "distilbert": (
            "transformer.layer.{i}.",
            "attention.q_lin",
            "attention.k_lin",
            "attention.v_lin",
            "attention.out_lin",
            "ffn.lin1",
            "ffn.lin2",
        ),
    }[arch]
    for i, lw in enumerate(w.layers):
        p = names[0].format(i=i)
        want_qkv = np.concatenate([t[p + n + ".weight"].T for n in names[1:4]], axis=1)
        for got, want in [
            (lw.qkv_w, want_qkv),
            (lw.attn_out_w, t[p + names[4] + ".weight"].T),
            (lw.ffn_in_w, t[p + names[5] + ".weight"].T),
            (lw.ffn_out_w, t[p + names[6] + ".weight"].T),
        ]:
            assert got.dtype == np.dtype(dtype) and got.flags.c_contiguous and got.flags.writeable
            assert got.ctypes.data % 64 == 0  # on a cache line: the query kernel's vector loads never straddle two
            np.testing.assert_array_equal(got, want.astype(dtype))
