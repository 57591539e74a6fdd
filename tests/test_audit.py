"""The coverage audit (SPEC §3) on the real bundled tokenizers: categories, counts, the P-KL / H-KL
recommendation, the reports and the CLI. Figures are checked against independent computations (a
per-token `re.fullmatch`, byte-set intersections, the student's own encodings), never copied from output."""

import json
import re
from collections import Counter

import numpy as np
import pytest

from xtok_core import XtokError
from xtok_core.audit import (CRITICAL, AuditReport, categorize, category_defs, category_members, coverage_audit,
                             match_tokens)
from xtok_core.corpus import sample_texts


@pytest.fixture(scope="module")
def llama_qwen(tok, projection):
    """Llama-3 student, Qwen2.5 teacher, weighted by the sample corpus given as a list of texts."""
    return coverage_audit(tok("llama-3.2"), tok("qwen2.5"), projection("llama-3.2", "qwen2.5"), corpus=sample_texts())


@pytest.fixture(scope="module")
def deepseek_gpt4o(tok, projection):
    """Two different tokenizers that both keep 1-3 digit numeral tokens."""
    return coverage_audit(tok("deepseek-v3"), tok("gpt-4o"), projection("deepseek-v3", "gpt-4o"))


def _ascii_numerals(t) -> set:
    """Independent: the tokens whose bytes are two or more ASCII digits (bytes.isdigit is ASCII-only)."""
    return {b for b in t.token_bytes if b is not None and len(b) >= 2 and b.isdigit()}


def _exact_ids(student, teacher) -> np.ndarray:
    """Independent: student ids whose bytes some regular teacher token has."""
    have = {b for i, b in enumerate(teacher.token_bytes) if b is not None and not teacher.special[i]}
    return np.array([b is not None and b in have for b in student.token_bytes])


# ---------------------------------------------------------------- categories
def test_vectorised_membership_equals_a_per_token_fullmatch_on_the_whole_vocabulary(tok):
    llama = tok("llama-3.2")
    members = category_members(llama)
    texts = [b.decode("utf-8", "replace") if b is not None else "" for b in llama.token_bytes]
    for cdef in category_defs():
        rx = re.compile(cdef.pattern)
        naive = np.array([bool(rx.fullmatch(x) or (x[:1] == " " and rx.fullmatch(x[1:]))) for x in texts])
        assert np.array_equal(members[cdef.name], naive), cdef.name
        assert not members[cdef.name][llama.special].any()


@pytest.mark.parametrize("text, expected", [
    ("2024", {"multi_digit_numeral", "date_time"}), (" 2024", {"multi_digit_numeral", "date_time"}),
    ("202", {"multi_digit_numeral"}), ("7", set()), ("==", {"code"}), (" ->", {"code"}), ("!=", {"code"}),
    ("+=", {"code"}), ("());", {"code"}), (" return", {"code"}), ("€", {"currency"}), (" $", {"currency"}),
    ("$5", {"currency"}), ("1,000", {"numeral_with_separator"}), ("3.14", {"numeral_with_separator"}),
    ("-03-", {"date_time"}), ("12:30", {"date_time"}), (":45", {"date_time"}), ("2024-03-15", {"date_time"}),
    ("1/2", set()), ("2100", {"multi_digit_numeral"}), ("≤", {"math"}), (" ±", {"math"}),
    ("²", {"math"}), ("    ", {"code", "whitespace"}), ("\t", {"code", "whitespace"}), ("\n\n", {"whitespace"}),
    (" ", {"whitespace"}), ("hello", set()), ("１０", set()), ("$$$", set()),
])
def test_category_membership_of_named_strings(text, expected):
    assert set(categorize(text)) == expected


def test_named_vocabulary_tokens_fall_in_their_categories(tok):
    for name, text, category in [("gpt2", " 2024", "multi_digit_numeral"), ("gpt2", " 2024", "date_time"),
                                 ("llama-3.2", "==", "code"), ("llama-3.2", "€", "currency"), ("llama-3.2", "202", "multi_digit_numeral")]:
        t = tok(name)
        ids = t.encode(text, dummy_prefix=False).ids
        assert len(ids) == 1, (name, text)
        assert category_members(t)[category][ids[0]], (name, text, category)


def test_match_tokens_maps_matches_back_to_the_right_texts():
    cdef = next(c for c in category_defs() if c.name == "multi_digit_numeral")
    texts = ["a", "12", "", "x12", "123", "\x00", " 45", "4 5"]
    assert match_tokens(texts, cdef).tolist() == [False, True, False, False, True, False, True, False]


# ---------------------------------------------------------------- the paper's two regimes
def test_llama_student_with_qwen_teacher_has_zero_numeral_coverage_and_gets_pkl(llama_qwen, tok):
    llama, qwen = tok("llama-3.2"), tok("qwen2.5")
    numerals = _ascii_numerals(llama)
    # Llama-3 keeps every 2- and 3-digit string as a token; Qwen splits every digit.
    assert numerals == {f"{i:02d}".encode() for i in range(100)} | {f"{i:03d}".encode() for i in range(1000)}
    assert _ascii_numerals(qwen) == set()
    cat = llama_qwen.categories["multi_digit_numeral"]
    assert (cat.total, cat.matched, cat.coverage) == (len(numerals), 0, 0.0)
    assert len(cat.unmatched) == cat.total
    assert llama_qwen.recommendation == "P-KL"
    assert f"multi_digit_numeral 0.0% (0 of {len(numerals):,}" in llama_qwen.reason


def test_unmatched_numeral_rows_carry_their_teacher_pieces(llama_qwen, tok):
    llama = tok("llama-3.2")
    sid = llama.encode("202", dummy_prefix=False).ids[0]
    row = llama_qwen.rows[sid]
    assert row.kind == "retokenized" and row.categories == ["multi_digit_numeral"]
    # SPEC §2.2's example: 202 -> 2, 0, 2 with 0.9, 0.09, 0.009; the two 2s share a column.
    assert [p.text for p in row.pieces] == ["2", "0"]
    assert [p.weight for p in row.pieces] == pytest.approx([0.909 / 0.999, 0.09 / 0.999], abs=1e-6)


def test_every_category_count_agrees_with_an_independent_byte_intersection(llama_qwen, deepseek_gpt4o, tok):
    for report, s, t in ((llama_qwen, "llama-3.2", "qwen2.5"), (deepseek_gpt4o, "deepseek-v3", "gpt-4o")):
        student, teacher = tok(s), tok(t)
        exact = _exact_ids(student, teacher)
        for name, members in category_members(student).items():
            cat = report.categories[name]
            assert cat.total == int(members.sum())
            assert cat.matched == int((members & exact).sum()), (s, t, name)
            assert cat.unmatched == np.flatnonzero(members & ~exact).tolist()


def test_teacher_sharing_the_numeral_pieces_gets_hkl(deepseek_gpt4o, tok):
    numerals = _ascii_numerals(tok("deepseek-v3"))
    assert numerals <= _ascii_numerals(tok("gpt-4o"))
    cat = deepseek_gpt4o.categories["multi_digit_numeral"]
    assert cat.total == cat.matched == len(numerals) and cat.coverage == 1.0
    scored = [deepseek_gpt4o.categories[n] for n in CRITICAL if deepseek_gpt4o.categories[n].coverage is not None]
    assert all(c.coverage >= 0.9 for c in scored)
    assert deepseek_gpt4o.recommendation == "H-KL"
    for c in scored:
        assert f"{c.name} " in deepseek_gpt4o.reason and f"({c.matched:,} of {c.total:,}" in deepseek_gpt4o.reason


def test_the_students_own_tokenizer_as_teacher_covers_everything(tok, projection):
    report = coverage_audit(tok("llama-3.2"), tok("llama-3.2"), projection("llama-3.2", "llama-3.2"))
    assert report.recommendation == "H-KL"
    assert all(c.coverage == 1.0 for c in report.categories.values() if c.total)
    assert report.rows == {} and report.teacher_side.unreachable == 0


def test_threshold_flips_the_label_exactly_at_the_lowest_critical_coverage(deepseek_gpt4o, tok, projection):
    lowest = min((c for c in deepseek_gpt4o.categories.values() if c.critical and c.coverage is not None), key=lambda c: c.coverage)
    just_above = float(np.nextafter(lowest.coverage, 1.0))
    w = projection("deepseek-v3", "gpt-4o")
    at = coverage_audit(tok("deepseek-v3"), tok("gpt-4o"), w, threshold=lowest.coverage)
    above = coverage_audit(tok("deepseek-v3"), tok("gpt-4o"), w, threshold=just_above)
    assert at.recommendation == "H-KL" and above.recommendation == "P-KL"
    assert "1 critical category is below" in above.reason and lowest.name in above.reason
    # with_threshold judges the same figures the same way
    assert deepseek_gpt4o.with_threshold(lowest.coverage).recommendation == "H-KL"
    assert deepseek_gpt4o.with_threshold(just_above).reason == above.reason


def test_zero_threshold_never_recommends_pkl_and_out_of_range_is_an_error(llama_qwen):
    assert llama_qwen.with_threshold(0.0).recommendation == "H-KL"
    with pytest.raises(XtokError, match="threshold"):
        llama_qwen.with_threshold(1.5)


# ---------------------------------------------------------------- corpus and teacher side
def test_corpus_weighting_counts_the_students_own_tokens(llama_qwen, tok):
    llama = tok("llama-3.2")
    counts = Counter(i for text in sample_texts() for i in llama.encode(text).ids.tolist())
    members = category_members(llama)
    for name, cat in llama_qwen.categories.items():
        ids = np.flatnonzero(members[name]).tolist()
        assert cat.occurrences == sum(counts[i] for i in ids), name
    numerals = llama_qwen.categories["multi_digit_numeral"]
    assert numerals.occurrences > 0 and numerals.matched_occurrences == 0 and numerals.weighted_coverage == 0.0
    sid = llama.encode("202", dummy_prefix=False).ids[0]
    assert llama_qwen.rows[sid].occurrences == counts[sid]
    assert llama_qwen.corpus.student_tokens == sum(counts.values())


def test_a_str_corpus_counts_like_its_text(tok, projection):
    text = "Total: $1,234.56 on 2024-03-15 at 12:30\n\n    if x == 10:\n        return 202\n"
    llama, qwen = tok("llama-3.2"), tok("qwen2.5")
    report = coverage_audit(llama, qwen, projection("llama-3.2", "qwen2.5"), corpus=text)
    assert report.corpus.characters == len(text)
    whole = Counter(llama.encode(text).ids.tolist())
    numerals = np.flatnonzero(category_members(llama)["multi_digit_numeral"]).tolist()
    assert report.categories["multi_digit_numeral"].occurrences == sum(whole[i] for i in numerals)


def test_unreachable_teacher_tokens_are_the_empty_columns_of_w(llama_qwen, tok, projection):
    qwen = tok("qwen2.5")
    col_sums = np.asarray(projection("llama-3.2", "qwen2.5").matrix.sum(axis=0)).ravel()[: qwen.vocab_size]
    regular = ~qwen.special & ~qwen.holes
    unreachable = regular & (col_sums == 0)
    ts = llama_qwen.teacher_side
    assert (ts.tokens, ts.unreachable) == (int(regular.sum()), int(unreachable.sum()))
    assert 0 < ts.unreachable < ts.tokens and all(unreachable[i] for i in ts.examples)
    t_counts = Counter(i for text in sample_texts() for i in qwen.encode(text).ids.tolist())
    assert ts.corpus_tokens == sum(t_counts.values())
    assert ts.unreachable_occurrences == sum(c for i, c in t_counts.items() if unreachable[i])


def test_lowercasing_tokenizers_are_flagged_exact_only_up_to_case(tok, projection, llama_qwen):
    bert = tok("bert-wordpiece")
    assert "+lowercase" in bert.family
    report = coverage_audit(tok("llama-3.2"), bert, projection("llama-3.2", "bert-wordpiece"))
    assert any("only up to case" in n and bert.name in n for n in report.notes)
    assert llama_qwen.notes == []


def test_w_of_another_pair_is_refused(tok, projection):
    with pytest.raises(XtokError, match="rebuild"):
        coverage_audit(tok("llama-3.2"), tok("gpt2"), projection("llama-3.2", "qwen2.5"))


# ---------------------------------------------------------------- reports
def test_json_report_round_trips_and_names_the_hashes(llama_qwen, tok, projection):
    text = llama_qwen.to_json()
    back = AuditReport.from_json(text)
    assert back == llama_qwen and back.to_json() == text
    d = json.loads(text)
    assert d["student"]["sha256"] == tok("llama-3.2").sha256 and d["teacher"]["sha256"] == tok("qwen2.5").sha256
    assert d["w_sha256"] == projection("llama-3.2", "qwen2.5").sha256
    assert [c["name"] for c in d["categories"]] == [c.name for c in category_defs()]
    with pytest.raises(XtokError, match="audit report"):
        AuditReport.from_json('{"format": "something else"}')


def test_html_report_is_self_contained_with_every_category_and_the_unmatched_rows(llama_qwen):
    page = llama_qwen.to_html()
    for c in category_defs():
        assert f'<tr id="cat-{c.name}">' in page
    assert "@media print" in page and "P-KL" in page
    assert not re.search(r"<script|<link|<img|src=|url\(|https?://", page)
    assert page.count("<h3>") == sum(1 for c in llama_qwen.categories.values() if c.critical and c.unmatched)
    numerals = llama_qwen.categories["multi_digit_numeral"].unmatched
    assert f"… and {len(numerals) - 100:,} more (the JSON report lists them all)" in page  # 100 rows per category
    full = llama_qwen.to_html(max_rows=None)
    listed = sum(len(c.unmatched) for c in llama_qwen.categories.values() if c.critical)
    assert full.count('<tr><td class="num">') == listed and "<code>202</code>" in full


def test_markdown_report_has_the_recommendation_and_every_category(llama_qwen):
    md = llama_qwen.to_markdown(max_rows=None)
    assert llama_qwen.reason in md
    for c in category_defs():
        assert f"| {c.name} |" in md
    rows = [line for line in md.splitlines() if re.match(r"\| \d+ \| `", line)]
    assert len(rows) == sum(len(c.unmatched) for c in llama_qwen.categories.values() if c.critical)


# ---------------------------------------------------------------- CLI
def test_cli_writes_a_json_report_from_a_saved_w(tmp_path, projection, llama_qwen):
    from xtok_core.cli import main

    w_path = projection("llama-3.2", "qwen2.5").save(tmp_path / "W.safetensors")
    out = tmp_path / "audit.json"
    assert main(["audit", "--w", str(w_path), "--no-corpus", "--out", str(out)]) == 0
    report = AuditReport.from_json(out.read_text(encoding="utf-8"))
    assert report.recommendation == "P-KL" and report.corpus is None
    assert report.categories["multi_digit_numeral"].matched == 0
    assert report.w_sha256 == llama_qwen.w_sha256


def test_cli_takes_the_format_from_the_extension_and_prints_markdown_without_out(tmp_path, projection, capsys):
    from xtok_core.cli import main

    w_path = projection("llama-3.2", "qwen2.5").save(tmp_path / "W.safetensors")
    assert main(["audit", "--w", str(w_path), "--out", str(tmp_path / "audit.html"), "--threshold", "0"]) == 0
    page = (tmp_path / "audit.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "bundled sample corpus" in page and ">H-KL<" in page
    capsys.readouterr()
    assert main(["audit", "--w", str(w_path), "--no-corpus", "--format", "md"]) == 0
    assert capsys.readouterr().out.startswith("# Coverage audit: llama-3.2 → qwen2.5")


def test_cli_reports_a_missing_corpus_in_one_line(capsys):
    from xtok_core.cli import main

    assert main(["audit", "--corpus", "/nonexistent/corpus.txt"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "corpus" in err


def test_report_names_the_corpus_once(default_pair):
    s, t = default_pair
    md = coverage_audit(s, t, corpus=["price 12.50 $ today", "x == 1"]).to_markdown()
    assert "- corpus: 2 texts" in md and "corpus: corpus" not in md


def test_cli_reports_and_app_show_whitespace_with_one_glyph_set(tok):
    """A tab is the same glyph in the alignment report, the graph nodes, the audit report and the app's chips."""
    from xtok_app.render import chips_html, visible_bytes
    from xtok_core.align import align_spans, format_alignment
    from xtok_core.audit_report import _md_code
    from xtok_core.display import GLYPHS

    a = align_spans("a\tb", "gpt2", "qwen2.5")
    graph_texts = {d["text"] for _, d in a.to_networkx().nodes(data=True)}
    tab = GLYPHS["\t"]
    assert any(tab in x for x in graph_texts) and tab in format_alignment(a)
    assert tab in _md_code("\t") and visible_bytes(b"\t") == tab
    g = tok("gpt2")
    assert tab in chips_html(g, g.encode("\t").ids)
    assert {tab, "→", "⇥"} & set("".join(graph_texts) + format_alignment(a)) == {tab}
