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
import html
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
        return render_markdown(self, max_rows)

    def to_html(self, max_rows: int | None = 100) -> str:
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
    from .projection import KINDS, build_projection

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
    exact = projection.kinds[: s.vocab_size] == KINDS.index("exact")

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


# ---------------------------------------------------------------------------- renderers
_VISIBLE = str.maketrans({" ": "␣", "\t": "⇥", "\n": "↵", "\r": "␍", "\f": "␌", "\v": "␋"})


def visible(text: str) -> str:
    """Whitespace made visible (␣ ⇥ ↵), other control characters as \\xNN."""
    out = text.translate(_VISIBLE)
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in out) if not out.isprintable() else out


def _sections(r: AuditReport, max_rows: int | None):
    """What every renderer shows, in order: (category, rows shown, rows left out) per critical category
    that has unmatched tokens; rows heaviest in the corpus first, then by id."""
    for cat in r.categories.values():
        if not cat.critical or not cat.unmatched:
            continue
        rows = sorted((r.rows[i] for i in cat.unmatched), key=lambda x: (-(x.occurrences or 0), x.student_id))
        shown = rows if max_rows is None else rows[:max_rows]
        yield cat, shown, len(rows) - len(shown)


def _verdict(cat: Category, threshold: float) -> str:
    if not cat.critical:
        return "not critical"
    if cat.coverage is None:
        return "no tokens"
    return "below threshold" if cat.coverage < threshold else "ok"


def _teacher_sentence(r: AuditReport) -> str:
    ts = r.teacher_side
    share = ts.unreachable / ts.tokens if ts.tokens else None
    out = (f"{ts.unreachable:,} of {r.teacher.name}'s {ts.tokens:,} regular tokens ({pct(share)}) have an all-zero column "
           f"in W: no student row reaches them, so P-KL can never put probability on them.")
    if ts.unreachable_share is not None:
        out += (f" On the corpus they are {pct(ts.unreachable_share)} of the teacher's tokens "
                f"({ts.unreachable_occurrences:,} of {ts.corpus_tokens:,}).")
    return out


def _corpus_sentence(r: AuditReport) -> str:
    c = r.corpus
    if c is None:
        return "none (vocabulary coverage only)"
    return (f"{c.name}: {c.texts:,} texts, {c.characters:,} characters, {c.student_tokens:,} student tokens, "
            f"{c.teacher_tokens:,} teacher tokens (sha256 {c.sha256[:12]})")


def _md_code(text: str) -> str:
    v = visible(text).replace("|", "\\|")
    return f"`` {v} ``" if "`" in v else f"`{v}`"


def render_markdown(r: AuditReport, max_rows: int | None = 100) -> str:
    L = [f"# Coverage audit: {r.student.name} → {r.teacher.name}", "",
         f"**Recommendation: {r.recommendation}.** {r.reason}", "",
         "| | student | teacher |", "|---|---|---|",
         f"| tokenizer | {r.student.name} | {r.teacher.name} |",
         f"| family | {r.student.family} | {r.teacher.family} |",
         f"| vocabulary | {r.student.vocab_size:,} | {r.teacher.vocab_size:,} |",
         f"| sha256 | `{r.student.sha256}` | `{r.teacher.sha256}` |", "",
         f"- W sha256: `{r.w_sha256}`", f"- threshold: {pct(r.threshold)} (coverage = exact-matched / student tokens in the category)",
         f"- corpus: {_corpus_sentence(r)}", f"- xtok {r.xtok_version}"]
    L += [f"- **note:** {n}" for n in r.notes]
    L += ["", "## Categories", "",
          "| category | critical | student tokens | exact in teacher | coverage |" + (" corpus-weighted |" if r.corpus else "") + " verdict |",
          "|---|---|---:|---:|---:|" + ("---:|" if r.corpus else "") + "---|"]
    for c in r.categories.values():
        w = "" if r.corpus is None else f" {pct(c.weighted_coverage)}" + (f" of {c.occurrences:,}" if c.occurrences else "") + " |"
        L.append(f"| {c.name} | {'yes' if c.critical else 'no'} | {c.total:,} | {c.matched:,} | {pct(c.coverage)} |{w} "
                 f"{_verdict(c, r.threshold)} |")
    L += [""] + [f"- **{c.name}**: {c.definition}" for c in r.categories.values()]
    L += ["", "## Teacher tokens no student row reaches", "", _teacher_sentence(r)]
    if r.teacher_side.examples:
        L += ["", "Examples: " + ", ".join(_md_code(x) for x in r.teacher_side.example_texts)]
    L += ["", "## Unmatched critical tokens and their W rows"]
    for cat, shown, left in _sections(r, max_rows):
        L += ["", f"### {cat.name} ({len(cat.unmatched):,} unmatched)", "",
              "| student id | token | W row kind | teacher pieces: weight | corpus count |", "|---:|---|---|---|---:|"]
        for row in shown:
            pieces = ", ".join(f"{_md_code(p.text)} #{p.teacher_id}: {p.weight:.4f}" for p in row.pieces)
            occ = "" if row.occurrences is None else f"{row.occurrences:,}"
            L.append(f"| {row.student_id} | {_md_code(row.text)} | {row.kind} | {pieces} | {occ} |")
        if left:
            L += ["", f"… and {left:,} more (the JSON report lists them all)."]
    return "\n".join(L) + "\n"


_CSS = """
:root { --ink: #1d232b; --muted: #5d6670; --line: #d6dbe1; --bad: #b3261e; --good: #1e7b34; --bar: #3b6fb6; }
* { box-sizing: border-box; }
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink); max-width: 1100px;
       margin: 2rem auto; padding: 0 1.5rem; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; } h2 { font-size: 1.2rem; margin-top: 2rem; border-bottom: 1px solid var(--line); }
h3 { font-size: 1rem; margin-top: 1.4rem; }
.muted { color: var(--muted); }
.verdict { border: 2px solid var(--line); border-left: 8px solid var(--good); border-radius: 6px; padding: .8rem 1rem; margin: 1rem 0; }
.verdict.pkl { border-left-color: var(--bad); }
.verdict .label { font-size: 1.5rem; font-weight: 700; margin-right: .6rem; }
table { border-collapse: collapse; width: 100%; margin: .6rem 0; font-size: .9rem; }
th, td { border: 1px solid var(--line); padding: .25rem .5rem; text-align: left; vertical-align: top; }
th { background: #f1f3f6; } td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
code { font: .88em/1.3 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background: #f4f5f7; padding: 0 .2em;
       border-radius: 3px; white-space: pre; }
.bar { display: block; width: 100%; max-width: 80px; min-width: 36px; height: .6em; background: #e7eaee; margin: .3em 0 .1em; }
.bar > span { display: block; height: 100%; background: var(--bar); }
.below { color: var(--bad); font-weight: 600; } .ok { color: var(--good); }
.piece { white-space: nowrap; margin-right: .6em; }
.hash { font-size: .8em; word-break: break-all; }
@media print {
  html { font-size: 9pt; } body { margin: 0; padding: 0; max-width: none; font-size: 10pt; }
  th, td { padding: .15rem .3rem; }
  h2, h3 { page-break-after: avoid; } tr, .verdict { page-break-inside: avoid; } thead { display: table-header-group; }
  * { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
}
"""


def _h(x) -> str:
    return html.escape(str(x), quote=True)


def _h_prose(text: str) -> str:
    """Escaped text with its `backtick` spans as <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", _h(text))


def _h_code(text: str) -> str:
    return f"<code>{_h(visible(text))}</code>"


def _bar(x: float | None) -> str:
    if x is None:
        return "n/a"
    return f'<span class="bar"><span style="width:{100 * x:.1f}%"></span></span>{pct(x)}'


def render_html(r: AuditReport, max_rows: int | None = 100) -> str:
    """A self-contained page (inline CSS, no scripts, no external assets) that prints well."""
    title = f"Coverage audit: {r.student.name} → {r.teacher.name}"
    P = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_h(title)}</title>",
         f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><style>{_CSS}</style></head><body>",
         f"<h1>{_h(title)}</h1><p class=\"muted\">xtok {_h(r.xtok_version)} · threshold {pct(r.threshold)} · "
         f"coverage = exact-matched / student tokens in the category</p>",
         f"<div class=\"verdict {'pkl' if r.recommendation == 'P-KL' else 'hkl'}\"><span class=\"label\">{_h(r.recommendation)}</span>"
         f"{_h(r.reason)}</div>"]
    P += [f"<p><strong>Note:</strong> {_h(n)}</p>" for n in r.notes]
    P += ["<h2>Pair</h2><table><thead><tr><th></th><th>student</th><th>teacher</th></tr></thead><tbody>",
          f"<tr><th>tokenizer</th><td>{_h(r.student.name)}</td><td>{_h(r.teacher.name)}</td></tr>",
          f"<tr><th>family</th><td>{_h(r.student.family)}</td><td>{_h(r.teacher.family)}</td></tr>",
          f"<tr><th>vocabulary</th><td class=\"num\">{r.student.vocab_size:,}</td><td class=\"num\">{r.teacher.vocab_size:,}</td></tr>",
          f"<tr><th>sha256</th><td class=\"hash\">{_h(r.student.sha256)}</td><td class=\"hash\">{_h(r.teacher.sha256)}</td></tr>",
          f"<tr><th>W sha256</th><td class=\"hash\" colspan=\"2\">{_h(r.w_sha256)}</td></tr>",
          f"<tr><th>corpus</th><td colspan=\"2\">{_h(_corpus_sentence(r))}</td></tr></tbody></table>"]
    P += ["<h2>Categories</h2><table><thead><tr><th>category</th><th>definition</th><th>critical</th><th>student tokens</th>"
          "<th>exact in teacher</th><th>coverage</th>" + ("<th>corpus-weighted</th>" if r.corpus else "") +
          "<th>verdict</th></tr></thead><tbody>"]
    for c in r.categories.values():
        v = _verdict(c, r.threshold)
        weighted = f"<td>{_bar(c.weighted_coverage)}</td>" if r.corpus else ""
        P.append(f"<tr id=\"cat-{_h(c.name)}\"><td><strong>{_h(c.name)}</strong></td><td>{_h_prose(c.definition)}</td>"
                 f"<td>{'yes' if c.critical else 'no'}</td><td class=\"num\">{c.total:,}</td><td class=\"num\">{c.matched:,}</td>"
                 f"<td>{_bar(c.coverage)}</td>{weighted}<td class=\"{'below' if v == 'below threshold' else 'ok' if v == 'ok' else 'muted'}\">{v}</td></tr>")
    P.append("</tbody></table>")
    P += ["<h2>Teacher tokens no student row reaches</h2>", f"<p>{_h(_teacher_sentence(r))}</p>"]
    if r.teacher_side.examples:
        P.append("<p>Examples: " + " ".join(_h_code(x) for x in r.teacher_side.example_texts) + "</p>")
    P.append("<h2>Unmatched critical tokens and their W rows</h2>")
    any_rows = False
    for cat, shown, left in _sections(r, max_rows):
        any_rows = True
        P += [f"<h3>{_h(cat.name)} <span class=\"muted\">({len(cat.unmatched):,} unmatched)</span></h3>",
              "<table><thead><tr><th>student id</th><th>token</th><th>W row kind</th><th>teacher pieces: weight</th>"
              "<th>corpus count</th></tr></thead><tbody>"]
        for row in shown:
            pieces = "".join(f"<span class=\"piece\" title=\"teacher id {p.teacher_id}\">{_h_code(p.text)} {p.weight:.4f}</span>"
                             for p in row.pieces)
            occ = "" if row.occurrences is None else f"{row.occurrences:,}"
            P.append(f"<tr><td class=\"num\">{row.student_id}</td><td>{_h_code(row.text)}</td><td>{_h(row.kind)}</td>"
                     f"<td>{pieces}</td><td class=\"num\">{occ}</td></tr>")
        P.append("</tbody></table>")
        if left:
            P.append(f"<p class=\"muted\">… and {left:,} more (the JSON report lists them all).</p>")
    if not any_rows:
        P.append("<p>Every critical student token has an exact teacher match.</p>")
    P.append("</body></html>\n")
    return "\n".join(P)
