"""``python -m minibert.parity MODEL``: the command-line face of minibert.parity.compare."""

import argparse
import json
import sys
import warnings
from pathlib import Path

from . import hf
from .compare import collect_reference, compare
from .precision import compare_precision, format_precision_report


def read_texts(path):  # .txt (one text per line) or .json (a list of strings) -> list[str]
    p = Path(path)
    try:
        raw = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SystemExit(f"parity: cannot read --texts {p}: {e}") from None
    if p.suffix == ".json":
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as e:
            raise SystemExit(f"parity: --texts {p} is not valid JSON: {e}") from None
        if not isinstance(data, list) or not all(isinstance(t, str) for t in data):
            raise SystemExit(f"parity: --texts {p} must hold a JSON list of strings")
        return data
    return raw.split("\n")[:-1] if raw.endswith("\n") else raw.split("\n")


def format_report(r):  # report dict -> readable table
    lines = [f"parity: {r['model']}  ({r['dtype']}, {r['texts']} texts, {r['n_tokens']} tokens)", ""]
    t = r["tokens"]
    lines.append(f"tokens      {t['mismatches']} mismatching text(s)")
    if t["first_mismatch"]:
        f = t["first_mismatch"]
        lines.append(
            f"            first: text {f['text']} at token {f['position']}: minibert {f['minibert']} "
            f"vs transformers {f['transformers']}  ({f['snippet']!r})"
        )
    lines += [
        "",
        "layer          max_abs    max_rel   worst (text, token, channel)   vs float64: minibert    torch  allowed",
        "-" * 112,
    ]
    for row in r["layers"]:
        w = row["worst"]
        lines.append(
            f"{row['name']:<12} {row['max_abs']:9.2e} {row['max_rel']:10.2e}   "
            f"({w['text']:>3}, {w['token']:>3}, {w['channel']:>4})"
            f"                  {row['oracle_minibert_rel']:9.2e} {row['oracle_torch_rel']:9.2e} {row['allowed']:8.2e}"
            f"  {'ok' if row['pass'] else 'FAIL'}"
        )
    e, o = r["embedding"], r["oracle"]
    lines += [
        "",
        f"embedding   max_abs {e['max_abs']:.2e}  max_rel {e['max_rel']:.2e}  min cosine {e['min_cosine']:.9f}",
        f"oracle      vs float64 transformers: minibert {o['minibert_max_abs']:.2e} abs / "
        f"{o['minibert_max_rel']:.2e} rel,"
        f" torch {o['torch_max_abs']:.2e} abs / {o['torch_max_rel']:.2e} rel -> closer: {o['closer']}",
        f"one per call minibert {e['one_at_a_time']['minibert_max_rel']:.2e} rel from float64"
        f" ({e['one_at_a_time']['vs_batched_max_rel']:.2e} from its batched result)"
        f"  {'ok' if e['one_at_a_time']['pass'] else 'FAIL'}",
        f"             one text runs on: {e['one_at_a_time'].get('plan', '?')}",
        f"NumPy path  minibert {e['numpy_path']['minibert_max_rel']:.2e} rel from float64"
        f" ({e['numpy_path']['vs_numba_max_rel']:.2e} from the Numba path; {e['numpy_path']['texts_identical']}"
        f" of {r['texts']} texts the same bits)  {'ok' if e['numpy_path']['pass'] else 'FAIL'}",
        "",
    ]
    if r["pass"]:
        rule = (
            "minibert within 1e-12 relative of float64 transformers"
            if r["dtype"] == "float64"
            else "minibert's error from float64 <= 2 x torch fp32's + 2.4e-7, at every layer and the embedding"
        )
        lines.append(f"verdict     PASS ({rule})")
    else:
        lines.append("verdict     FAIL")
        lines += [f"            - {f}" for f in r["failures"]]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(
        prog="python -m minibert.parity",
        description=(
            "Compare minibert with transformers and sentence-transformers on MODEL: token ids, every layer's "
            "hidden states, the pooled embedding, and both against a float64 oracle. Exit 0 within tolerance, 1 not."
        ),
    )
    ap.add_argument("model", help="model directory or hub id")
    ap.add_argument("--texts", help=".txt (one text per line) or .json (list of strings); default: the suite's own set")
    ap.add_argument("--json", dest="json_out", metavar="OUT", help="also write the full report as JSON")
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    ap.add_argument(
        "--precision",
        choices=["float32", "int8"],
        default="float32",
        help="int8: what minibert's int8 dense layers cost, against its float32 and the float64 oracle",
    )
    args = ap.parse_args(argv)
    if args.precision != "float32" and args.dtype != "float32":
        raise SystemExit("parity: --precision int8 compares against float32; leave --dtype at float32")
    warnings.filterwarnings("ignore")
    import minibert

    texts = read_texts(args.texts) if args.texts else hf.default_texts()
    if not texts:
        raise SystemExit("parity: no texts to compare")
    try:
        model = minibert.load(args.model, dtype=args.dtype)
    except (minibert.MinibertError, ValueError, TypeError) as e:
        raise SystemExit(f"parity: {e}") from None
    progress = lambda m: print(f"... {m}", file=sys.stderr, flush=True)
    ref = collect_reference(model.path, texts, args.dtype, progress)
    if args.precision != "float32":
        progress(f"minibert in {args.precision} and in float32")
        reduced = minibert.load(model.path, precision=args.precision)
        report = compare_precision(reduced, model, texts, ref)
        print(format_precision_report(report))
    else:
        report = compare(model, texts, ref, progress)
        print(format_report(report))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2))
    return 0 if report["pass"] else 1
