"""Compare minibert with transformers / sentence-transformers on one model, number by number.

What is compared, and how (the same inputs go through every implementation):

* tokens      minibert's token ids against what sentence-transformers feeds its model, text by text.
* layers      hidden states after the embeddings (layer 0) and after each encoder block, minibert
              against transformers' AutoModel, both fed transformers' token ids (so a tokenizer
              difference cannot hide or fake an encoder difference), one text at a time.
* embedding   the pooled (and normalized, if the model does) sentence embedding, minibert against
              sentence-transformers' encode; and minibert's embeddings again, one text per call
              (the query path: a short text's dense layers run in minibert's own matmul kernel,
              not BLAS), which must pass the same rule; and once more on the NumPy path (the
              kernels' NumPy mirrors, which a short call takes before Numba has started).
* oracle      transformers in float64 on the same weights: the reference both fp32 implementations
              are measured against, per layer and for the embedding.

Errors are "normwise relative": max |a - b| over a layer (or embedding) divided by max |b|.
Element-wise relative errors explode near zero and say nothing; this one is fp32's scale (2^-24
~ 6e-8 per rounding).

Verdict (``pass``): no token mismatch; and for every layer and the embedding, minibert's error
against the float64 oracle is at most twice torch fp32's own error plus a floor of 4 fp32 ulps
(2.4e-7; in float64 mode: 1e-12). Torch's own fp32 drift from float64 is ~1e-6 relative: that is
what honest fp32 can promise, and the suite asks minibert to be no worse than twice it.
"""

import numpy as np

from minibert import plan

from . import hf

FP32_FLOOR = 4 * 2.0**-24  # 2.4e-7: a few fp32 roundings, below which "twice torch's error" is noise
FP64_TOL = 1e-12  # float64 implementations agree to this (only summation order differs)
OUTLIER_RATIO = 2.0  # minibert may drift at most this many times torch fp32's own drift


def rel_err(a, b):  # normwise relative error, and the index of the worst element
    diff = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    scale = max(float(np.abs(b).max()), 1e-30)
    worst = np.unravel_index(int(diff.argmax()), diff.shape) if diff.size else ()
    return float(diff.max()) if diff.size else 0.0, float(diff.max()) / scale if diff.size else 0.0, worst


def allowed(torch_err, dtype):  # how far minibert may be from the oracle
    if dtype == "float64":
        return FP64_TOL
    return OUTLIER_RATIO * torch_err + FP32_FLOOR


def collect_reference(model_dir, texts, dtype="float32", progress=lambda msg: None):
    """Everything the Hugging Face side says about ``texts``: token ids, per-layer hidden states,
    sentence embeddings, and the same from the float64 oracle. Computed once, compared many times."""
    progress("loading sentence-transformers (compute dtype and float64 oracle)")
    st = hf.load_sentence_transformer(model_dir, dtype)
    oracle = st if dtype == "float64" else hf.load_sentence_transformer(model_dir, "float64")
    progress("transformers: token ids, hidden states, embeddings")
    ids = hf.st_token_ids(st, texts)
    hidden = hf.hf_hidden_states(st, ids)
    emb = hf.st_embeddings(st, texts)
    if oracle is st:
        return dict(
            model=str(model_dir), dtype=dtype, ids=ids, hidden=hidden, emb=emb, oracle_hidden=hidden, oracle_emb=emb
        )
    progress("transformers float64 oracle")
    return dict(
        model=str(model_dir),
        dtype=dtype,
        ids=ids,
        hidden=hidden,
        emb=emb,
        oracle_hidden=hf.hf_hidden_states(oracle, ids),
        oracle_emb=hf.st_embeddings(oracle, texts),
    )


def compare(model, texts, ref, progress=lambda msg: None):
    """Hold a loaded minibert ``model`` against ``ref`` (from collect_reference); return the report dict."""
    dtype = ref["dtype"]
    ref_ids, theirs, truth = ref["ids"], ref["hidden"], ref["oracle_hidden"]

    # ---- tokens
    ours = model.tokenize(texts)
    mismatches, first = 0, None
    for i, (a, b) in enumerate(zip(ours, ref_ids)):
        if not np.array_equal(a, b):
            mismatches += 1
            if first is None:
                pos = next((p for p in range(min(len(a), len(b))) if a[p] != b[p]), min(len(a), len(b)))
                first = {
                    "text": i,
                    "position": int(pos),
                    "minibert": a[pos : pos + 5].tolist(),
                    "transformers": b[pos : pos + 5].tolist(),
                    "snippet": texts[i][:60],
                }

    # ---- layers (both fed transformers' ids)
    progress("minibert: hidden states")
    with plan.forced("numba"):  # the Numba kernels, whatever the call's size; the NumPy path is checked below
        mine = model.hidden_states(ref_ids)
    layers = []
    for layer in range(len(theirs[0])):
        row = {"layer": layer, "name": "embeddings" if layer == 0 else f"block {layer}"}
        worst_abs, worst_where = -1.0, None
        mb_rel = torch_rel = max_rel = 0.0
        for t, (m, h, o) in enumerate(zip(mine, theirs, truth)):
            a, r, where = rel_err(m[layer], h[layer])
            if a > worst_abs:
                worst_abs, worst_where = a, {"text": t, "token": int(where[0]), "channel": int(where[1])}
            max_rel = max(max_rel, r)
            mb_rel = max(mb_rel, rel_err(m[layer], o[layer])[1])
            torch_rel = max(torch_rel, rel_err(h[layer], o[layer])[1])
        row.update(
            max_abs=worst_abs,
            max_rel=max_rel,
            worst=worst_where,
            oracle_minibert_rel=mb_rel,
            oracle_torch_rel=torch_rel,
            allowed=allowed(torch_rel, dtype),
        )
        row["pass"] = mb_rel <= row["allowed"]
        layers.append(row)

    # ---- pooled embedding
    progress("minibert: sentence embeddings")
    with plan.forced("numba"):
        emb = model.encode(texts)
    st_emb, oracle_emb = ref["emb"], ref["oracle_emb"]
    cos = (emb * st_emb).sum(1) / np.maximum(np.linalg.norm(emb, axis=1) * np.linalg.norm(st_emb, axis=1), 1e-30)
    e_abs, e_rel, e_where = rel_err(emb, st_emb)
    o_mb_abs, o_mb_rel, _ = rel_err(emb, oracle_emb)
    o_t_abs, o_t_rel, _ = rel_err(st_emb, oracle_emb)
    embedding = {
        "max_abs": e_abs,
        "max_rel": e_rel,
        "min_cosine": float(cos.min()) if len(cos) else 1.0,
        "worst": {"text": int(e_where[0]), "channel": int(e_where[1])} if e_where else None,
    }
    oracle_report = {
        "minibert_max_abs": o_mb_abs,
        "torch_max_abs": o_t_abs,
        "minibert_max_rel": o_mb_rel,
        "torch_max_rel": o_t_rel,
        "allowed_rel": allowed(o_t_rel, dtype),
        "closer": (
            "n/a: in float64, transformers is the oracle"
            if dtype == "float64"
            else "minibert"
            if o_mb_abs < o_t_abs
            else "torch"
            if o_t_abs < o_mb_abs
            else "tie"
        ),
    }
    embedding["pass"] = o_mb_rel <= oracle_report["allowed_rel"]
    with plan.forced("numba"):
        one = np.stack([model.encode(t) for t in texts]) if texts else emb
    one_rel = rel_err(one, oracle_emb)[1]
    embedding["one_at_a_time"] = {
        "minibert_max_rel": one_rel,
        "vs_batched_max_rel": rel_err(one, emb)[1],
        "pass": one_rel <= oracle_report["allowed_rel"],
        "plan": _describe(model, [len(t) for t in model.tokenize(texts[:1])] or [8]),
    }
    with plan.forced("numpy"):  # the path a process takes before Numba starts (minibert/plan.py)
        by_numpy = np.stack([model.encode(t) for t in texts]) if texts else emb
    numpy_rel = rel_err(by_numpy, oracle_emb)[1]
    embedding["numpy_path"] = {
        "minibert_max_rel": numpy_rel,
        "vs_numba_max_rel": rel_err(by_numpy, one)[1],
        "texts_identical": int((by_numpy == one).all(axis=1).sum()),
        "pass": numpy_rel <= oracle_report["allowed_rel"],
    }

    failures = []
    if mismatches:
        failures.append(f"tokens: {mismatches} text(s) tokenized differently (first: text {first['text']})")
    bad_layer = next((r for r in layers if not r["pass"]), None)
    if bad_layer:
        failures.append(
            f"layers: drift starts at layer {bad_layer['layer']} ({bad_layer['name']}): "
            f"{bad_layer['oracle_minibert_rel']:.3g} from float64 vs allowed {bad_layer['allowed']:.3g}"
        )
    if not embedding["pass"]:
        failures.append(f"embedding: {o_mb_rel:.3g} from float64 vs allowed {oracle_report['allowed_rel']:.3g}")
    if not embedding["one_at_a_time"]["pass"]:
        failures.append(
            f"embedding, one text per call: {one_rel:.3g} from float64 vs allowed {oracle_report['allowed_rel']:.3g}"
        )
    if not embedding["numpy_path"]["pass"]:
        failures.append(
            f"embedding, NumPy path: {numpy_rel:.3g} from float64 vs allowed {oracle_report['allowed_rel']:.3g}"
        )
    return {
        "model": ref["model"],
        "dtype": dtype,
        "texts": len(texts),
        "n_tokens": int(sum(len(x) for x in ref_ids)),
        "tokens": {"mismatches": mismatches, "first_mismatch": first},
        "layers": layers,
        "embedding": embedding,
        "oracle": oracle_report,
        "tolerances": {"ratio_to_torch": OUTLIER_RATIO, "fp32_floor": FP32_FLOOR, "fp64": FP64_TOL},
        "failures": failures,
        "first_failing_layer": bad_layer["layer"] if bad_layer else None,
        "pass": not failures,
    }


def _describe(model, lengths):  # -> how minibert/plan.py runs a call of these lengths on Numba, in words
    with plan.forced("numba"), plan.plan(model, lengths, "sentence_embedding") as p:
        return plan.describe(p)
