"""Coverage audit of critical tokens and the P-KL / H-KL choice (SPEC §3).

H-KL compares student and teacher probabilities only on tokens the two vocabularies share exactly, so it
is the right loss when the tokens that carry meaning (numerals, prices, dates, code) are shared. When a
critical category is mostly *not* shared (Llama-3 has a token for every two- and three-digit string,
Qwen splits every digit), those tokens fall out of H-KL's common set and only P-KL, which projects every
student row through W, still teaches them.

Categories are regular expressions over the student vocabulary. A token belongs to a category when its
decoded bytes, or the same with one leading space removed, match the whole pattern. Categories may
overlap (`2024` is both a multi-digit numeral and a date fragment). A member is *matched* when its W row
has kind `exact` (the teacher has a token with the same bytes).

Choices where the specification is silent, recorded here and in the README:
  - digits are ASCII `[0-9]`, as `\\d` means in most regex dialects; numerals of other scripts
    (fullwidth `１０`, Arabic-Indic `۲۰`) are left out, so that "Qwen splits every digit" reads 0.
  - the recommendation uses vocabulary coverage; the corpus-weighted figures are reported beside it.
  - a category with no student tokens has no coverage (None) and does not vote.
  - a `str` corpus is tokenized in chunks split after each run of newlines (for `encode_batch`); a
    list is tokenized item by item.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import asdict, dataclass, field
from functools import cache

import numpy as np

from .errors import XtokError
from .tok import Tok, load_tokenizer

CRITICAL = ("multi_digit_numeral", "numeral_with_separator", "currency", "date_time", "code")
DEFAULT_THRESHOLD = 0.9
REPORT_FORMAT = "xtok-audit"
REPORT_VERSION = 1
_SEP = "\ud800"  # a lone surrogate: `bytes.decode` never produces one, so it can't occur in a token

_OPERATORS = ("===", "!==", "==", "!=", "<=", ">=", "->", "=>", "+=", "-=", "*=", "/=", "%=", "&=", "|=", "^=",
              "<<=", ">>=", "**=", "//=", "<<", ">>", "**", "//", "&&", "||", "++", "--", "::", ":=", "?.", "??")
_KEYWORDS = ("def", "class", "return", "import", "lambda", "elif", "else", "if", "for", "while", "switch", "case",
             "break", "continue", "try", "except", "finally", "raise", "catch", "throw", "yield", "async", "await",
             "None", "True", "False", "self", "function", "const", "let", "var", "null", "nullptr", "void",
             "struct", "enum", "public", "private", "protected", "static", "fn", "impl", "pub", "mut", "typeof",
             "namespace", "template", "typedef", "#include", "#define", "printf", "println")


@cache
def _unicode_class(category: str, extra: str = "") -> str:
    """A regex character class body with every non-ASCII character of a Unicode general category."""
    chars = [c for c in map(chr, range(0x80, 0x110000)) if unicodedata.category(c) == category] + list(extra)
    cps = sorted(set(map(ord, chars)))
    ranges, start = [], cps[0]
    for a, b in zip(cps, cps[1:] + [None]):
        if b != a + 1:
            ranges.append(re.escape(chr(start)) + ("" if a == start else "-" + re.escape(chr(a))))
            start = b
    return "".join(ranges)


@dataclass(frozen=True)
class CategoryDef:
    """A critical-token category: `pattern` must match a whole token (one leading space may be dropped)."""

    name: str
    definition: str
    pattern: str
    critical: bool


def _alternation(words) -> str:
    """`a|b|…` factored on the first character (`c(?:lass|onst)`), so `re` rejects most tokens after
    one comparison instead of one per word; longer words first so that no prefix shadows them."""
    groups: dict[str, list[str]] = {}
    for w in sorted(words, key=lambda w: (-len(w), w)):
        groups.setdefault(w[0], []).append(w[1:])
    return "|".join(re.escape(c) + ("(?:" + "|".join(map(re.escape, rest)) + ")" if any(rest) else "")
                    for c, rest in groups.items())


@cache
def _compiled(pattern: str) -> re.Pattern:
    return re.compile(pattern)


@cache
def category_defs() -> tuple[CategoryDef, ...]:
    """The seven categories of SPEC §3, in report order (critical first)."""
    num = r"[0-9]+(?:[.,][0-9]+)*"
    currency = "$" + _unicode_class("Sc")
    math = _unicode_class("Sm", "°¹²³⁰⁴⁵⁶⁷⁸⁹⁽⁾₀₁₂₃₄₅₆₇₈₉₊₋₌₍₎¼½¾⅐⅑⅒⅓⅔⅕⅖⅗⅘⅙⅚⅛⅜⅝⅞")
    fill, br = r"""[;:,.'"`]""", r"[(){}\[\]]"
    ops = _alternation(_OPERATORS)
    defs = [
        ("multi_digit_numeral", "two or more ASCII digits: `10`, `202`, `000`", r"[0-9]{2,}"),
        ("numeral_with_separator", "digits with `,` or `.` between or before them: `1,000`, `3.14`, `.5`",
         r"[0-9]+(?:[.,][0-9]+)+|(?:[.,][0-9]+)+"),
        ("currency", "a currency symbol (Unicode Sc), alone or with an amount before or after it: `$`, `€`, `$5`, `5€`",
         rf"[{currency}](?:{num})?|{num}[{currency}]"),
        ("date_time", "years 1800-2099 and numeric date/time fragments: `2024`, `-03-`, `03/`, `12:30`, `:45`",
         r"(?:18|19|20)[0-9]{2}|[0-9]{4}-[0-9]{2}(?:-[0-9]{2})?|[0-9]{1,2}/[0-9]{1,2}/[0-9]{2,4}|[-/][0-9]{2}[-/]?|[0-9]{2}[-/]"
         r"|[0-9]{1,2}:[0-9]{2}(?::[0-9]{2})?|:[0-9]{2}|[0-9]{1,2}:"),
        ("code", "operators (`==`, `->`, `!=`, `+=` …), bracket runs (`(`, `()`, `});`), indentation "
                 "(two or more spaces, tabs) and common keywords (`def`, `return`, `const` …)",
         rf"(?:{ops})|{fill}*{br}(?:{br}|{fill})*| {{2,}}|[ \t]*\t[ \t]*|(?:{_alternation(_KEYWORDS)})"),
        ("math", "mathematical symbols (Unicode Sm outside ASCII), super/subscripts, fractions, `°`: `±×÷≤≥∑√`",
         rf"[{math}]+"),
        ("whitespace", "runs of spaces, tabs and newlines", r"[ \t\r\n\f\v]+"),
    ]
    return tuple(CategoryDef(n, d, p, n in CRITICAL) for n, d, p in defs)


def _decoded(tok: Tok) -> list[str]:
    """Every token's bytes as text (partial UTF-8 becomes U+FFFD, which no category contains)."""
    return [b.decode("utf-8", "replace") if b is not None else "" for b in tok.token_bytes]


def match_tokens(texts: list[str], cdef: CategoryDef, _joined: tuple | None = None) -> np.ndarray:
    """(n,) bool: which of `texts` belong to the category.

    One regex scan over all texts joined by a separator no text contains, instead of one `fullmatch`
    per token: the pattern is anchored between separators, and each match is mapped back to its text
    by its start position. `_joined`: `_join(texts)`, to share it between categories."""
    joined, seps = _joined or _join(texts)
    # The match consumes the separator before a text (a literal prefix lets `re` jump from one
    # separator to the next) and only looks at the one after it, which starts the next text.
    scan = _compiled(rf"{_SEP} ?(?:{cdef.pattern})(?={_SEP})")
    hits = np.fromiter((m.start() for m in scan.finditer(joined)), dtype=np.int64)
    out = np.zeros(len(texts), dtype=bool)
    out[np.searchsorted(seps, hits)] = True
    return out


def _join(texts: list[str]) -> tuple[str, np.ndarray]:
    """The texts joined by `_SEP` (one before each, one at the end), and each separator's position."""
    lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    return _SEP + _SEP.join(texts) + _SEP, np.cumsum(lengths + 1) - lengths - 1


_MEMBERS: dict = {}


def category_members(tok: Tok) -> dict[str, np.ndarray]:
    """{category: (V,) bool} over `tok`'s vocabulary (special tokens and holes are in none); cached per
    tokenizer hash."""
    if tok.sha256 not in _MEMBERS:
        texts = _decoded(tok)
        joined = _join(texts)
        _MEMBERS[tok.sha256] = {c.name: match_tokens(texts, c, joined) for c in category_defs()}
    return _MEMBERS[tok.sha256]


def categorize(text: str) -> list[str]:
    """Names of the categories a single token text belongs to (for display and tests)."""
    return [c.name for c in category_defs() if match_tokens([text], c)[0]]


# ---------------------------------------------------------------------------- report data
@dataclass
class TokenizerInfo:
    name: str
    sha256: str
    family: str
    vocab_size: int

    @classmethod
    def of(cls, tok: Tok) -> "TokenizerInfo":
        return cls(tok.name, tok.sha256, tok.family, tok.vocab_size)


@dataclass
class Category:
    """One category's figures. `unmatched`: member student ids whose W row is not `exact`, ascending.
    Corpus figures (None without a corpus): occurrences of member tokens in the student's tokenization
    of the corpus, of exact-matched ones, and their ratio."""

    name: str
    definition: str
    critical: bool
    total: int
    matched: int
    coverage: float | None
    unmatched: list[int]
    occurrences: int | None = None
    matched_occurrences: int | None = None
    weighted_coverage: float | None = None


@dataclass
class TeacherPiece:
    teacher_id: int
    text: str
    weight: float


@dataclass
class UnmatchedRow:
    """The W row of an unmatched critical student token: why the teacher sees it as several pieces."""

    student_id: int
    text: str
    kind: str
    pieces: list[TeacherPiece]
    categories: list[str]
    occurrences: int | None = None


@dataclass
class TeacherSide:
    """Teacher tokens that no student row reaches (an all-zero W column): P-KL can never put mass there.
    `tokens` counts the teacher's regular tokens (special tokens and id holes left out)."""

    tokens: int
    unreachable: int
    examples: list[int]
    example_texts: list[str]
    corpus_tokens: int | None = None
    unreachable_occurrences: int | None = None
    unreachable_share: float | None = None


@dataclass
class CorpusInfo:
    name: str
    sha256: str
    texts: int
    characters: int
    student_tokens: int
    teacher_tokens: int


@dataclass
class AuditReport:
    """What `coverage_audit` found; render with `to_json`, `to_markdown`, `to_html`."""

    student: TokenizerInfo
    teacher: TokenizerInfo
    w_sha256: str
    threshold: float
    categories: dict[str, Category]
    rows: dict[int, UnmatchedRow]
    teacher_side: TeacherSide
    recommendation: str
    reason: str
    corpus: CorpusInfo | None = None
    notes: list[str] = field(default_factory=list)
    xtok_version: str = ""

    def with_threshold(self, threshold: float) -> "AuditReport":
        """The same figures judged against another threshold."""
        label, reason = recommend(self.categories, _check_threshold(threshold), self.teacher.name)
        return AuditReport(**{**self.__dict__, "threshold": float(threshold), "recommendation": label, "reason": reason})

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict:
        d = asdict(self)
        d["categories"] = list(d["categories"].values())
        d["rows"] = list(d["rows"].values())
        return {"format": REPORT_FORMAT, "format_version": REPORT_VERSION, **d}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> "AuditReport":
        try:
            d = json.loads(text)
            if d.get("format") != REPORT_FORMAT or d.get("format_version", 0) > REPORT_VERSION:
                raise ValueError(f"format {d.get('format')} v{d.get('format_version')}")
            return cls(
                student=TokenizerInfo(**d["student"]), teacher=TokenizerInfo(**d["teacher"]), w_sha256=d["w_sha256"],
                threshold=d["threshold"], categories={c["name"]: Category(**c) for c in d["categories"]},
                rows={r["student_id"]: UnmatchedRow(**{**r, "pieces": [TeacherPiece(**p) for p in r["pieces"]]}) for r in d["rows"]},
                teacher_side=TeacherSide(**d["teacher_side"]), recommendation=d["recommendation"], reason=d["reason"],
                corpus=CorpusInfo(**d["corpus"]) if d.get("corpus") else None, notes=d.get("notes", []),
                xtok_version=d.get("xtok_version", ""))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise XtokError(f"not an xtok audit report ({str(e).splitlines()[0][:80] if str(e) else type(e).__name__}); "
                            f"pass JSON written by AuditReport.to_json or `xtok audit --format json`") from None

    def to_markdown(self, max_rows: int | None = 100) -> str:
        from .audit_report import render_markdown

        return render_markdown(self, max_rows)

    def to_html(self, max_rows: int | None = 100) -> str:
        from .audit_report import render_html

        return render_html(self, max_rows)


# ---------------------------------------------------------------------------- the audit
def _check_threshold(threshold: float) -> float:
    if not 0.0 <= float(threshold) <= 1.0:
        raise XtokError(f"threshold {threshold} is outside [0, 1]; pass a coverage fraction such as 0.9")
    return float(threshold)


def pct(x: float | None) -> str:
    """A fraction as a percentage truncated (not rounded) to 0.1, so a figure below the threshold never
    prints as equal to it."""
    if x is None:
        return "n/a"
    return f"{np.floor(x * 1000 + 1e-9) / 10:.1f}%"


def recommend(categories: dict[str, Category], threshold: float, teacher_name: str = "the teacher") -> tuple[str, str]:
    """("P-KL" | "H-KL", reason): P-KL when any critical category's coverage is below `threshold`."""
    crit = [c for c in categories.values() if c.critical]
    scored = [c for c in crit if c.coverage is not None]
    below = [c for c in scored if c.coverage < threshold]
    empty = [c.name for c in crit if c.coverage is None]
    fig = lambda c: f"{c.name} {pct(c.coverage)} ({c.matched:,} of {c.total:,} student tokens exact in {teacher_name})"  # noqa: E731
    tail = f" No student tokens in: {', '.join(empty)}." if empty else ""
    if below:
        return "P-KL", (f"{len(below)} critical categor{'y is' if len(below) == 1 else 'ies are'} below the "
                        f"{pct(threshold)} threshold: " + "; ".join(map(fig, below)) +
                        ". H-KL's exact common set would leave those tokens out; P-KL projects every student row through W." + tail)
    if not scored:
        return "H-KL", f"The student has no tokens in any critical category, so nothing critical is lost to H-KL.{tail}"
    return "H-KL", (f"Every critical category is at or above the {pct(threshold)} threshold: " + "; ".join(map(fig, scored)) +
                    ". The exact common set covers the critical tokens, and H-KL keeps the sharper one-to-one signal." + tail)


def _corpus_texts(corpus) -> list[str]:
    """A str is cut after each run of newlines (batchable, and no token spans a cut); a list is used as is."""
    if isinstance(corpus, str):
        return [t for t in re.split(r"(?<=\n)(?=[^\n])", corpus) if t]
    texts = list(corpus)
    if not all(isinstance(t, str) for t in texts):
        raise XtokError("corpus must be a str or a list of str; read files as text before passing them")
    return texts


def _token_counts(tok: Tok, texts: list[str]) -> np.ndarray:
    """(V,) int64: how often each id occurs in `tok`'s tokenization of `texts` (no special tokens)."""
    ids = tok.encode_ids_batch(texts)
    flat = np.fromiter((i for seq in ids for i in seq), dtype=np.int64) if ids else np.zeros(0, np.int64)
    return np.bincount(flat, minlength=tok.vocab_size)


def coverage_audit(student, teacher, projection=None, *, threshold: float = DEFAULT_THRESHOLD, corpus=None,
                   corpus_name: str | None = None, progress=None) -> AuditReport:
    """Audit how much of each critical category the teacher shares exactly, and recommend P-KL or H-KL.

    student, teacher: Tok or anything `load_tokenizer` takes. projection: a `Projection` for this pair
        (built here when None). corpus: a str or list of str for frequency-weighted coverage and the
        teacher's unreachable share. progress: optional callable(fraction, message).
    """
    from . import __version__
    from .projection import ROW_KINDS, build_projection

    s, t = load_tokenizer(student), load_tokenizer(teacher)
    threshold = _check_threshold(threshold)
    texts = None if corpus is None else _corpus_texts(corpus)
    say = progress or (lambda f, m: None)
    if projection is None:
        say(0.0, f"building W for {s.name} -> {t.name}")
        projection = build_projection(s, t)
    projection.check_tokenizers(s, t)
    if projection.shape[0] < s.vocab_size or projection.shape[1] < t.vocab_size:
        raise XtokError(f"W is {projection.shape[0]:,} x {projection.shape[1]:,} but {s.name} x {t.name} needs at least "
                        f"{s.vocab_size:,} x {t.vocab_size:,}; rebuild it with xtok build-w --student {s.name} --teacher {t.name}")

    say(0.5, "categorizing the student vocabulary")
    members = category_members(s)
    exact = projection.kinds[: s.vocab_size] == ROW_KINDS.index("exact")

    counts_s = counts_t = corpus_info = None
    if texts is not None:
        say(0.6, "tokenizing the corpus")
        counts_s, counts_t = _token_counts(s, texts), _token_counts(t, texts)
        joined = "".join(texts)
        corpus_info = CorpusInfo(corpus_name or "corpus", hashlib.sha256(joined.encode("utf-8", "surrogatepass")).hexdigest(),
                                 len(texts), len(joined), int(counts_s.sum()), int(counts_t.sum()))

    say(0.8, "collecting figures")
    categories = {}
    for cdef in category_defs():
        m = members[cdef.name]
        total, matched = int(m.sum()), int((m & exact).sum())
        cat = Category(cdef.name, cdef.definition, cdef.critical, total, matched, matched / total if total else None,
                       np.flatnonzero(m & ~exact).tolist())
        if counts_s is not None:
            occ, mocc = int(counts_s[m].sum()), int(counts_s[m & exact].sum())
            cat.occurrences, cat.matched_occurrences, cat.weighted_coverage = occ, mocc, (mocc / occ if occ else None)
        categories[cdef.name] = cat

    rows = {}
    for cat in categories.values():
        if not cat.critical:
            continue
        for sid in cat.unmatched:
            if sid in rows:
                rows[sid].categories.append(cat.name)
                continue
            cols, w = projection.row(sid)
            rows[sid] = UnmatchedRow(sid, s.token_text(sid), projection.kind(sid),
                                     [TeacherPiece(int(c), t.token_text(int(c)), float(x)) for c, x in zip(cols, w)],
                                     [cat.name], None if counts_s is None else int(counts_s[sid]))

    teacher_side = _teacher_side(projection, t, counts_t)
    label, reason = recommend(categories, threshold, t.name)
    notes = []
    for side, tok in (("student", s), ("teacher", t)):
        if tok.folds_case:
            notes.append(f"The {side} {tok.name} is {tok.family}: it lower-cases (or strips accents) before tokenizing, "
                         f"so exact matches are only up to case.")
    say(1.0, "done")
    return AuditReport(TokenizerInfo.of(s), TokenizerInfo.of(t), projection.sha256, threshold, categories, rows,
                       teacher_side, label, reason, corpus_info, notes, __version__)


def _is_partial(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return False
    except UnicodeDecodeError:
        return True


def _teacher_side(projection, t: Tok, counts_t: np.ndarray | None, n_examples: int = 50) -> TeacherSide:
    m = projection.matrix
    reached = np.bincount(m.indices[m.data > 0], minlength=m.shape[1])[: t.vocab_size] > 0
    regular = ~t.special & ~t.holes
    unreachable = regular & ~reached
    ids = np.flatnonzero(unreachable)
    if counts_t is not None:
        ids = ids[np.lexsort((ids, -counts_t[ids]))]  # most frequent in the corpus first
    # among the first candidates, whole characters before partial UTF-8 pieces (easier to read)
    head = ids[: 4 * n_examples].tolist()
    ex = sorted(head, key=lambda i: _is_partial(t.token_bytes[i]))[:n_examples]
    side = TeacherSide(int(regular.sum()), int(unreachable.sum()), ex, [t.token_text(i) for i in ex])
    if counts_t is not None:
        total, occ = int(counts_t.sum()), int(counts_t[unreachable].sum())
        side.corpus_tokens, side.unreachable_occurrences = total, occ
        side.unreachable_share = occ / total if total else None
    return side
