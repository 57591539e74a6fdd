"""Tokens as bytes (SPEC §1) on every bundled tokenizer."""

import gzip
import hashlib
import json
import re
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from xtok_core import XtokError, bundled_tokenizers, load_tokenizer
from xtok_core.tok import ASSETS

CORPUS = [
    "The price is $1,234.56 on 2024-03-15 at 12:30.",
    "12345 + 67890 = 80235; 3.14159 ≈ π; 1e-9, 0x1F, 007",
    "def f(x):\n\tif x == 1:\n\t\treturn x->y  # arrow\n        return None\n",
    "for (int i = 0; i != n; i += 2) { a[i] = b[i] >= c ? d : e; }",
    "日本語のテキストと中文字符，还有한국어 텍스트.",
    "emoji 😀 family 👨\u200d👩\u200d👧 flag 🇫🇷 and ½ ™ ©",
    "a  b   c    d\t\te\n\n\nf \r\n g",
    "   leading spaces and trailing   ",
    "\u00e9 precomposed, e\u0301 combining, \u212b angstrom, ﬁ ligature",
    "ÄÖÜ ß Ωmega résumé naïve façade",
    "$€£¥₹ 99.99€ ±×÷≤≥∑√∞",
    "",
]
BYTE_LEVEL_OR_SPM = [n for n in bundled_tokenizers() if "wordpiece" not in n]


def _concat(tok, text):
    enc = tok.encode(text)
    return b"".join(tok.canonical_bytes(int(i)) or b"" for i in enc.ids)[enc.prefix:], enc


def _expected(tok, text):
    # A tokenizer that NFC-normalises (Qwen) sees the NFC text; that is what its bytes spell.
    return (unicodedata.normalize("NFC", text) if "NFC" in tok.normalizes else text).encode()


@pytest.mark.parametrize("name", BYTE_LEVEL_OR_SPM)
def test_canonical_bytes_reproduce_the_text(tok, name):
    t = tok(name)
    for text in CORPUS:
        got, _ = _concat(t, text)
        assert got == _expected(t, text), (name, text)


@pytest.mark.parametrize("name", BYTE_LEVEL_OR_SPM)
def test_byte_offsets_partition_the_text(tok, name):
    t = tok(name)
    for text in CORPUS:
        raw = text.encode()
        enc = t.encode(text, add_special_tokens=True)
        if not len(enc):
            continue
        starts, ends = enc.offsets[:, 0], enc.offsets[:, 1]
        assert (starts <= ends).all() and (starts[1:] >= starts[:-1]).all() and (ends[1:] >= ends[:-1]).all()
        assert ends.max() == len(raw)
        if not t.normalizes or unicodedata.is_normalized("NFC", text):
            # byte offsets slice exactly each token's bytes out of the text
            for k, (i, (a, b)) in enumerate(zip(enc.ids.tolist(), enc.offsets.tolist())):
                cb = t.canonical_bytes(i)
                if enc.prefix and cb == b" " and k == int((t.byte_lengths[enc.ids] > 0).argmax()):
                    assert (a, b) == tuple(enc.offsets[k + 1][:1]) + (a + 1,)  # a lone dummy prefix shares the next byte
                elif cb is not None and b > a:
                    assert cb.endswith(raw[a:b]) and len(cb) - (b - a) <= enc.prefix


def test_partial_utf8_tokens_keep_raw_bytes(tok):
    # GPT-2 splits an emoji into byte pieces; each piece's bytes are not valid UTF-8 on their own
    t = tok("gpt2")
    enc = t.encode(" 😀")
    pieces = [t.canonical_bytes(int(i)) for i in enc.ids]
    assert b"".join(pieces) == " 😀".encode()
    assert len(pieces) > 1
    with pytest.raises(UnicodeDecodeError):
        pieces[-1].decode("utf-8")


def test_sentencepiece_space_and_byte_fallback(tok):
    m = tok("mistral-7b")
    the = m.backend.token_to_id("▁the")
    assert m.canonical_bytes(the) == b" the"
    nl = m.backend.token_to_id("<0x0A>")
    assert m.canonical_bytes(nl) == b"\n" and m.byte_fallback_ids[nl]
    assert m.dummy_prefix and m.encode("hello").prefix == 1


def test_special_tokens_have_no_bytes_and_roles(tok):
    ll = tok("llama-3.2")
    bos = ll.backend.token_to_id("<|begin_of_text|>")
    assert ll.canonical_bytes(bos) is None and ll.roles["bos"] == bos
    q = tok("qwen2.5")
    assert "bos" not in q.roles and q.token_text(q.roles["eos"]) == "<|im_end|>"


def test_wordpiece_adapter_records_lowercasing(tok):
    w = tok("bert-wordpiece")
    assert w.family.startswith("wordpiece") and "lowercase" in w.family
    enc = w.encode("Hello, World")
    text = b"".join(w.canonical_bytes(int(i)) for i in enc.ids)
    # word starts get a space, ## pieces and punctuation do not; case is folded
    assert text.lstrip() == b"hello, world"
    assert enc.offsets[-1, 1] == len("Hello, World")


def test_o200k_holes_size_the_vocabulary(tok):
    g = tok("gpt-4o")
    assert g.vocab_size == 200_019
    assert g.holes[200_000:200_018].all() and not g.holes[199_999] and not g.holes[200_018]
    assert all(g.canonical_bytes(i) is None for i in range(200_000, 200_018))


def test_bundled_hashes_match_provenance(tok):
    table = dict(re.findall(r"^\| ([\w.-]+) \| ([0-9a-f]{64}) \|$", (ASSETS / "PROVENANCE.md").read_text(), re.M))
    # every downloaded tokenizer has a hash row; bert-wordpiece is xtok's own (its README says how it is made)
    assert set(table) == set(bundled_tokenizers()) - {"bert-wordpiece"}
    for name, want in table.items():
        assert tok(name).sha256 == want
        assert hashlib.sha256(gzip.decompress((ASSETS / name / "tokenizer.json.gz").read_bytes())).hexdigest() == want


def test_bytes_index_prefers_the_regular_piece_over_its_byte_fallback_twin(tok):
    """Mistral has `A` (28741) and its byte-fallback twin `<0x41>` (68): W, NeMo imports and the
    explorer's token search all resolve the bytes b"A" to the regular piece."""
    from xtok_app.search import find_tokens
    from xtok_core.projection import build_projection

    m = tok("mistral-7b")
    twins = [i for i in range(m.vocab_size) if m.token_bytes[i] == b"A"]
    assert len(twins) == 2 and m.byte_fallback_ids[min(twins)] and not m.byte_fallback_ids[max(twins)]
    regular = max(twins)
    assert m.id_of_bytes(b"A") == regular and m.backend.id_to_token(regular) == "A"
    assert find_tokens(m, "A")[0].token_id == regular
    # W with Mistral as teacher: the student's `A` maps to the regular piece
    w = build_projection("gpt2", "mistral-7b")
    assert w.row(tok("gpt2").id_of_bytes(b"A"))[0].tolist() == [regular]
    # a byte with no regular piece keeps its fallback token
    assert m.byte_fallback_ids[m.id_of_bytes(b"\x00")]


def test_load_by_path_and_directory_gives_the_same_tokenizer(tok, tmp_path):
    raw = gzip.decompress((ASSETS / "gpt2" / "tokenizer.json.gz").read_bytes())
    (tmp_path / "tokenizer.json").write_bytes(raw)
    (tmp_path / "tokenizer_config.json").write_text((ASSETS / "gpt2" / "tokenizer_config.json").read_text())
    by_file, by_dir = load_tokenizer(tmp_path / "tokenizer.json"), load_tokenizer(str(tmp_path))
    assert by_file.sha256 == by_dir.sha256 == tok("gpt2").sha256
    assert by_dir.encode("hello 2019").ids.tolist() == tok("gpt2").encode("hello 2019").ids.tolist()


def test_local_hf_directory_without_tokenizer_json_goes_through_transformers(tok, tmp_path):
    # The older layout: vocab.json + merges.txt, converted by transformers (no remote code).
    spec = json.loads(gzip.decompress((ASSETS / "gpt2" / "tokenizer.json.gz").read_bytes()))
    (tmp_path / "vocab.json").write_text(json.dumps(spec["model"]["vocab"]))
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "GPT2Tokenizer", "eos_token": "<|endoftext|>",
                                                                 "bos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}))
    t = load_tokenizer(tmp_path)
    assert t.encode("hello 2019 😀").ids.tolist() == tok("gpt2").encode("hello 2019 😀").ids.tolist()
    assert t.roles["eos"] == 50256


def test_unknown_name_is_a_one_line_error():
    with pytest.raises(XtokError) as e:
        load_tokenizer("no-such-tokenizer")
    assert "\n" not in str(e.value) and "llama-3.2" in str(e.value)


def test_hub_id_offline_is_a_one_line_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(XtokError) as e:
        load_tokenizer("someorg/some-model-that-is-not-cached")
    msg = str(e.value)
    assert "\n" not in msg and "local path" in msg


@pytest.mark.parametrize("content", [b"{not json", b'{"version": "1.0"}', b"", b"\x1f\x8b\x08garbage"])
def test_corrupt_tokenizer_file_is_a_one_line_error(tmp_path, content):
    p = tmp_path / "tokenizer.json"
    p.write_bytes(content)
    with pytest.raises(XtokError) as e:
        load_tokenizer(p)
    assert "\n" not in str(e.value) and str(p) in str(e.value)


def test_truncated_tokenizer_file_is_a_one_line_error(tmp_path):
    raw = gzip.decompress((ASSETS / "gpt2" / "tokenizer.json.gz").read_bytes())
    p = tmp_path / "tokenizer.json"
    p.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(XtokError, match="not a readable tokenizer.json"):
        load_tokenizer(p)


def test_corrupt_gzip_tokenizer_names_gzip(tmp_path):
    p = tmp_path / "tokenizer.json.gz"
    p.write_bytes(b"\x1f\x8b\x08\x00garbage that is not deflate")
    with pytest.raises(XtokError, match="not a valid gzip file"):
        load_tokenizer(p)


# ---------------------------------------------------------------- offsets that tile the text
def _byte_offsets_of(text, char_offsets):
    """The tokenizer's own character offsets, as UTF-8 byte offsets (an independent conversion)."""
    return [(len(text[:a].encode()), len(text[:b].encode())) for a, b in char_offsets]


def test_special_token_spelled_in_the_text_covers_the_bytes_it_consumed(tok):
    t = tok("llama-3.2")
    text = "<|begin_of_text|> is just text here"
    enc = t.encode(text)
    assert t.special[enc.ids[0]] and tuple(enc.offsets[0]) == (0, len("<|begin_of_text|>"))
    assert enc.offsets.tolist() == [list(o) for o in _byte_offsets_of(text, t.backend.encode(text, add_special_tokens=False).offsets)]
    # the bos the tokenizer adds stays an empty span before it
    added = t.encode(text, add_special_tokens=True)
    assert tuple(added.offsets[0]) == (0, 0) and tuple(added.offsets[1]) == (0, 17)


def test_unk_keeps_the_tokenizers_offsets(tok):
    w = tok("bert-wordpiece")
    text = "東京タワーは333メートルです。"
    enc = w.encode(text)
    assert (enc.ids == w.roles["unk"]).all() and len(enc) == 4
    assert [tuple(o) for o in enc.offsets.tolist()] == _byte_offsets_of(text, w.backend.encode(text, add_special_tokens=False).offsets)
    assert enc.offsets[0, 0] == 0 and enc.offsets[-1, 1] == len(text.encode())


def test_nfc_composed_character_covers_the_whole_composed_character(tok):
    q = tok("qwen2.5")
    enc = q.encode("e\u0301 x")
    assert q.token_bytes[enc.ids[0]] == "é".encode()
    assert tuple(enc.offsets[0]) == (0, 3) and tuple(enc.offsets[1]) == (3, 5)  # `e` + U+0301 is 3 bytes


SPECIAL_TEXTS = sorted({load_tokenizer(n).backend.id_to_token(int(i)) for n in bundled_tokenizers()
                        for i in load_tokenizer(n).special.nonzero()[0][:6]})
FRAGMENTS = SPECIAL_TEXTS + ["東京タワー", "한국어", "ก็", "e\u0301", "a\u0308\u0323", "\u0301", "😀", "👨\u200d👩\u200d👧",
                             "🇫🇷", "½", "ﬁ", "İ", " ", "  ", "\t", "\n", "\r\n", "12345", "3.14", "Hello", "world", ",", "$"]


def _tiles(enc, raw: bytes, drops: str) -> None:
    """Every byte is covered, except in a text the tokenizer drops entirely (whitespace, control
    characters, and marks where it strips accents: Unicode categories `drops`); spans only overlap
    inside one character."""
    o = enc.offsets
    assert ((0 <= o[:, 0]) & (o[:, 0] <= o[:, 1]) & (o[:, 1] <= len(raw))).all()
    assert (o[1:, 0] >= o[:-1, 0]).all()
    full = o[o[:, 1] > o[:, 0]]
    if not len(full):
        assert all(unicodedata.category(c)[0] in drops for c in raw.decode())
        return
    covered = np.zeros(len(raw), bool)
    for a, b in full.tolist():
        covered[a:b] = True
    assert covered.all()
    # character index of every byte: overlapping bytes must all sit in one character
    char_of = np.cumsum([(x & 0xC0) != 0x80 for x in raw]) - 1
    reach = np.maximum.accumulate(full[:, 1])
    for (a, _), r in zip(full[1:].tolist(), reach[:-1].tolist()):
        if r > a:
            assert char_of[a] == char_of[r - 1], (a, r)


@pytest.mark.parametrize("name", bundled_tokenizers())
def test_every_encoding_tiles_the_text_bytes(tok, name):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    t = tok(name)
    pieces = st.one_of(st.sampled_from(FRAGMENTS), st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=4))

    @settings(max_examples=100, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(st.lists(pieces, max_size=10), st.booleans())
    def check(parts, add_special_tokens):
        text = "".join(parts)
        raw = text.encode()
        enc = t.encode(text, add_special_tokens=add_special_tokens)
        drops = "CZ" + ("M" if "strip_accents" in t.normalizes else "")
        _tiles(enc, raw, drops)
        spelled = t.special[enc.ids] & (enc.offsets[:, 1] > enc.offsets[:, 0])
        for i, (a, b) in zip(enc.ids[spelled].tolist(), enc.offsets[spelled].tolist()):
            if i != t.roles.get("unk"):  # a special token read out of the text covers its spelling
                spelled_as = "".join(c for c in raw[a:b].decode() if unicodedata.category(c)[0] not in drops)
                assert spelled_as == t.backend.id_to_token(i)  # (plus bytes the tokenizer dropped next to it)

    check()
