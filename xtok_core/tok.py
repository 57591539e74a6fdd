"""Tokenizers as byte sequences.

Tokens are compared by the bytes they contribute to text (SPEC §1), never by their display strings.
Each tokenizer family needs one small adapter that turns the vocabulary's piece strings into those
bytes; everything downstream (W, audit, alignment) sees only `Tok.token_bytes` and byte offsets.

Sources `load_tokenizer` accepts, tried in this order:
  1. a bundled name (`bundled_tokenizers()`; aliases such as `llama-3` and `qwen`),
  2. a path to a `tokenizer.json` (optionally `.gz`) or a local Hugging Face directory,
  3. a hub id `org/name` (needs the network; offline it fails with a one-line error).
`trust_remote_code` is never enabled: a directory without a `tokenizer.json` goes through
`transformers.AutoTokenizer(..., trust_remote_code=False)` and must give a fast tokenizer.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import unicodedata
import zlib
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from .errors import XtokError

ASSETS = Path(str(resources.files("xtok_core") / "assets" / "tokenizers"))
DEFAULT_STUDENT = "llama-3.2"
DEFAULT_TEACHER = "qwen2.5"
ALIASES = {
    "llama-3": "llama-3.2", "llama3": "llama-3.2", "llama": "llama-3.2",
    "qwen": "qwen2.5", "qwen2": "qwen2.5", "mistral": "mistral-7b", "phi-3": "phi-3-mini",
    "o200k": "gpt-4o", "o200k_base": "gpt-4o", "deepseek": "deepseek-v3",
}
ROLES = ("bos", "eos", "pad", "unk")
SPIECE = "\u2581"  # '▁', SentencePiece's visible space
_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def bundled_tokenizers() -> list[str]:
    """Names of the tokenizers that ship with xtok (no hub access needed)."""
    return sorted(p.name for p in ASSETS.iterdir() if (p / "tokenizer.json.gz").is_file())


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


def _utf8_char_lengths(text: str) -> np.ndarray:
    """UTF-8 length of every character of `text`, vectorised (no per-character Python loop)."""
    cps = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    return 1 + (cps >= 0x80) + (cps >= 0x800) + (cps >= 0x10000)


def _split_packed(packed: bytes, byte_ends: np.ndarray) -> list[bytes]:
    starts = np.concatenate(([0], byte_ends[:-1])).tolist()
    return [packed[a:b] for a, b in zip(starts, byte_ends.tolist())]


def _pieces_to_bytes(pieces: list[str], family: str) -> list[bytes]:
    """Canonical bytes of many vocabulary pieces at once: one string transform over the joined
    vocabulary, then a split at the pieces' byte boundaries."""
    joined = "".join(pieces)
    char_ends = np.cumsum(np.fromiter(map(len, pieces), dtype=np.int64, count=len(pieces)))
    if family == "byte-level":
        # Every stand-in char becomes one byte; latin-1 writes it as is.
        packed = joined.translate(_BYTE_LEVEL_TABLE).encode("latin-1", errors="strict")
        return _split_packed(packed, char_ends)
    text = joined.replace(SPIECE, " ") if family == "sentencepiece" else joined
    byte_offsets = np.concatenate(([0], np.cumsum(_utf8_char_lengths(text))))
    return _split_packed(text.encode("utf-8", errors="surrogatepass"), byte_offsets[char_ends])


@dataclass(frozen=True)
class TokenizerRef:
    """Where a tokenizer came from: enough to find it again and to check it is the same one."""

    name: str
    source: str
    sha256: str


@dataclass
class Encoding:
    """One text's tokenization.

    ids:     (n,) int64 token ids.
    offsets: (n, 2) int64 byte offsets [start, end) into `text.encode("utf-8")`. Special tokens have
             empty spans. Spans are non-decreasing; tokens that share one character the tokenizer
             normalised (NFC, lower-casing) share that character's whole byte span.
    prefix:  bytes at the start of the token bytes that the text does not have (a SentencePiece
             dummy prefix `▁`): 0 or 1.
    """

    ids: np.ndarray
    offsets: np.ndarray
    prefix: int = 0

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(eq=False)
class Tok:
    """A tokenizer seen as bytes. Build it with `load_tokenizer`.

    vocab_size is the largest id + 1 (the number of rows/columns W needs); ids that no token uses
    (o200k's 200,000-200,017) are `holes` and behave like padding.
    """

    name: str
    source: str
    sha256: str
    family: str
    backend: Tokenizer = field(repr=False)
    token_bytes: list = field(repr=False)           # id -> bytes | None (special or hole)
    special: np.ndarray = field(repr=False)         # (V,) bool: special added tokens
    holes: np.ndarray = field(repr=False)           # (V,) bool: ids no token uses
    byte_fallback_ids: np.ndarray = field(repr=False)  # (V,) bool: `<0xNN>` pieces
    roles: dict = field(default_factory=dict)       # "bos"/"eos"/"pad"/"unk" -> id
    normalizes: tuple = ()                          # e.g. ("NFC",) or ("lowercase", "strip_accents")
    dummy_prefix: bool = False                      # adds `▁`/` ` before text the way SentencePiece does
    config: dict = field(default_factory=dict, repr=False)

    # ---------------------------------------------------------------- identity
    @property
    def vocab_size(self) -> int:
        return len(self.token_bytes)

    @property
    def ref(self) -> TokenizerRef:
        return TokenizerRef(self.name, self.source, self.sha256)

    def __repr__(self) -> str:
        return f"Tok({self.name!r}, family={self.family!r}, vocab_size={self.vocab_size}, sha256={self.sha256[:12]}…)"

    # ---------------------------------------------------------------- bytes
    def canonical_bytes(self, token_id: int) -> bytes | None:
        """The bytes token `token_id` contributes to text; None for special tokens and id holes."""
        if not 0 <= token_id < self.vocab_size:
            raise XtokError(f"token id {token_id} is outside {self.name}'s vocabulary (0..{self.vocab_size - 1}); pass an id of this tokenizer")
        return self.token_bytes[token_id]

    @cached_property
    def byte_lengths(self) -> np.ndarray:
        """(V,) int64 length of every token's canonical bytes (0 for special tokens and holes)."""
        return np.fromiter((0 if b is None else len(b) for b in self.token_bytes), dtype=np.int64, count=self.vocab_size)

    @cached_property
    def bytes_index(self) -> dict:
        """canonical bytes -> id over every non-special token, with W's tie rule (SPEC §2.1): several ids
        with the same bytes (a piece and its `<0xNN>` byte-fallback twin) resolve to the regular piece,
        then to the lowest id. The one index W's exact-match pass, NeMo imports and token search use."""
        arr = np.empty(self.vocab_size, dtype=object)
        arr[:] = self.token_bytes
        has = np.not_equal(arr, None) & ~self.special
        # dict(zip()) keeps the last value per key: feed fallback twins first and ids high to low
        feed = np.concatenate([np.flatnonzero(has & self.byte_fallback_ids)[::-1],
                               np.flatnonzero(has & ~self.byte_fallback_ids)[::-1]])
        return dict(zip(arr[feed].tolist(), feed.tolist()))

    def id_of_bytes(self, b: bytes) -> int | None:
        """The id whose canonical bytes are `b` (see `bytes_index` for ties); None if no token has them."""
        return self.bytes_index.get(bytes(b))

    def ids_of_bytes(self, byte_strings) -> np.ndarray:
        """(n,) int64 `id_of_bytes` of many byte strings at once, -1 where no token has them."""
        get = self.bytes_index.get
        return np.fromiter((get(b, -1) for b in byte_strings), dtype=np.int64)

    def token_text(self, token_id: int) -> str:
        """A printable form of the token: its bytes decoded with replacement, or its name if special."""
        b = self.token_bytes[token_id]
        if b is None:
            return self.backend.id_to_token(token_id) or f"<hole {token_id}>"
        return b.decode("utf-8", errors="backslashreplace")

    def role_of(self, token_id: int) -> str | None:
        for role, i in self.roles.items():
            if i == token_id:
                return role
        return None

    # ---------------------------------------------------------------- encoding
    @cached_property
    def _backend_no_prefix(self) -> Tokenizer:
        """The same tokenizer without the SentencePiece dummy prefix: re-tokenizing a student token's
        bytes must not invent a leading space the bytes don't have (SPEC §2.2)."""
        if not self.dummy_prefix:
            return self.backend
        spec = json.loads(self.backend.to_str())
        spec["normalizer"] = _without_prepend(spec.get("normalizer"))
        spec["pre_tokenizer"] = _without_metaspace_prefix(spec.get("pre_tokenizer"))
        return Tokenizer.from_str(json.dumps(spec))

    def encode(self, text: str, add_special_tokens: bool = False, *, dummy_prefix: bool = True) -> Encoding:
        """Tokenize `text` as the model sees it, with byte offsets (see `Encoding`)."""
        return self.encode_batch([text], add_special_tokens, dummy_prefix=dummy_prefix)[0]

    def encode_batch(self, texts: list[str], add_special_tokens: bool = False, *, dummy_prefix: bool = True) -> list[Encoding]:
        backend = self.backend if dummy_prefix else self._backend_no_prefix
        encs = backend.encode_batch_fast(list(texts), add_special_tokens=add_special_tokens)
        return [self._with_byte_offsets(t, e, backend, add_special_tokens) for t, e in zip(texts, encs)]

    def encode_ids_batch(self, texts: list[str], *, dummy_prefix: bool = True) -> list[list[int]]:
        """Ids only, no special tokens: the fast path for building W."""
        backend = self.backend if dummy_prefix else self._backend_no_prefix
        return [e.ids for e in backend.encode_batch_fast(list(texts), add_special_tokens=False)]

    def _with_byte_offsets(self, text: str, enc, backend: Tokenizer, add_special_tokens: bool) -> Encoding:
        ids = np.asarray(enc.ids, dtype=np.int64)
        lens = self.byte_lengths[ids] if len(ids) else np.zeros(0, np.int64)
        raw = text.encode("utf-8", errors="surrogatepass")
        total = int(lens.sum())
        prefix = 0
        if self.dummy_prefix and total == len(raw) + 1:
            first = np.flatnonzero(lens)
            if len(first) and self.token_bytes[ids[first[0]]][:1] == b" ":
                prefix = 1
        unchanged = not self.normalizes or (self.normalizes == ("NFC",) and unicodedata.is_normalized("NFC", text))
        if unchanged and total - prefix == len(raw):
            # The tokens' bytes are the text's bytes: offsets are a running sum. This is exact even
            # where byte-level tokens split one character.
            ends = np.maximum(np.cumsum(lens) - prefix, 0)
            starts = np.maximum(ends - lens, 0)
        else:
            # The tokenizer changed the text (NFC, lower-casing, dropped whitespace): map its
            # character offsets into the original text to bytes.
            char_to_byte = np.concatenate(([0], np.cumsum(_utf8_char_lengths(text))))
            # (encode_batch_fast skips offsets; only texts that take this path pay for them)
            enc = backend.encode(text, add_special_tokens=add_special_tokens)
            co = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)
            starts, ends = char_to_byte[co[:, 0]], char_to_byte[co[:, 1]]
            special = self.special[ids]
            if special.any():
                # post-processors report (0, 0) for special tokens wherever they stand: pin each
                # one to the end of the text before it.
                ends = np.maximum.accumulate(np.where(special, 0, ends))
                starts = np.where(special, ends, np.minimum(starts, ends))
        offsets = np.stack([starts, ends], axis=1).astype(np.int64) if len(ids) else np.zeros((0, 2), np.int64)
        return Encoding(ids, offsets, prefix)

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self.backend.decode(list(map(int, ids)), skip_special_tokens=skip_special_tokens)


def _without_prepend(norm):
    if not norm:
        return norm
    if norm.get("type") == "Prepend":
        return None
    if norm.get("type") == "Sequence":
        norm = dict(norm, normalizers=[n for n in norm["normalizers"] if n.get("type") != "Prepend"])
    return norm


def _without_metaspace_prefix(pre):
    if not pre:
        return pre
    if pre.get("type") == "Metaspace":
        return dict(pre, prepend_scheme="never", add_prefix_space=False)
    if pre.get("type") == "ByteLevel":
        return dict(pre, add_prefix_space=False)
    if pre.get("type") == "Sequence":
        return dict(pre, pretokenizers=[_without_metaspace_prefix(p) for p in pre["pretokenizers"]])
    return pre


# -------------------------------------------------------------------- family detection
def _walk(node):
    """Every component dict of a tokenizer.json pipeline (Sequences flattened)."""
    if isinstance(node, dict):
        yield node
        for key in ("normalizers", "pretokenizers", "decoders", "processors"):
            for child in node.get(key, []) or []:
                yield from _walk(child)


def _describe(spec: dict) -> tuple[str, tuple, bool]:
    """(family, normalisations, dummy_prefix) of a tokenizer.json."""
    model = spec.get("model", {})
    comps = [c.get("type") for part in ("normalizer", "pre_tokenizer", "decoder") for c in _walk(spec.get(part))]
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
    dummy = any(c.get("type") == "Prepend" for c in _walk(spec.get("normalizer"))) or any(
        (c.get("type") == "Metaspace" and c.get("prepend_scheme", "always" if c.get("add_prefix_space", True) else "never") != "never")
        or (c.get("type") == "ByteLevel" and c.get("add_prefix_space"))
        for c in _walk(spec.get("pre_tokenizer")))
    if model.get("type") == "WordPiece":
        family = "wordpiece"
    elif "ByteLevel" in comps:
        family = "byte-level"
    elif "Metaspace" in comps or any(c.get("content") == " " and (c.get("pattern") or {}).get("String") == SPIECE
                                     for c in _walk(spec.get("decoder"))):
        family = "sentencepiece"
    else:
        family = "plain"
    if model.get("type") == "WordPiece":
        dummy = False
    return family, tuple(dict.fromkeys(norms)), dummy


def _is_punctuation(ch: str) -> bool:
    """BERT's notion: ASCII symbols and every Unicode P* character are split off without a space."""
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _vocab_bytes(spec: dict, backend: Tokenizer, family: str, vocab_size: int):
    """Canonical bytes for every id, plus the special / hole / byte-fallback masks."""
    vocab = backend.get_vocab(with_added_tokens=True)
    added = {a["id"]: a for a in spec.get("added_tokens", [])}
    ids = np.fromiter(vocab.values(), dtype=np.int64, count=len(vocab))
    pieces = np.full(vocab_size, "", dtype=object)
    pieces[ids] = np.array(list(vocab.keys()), dtype=object)
    holes = np.ones(vocab_size, dtype=bool)
    holes[ids] = False
    is_added = np.zeros(vocab_size, dtype=bool)
    is_added[list(added)] = True
    special = np.zeros(vocab_size, dtype=bool)
    special[[i for i, a in added.items() if a.get("special")]] = True
    regular = np.flatnonzero(~holes & ~is_added)
    reg_pieces = pieces[regular].tolist()
    if family == "wordpiece":
        cont = spec["model"].get("continuing_subword_prefix", "##")
        reg_bytes = [(p[len(cont):] if p.startswith(cont) else (p if len(p) == 1 and _is_punctuation(p) else " " + p)).encode()
                     for p in reg_pieces]
    else:
        reg_bytes = _pieces_to_bytes(reg_pieces, family)
    out = np.full(vocab_size, None, dtype=object)
    out[regular] = np.array(reg_bytes + [None], dtype=object)[:-1]  # the None keeps numpy from making a 2-D bytes array
    fallback = np.zeros(vocab_size, dtype=bool)
    if spec.get("model", {}).get("byte_fallback"):
        for i in regular[np.fromiter(map(len, reg_pieces), np.int64, len(reg_pieces)) == 6].tolist():
            m = _BYTE_FALLBACK.match(pieces[i])
            if m:
                out[i] = bytes([int(m.group(1), 16)])
                fallback[i] = True
    for i, a in added.items():
        if not a.get("special"):
            out[i] = a["content"].encode("utf-8")
    return out.tolist(), special, holes, fallback


def _role_ids(spec: dict, config: dict, vocab: dict) -> dict:
    roles = {}
    for role in ROLES:
        v = config.get(f"{role}_token")
        if isinstance(v, dict):
            v = v.get("content")
        if v is None and role == "unk":
            v = spec.get("model", {}).get("unk_token")
        if isinstance(v, str) and v in vocab:
            roles[role] = vocab[v]
    return roles


# -------------------------------------------------------------------- loading
def _tok_from_bytes(name: str, source: str, raw: bytes, config: dict) -> Tok:
    try:
        text = raw.decode("utf-8")
        spec = json.loads(text)
        backend = Tokenizer.from_str(text)
    except Exception as e:  # noqa: BLE001 - any parse failure is the same user problem
        reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise XtokError(f"{source} is not a readable tokenizer.json ({reason}); re-download it or pass another tokenizer") from None
    family, norms, dummy = _describe(spec)
    vocab = backend.get_vocab(with_added_tokens=True)
    vocab_size = max(vocab.values()) + 1
    token_bytes, special, holes, fallback = _vocab_bytes(spec, backend, family, vocab_size)
    if norms and ("lowercase" in norms or "strip_accents" in norms):
        family_label = f"{family}+" + "+".join(n for n in norms if n in ("lowercase", "strip_accents"))
    else:
        family_label = family
    return Tok(name=name, source=source, sha256=hashlib.sha256(raw).hexdigest(), family=family_label,
               backend=backend, token_bytes=token_bytes, special=special, holes=holes,
               byte_fallback_ids=fallback, roles=_role_ids(spec, config, vocab), normalizes=norms,
               dummy_prefix=dummy, config=config)


def _read_config(directory: Path) -> dict:
    p = directory / "tokenizer_config.json"
    if not p.is_file():
        return {}
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except Exception:  # noqa: BLE001
        raise XtokError(f"{p} is not valid JSON; fix or delete it (roles then come from tokenizer.json)") from None


_CACHE: dict = {}


def load_tokenizer(source: "str | os.PathLike | Tok") -> Tok:
    """Load a tokenizer by bundled name, tokenizer.json path, local HF directory or hub id."""
    if isinstance(source, Tok):
        return source
    key = str(source)
    name = ALIASES.get(key.lower(), key)
    bundled = ASSETS / name
    if (bundled / "tokenizer.json.gz").is_file():
        path = bundled / "tokenizer.json.gz"
        stat = path.stat()
        ck = ("bundled", name, stat.st_mtime_ns, stat.st_size)
        if ck not in _CACHE:
            raw = gzip.decompress(path.read_bytes())
            _CACHE[ck] = _tok_from_bytes(name, f"bundled:{name}", raw, _read_config(bundled))
        return _CACHE[ck]
    path = Path(os.path.expanduser(key))
    if path.exists():
        return _load_path(path)
    if re.fullmatch(r"[\w.-]+/[\w.-]+", key) and not key.startswith((".", "/")):
        return _load_hub(key)
    known = ", ".join(bundled_tokenizers())
    raise XtokError(f"unknown tokenizer {key!r}: not a bundled name ({known}), not an existing path, not a hub id; pass one of those")


def _load_path(path: Path) -> Tok:
    if path.is_dir():
        for candidate in ("tokenizer.json", "tokenizer.json.gz"):
            if (path / candidate).is_file():
                return _load_file(path / candidate, _read_config(path))
        return _load_auto(path)
    return _load_file(path, _read_config(path.parent))


def _load_file(path: Path, config: dict) -> Tok:
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
    except (gzip.BadGzipFile, EOFError, zlib.error):  # before OSError: BadGzipFile is one
        raise XtokError(f"{path} is not a valid gzip file; re-download it or pass the plain tokenizer.json") from None
    except OSError as e:
        raise XtokError(f"cannot read {path} ({e.strerror or e}); check the path and its permissions") from None
    stat = path.stat()
    ck = ("file", str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if ck not in _CACHE:
        name = path.parent.name if path.name.startswith("tokenizer.json") else path.stem
        _CACHE[ck] = _tok_from_bytes(name or path.name, str(path), raw, config)
    return _CACHE[ck]


def _load_auto(path: Path) -> Tok:
    """A local HF directory without tokenizer.json: let transformers convert it (no remote code)."""
    if not any((path / f).is_file() for f in ("tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")):
        raise XtokError(f"{path} holds no tokenizer.json, tokenizer_config.json or tokenizer.model; pass a tokenizer directory or file")
    try:
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False, local_files_only=True)
        backend = hf.backend_tokenizer
    except Exception as e:  # noqa: BLE001
        first = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise XtokError(f"transformers could not load a fast tokenizer from {path} ({first}); save it with tokenizer.save_pretrained() to get a tokenizer.json") from None
    return _tok_from_bytes(path.name, str(path), backend.to_str().encode("utf-8"), _read_config(path))


def _load_hub(repo_id: str) -> Tok:
    """A hub id. Real code: downloads tokenizer.json (+config) through huggingface_hub's cache."""
    try:
        from huggingface_hub import hf_hub_download

        tj = hf_hub_download(repo_id, "tokenizer.json")
    except Exception as e:  # noqa: BLE001
        kind = type(e).__name__
        raise XtokError(f"cannot fetch tokenizer {repo_id!r} from the Hugging Face hub ({kind}: offline or not found); "
                        f"download it elsewhere and pass the local path to its tokenizer.json or directory") from None
    config = {}
    try:
        config = json.loads(Path(hf_hub_download(repo_id, "tokenizer_config.json")).read_text())
    except Exception:  # noqa: BLE001 - the config only adds role names
        pass
    tok = _load_file(Path(tj), config)
    tok.name = repo_id
    return tok
