"""One small adapter per tokenizer family: pieces -> bytes, the dummy prefix, and offsets that tile the text.

`Tok` (tok.py) holds a `Family` and asks it three things; nothing downstream (W, audit, alignment) knows
which family a tokenizer belongs to:
  * `pieces_to_bytes(pieces)`: the canonical bytes of many vocabulary pieces at once (SPEC §1);
  * `prefix_free(spec)`: the same pipeline without a SentencePiece dummy prefix (for re-tokenizing bytes);
  * `offsets(...)`: byte offsets into the text that tile it (`tile_offsets` below is the shared rule).

Offsets, for every family (docs/CONTRACTS.md):
  * a token covers the text bytes it consumed. A special token spelled in the text (`<|begin_of_text|>`
    read by Llama-3 inside a sentence) covers its 17 bytes; [UNK] keeps the tokenizer's span;
  * special tokens the tokenizer adds (add_special_tokens=True: bos, [CLS], eos) have no byte in the
    text: they are empty spans at the end of the text before them;
  * bytes no token reports are claimed, so that the tokens tile the text: a combining mark NFC folded
    into the character before (Qwen's `é` for `e` + U+0301 covers bytes 0-3) goes to the token before;
    whitespace a pre-tokenizer drops (WordPiece) goes to the token after, where WordPiece's canonical
    bytes put a word's space; the same split for a gap holding both (non-whitespace before, whitespace
    after); a gap opening the text goes to the first token, one closing it to the last;
  * tokens sharing one character (byte-level pieces of a character whose text the tokenizer normalised,
    a lone dummy prefix `▁` and the first byte it stands before) share it: the only overlaps.
"""

from __future__ import annotations

import unicodedata

import numpy as np

SPIECE = "\u2581"  # '▁', SentencePiece's visible space
WHITESPACE = np.zeros(256, dtype=bool)
WHITESPACE[[9, 10, 11, 12, 13, 32]] = True


def _gpt2_byte_decoder() -> dict[str, int]:
    """The inverse of GPT-2's bytes_to_unicode table: printable stand-in char -> raw byte."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    chars, n = [], 0
    for b in range(256):
        if b in keep:
            chars.append(b)
        else:
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(range(256), chars)}


BYTE_DECODER = _gpt2_byte_decoder()
_BYTE_LEVEL_TABLE = str.maketrans({c: chr(b) for c, b in BYTE_DECODER.items()})


def utf8_char_lengths(text: str) -> np.ndarray:
    """UTF-8 length of every character of `text`, vectorised (no per-character Python loop)."""
    cps = np.frombuffer(text.encode("utf-32-le", errors="surrogatepass"), dtype=np.uint32)
    return 1 + (cps >= 0x80) + (cps >= 0x800) + (cps >= 0x10000)


def _split_packed(packed: bytes, byte_ends: np.ndarray) -> list[bytes]:
    starts = np.concatenate(([0], byte_ends[:-1])).tolist()
    return [packed[a:b] for a, b in zip(starts, byte_ends.tolist())]


def _utf8_split(text: str, char_ends: np.ndarray) -> list[bytes]:
    """`text` encoded, split at the given character ends."""
    byte_offsets = np.concatenate(([0], np.cumsum(utf8_char_lengths(text))))
    return _split_packed(text.encode("utf-8", errors="surrogatepass"), byte_offsets[char_ends])


def _is_punctuation(ch: str) -> bool:
    """BERT's notion: ASCII symbols and every Unicode P* character are split off without a space."""
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def tile_offsets(starts: np.ndarray, ends: np.ndarray, added: np.ndarray, raw: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Offsets that tile `raw` (module docstring): tokens not `added` claim the bytes no token reports.

    starts/ends: (n,) byte offsets as the tokenizer reports them (non-decreasing starts);
    added: (n,) bool, special tokens the tokenizer added (no byte in the text): pinned empty.
    """
    starts, ends = starts.copy(), ends.copy()
    if added.any():
        # post-processors report (0, 0) for the tokens they add wherever they stand: pin each one to
        # the end of the text before it
        ends = np.maximum.accumulate(np.where(added, 0, ends))
        starts = np.where(added, ends, np.minimum(starts, ends))
    text = np.flatnonzero(~added)
    if not len(text):
        return starts, ends
    s, e = starts[text], ends[text]
    reach = np.empty_like(e)  # how far the tokens before each one reach
    reach[0] = 0
    reach[1:] = np.maximum.accumulate(e)[:-1]
    gap = np.flatnonzero(s > reach)
    if len(gap):
        # a gap splits after its last non-whitespace byte: that part to the token before, the trailing
        # whitespace to the token after (all of it when the gap opens the text)
        solid = ~WHITESPACE[np.frombuffer(raw, dtype=np.uint8)]
        end_before = np.concatenate(([0], np.maximum.accumulate(np.where(solid, np.arange(1, len(raw) + 1), 0))))
        split = np.maximum(reach[gap], end_before[s[gap]])
        split[gap == 0] = 0
        back = split > reach[gap]
        e[gap[back] - 1] = np.maximum(e[gap[back] - 1], split[back])
        s[gap] = split
    if e.max() < len(raw):
        e[-1] = len(raw)
    starts[text], ends[text] = s, e
    return starts, ends


class Family:
    """A tokenizer.json pipeline without a family of its own: pieces are UTF-8 text."""

    name = "plain"
    has_dummy_prefix = False

    def __init__(self, spec: dict):
        self.spec = spec

    def pieces_to_bytes(self, pieces: list[str]) -> list[bytes]:
        """Canonical bytes of many pieces at once: one transform of the joined vocabulary, then a split."""
        char_ends = np.cumsum(np.fromiter(map(len, pieces), dtype=np.int64, count=len(pieces)))
        return _utf8_split(self._text_of("".join(pieces)), char_ends)

    def _text_of(self, joined: str) -> str:
        return joined

    def label(self, normalizes: tuple) -> str:
        """`Tok.family`: the family, plus the normalisations that make exact matches hold only up to case."""
        folds = [n for n in normalizes if n in ("lowercase", "strip_accents")]
        return "+".join([self.name] + folds)

    def prefix_free(self, spec: dict) -> dict:
        """The tokenizer.json of the same pipeline without a dummy prefix (identity here)."""
        return spec

    def hollow_spans(self, starts: np.ndarray, ends: np.ndarray, added: np.ndarray, raw: bytes):
        """Tokens whose whole bytes are not in the text (a lone dummy prefix): nothing to do here."""
        return starts, ends


class ByteLevel(Family):
    """GPT-2-style byte-level BPE: every piece character stands for one byte (`Ġ` = 0x20)."""

    name = "byte-level"

    def pieces_to_bytes(self, pieces: list[str]) -> list[bytes]:
        char_ends = np.cumsum(np.fromiter(map(len, pieces), dtype=np.int64, count=len(pieces)))
        # every stand-in char becomes one byte; latin-1 writes it as is
        packed = "".join(pieces).translate(_BYTE_LEVEL_TABLE).encode("latin-1", errors="strict")
        return _split_packed(packed, char_ends)

    def prefix_free(self, spec: dict) -> dict:
        return dict(spec, pre_tokenizer=_without_prefix_space(spec.get("pre_tokenizer")))


class SentencePiece(Family):
    """SentencePiece / Metaspace: `▁` is a space, `<0xNN>` byte-fallback pieces are byte NN (tok.py),
    and a dummy prefix `▁` may stand before the text."""

    name = "sentencepiece"

    def _text_of(self, joined: str) -> str:
        return joined.replace(SPIECE, " ")

    def prefix_free(self, spec: dict) -> dict:
        return dict(spec, normalizer=_without_prepend(spec.get("normalizer")),
                    pre_tokenizer=_without_prefix_space(spec.get("pre_tokenizer")))

    def hollow_spans(self, starts, ends, added, raw):
        """A dummy prefix `▁` standing alone has no byte in the text: it shares the first byte of the
        token after it (the character it is the space of), so it groups with that token."""
        hollow = np.flatnonzero(~added & (ends <= starts))
        if len(hollow) and len(raw):
            starts, ends = starts.copy(), ends.copy()
            starts[hollow] = np.minimum(starts[hollow], len(raw) - 1)
            ends[hollow] = starts[hollow] + 1
        return starts, ends


class WordPiece(Family):
    """BERT WordPiece: `##x` continues a word (bytes `x`); a piece without `##` starts one (` x`), except
    punctuation, which BERT splits off without a space. No dummy prefix."""

    name = "wordpiece"

    def pieces_to_bytes(self, pieces: list[str]) -> list[bytes]:
        cont = self.spec["model"].get("continuing_subword_prefix", "##")
        return [(p[len(cont):] if p.startswith(cont) else (p if len(p) == 1 and _is_punctuation(p) else " " + p)).encode()
                for p in pieces]


def _without_prepend(norm):
    if not norm:
        return norm
    if norm.get("type") == "Prepend":
        return None
    if norm.get("type") == "Sequence":
        norm = dict(norm, normalizers=[n for n in norm["normalizers"] if n.get("type") != "Prepend"])
    return norm


def _without_prefix_space(pre):
    if not pre:
        return pre
    if pre.get("type") == "Metaspace":
        return dict(pre, prepend_scheme="never", add_prefix_space=False)
    if pre.get("type") == "ByteLevel":
        return dict(pre, add_prefix_space=False)
    if pre.get("type") == "Sequence":
        return dict(pre, pretokenizers=[_without_prefix_space(p) for p in pre["pretokenizers"]])
    return pre


# -------------------------------------------------------------------- detection
def _walk(node):
    """Every component dict of a tokenizer.json pipeline (Sequences flattened)."""
    if isinstance(node, dict):
        yield node
        for key in ("normalizers", "pretokenizers", "decoders", "processors"):
            for child in node.get(key, []) or []:
                yield from _walk(child)


def _normalisations(spec: dict) -> tuple:
    norms = []
    for c in _walk(spec.get("normalizer")):
        t = c.get("type")
        if t in ("NFC", "NFKC", "NFD", "NFKD"):
            norms.append(t)
        elif t == "Lowercase" or (t == "BertNormalizer" and c.get("lowercase")):
            norms.append("lowercase")
        if t == "StripAccents" or (t == "BertNormalizer" and (c.get("strip_accents") or (c.get("strip_accents") is None and c.get("lowercase")))):
            norms.append("strip_accents")
        if t == "BertNormalizer" and c.get("clean_text"):
            norms.append("clean_text")
    return tuple(dict.fromkeys(norms))


def _adds_dummy_prefix(spec: dict) -> bool:
    return any(c.get("type") == "Prepend" for c in _walk(spec.get("normalizer"))) or any(
        (c.get("type") == "Metaspace" and c.get("prepend_scheme", "always" if c.get("add_prefix_space", True) else "never") != "never")
        or (c.get("type") == "ByteLevel" and c.get("add_prefix_space"))
        for c in _walk(spec.get("pre_tokenizer")))


def detect(spec: dict) -> tuple[Family, tuple, bool]:
    """(family adapter, normalisations, dummy_prefix) of a tokenizer.json."""
    model = spec.get("model", {})
    comps = [c.get("type") for part in ("normalizer", "pre_tokenizer", "decoder") for c in _walk(spec.get(part))]
    if model.get("type") == "WordPiece":
        return WordPiece(spec), _normalisations(spec), False
    if "ByteLevel" in comps:
        family = ByteLevel(spec)
    elif "Metaspace" in comps or any(c.get("content") == " " and (c.get("pattern") or {}).get("String") == SPIECE
                                     for c in _walk(spec.get("decoder"))):
        family = SentencePiece(spec)
    else:
        family = Family(spec)
    return family, _normalisations(spec), _adds_dummy_prefix(spec)
