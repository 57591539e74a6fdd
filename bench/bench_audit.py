"""Coverage audit of a pair on the full vocabularies with the bundled sample corpus.

Times, in this process on the same tokenizers: building W, the audit itself (first call, then with the
vocabulary categories cached per tokenizer hash), the vocabulary categorization xtok does (one regex
scan per category over the joined vocabulary) against a naive per-token `fullmatch` loop, and rendering
the three report formats. Best of `--repeat` runs.

    python bench/bench_audit.py [--student llama-3.2] [--teacher qwen2.5] [--repeat 3]
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from _measure import machine, table  # noqa: E402

from xtok_core import audit, load_tokenizer  # noqa: E402
from xtok_core.corpus import sample_corpus  # noqa: E402
from xtok_core.projection import build_projection  # noqa: E402


def naive_categorize(tok) -> dict[str, np.ndarray]:
    """The obvious loop: decode each token, then `fullmatch` every category on it and on it without
    its leading space."""
    defs = [(c.name, re.compile(c.pattern)) for c in audit.category_defs()]
    out = {name: np.zeros(tok.vocab_size, dtype=bool) for name, _ in defs}
    for i, b in enumerate(tok.token_bytes):
        if b is None:
            continue
        text = b.decode("utf-8", "replace")
        for name, rx in defs:
            if rx.fullmatch(text) or (text[:1] == " " and rx.fullmatch(text[1:])):
                out[name][i] = True
    return out


def best_of(n: int, fn):
    best, value = float("inf"), None
    for _ in range(n):
        t0 = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - t0)
    return best, value


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", default="llama-3.2")
    ap.add_argument("--teacher", default="qwen2.5")
    ap.add_argument("--repeat", type=int, default=3, help="runs per row (best is reported)")
    a = ap.parse_args(argv)

    s, t = load_tokenizer(a.student), load_tokenizer(a.teacher)
    corpus = sample_corpus()
    audit.category_defs()  # the Unicode classes are built once per process, not per audit

    def cold(projection=None):
        audit._MEMBERS.clear()
        return audit.coverage_audit(s, t, projection, corpus=corpus, corpus_name="sample")

    def scan():
        texts = audit._decoded(s)
        joined = audit._join(texts)
        return {c.name: audit.match_tokens(texts, c, joined) for c in audit.category_defs()}

    t_first, _ = best_of(1, lambda: build_projection(s, t))  # also builds the tokenizers' lazy tables
    t_w, w = best_of(a.repeat, lambda: build_projection(s, t))
    t_cold, report = best_of(a.repeat, lambda: cold(w))
    t_warm, _ = best_of(a.repeat, lambda: audit.coverage_audit(s, t, w, corpus=corpus, corpus_name="sample"))
    t_end, _ = best_of(a.repeat, cold)
    t_scan, fast = best_of(a.repeat, scan)
    t_naive, slow = best_of(a.repeat, lambda: naive_categorize(s))
    assert all(np.array_equal(fast[k], slow[k]) for k in fast), "the two categorizations disagree"
    t_render, _ = best_of(a.repeat, lambda: (report.to_markdown(), report.to_html(), report.to_json()))

    rows = [
        ["build W, first in the process (tokenizers' lazy tables too)", f"{t_first:.3f}", ""],
        ["build W (build_projection)", f"{t_w:.3f}", ""],
        ["audit, first call (categorize vocabulary, tokenize corpus, figures, rows)", f"{t_cold:.3f}", ""],
        ["audit, vocabulary categories cached", f"{t_warm:.3f}", ""],
        ["audit from scratch: W built inside, vocabulary categorized", f"{t_end:.3f}", ""],
        ["categorize vocabulary: one regex scan per category (xtok)", f"{t_scan:.3f}", "1.0x"],
        ["categorize vocabulary: per-token fullmatch loop (naive)", f"{t_naive:.3f}", f"{t_naive / t_scan:.1f}x slower"],
        ["render Markdown + HTML + JSON", f"{t_render:.3f}", ""],
    ]
    c = report.corpus
    print(f"\naudit {a.student} -> {a.teacher}: {s.vocab_size:,} x {t.vocab_size:,}, recommendation {report.recommendation}")
    print(f"sample corpus: {c.characters:,} characters, {c.student_tokens:,} student / {c.teacher_tokens:,} teacher tokens; "
          f"{len(report.rows):,} unmatched critical rows")
    print(f"machine: {machine()}\n")
    print(table(["step", "seconds", "ratio"], rows))


if __name__ == "__main__":
    main()
