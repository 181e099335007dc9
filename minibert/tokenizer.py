"""Word-piece tokenization with the ``tokenizers`` library, set up the way sentence-transformers is.

From ``tokenizer.json`` when the checkpoint has one, else built from ``vocab.txt`` (+
``tokenizer_config.json``) exactly as transformers' BertTokenizer builds it. Whatever padding or
truncation a ``tokenizer.json`` has baked in is switched off (all-MiniLM-L6-v2's pads every text to
128!) and replaced by right truncation at the model's ``max_seq_length``, [CLS] and [SEP] included.
"""

import json
import re
import unicodedata
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece

from .errors import CheckpointError, boolean, read_json

_SURROGATE = re.compile("[\ud800-\udfff]")
# Pieces of a tokenizer.json whose output for a text's start does not depend on what follows a
# whitespace or punctuation character: with these, a long text can be cut there before tokenizing.
_LOCAL_NORMALIZERS = {"BertNormalizer", "Lowercase", "NFD", "NFKD", "NFC", "NFKC", "StripAccents", "Strip"}
_LOCAL_PRE_TOKENIZERS = {"BertPreTokenizer", "Whitespace", "WhitespaceSplit", "Punctuation", "Digits"}
CHARS_PER_TOKEN = 16  # a long text is first cut to this many characters per token kept, then more if need be


def _token_str(value, default):  # tokenizer_config stores special tokens as str or {"content": str}
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else default


def _wordpiece_from_vocab(vocab_path, tok_cfg, cfg_path):  # Path, dict -> Tokenizer (what BertTokenizer builds)
    vocab = {}
    try:
        with open(vocab_path, encoding="utf-8") as f:
            for index, line in enumerate(f):
                vocab.setdefault(line.rstrip("\n"), index)
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{vocab_path}: cannot be read as UTF-8 text ({e})") from None
    special = {k: _token_str(tok_cfg.get(k + "_token"), f"[{k.upper()}]") for k in ("unk", "sep", "pad", "cls", "mask")}
    for name in ("cls", "sep", "unk"):
        if special[name] not in vocab:
            raise CheckpointError(f"{vocab_path}: the {name} token {special[name]!r} is not in the vocabulary")
    lower = boolean(tok_cfg.get("do_lower_case", True), f"{cfg_path}: field 'do_lower_case'")
    strip_accents = tok_cfg.get("strip_accents")
    if strip_accents is not None:
        boolean(strip_accents, f"{cfg_path}: field 'strip_accents'")
    chinese = boolean(tok_cfg.get("tokenize_chinese_chars", True), f"{cfg_path}: field 'tokenize_chinese_chars'")
    tok = Tokenizer(WordPiece(vocab, unk_token=special["unk"]))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=chinese, strip_accents=strip_accents, lowercase=lower
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


def _is_local(part, allowed, key):  # a tokenizer.json piece (or Sequence of them) made only of `allowed` types
    if part is None:
        return True
    if not isinstance(part, dict):
        return False
    if part.get("type") == "Sequence":
        return all(_is_local(p, allowed, key) for p in part.get(key, []))
    return part.get("type") in allowed


def _boundary(text, end):  # -> the last index <= end just after a whitespace or punctuation character, or None
    for i in range(end, end // 2, -1):
        c = text[i - 1]
        if c.isspace() or unicodedata.category(c).startswith("P") or (c.isascii() and not c.isalnum()):
            return i
    return None


def _panic(e):  # is this the Rust panic that tokenizers raises (a BaseException, not an Exception)?
    return type(e).__name__ == "PanicException"


class WordPieceTokenizer:
    def __init__(self, model_dir, max_seq_length, do_lower_case=False):
        model_dir = Path(model_dir)
        tok_json, vocab_txt = model_dir / "tokenizer.json", model_dir / "vocab.txt"
        if tok_json.is_file():
            try:
                tok = Tokenizer.from_file(str(tok_json))
            except BaseException as e:  # tokenizers raises a bare Exception, or a Rust panic, on a bad file
                if not (isinstance(e, Exception) or _panic(e)):
                    raise
                raise CheckpointError(f"{tok_json}: cannot be read by tokenizers ({str(e)[:200]})") from None
            self.path = tok_json
        elif vocab_txt.is_file():
            cfg_path = model_dir / "tokenizer_config.json"
            tok = _wordpiece_from_vocab(vocab_txt, read_json(cfg_path, required=False) or {}, cfg_path)
            self.path = vocab_txt
        else:
            raise CheckpointError(f"{model_dir}: no tokenizer (expected tokenizer.json or vocab.txt)")
        tok.no_padding()
        # sentence-transformers' do_lower_case puts a Lowercase step in front of the normalizer.
        if do_lower_case and not _lowercases(tok.normalizer):
            tok.normalizer = normalizers.Sequence(
                [normalizers.Lowercase()] + ([tok.normalizer] if tok.normalizer else [])
            )
        self.tok = tok
        vocab = tok.get_vocab(with_added_tokens=True)
        self.vocab_size = len(vocab)
        self.largest_id = max(vocab.values(), default=-1)  # ids index the embedding table: the largest must fit
        self.specials = tok.num_special_tokens_to_add(False)
        spec = json.loads(tok.to_str())
        model = spec.get("model") or {}
        # A text can be cut short before tokenizing only if its first tokens do not depend on what
        # follows the cut, and a word longer than the cut's slack becomes [UNK] either way.
        self.cuttable = (
            _is_local(spec.get("normalizer"), _LOCAL_NORMALIZERS, "normalizers")
            and _is_local(spec.get("pre_tokenizer"), _LOCAL_PRE_TOKENIZERS, "pretokenizers")
            and model.get("type") == "WordPiece"
            and isinstance(model.get("max_input_chars_per_word"), int)
        )
        self.max_word = model.get("max_input_chars_per_word", 100) if self.cuttable else None
        self.set_max_length(max_seq_length)

    def set_max_length(self, max_seq_length):  # tokens per text, [CLS] and [SEP] included
        if max_seq_length < self.specials:  # (tokenizers would then not truncate at all)
            raise ValueError(f"max_seq_length {max_seq_length} leaves no room for a token beside the {self.specials} "
                             f"special tokens {self.path} adds")  # fmt: skip
        self.tok.enable_truncation(max_length=max_seq_length, strategy="longest_first", direction="right", stride=0)
        self.max_seq_length = max_seq_length

    def encode(self, texts):  # list[str] -> list of [n_i] int64 arrays, [CLS] ... [SEP], n_i <= max_seq_length
        for i, t in enumerate(texts):
            if (m := _SURROGATE.search(t)) is not None:
                raise ValueError(
                    f"sentences[{i}] holds a lone surrogate (U+{ord(m.group()):04X}) at character {m.start()}: "
                    "not valid Unicode text (decode the input with errors='replace' to keep it)"
                )
        # Surrounding whitespace never makes a word piece; stripping matches sentence-transformers.
        texts = [t.strip() for t in texts]
        # A text of a million characters keeps only its first max_seq_length tokens: tokenizing all
        # of it would cost memory and time in proportion to what is thrown away. So a long text is
        # cut at a word boundary first, and cut longer only if its start did not fill the tokens.
        budget = CHARS_PER_TOKEN * self.max_seq_length
        cut = [self._cut(t, budget) if self.cuttable else t for t in texts]
        encodings = self._encode_batch(cut)
        ids = []
        for i, (t, c, e) in enumerate(zip(texts, cut, encodings)):
            while len(c) < len(t) and len(e.ids) < self.max_seq_length:
                c = self._cut(t, 2 * len(c))
                e = self._encode_batch([c], first=i)[0]
            if not e.ids:
                raise ValueError(
                    f"sentences[{i}] has no tokens: the tokenizer ({self.path}) adds no [CLS] or [SEP] and the text "
                    "has no word pieces, so there is nothing to embed"
                )
            ids.append(np.asarray(e.ids, dtype=np.int64))
        return ids

    def _cut(self, text, budget):  # -> text, or its start up to a clean boundary near budget characters
        if len(text) <= budget:
            return text
        at = _boundary(text, budget)
        if at is None:  # half the budget without a boundary: one word longer than max_input_chars_per_word
            if budget // 2 <= self.max_word:
                return text  # (cannot happen with a sane budget; never cut where it could change a token)
            at = budget
        return text[:at]

    def _encode_batch(self, texts, first=0):  # -> list of Encoding; a tokenizer panic names its text
        try:
            return self.tok.encode_batch(texts)
        except BaseException as e:
            if not (isinstance(e, Exception) or _panic(e)):
                raise
            for i, t in enumerate(texts):  # find the text that fails
                try:
                    self.tok.encode(t)
                except BaseException as err:
                    if not (isinstance(err, Exception) or _panic(err)):
                        raise
                    raise ValueError(f"sentences[{first + i}]: the tokenizer in {self.path} fails on this text "
                                     f"({type(err).__name__}: {str(err)[:200]})") from None  # fmt: skip
            raise ValueError(f"the tokenizer in {self.path} fails on this batch ({str(e)[:200]})") from None

    def prompt_length(self, prompt):  # str -> the tokens a prompt puts before a text, [CLS] included
        """As sentence-transformers counts them: the prompt tokenized alone, less its trailing [SEP]."""
        e = self._encode_batch([prompt.strip()])[0]
        return len(e.ids) - (1 if e.ids and e.special_tokens_mask[-1] else 0)

    def tokens(self, text):  # str -> list[str], for display
        return self.tok.encode(text.strip()).tokens
