"""Span alignment (SPEC §4): the fast boundary-intersection groups are the overlap graph's components."""

import itertools
import random

import networkx as nx
import numpy as np
import pytest
import torch

from xtok_core import XtokError, bundled_tokenizers, load_tokenizer
from xtok_core.align import GROUP_KINDS, Group, align_batch, align_spans, format_alignment, visible
from xtok_core.cli import main

NAMED_PAIRS = [("llama-3.2", "qwen2.5"), ("gpt2", "qwen2.5"), ("mistral-7b", "llama-3.2"), ("gemma", "gpt-4o")]

FRAGMENTS = [
    "12345", "3.14159", "1,000,000", "$42.50", "2024-03-15", "12:30:05", "0x1F", "x²+y²", "∑√±≤",
    "def f(x):\n    return x + 1", "a != b && c->d", "if (x == 0) { y += 1; }", "__init__", "<div>", "i++;",
    "中文字符测试", "日本語のテキスト", "한국어", "Привет", "مرحبا", "שלום", "नमस्ते",
    "👨‍👩‍👧", "👍🏽", "🇫🇷", "🦙", "e\u0301", "Cafe\u0301", "naïve", "Ünïcödé", "İstanbul", "ǅ", "ß", "ﬁ",
    "Hello", "WORLD", "the", "quick", "—", "…", "\u00a0", "\u3000", "\u200b",
    "  ", "    ", "\t\t", "\n\n", "   \n", "\r\n", "a" * 25, "0" * 17,
]


def generated_texts(n: int, seed: int = 0) -> list[str]:
    """Random mixes of digits, code, CJK, emoji (ZWJ sequences, skin tones, flags), combining marks,
    whitespace runs and mixed scripts, plus the degenerate texts."""
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        parts = [rng.choice(FRAGMENTS) for _ in range(rng.randint(1, 12))]
        texts.append("".join(p + rng.choice(["", " ", " ", "  ", "\n", "\t"]) for p in parts))
    return texts + ["", " ", "   ", "\n", "e\u0301", "👨‍👩‍👧"]


@pytest.fixture(scope="session")
def texts():
    return generated_texts(300)


def fast_groups(a) -> list:
    return sorted(sorted([("student", i) for i in g.student] + [("teacher", j) for j in g.teacher]) for g in a.groups)


def graph_groups(a) -> list:
    return sorted(sorted(c) for c in nx.connected_components(a.to_networkx()))


def assert_same_groups(text, student, teacher, add_special_tokens):
    a = align_spans(text, student, teacher, add_special_tokens=add_special_tokens)
    assert fast_groups(a) == graph_groups(a), (student, teacher, text)
    return a


# ------------------------------------------------------------------ fast path == networkx components
@pytest.mark.parametrize("student,teacher", NAMED_PAIRS)
def test_fast_groups_equal_graph_components_on_generated_texts(student, teacher, texts):
    for text in texts:
        assert_same_groups(text, student, teacher, add_special_tokens=False)
    for text in texts[:50]:
        assert_same_groups(text, student, teacher, add_special_tokens=True)


def test_fast_groups_equal_graph_components_for_every_bundled_pair():
    texts = generated_texts(25, seed=1)
    for student, teacher in itertools.permutations(bundled_tokenizers(), 2):
        for i, text in enumerate(texts):
            assert_same_groups(text, student, teacher, add_special_tokens=i % 2 == 0)


def test_graph_edges_are_exactly_the_overlapping_text_spans(texts):
    for text in texts[:60]:
        a = align_spans(text, "llama-3.2", "qwen2.5", add_special_tokens=True)
        graph = a.to_networkx()
        s, t = a.student_spans, a.teacher_spans
        overlap = (s[:, None, 0] < t[None, :, 1]) & (t[None, :, 0] < s[:, None, 1])
        special_s = np.array([graph.nodes["student", i]["special"] for i in range(len(s))], bool).reshape(-1)
        special_t = np.array([graph.nodes["teacher", j]["special"] for j in range(len(t))], bool).reshape(-1)
        overlap &= ~special_s[:, None] & ~special_t[None, :]
        expected = {(int(i), int(j)) for i, j in zip(*np.nonzero(overlap))}
        got = {(u[1], v[1]) if u[0] == "student" else (v[1], u[1]) for u, v in graph.edges}
        assert got == expected, text
        assert nx.is_bipartite(graph)


def test_graph_nodes_carry_side_position_and_visible_text():
    a = align_spans("12 \tab\n", "llama-3.2", "qwen2.5", add_special_tokens=True)
    graph = a.to_networkx()
    bos = graph.nodes["student", 0]
    assert (bos["side"], bos["position"], bos["text"], bos["special"]) == ("student", 0, "<|begin_of_text|>", True)
    texts = [graph.nodes["teacher", j]["text"] for j in range(len(a.teacher_ids))]
    assert "".join(texts) == "12·⇥ab↵"
    assert {d["side"] for _, d in graph.nodes(data=True)} == {"student", "teacher"}


# ------------------------------------------------------------------ named cases
def test_numeral_12345_splits_only_where_both_tokenizers_cut(default_pair):
    """Llama-3 reads `123`,`45`, Qwen `1`…`5`: the 2 student and 5 teacher tokens cover the numeral, and
    byte 3 is a boundary on both sides, so overlap components give 1:3 and 1:2 (SPEC §4)."""
    a = align_spans("12345", *default_pair)
    labels = [([a.student.token_text(a.student_ids[i]) for i in g.student],
               [a.teacher.token_text(a.teacher_ids[j]) for j in g.teacher]) for g in a.groups]
    assert labels == [(["123"], ["1", "2", "3"]), (["45"], ["4", "5"])]
    assert [g.ratio for g in a.groups] == ["1:3", "1:2"]
    assert sum(len(g.student) for g in a.groups) == 2 and sum(len(g.teacher) for g in a.groups) == 5


def test_numeral_with_unshared_boundaries_is_one_n_m_group():
    # Mistral: dummy prefix + one digit each; a boundary inside Llama's `123` exists only on one side.
    a = align_spans("12345", "mistral-7b", "llama-3.2")
    assert [(g.ratio, g.kind) for g in a.groups] == [("4:1", "n:1"), ("2:1", "n:1")]
    a = align_spans(" 2024", "gpt2", "gemma")  # gpt2: ` 2024` one token; gemma ` `,`2`,`0`,`2`,`4`
    assert [(g.ratio, g.kind) for g in a.groups] == [("1:5", "1:n")]


def test_emoji_split_into_byte_pieces_stays_one_group(default_pair):
    """Llama writes 👩 as three partial-UTF-8 byte pieces, Qwen as one token: one 3:1 group."""
    a = align_spans("x👩y", *default_pair)
    assert [(g.kind, g.ratio) for g in a.groups] == [("1:1", "1:1"), ("n:1", "3:1"), ("1:1", "1:1")]
    group = a.groups[1]
    pieces = [a.student.token_bytes[a.student_ids[i]] for i in group.student]
    assert b"".join(pieces) == "👩".encode() and all(len(p) < 4 for p in pieces)
    assert a.teacher.token_bytes[a.teacher_ids[group.teacher[0]]] == "👩".encode()
    # the same with a leading space that one side glues to the first byte piece
    a = align_spans("x 👨 y", "llama-3.2", "gemma")
    assert [(g.kind, g.ratio, a.group_bytes(g)) for g in a.groups][1] == ("n:m", "2:2", " 👨".encode())


def test_zwj_family_emoji_never_leaves_a_byte_in_two_groups(default_pair):
    a = align_spans("👨‍👩‍👧 ok", *default_pair)
    assert b"".join(a.group_bytes(g) for g in a.groups) == "👨‍👩‍👧 ok".encode()


def test_bos_is_its_own_group_and_never_joins_text(default_pair):
    a = align_spans("Hello", *default_pair, add_special_tokens=True)
    assert a.student.token_text(a.student_ids[0]) == "<|begin_of_text|>"
    assert a.groups[0] == Group(range(0, 1), range(0, 0), "special")
    assert [g.kind for g in a.groups[1:]] == ["1:1"]
    a = align_spans("Hello", "mistral-7b", "gemma", add_special_tokens=True)
    assert [(g.kind, g.ratio) for g in a.groups[:2]] == [("special", "1:0"), ("special", "0:1")]


def test_dummy_prefix_joins_the_group_of_the_following_token():
    a = align_spans("7 days", "mistral-7b", "llama-3.2")
    # the lone `▁` has no byte of its own: it shares the first byte of `7`, the character it is the space of
    assert a.student.token_bytes[a.student_ids[0]] == b" " and tuple(a.student_offsets[0]) == (0, 1)
    assert tuple(a.student_offsets[1]) == (0, 1)
    assert not a.student.special[a.student_ids[0]]
    assert list(a.groups[0].student) == [0, 1] and a.groups[0].kind == "n:1"


def test_nfc_composed_character_aligns_with_its_decomposed_pieces(default_pair):
    """Qwen normalises `e` + U+0301 into one `é` token; Llama keeps two: one 2:1 group, nothing dropped."""
    text = "caf\u0065\u0301 au lait"
    a = align_spans(text, *default_pair)
    assert b"".join(a.group_bytes(g) for g in a.groups) == text.encode()
    composed = [g for g in a.groups if "\u0301".encode() in a.group_bytes(g)]
    assert len(composed) == 1 and len(composed[0].teacher) < len(composed[0].student)


def test_tokens_sharing_a_normalised_character_stay_in_one_group(default_pair):
    """In a text Qwen must NFC-normalise, its byte pieces of 👨 both report the emoji's whole span."""
    a = align_spans("e\u0301 👨 x", *default_pair)
    t_spans = a.teacher_spans.tolist()
    shared = [j for j in range(len(t_spans) - 1) if t_spans[j][1] > t_spans[j + 1][0]]
    assert shared, "expected overlapping teacher spans in this text"
    for j in shared:
        assert a.teacher_group[j] == a.teacher_group[j + 1]
    assert fast_groups(a) == graph_groups(a)


def test_unk_keeps_the_text_it_stands_for(wordpiece):
    a = align_spans("ok 🦙 ok", "llama-3.2", wordpiece)
    unk = [j for j, t in enumerate(a.teacher_ids.tolist()) if t == wordpiece.roles["unk"]]
    assert len(unk) == 1
    group = a.groups[a.teacher_group[unk[0]]]
    assert group.kind != "special" and "🦙".encode() in a.group_bytes(group)


def test_groups_tile_the_text_and_partition_the_positions(texts):
    for student, teacher in NAMED_PAIRS[:2]:
        for text in texts[:80]:
            a = align_spans(text, student, teacher, add_special_tokens=True)
            assert b"".join(a.group_bytes(g) for g in a.groups) == text.encode()
            for side, group in (("student", a.student_group), ("teacher", a.teacher_group)):
                ranges = [getattr(g, side) for g in a.groups]
                assert [i for r in ranges for i in r] == list(range(len(group)))
                assert all((group[list(r)] == k).all() for k, r in enumerate(ranges))


# ------------------------------------------------------------------ normalising tokenizers
@pytest.fixture(scope="session")
def wordpiece(tmp_path_factory):
    """A lower-casing WordPiece tokenizer: the bundled one, else a small one trained here."""
    if "bert-wordpiece" in bundled_tokenizers():
        return load_tokenizer("bert-wordpiece")
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tk = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tk.normalizer = normalizers.BertNormalizer(lowercase=True)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    corpus = ["Hello World, the quick brown fox.", "Numbers like 2024 and 3.14 matter.", "café au lait"] * 20
    tk.train_from_iterator(corpus, trainers.WordPieceTrainer(vocab_size=200, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"]))
    path = tmp_path_factory.mktemp("wordpiece") / "tokenizer.json"
    tk.save(str(path))
    return load_tokenizer(path)


def test_lowercasing_wordpiece_aligns_through_original_text_offsets(wordpiece, texts):
    assert "lowercase" in wordpiece.normalizes
    text = "Hello World, THE Quick fox"
    a = align_spans(text, "llama-3.2", wordpiece)
    assert b"".join(a.group_bytes(g) for g in a.groups) == text.encode()
    by_bytes = {a.group_bytes(g): g for g in a.groups}
    assert b"Hello" in by_bytes and b" World" in by_bytes and b"," in by_bytes
    world = by_bytes[b" World"]
    assert b"".join(wordpiece.token_bytes[a.teacher_ids[j]] for j in world.teacher) == b" world"
    for t in texts[:120]:
        assert_same_groups(t, "llama-3.2", wordpiece, add_special_tokens=True)
        assert_same_groups(t, wordpiece, "qwen2.5", add_special_tokens=False)


def test_text_only_one_side_tokenizes_gives_unaligned_groups(wordpiece):
    a = align_spans("   ", "llama-3.2", wordpiece)
    assert len(a.teacher_ids) == 0
    assert [g.kind for g in a.groups] == ["unaligned"] * len(a.student_ids)
    assert fast_groups(a) == graph_groups(a)


# ------------------------------------------------------------------ batches for training
def assert_batch_matches_spans(batch, student, teacher):
    b = align_batch(batch, student, teacher)
    for k, text in enumerate(batch):
        a = align_spans(text, student, teacher, add_special_tokens=True)
        n_s, n_t, G = len(a.student_ids), len(a.teacher_ids), len(a.groups)
        assert b.student_ids[k, :n_s].tolist() == a.student_ids.tolist()
        assert b.student_mask[k].sum() == n_s and b.teacher_mask[k].sum() == n_t
        assert b.student_group[k, :n_s].tolist() == a.student_group.tolist()
        assert b.teacher_group[k, :n_t].tolist() == a.teacher_group.tolist()
        assert (b.student_group[k, n_s:] == -1).all() and (b.teacher_group[k, n_t:] == -1).all()
        for gi, g in enumerate(a.groups):
            assert (b.s_start[k, gi].item(), b.s_end[k, gi].item()) == ((g.student[0], g.student[-1]) if g.student else (-1, -1))
            assert (b.t_start[k, gi].item(), b.t_end[k, gi].item()) == ((g.teacher[0], g.teacher[-1]) if g.teacher else (-1, -1))
            assert b.group_mask[k, gi].item() == (g.kind in ("1:1", "1:n", "n:1", "n:m"))
            assert GROUP_KINDS[b.group_kind[k, gi].item()] == g.kind
        assert not b.group_mask[k, G:].any() and (b.s_end[k, G:] == -1).all()


def test_align_batch_matches_align_spans_text_by_text(default_pair, texts):
    assert_batch_matches_spans(texts[:58] + texts[-6:], *default_pair)


def test_align_batch_with_texts_one_side_drops_matches_align_spans(wordpiece, texts):
    """Empty texts and whitespace runs the WordPiece side drops entirely, mixed with ordinary texts."""
    batch = ["Hello World", "   ", "", "x 👍 y", "\n\n", "Numbers 2024 and 3.14"] + texts[:20]
    assert_batch_matches_spans(batch, "llama-3.2", wordpiece)
    assert_batch_matches_spans(batch, wordpiece, "mistral-7b")


def test_align_batch_shapes_and_dtypes(default_pair):
    b = align_batch(["12345", "Hello world", ""], *default_pair)
    assert b.student_ids.dtype == torch.long and b.student_mask.dtype == torch.bool and b.group_mask.dtype == torch.bool
    assert b.student_ids.shape == b.student_group.shape == b.student_mask.shape
    assert b.teacher_ids.shape == b.teacher_group.shape
    assert b.s_start.shape == b.s_end.shape == b.t_start.shape == b.t_end.shape == b.group_mask.shape
    assert b.student_mask[2].tolist()[:1] == [True] and b.student_mask[2].sum() == 1  # bos only
    assert b.teacher_mask[2].sum() == 0
    assert b.to("cpu").s_end.equal(b.s_end)
    assert b.kinds()["special"] == 3  # one llama bos per text; qwen adds none


def test_align_batch_max_length_keeps_whole_groups_on_both_sides(default_pair):
    text = "12345 678 hello world"
    full = align_batch([text], *default_pair)
    b = align_batch([text], *default_pair, max_length=4)
    assert b.student_mask.sum() <= 4 and b.teacher_mask.sum() <= 4
    kept = int(b.group_mask.sum())
    assert kept >= 1
    # the kept groups are the first groups of the full alignment, unchanged
    n = b.s_start.shape[1]
    assert b.s_end[0].equal(full.s_end[0, :n]) and b.t_end[0].equal(full.t_end[0, :n])
    # both sides end on the same byte: the last kept group's ends are real positions on both sides
    last = int(b.group_mask[0].nonzero().max())
    assert b.s_end[0, last] == b.student_mask[0].sum() - 1 and b.t_end[0, last] == b.teacher_mask[0].sum() - 1


def test_align_batch_rejects_a_single_string_and_bad_max_length(default_pair):
    with pytest.raises(XtokError, match="list of texts"):
        align_batch("one text", *default_pair)
    with pytest.raises(XtokError, match="max_length"):
        align_batch(["x"], *default_pair, max_length=0)


# ------------------------------------------------------------------ display and CLI
def test_visible_shows_whitespace_and_partial_utf8():
    assert visible(b" a\tb\n") == "·a⇥b↵"
    assert visible(b"\xf0\x9f") == "\\xf0\\x9f"
    assert visible("\u200d".encode()) == "\\u200d"


def test_cli_align_prints_both_tokenizations_groups_and_kinds(capsys):
    assert main(["align", "--text", "12345 hi\tthere", "--special"]) == 0
    out = capsys.readouterr().out
    assert "student llama-3.2" in out and "teacher qwen2.5" in out
    assert "<|begin_of_text|> │ 123 │ 45 │ ·hi │ ⇥ │ there" in out
    assert "1:n         1:3  [0, 3)        123  ⇔  1 │ 2 │ 3" in out
    assert "     0  special     1:0" in out and "kinds: 1:1 3, 1:n 2, special 1" in out


def test_cli_align_reads_a_file_and_takes_other_tokenizers(tmp_path, capsys):
    path = tmp_path / "t.txt"
    path.write_text("12345", encoding="utf-8")
    assert main(["align", "--student", "mistral-7b", "--teacher", "llama-3.2", "--file", str(path)]) == 0
    out = capsys.readouterr().out
    assert "student mistral-7b" in out and "n:1         4:1  [0, 3)        · │ 1 │ 2 │ 3  ⇔  123" in out
    path.write_bytes(b"\xff\xfe")
    assert main(["align", "--file", str(path)]) == 2
    assert "UTF-8" in capsys.readouterr().err


def test_cli_align_unknown_tokenizer_is_one_line_error(capsys):
    assert main(["align", "--student", "no-such-tokenizer", "--text", "x"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "unknown tokenizer" in err


def test_format_alignment_lists_every_group(default_pair):
    a = align_spans("a 🦙 b", *default_pair)
    report = format_alignment(a)
    assert f"groups: {len(a.groups)}" in report
    assert "·\\xf0\\x9f │ \\xa6 │ \\x99" in report


def test_special_token_spelled_in_the_text_groups_with_the_other_sides_pieces_of_its_bytes(default_pair):
    """Llama-3 reads `<|begin_of_text|>` as its special token, Qwen as eight plain pieces: they form one
    group, and the student's ` is` pairs with the teacher's ` is` alone."""
    text = "<|begin_of_text|> is just text here"
    a = align_spans(text, *default_pair)
    first = a.groups[0]
    assert list(first.student) == [0] and a.student.special[a.student_ids[0]]
    assert a.group_bytes(first) == b"<|begin_of_text|>" and len(first.teacher) > 1
    is_group = a.groups[1]
    assert [a.student.token_bytes[a.student_ids[i]] for i in is_group.student] == [b" is"]
    assert [a.teacher.token_bytes[a.teacher_ids[j]] for j in is_group.teacher] == [b" is"]
    assert is_group.kind == "1:1"


def test_unk_tokens_keep_their_spans_and_group_with_the_other_sides_pieces(tok):
    text = "東京タワーは333メートルです。"
    a = align_spans(text, "bert-wordpiece", "qwen2.5")
    assert (a.student_ids == a.student.roles["unk"]).all() and len(a.student_ids) == 4
    # four [UNK]s with the tokenizer's spans: each ends where a Qwen piece ends, so not one 4:n group
    assert len(a.groups) == 4 and all(len(g.student) == 1 for g in a.groups)
    assert b"".join(a.group_bytes(g) for g in a.groups) == text.encode()
