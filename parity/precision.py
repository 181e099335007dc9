"""What a reduced precision costs: ``python -m minibert.parity MODEL --precision int8``.

The same texts through minibert in float32 and in int8, both measured against the float64 oracle
(transformers in float64 on the same weights), layer by layer, then where it matters to a user:

* layers      each layer's normwise relative error (max |a - b| / max |b|) of int8 from float64,
              beside float32's, and of int8 from minibert's own float32.
* embedding   the cosine of each text's int8 embedding to its float32 one: minimum and mean.
* retrieval   every text as a query against all the others: how many of float32's top 10 int8
              keeps (mean share over the queries).

Verdict: the minimum cosine to float32 at least ``MIN_COSINE`` (0.99). int8 rounds each weight and
each activation to one of 255 levels of its row's or column's range, a relative step of ~1/254;
a cosine of 0.99 is an angle of 8 degrees, the bar sentence-transformers' int8 exports clear on
retrieval models.
"""

import numpy as np

from minibert import plan

from .compare import rel_err

MIN_COSINE = 0.99
TOP_K = 10


def cosines(a, b):  # [n, D], [n, D] -> [n]
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)


def top_k_overlap(reduced, full, k=TOP_K):  # [n, D] x2 -> mean share of full's top k (others) that reduced keeps
    def tops(e):
        e = np.asarray(e, np.float64)
        e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-30)
        s = e @ e.T
        np.fill_diagonal(s, -np.inf)  # a text is not its own neighbour
        return np.argsort(-s, axis=1, kind="stable")[:, : min(k, len(e) - 1)]

    if len(full) < 2:
        return 1.0
    a, b = tops(reduced), tops(full)
    return float(np.mean([len(set(x) & set(y)) / len(y) for x, y in zip(a, b)]))


def compare_precision(reduced, full, texts, ref):  # int8 model, float32 model, texts, collect_reference(...)
    ids, truth = ref["ids"], ref["oracle_hidden"]
    with plan.forced("numba"):
        states_r, states_f = reduced.hidden_states(ids), full.hidden_states(ids)
        emb_r, emb_f = reduced.encode(texts), full.encode(texts)
    layers = []
    for layer in range(len(truth[0])):
        row = {"layer": layer, "name": "embeddings" if layer == 0 else f"block {layer}"}
        row["reduced_vs_float64"] = max(rel_err(r[layer], o[layer])[1] for r, o in zip(states_r, truth))
        row["float32_vs_float64"] = max(rel_err(f[layer], o[layer])[1] for f, o in zip(states_f, truth))
        row["reduced_vs_float32"] = max(rel_err(r[layer], f[layer])[1] for r, f in zip(states_r, states_f))
        layers.append(row)
    cos = cosines(emb_r, emb_f)
    oracle_cos = cosines(emb_r, ref["oracle_emb"])
    report = {
        "model": ref["model"],
        "precision": reduced.precision,
        "texts": len(texts),
        "layers": layers,
        "embedding": {
            "min_cosine_to_float32": float(cos.min()),
            "mean_cosine_to_float32": float(cos.mean()),
            "min_cosine_to_float64": float(oracle_cos.min()),
            "max_rel_to_float32": rel_err(emb_r, emb_f)[1],
        },
        "retrieval": {"top_k": TOP_K, "overlap_with_float32": top_k_overlap(emb_r, emb_f)},
        "min_cosine_required": MIN_COSINE,
    }
    report["pass"] = report["embedding"]["min_cosine_to_float32"] >= MIN_COSINE
    return report


def format_precision_report(r):  # report dict -> readable table
    lines = [
        f"parity: {r['model']}  ({r['precision']} dense layers against float32 and float64, {r['texts']} texts)",
        "",
        f"layer        {r['precision']} vs float64   float32 vs float64   {r['precision']} vs float32",
        "-" * 72,
    ]
    for row in r["layers"]:
        lines.append(
            f"{row['name']:<12} {row['reduced_vs_float64']:15.2e} {row['float32_vs_float64']:20.2e}"
            f" {row['reduced_vs_float32']:17.2e}"
        )
    e, t = r["embedding"], r["retrieval"]
    lines += [
        "",
        f"embedding   cosine to float32: min {e['min_cosine_to_float32']:.5f}, mean {e['mean_cosine_to_float32']:.5f}"
        f"; to float64: min {e['min_cosine_to_float64']:.5f}; max_rel {e['max_rel_to_float32']:.2e}",
        f"retrieval   top-{t['top_k']} overlap with float32 (each text against the others): "
        f"{100 * t['overlap_with_float32']:.1f}%",
        "",
        f"verdict     {'PASS' if r['pass'] else 'FAIL'} (min cosine to float32 >= {r['min_cosine_required']})",
    ]
    return "\n".join(lines)
