"""Word-piece tokenization with the ``tokenizers`` library, set up the way sentence-transformers is.

From ``tokenizer.json`` when the checkpoint has one, else built from ``vocab.txt`` (+
``tokenizer_config.json``) exactly as transformers' BertTokenizer builds it. Whatever padding or
truncation a ``tokenizer.json`` has baked in is switched off (all-MiniLM-L6-v2's pads every text to
128!) and replaced by right truncation at the model's ``max_seq_length``, [CLS] and [SEP] included.
"""

from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece

from .errors import CheckpointError, read_json


def _token_str(value, default):  # tokenizer_config stores special tokens as str or {"content": str}
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else default


def _wordpiece_from_vocab(vocab_path, tok_cfg):  # Path, dict -> Tokenizer (what BertTokenizer builds)
    vocab = {}
    with open(vocab_path, encoding="utf-8") as f:
        for index, line in enumerate(f):
            vocab[line.rstrip("\n")] = index
    special = {k: _token_str(tok_cfg.get(k + "_token"), f"[{k.upper()}]") for k in ("unk", "sep", "pad", "cls", "mask")}
    for name in ("cls", "sep", "unk"):
        if special[name] not in vocab:
            raise CheckpointError(f"{vocab_path}: the {name} token {special[name]!r} is not in the vocabulary")
    lower = bool(tok_cfg.get("do_lower_case", True))
    tok = Tokenizer(WordPiece(vocab, unk_token=special["unk"]))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=bool(tok_cfg.get("tokenize_chinese_chars", True)),
        strip_accents=tok_cfg.get("strip_accents"),
        lowercase=lower,
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    cls, sep = special["cls"], special["sep"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls}:0 $A:0 {sep}:0",
        pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
        special_tokens=[(cls, vocab[cls]), (sep, vocab[sep])],
    )
    # Special tokens are "added tokens": a literal "[CLS]" in a text becomes id 101, as in transformers.
    tok.add_special_tokens([special[k] for k in ("unk", "sep", "pad", "cls", "mask") if special[k] in vocab])
    return tok


def _lowercases(normalizer):  # does this normalizer already contain a Lowercase step?
    if isinstance(normalizer, normalizers.Lowercase):
        return True
    if isinstance(normalizer, normalizers.Sequence):
        return any(isinstance(n, normalizers.Lowercase) for n in normalizer)
    return False


class WordPieceTokenizer:
    def __init__(self, model_dir, max_seq_length, do_lower_case=False):
        model_dir = Path(model_dir)
        tok_json, vocab_txt = model_dir / "tokenizer.json", model_dir / "vocab.txt"
        if tok_json.is_file():
            try:
                tok = Tokenizer.from_file(str(tok_json))
            except Exception as e:  # tokenizers raises a bare Exception on a bad file
                raise CheckpointError(f"{tok_json}: cannot be read by tokenizers ({e})") from None
        elif vocab_txt.is_file():
            tok = _wordpiece_from_vocab(vocab_txt, read_json(model_dir / "tokenizer_config.json", required=False) or {})
        else:
            raise CheckpointError(f"{model_dir}: no tokenizer (expected tokenizer.json or vocab.txt)")
        tok.no_padding()
        # sentence-transformers' do_lower_case puts a Lowercase step in front of the normalizer.
        if do_lower_case and not _lowercases(tok.normalizer):
            tok.normalizer = normalizers.Sequence(
                [normalizers.Lowercase()] + ([tok.normalizer] if tok.normalizer else [])
            )
        tok.enable_truncation(max_length=max_seq_length, strategy="longest_first", direction="right", stride=0)
        self.tok, self.max_seq_length = tok, max_seq_length
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)

    def encode(self, texts):  # list[str] -> list of [n_i] int64 arrays, [CLS] ... [SEP], n_i <= max_seq_length
        # Surrounding whitespace never makes a word piece; stripping matches sentence-transformers.
        return [np.asarray(e.ids, dtype=np.int64) for e in self.tok.encode_batch([t.strip() for t in texts])]

    def tokens(self, text):  # str -> list[str], for display
        return self.tok.encode(text.strip()).tokens
