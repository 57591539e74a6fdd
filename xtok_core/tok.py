"""Tokenizers as byte sequences.

Tokens are compared by the bytes they contribute to text (SPEC §1), never by their display strings.
Each tokenizer family has one small adapter (families.py: byte-level BPE, SentencePiece with or
without dummy prefix, WordPiece) for its pieces' bytes, its dummy prefix and offsets that tile the
text; everything downstream (W, audit, alignment) sees only `Tok.token_bytes`, `Tok.bytes_index` and
byte offsets.

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
from .families import BYTE_DECODER, SPIECE, Family, detect, tile_offsets, utf8_char_lengths  # noqa: F401 (re-exported)

ASSETS = Path(str(resources.files("xtok_core") / "assets" / "tokenizers"))
DEFAULT_STUDENT = "llama-3.2"
DEFAULT_TEACHER = "qwen2.5"
ALIASES = {
    "llama-3": "llama-3.2", "llama3": "llama-3.2", "llama": "llama-3.2",
    "qwen": "qwen2.5", "qwen2": "qwen2.5", "mistral": "mistral-7b", "phi-3": "phi-3-mini",
    "o200k": "gpt-4o", "o200k_base": "gpt-4o", "deepseek": "deepseek-v3",
}
ROLES = ("bos", "eos", "pad", "unk")
_utf8_char_lengths = utf8_char_lengths  # the name modules imported before the family adapters moved
_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def bundled_tokenizers() -> list[str]:
    """Names of the tokenizers that ship with xtok (no hub access needed)."""
    return sorted(p.name for p in ASSETS.iterdir() if (p / "tokenizer.json.gz").is_file())


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
    offsets: (n, 2) int64 byte offsets [start, end) into `text.encode("utf-8")` that tile the text
             (families.py): every token covers the bytes it consumed, a special token spelled in the
             text and [UNK] included; special tokens the tokenizer adds (bos, eos) are empty spans;
             bytes no token reports (a combining mark NFC folded, whitespace WordPiece drops) are
             claimed by a neighbour. Spans are non-decreasing; only tokens that share one character
             overlap (byte pieces of a normalised character, a lone dummy prefix and its next byte).
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
    adapter: Family = field(default=None, repr=False)  # the family's quirks (families.py)

    @property
    def folds_case(self) -> bool:
        """The tokenizer lower-cases or strips accents: exact matches hold only up to case."""
        return "lowercase" in self.normalizes or "strip_accents" in self.normalizes

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
        return Tokenizer.from_str(json.dumps(self.adapter.prefix_free(json.loads(self.backend.to_str()))))

    @cached_property
    def _backend_plain(self) -> Tokenizer:
        """No dummy prefix, and special-token text read as text: `<s>` is `<`, `s`, `>`."""
        plain = Tokenizer.from_str(self._backend_no_prefix.to_str())
        plain.encode_special_tokens = True
        return plain

    def encode(self, text: str, add_special_tokens: bool = False, *, dummy_prefix: bool = True) -> Encoding:
        """Tokenize `text` as the model sees it, with byte offsets (see `Encoding`)."""
        return self.encode_batch([text], add_special_tokens, dummy_prefix=dummy_prefix)[0]

    def encode_batch(self, texts: list[str], add_special_tokens: bool = False, *, dummy_prefix: bool = True) -> list[Encoding]:
        backend = self.backend if dummy_prefix else self._backend_no_prefix
        encs = backend.encode_batch_fast(list(texts), add_special_tokens=add_special_tokens)
        return [self._with_byte_offsets(t, e, backend, add_special_tokens) for t, e in zip(texts, encs)]

    def encode_ids_batch(self, texts: list[str], *, dummy_prefix: bool = True) -> list[list[int]]:
        """Ids only, no special tokens added (special-token text in `texts` is read as the model reads it)."""
        backend = self.backend if dummy_prefix else self._backend_no_prefix
        return [e.ids for e in backend.encode_batch_fast(list(texts), add_special_tokens=False)]

    def retokenize_batch(self, texts: list[str]) -> list[list[int]]:
        """Ids of `texts` as plain text, the re-tokenize pass of W (SPEC §2.2): no special tokens added,
        none parsed out of the text (Qwen's plain token `<s>` is `<`,`s`,`>` for Mistral, not its bos),
        no dummy prefix the bytes don't have."""
        return [e.ids for e in self._backend_plain.encode_batch_fast(list(texts), add_special_tokens=False)]

    @cached_property
    def _special_lengths(self) -> np.ndarray:
        """(V,) bytes of every special token's text as it is spelled in a text (0 for others)."""
        out = np.zeros(self.vocab_size, np.int64)
        for i in np.flatnonzero(self.special).tolist():
            out[i] = len((self.backend.id_to_token(i) or "").encode("utf-8"))
        return out

    def _with_byte_offsets(self, text: str, enc, backend: Tokenizer, add_special_tokens: bool) -> Encoding:
        ids = np.asarray(enc.ids, dtype=np.int64)
        if not len(ids):
            return Encoding(ids, np.zeros((0, 2), np.int64), 0)
        special = self.special[ids]
        added = special & np.asarray(enc.special_tokens_mask, dtype=bool) if special.any() else special
        lens = self.byte_lengths[ids]
        if special.any():
            # a special token read out of the text consumed its spelling
            lens = np.where(special & ~added, self._special_lengths[ids], lens)
        raw = text.encode("utf-8", errors="surrogatepass")
        total = int(lens.sum())
        prefix = 0
        if self.dummy_prefix and total == len(raw) + 1:
            first = np.flatnonzero(lens)
            if len(first) and self.token_bytes[ids[first[0]]] is not None and self.token_bytes[ids[first[0]]][:1] == b" ":
                prefix = 1
        unchanged = not self.normalizes or (self.normalizes == ("NFC",) and unicodedata.is_normalized("NFC", text))
        if unchanged and total - prefix == len(raw):
            # The tokens' bytes are the text's bytes: offsets are a running sum. This is exact even
            # where byte-level tokens split one character.
            ends = np.maximum(np.cumsum(lens) - prefix, 0)
            starts = np.maximum(ends - lens, 0)
            starts, ends = self.adapter.hollow_spans(starts, ends, added, raw)
        else:
            # The tokenizer changed the text (NFC, lower-casing, dropped whitespace): map its
            # character offsets into the original text to bytes, then claim what no token reports.
            char_to_byte = np.concatenate(([0], np.cumsum(utf8_char_lengths(text))))
            # (encode_batch_fast skips offsets; only texts that take this path pay for them)
            co = np.asarray(backend.encode(text, add_special_tokens=add_special_tokens).offsets, dtype=np.int64).reshape(-1, 2)
            starts, ends = tile_offsets(char_to_byte[co[:, 0]], char_to_byte[co[:, 1]], added, raw)
        return Encoding(ids, np.stack([starts, ends], axis=1).astype(np.int64), prefix)

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self.backend.decode(list(map(int, ids)), skip_special_tokens=skip_special_tokens)


def _vocab_bytes(spec: dict, backend: Tokenizer, family: Family, vocab_size: int):
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
    reg_bytes = family.pieces_to_bytes(reg_pieces)
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
    family, norms, dummy = detect(spec)
    vocab = backend.get_vocab(with_added_tokens=True)
    vocab_size = max(vocab.values()) + 1
    token_bytes, special, holes, fallback = _vocab_bytes(spec, backend, family, vocab_size)
    return Tok(name=name, source=source, sha256=hashlib.sha256(raw).hexdigest(), family=family.label(norms),
               backend=backend, token_bytes=token_bytes, special=special, holes=holes,
               byte_fallback_ids=fallback, roles=_role_ids(spec, config, vocab), normalizes=norms,
               dummy_prefix=dummy, config=config, adapter=family)


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
