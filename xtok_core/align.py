"""Span alignment between two tokenizations of one text (SeDi, SPEC §4).

Nodes are the student's and the teacher's tokens, edges join tokens whose byte spans overlap, and the
alignment groups are the connected components. Both tokenizations partition the same bytes in order,
so a component is a contiguous run on both sides that ends where both sides have a boundary: the fast
path intersects the two sides' boundary sets (NumPy `isin` + `cumsum`) over a whole batch at once, and
the bipartite `networkx` graph is built only for display (`Alignment.to_networkx`).

Alignment spans: the byte spans the groups are computed on, derived from `Tok.encode` offsets.
  * Special tokens (and ids without bytes) are their own groups and never join text.
  * A non-special token with an empty span (a lone SentencePiece dummy prefix `▁`) takes the first
    byte of the next text token, so it joins that token's group (the last text token's last byte if
    none follows; its own "special" group if the side has no text at all).
  * Bytes no token reports (whitespace a WordPiece pre-tokenizer drops, a combining mark NFC folded
    into the previous character, the text of an [UNK]) are claimed by one neighbour so that both
    sides tile the text and no byte belongs to two groups: a gap of ASCII whitespace, or one at the
    start of the text, goes to the following token (where WordPiece's canonical bytes put the space);
    any other gap goes to the preceding token.
  * Tokens that share one normalised character share its span; a side may cut only where every token
    before the cut ends at or before it: cut after i iff max(end[0..i]) <= start[i+1].
  * A text that only one side tokenizes (a whitespace run a WordPiece tokenizer drops entirely) gives
    one "unaligned" group per token: the graph has no edge there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields

import numpy as np

from .errors import XtokError
from .tok import Tok, load_tokenizer

KINDS = ("1:1", "1:n", "n:1", "n:m", "special", "unaligned")
_SPECIAL, _UNALIGNED = 4, 5
_WHITESPACE = np.zeros(256, dtype=bool)
_WHITESPACE[[9, 10, 11, 12, 13, 32]] = True
_VISIBLE = str.maketrans({" ": "·", "\t": "→", "\n": "↵", "\r": "␍"})
_INVISIBLE = re.compile(r"[\u200b-\u200f\u2060-\u2064\ufeff\u00ad]")


def visible(piece: bytes) -> str:
    """Bytes as readable text: partial UTF-8 as `\\xNN`, space/tab/newline as `·`, `→`, `↵`, and
    zero-width characters (ZWJ, ...) as `\\u200d`."""
    text = piece.decode("utf-8", errors="backslashreplace").translate(_VISIBLE)
    return _INVISIBLE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def token_label(tok: Tok, token_id: int) -> str:
    """What to print for one token: its visible bytes, or its name for a special token."""
    b = tok.token_bytes[token_id]
    return tok.token_text(token_id) if b is None else visible(b)


@dataclass(frozen=True)
class Group:
    """One alignment group: positions `student` and `teacher` (ranges into the ids) cover the same bytes.

    A special group holds one token and an empty range on the other side; an unaligned group holds
    text tokens on one side only.
    """

    student: range
    teacher: range
    kind: str

    @property
    def ratio(self) -> str:
        """Token counts as `student:teacher`, e.g. "2:5"."""
        return f"{len(self.student)}:{len(self.teacher)}"


@dataclass(eq=False)
class Alignment:
    """Both tokenizations of `text` and their groups (in text order).

    student_offsets / teacher_offsets: (n, 2) byte offsets as the tokenizers report them.
    student_spans / teacher_spans: (n, 2) the alignment spans (see the module docstring).
    student_group / teacher_group: (n,) index into `groups` of every position.
    """

    text: str
    student: Tok = field(repr=False)
    teacher: Tok = field(repr=False)
    student_ids: np.ndarray
    teacher_ids: np.ndarray
    student_offsets: np.ndarray = field(repr=False)
    teacher_offsets: np.ndarray = field(repr=False)
    student_spans: np.ndarray = field(repr=False)
    teacher_spans: np.ndarray = field(repr=False)
    student_group: np.ndarray = field(repr=False)
    teacher_group: np.ndarray = field(repr=False)
    groups: list

    def kinds(self) -> dict[str, int]:
        """Number of groups of every kind, all kinds listed (zeros included)."""
        counts = dict.fromkeys(KINDS, 0)
        for g in self.groups:
            counts[g.kind] += 1
        return counts

    def group_bytes(self, g: Group) -> bytes:
        """The text bytes a group covers (empty for special groups)."""
        spans = [self.student_spans[list(g.student)], self.teacher_spans[list(g.teacher)]]
        spans = [s for s in spans if len(s)]
        if g.kind == "special" or not spans:
            return b""
        both = np.concatenate(spans)
        return self.text.encode("utf-8", errors="surrogatepass")[int(both[:, 0].min()):int(both[:, 1].max())]

    def to_networkx(self):
        """The bipartite overlap graph, for display.

        Nodes ("student", i) / ("teacher", j) with attributes side, position, id, text (visible bytes,
        or the special token's name), start/end (alignment span), offsets (as reported), special.
        Edges join a student and a teacher token whose alignment spans overlap; special tokens have
        none. `nx.connected_components` of this graph equals `groups`.
        """
        import networkx as nx

        graph = nx.Graph()
        for side, tok, ids, spans, offsets, lone in (
            ("student", self.student, self.student_ids, self.student_spans, self.student_offsets, self._lone("student")),
            ("teacher", self.teacher, self.teacher_ids, self.teacher_spans, self.teacher_offsets, self._lone("teacher")),
        ):
            graph.add_nodes_from(
                ((side, i), dict(side=side, bipartite=int(side == "teacher"), position=i, id=t, text=token_label(tok, t),
                                 start=a, end=b, offsets=(oa, ob), special=bool(tok.special[t])))
                for i, (t, (a, b), (oa, ob)) in enumerate(zip(ids.tolist(), spans.tolist(), offsets.tolist())))
        s_pos, t_pos = overlapping_pairs(self.student_spans, self.teacher_spans, self._lone("student"), self._lone("teacher"))
        graph.add_edges_from(zip((("student", i) for i in s_pos.tolist()), (("teacher", j) for j in t_pos.tolist())))
        return graph

    def _lone(self, side: str) -> np.ndarray:
        """(n,) bool: positions that are groups of their own (special tokens, text-less empty tokens)."""
        group = self.student_group if side == "student" else self.teacher_group
        special = np.array([g.kind == "special" for g in self.groups] + [False], dtype=bool)
        return special[group]


def format_alignment(a: Alignment, width: int = 100) -> str:
    """A plain-text report: both tokenizations, one line per group, and the counts by kind."""
    def tokens(tok, ids, positions):
        return " │ ".join(token_label(tok, int(ids[i])) for i in positions)

    def wrap(line: str) -> list[str]:
        out, cur = [], "  "
        for piece in line.split(" │ "):
            if len(cur) + len(piece) + 3 > width and cur.strip():
                out.append(cur.rstrip(" │"))
                cur = "  "
            cur += piece + " │ "
        return out + [cur.rstrip(" │")]

    lines = []
    for role, tok, ids in (("student", a.student, a.student_ids), ("teacher", a.teacher, a.teacher_ids)):
        lines.append(f"{role} {tok.name} ({tok.family}): {len(ids)} tokens")
        lines += wrap(tokens(tok, ids, range(len(ids))))
    lines.append(f"groups: {len(a.groups)}  (bytes are [start, end) into the UTF-8 text)")
    for n, g in enumerate(a.groups):
        spans = [a.student_spans[list(g.student)], a.teacher_spans[list(g.teacher)]]
        where = "" if g.kind == "special" else "[{}, {})".format(*(lambda s: (int(s[:, 0].min()), int(s[:, 1].max())))(
            np.concatenate([s for s in spans if len(s)])))
        lines.append(f"  {n:>4d}  {g.kind:9s} {g.ratio:>5s}  {where:12s}  {tokens(a.student, a.student_ids, g.student) or '—'}"
                     f"  ⇔  {tokens(a.teacher, a.teacher_ids, g.teacher) or '—'}")
    lines.append("kinds: " + ", ".join(f"{k} {v}" for k, v in a.kinds().items() if v))
    return "\n".join(lines)


def overlapping_pairs(a_spans: np.ndarray, b_spans: np.ndarray, a_skip=None, b_skip=None) -> tuple[np.ndarray, np.ndarray]:
    """All (i, j) with a_spans[i] and b_spans[j] overlapping (half-open byte spans), vectorised.

    Both span lists are in text order (starts non-decreasing). Positions flagged in `*_skip` get no pair.
    """
    a_keep = np.flatnonzero(~a_skip) if a_skip is not None else np.arange(len(a_spans))
    b_keep = np.flatnonzero(~b_skip) if b_skip is not None else np.arange(len(b_spans))
    a, b = a_spans[a_keep], b_spans[b_keep]
    if not len(a) or not len(b):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    # Candidates: b tokens whose running-max end passes a's start and whose start is before a's end.
    lo = np.searchsorted(np.maximum.accumulate(b[:, 1]), a[:, 0], side="right")
    hi = np.searchsorted(b[:, 0], a[:, 1], side="left")
    count = np.maximum(hi - lo, 0)
    ai = np.repeat(np.arange(len(a)), count)
    bj = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count) + np.repeat(lo, count)
    hit = (b[bj, 0] < a[ai, 1]) & (a[ai, 0] < b[bj, 1])
    return a_keep[ai[hit]], b_keep[bj[hit]]


# ----------------------------------------------------------------------------- the fast path
@dataclass
class _Side:
    """One side of a batch, all texts concatenated: token i of text d sits at `first[d] + position`."""

    ids: np.ndarray       # (N,)
    doc: np.ndarray       # (N,) text index of every token
    first: np.ndarray     # (B + 1,) index of every text's first token
    spans: np.ndarray     # (N, 2) alignment spans in batch byte coordinates (text d starts at base[d])
    lone: np.ndarray      # (N,) bool: special tokens and text-less empty tokens, a group each


def _side(tok: Tok, encodings: list, base: np.ndarray, text_end_before: np.ndarray) -> _Side:
    """Concatenate one side's encodings and turn offsets into alignment spans (module docstring)."""
    counts = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
    first = np.concatenate(([0], np.cumsum(counts)))
    n = int(first[-1])
    ids = np.concatenate([e.ids for e in encodings] + [np.zeros(0, np.int64)]).astype(np.int64)
    offsets = np.concatenate([e.offsets.reshape(-1, 2) for e in encodings] + [np.zeros((0, 2), np.int64)])
    doc = np.repeat(np.arange(len(encodings)), counts)
    start, end = offsets[:, 0] + base[doc], offsets[:, 1] + base[doc]
    # Special tokens stand alone; [UNK] stands for text, so it is a text token (with its gap, below).
    special = (tok.special[ids] | tok.holes[ids]) & (ids != tok.roles.get("unk", -1)) if n else np.zeros(0, bool)

    # Text tokens: close the gaps between them so that they tile every text.
    text = np.flatnonzero(~special)
    s, e, d = start[text], end[text], doc[text]
    is_first = np.ones(len(text), bool)
    is_first[1:] = d[1:] != d[:-1]
    is_last = np.ones(len(text), bool)
    is_last[:-1] = d[1:] != d[:-1]
    reach = np.empty_like(s)                       # how far the tokens before this one reach
    if len(text):
        reach[1:] = np.maximum.accumulate(e)[:-1]
    reach[is_first] = base[d[is_first]]
    # A gap splits after its last non-whitespace byte: that part to the token before, the trailing
    # whitespace to the token after (all of it when the gap opens the text).
    split = np.where(is_first, reach, np.maximum(reach, text_end_before[s]))
    gap = np.flatnonzero((s > reach) & (split > reach))
    e[gap - 1] = split[gap]                        # an empty [UNK] before a gap takes it here
    s = np.minimum(s, split)
    if len(text):
        short = is_last & (np.maximum.accumulate(e) < base[d + 1])
        e[short] = base[d[short] + 1]
    start[text], end[text] = s, e

    # Text tokens still empty (a dummy prefix) take the first byte of the next text token, else the
    # last byte of the previous one; with no text token in their text they stand alone.
    full = text[e > s]
    empty = text[e <= s]
    s, e, d = start[full], end[full], doc[full]
    nxt = np.searchsorted(full, empty)
    has_next = nxt < len(full)
    has_next[has_next] &= d[nxt[has_next]] == doc[empty[has_next]]
    prv = nxt - 1
    has_prev = ~has_next & (prv >= 0)
    has_prev[has_prev] &= d[prv[has_prev]] == doc[empty[has_prev]]
    start[empty[has_next]] = s[nxt[has_next]]
    end[empty[has_next]] = s[nxt[has_next]] + 1
    start[empty[has_prev]] = e[prv[has_prev]] - 1
    end[empty[has_prev]] = e[prv[has_prev]]
    lone = special.copy()
    lone[empty[~(has_next | has_prev)]] = True
    return _Side(ids, doc, first, np.stack([start, end], axis=1), lone)


def _group_starts(side: _Side):
    """Text tokens (indices), and whether a group of this side alone may start at each: the text's first
    token, or one that every earlier token ends at or before."""
    text = np.flatnonzero(~side.lone)
    s, e, d = side.spans[text, 0], side.spans[text, 1], side.doc[text]
    can_start = np.ones(len(text), bool)
    if len(text):
        can_start[1:] = (np.maximum.accumulate(e)[:-1] <= s[1:]) | (d[1:] != d[:-1])
    return text, can_start


@dataclass
class _Groups:
    """Every group of a batch, sorted by (text, order in text); positions are within their text, -1 = none."""

    doc: np.ndarray
    rank: np.ndarray       # index of the group within its text
    kind: np.ndarray       # codes into KINDS
    s_start: np.ndarray
    s_end: np.ndarray
    t_start: np.ndarray
    t_end: np.ndarray
    s_group: np.ndarray    # (N_s,) group rank of every student token
    t_group: np.ndarray


def _sorted_isin(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """values[i] in sorted_set, for a sorted set (cheaper than np.isin's sort)."""
    if not len(sorted_set):
        return np.zeros(len(values), bool)
    at = np.minimum(np.searchsorted(sorted_set, values), len(sorted_set) - 1)
    return sorted_set[at] == values


def _text_follows(side: _Side, text: np.ndarray, lone: np.ndarray) -> np.ndarray:
    """For lone tokens: does a text token of the same text come after it on its side?"""
    nxt = np.searchsorted(text, lone)
    ok = nxt < len(text)
    ok[ok] &= side.doc[text[nxt[ok]]] == side.doc[lone[ok]]
    return ok


def _none(k: int) -> np.ndarray:
    return np.full(k, -1, np.int64)


def _align(student: _Side, teacher: _Side, n_texts: int) -> _Groups:
    """Groups of a whole batch: boundary intersection, no loop over tokens."""
    s_text, s_can = _group_starts(student)
    t_text, t_can = _group_starts(teacher)
    s_doc, t_doc = student.doc[s_text], teacher.doc[t_text]
    two_sided = (np.bincount(s_doc, minlength=n_texts) > 0) & (np.bincount(t_doc, minlength=n_texts) > 0)
    s_two, t_two = two_sided[s_doc], two_sided[t_doc]
    # A group ends where both sides may cut at the same byte (texts only one side tokenizes: every token).
    s_cut_bytes = student.spans[s_text[s_can & s_two], 0]
    t_cut_bytes = teacher.spans[t_text[t_can & t_two], 0]
    s_start_here = ~s_two | (s_can & _sorted_isin(student.spans[s_text, 0], t_cut_bytes))
    t_start_here = ~t_two | (t_can & _sorted_isin(teacher.spans[t_text, 0], s_cut_bytes))

    def runs(text, start_here, side):
        """(first token, last token, token count, start byte, doc) of each group on one side."""
        heads = np.flatnonzero(start_here)
        tails = np.append(heads[1:], len(text))[:len(heads)] - 1
        return text[heads], text[tails], tails - heads + 1, side.spans[text[heads], 0], side.doc[text[heads]]

    sf, sl, sn, sb, sd = runs(s_text, s_start_here, student)
    tf, tl, tn, tb, td = runs(t_text, t_start_here, teacher)
    s_pair, t_pair = two_sided[sd], two_sided[td]
    if s_pair.sum() != t_pair.sum():  # both sides list the same common boundaries; anything else is a bug
        raise XtokError("span alignment found different group boundaries on the two sides; report this text as a bug")
    # A lone token sorts before the text at its byte, unless no text of its side follows it (an eos).
    s_lone_class = np.where(_text_follows(student, s_text, s_lone := np.flatnonzero(student.lone)), 0, 2)
    t_lone_class = np.where(_text_follows(teacher, t_text, t_lone := np.flatnonzero(teacher.lone)), 0, 2)
    pairs_s, pairs_t = np.flatnonzero(s_pair), np.flatnonzero(t_pair)
    s_only, t_only = np.flatnonzero(~s_pair), np.flatnonzero(~t_pair)
    ps, pt = sn[pairs_s], tn[pairs_t]
    pair_kind = np.where(ps == 1, np.where(pt == 1, 0, 1), np.where(pt == 1, 2, 3))
    # Every group as one record; columns: doc, byte, class (lone 0, text 1, trailing lone 2), side,
    # student first/last token, teacher first/last token, kind.
    cols = [np.concatenate(parts).astype(np.int64) for parts in zip(
        (sd[pairs_s], sb[pairs_s], np.ones(len(pairs_s)), np.zeros(len(pairs_s)), sf[pairs_s], sl[pairs_s], tf[pairs_t], tl[pairs_t], pair_kind),
        (sd[s_only], sb[s_only], np.ones(len(s_only)), np.zeros(len(s_only)), sf[s_only], sl[s_only], _none(len(s_only)), _none(len(s_only)), np.full(len(s_only), _UNALIGNED)),
        (td[t_only], tb[t_only], np.ones(len(t_only)), np.ones(len(t_only)), _none(len(t_only)), _none(len(t_only)), tf[t_only], tl[t_only], np.full(len(t_only), _UNALIGNED)),
        (student.doc[s_lone], student.spans[s_lone, 0], s_lone_class, np.zeros(len(s_lone)), s_lone, s_lone, _none(len(s_lone)), _none(len(s_lone)), np.full(len(s_lone), _SPECIAL)),
        (teacher.doc[t_lone], teacher.spans[t_lone, 0], t_lone_class, np.ones(len(t_lone)), _none(len(t_lone)), _none(len(t_lone)), t_lone, t_lone, np.full(len(t_lone), _SPECIAL)),
    )]
    doc, byte, klass, side, s_first, s_last, t_first, t_last, kind = cols
    order = np.lexsort((np.maximum(s_first, t_first), side, klass, byte, doc))
    n_groups = len(order)
    rank_of = np.empty(n_groups, np.int64)
    doc_sorted = doc[order]
    group_first = np.searchsorted(doc_sorted, np.arange(n_texts))
    rank_of[order] = np.arange(n_groups) - group_first[doc_sorted]

    # Every token's group: text tokens through their run, lone tokens are their record.
    n_pairs, n_s_only = len(pairs_s), len(s_only)
    s_record = np.empty(len(sf), np.int64)
    s_record[pairs_s] = np.arange(n_pairs)
    s_record[s_only] = n_pairs + np.arange(n_s_only)
    t_record = np.empty(len(tf), np.int64)
    t_record[pairs_t] = np.arange(n_pairs)
    t_record[t_only] = n_pairs + n_s_only + np.arange(len(t_only))
    lone_base = n_pairs + n_s_only + len(t_only)
    s_group = np.empty(len(student.ids), np.int64)
    s_group[s_text] = rank_of[s_record[np.cumsum(s_start_here) - 1]]
    s_group[s_lone] = rank_of[lone_base + np.arange(len(s_lone))]
    t_group = np.empty(len(teacher.ids), np.int64)
    t_group[t_text] = rank_of[t_record[np.cumsum(t_start_here) - 1]]
    t_group[t_lone] = rank_of[lone_base + len(s_lone) + np.arange(len(t_lone))]

    def local(idx, side_):
        return np.where(idx >= 0, idx - side_.first[doc], -1)[order]

    return _Groups(doc_sorted, rank_of[order], kind[order], local(s_first, student), local(s_last, student),
                   local(t_first, teacher), local(t_last, teacher), s_group, t_group)


def _batch_bytes(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """base (B + 1,): byte offset of every text in the concatenation; text_end_before (total + 1,):
    for every byte position, the end of the last non-whitespace byte before it (0 if none)."""
    raws = [t.encode("utf-8", errors="surrogatepass") for t in texts]
    lengths = np.fromiter(map(len, raws), dtype=np.int64, count=len(raws))
    base = np.concatenate(([0], np.cumsum(lengths)))
    solid = ~_WHITESPACE[np.frombuffer(b"".join(raws), dtype=np.uint8)]
    ends = np.where(solid, np.arange(1, len(solid) + 1), 0)
    return base, np.concatenate(([0], np.maximum.accumulate(ends) if len(ends) else ends))


def align_encodings(texts: list[str], student: Tok, teacher: Tok, student_encodings: list, teacher_encodings: list):
    """Group a batch of already-encoded texts: (student side, teacher side, groups), all vectorised."""
    base, text_end_before = _batch_bytes(texts)
    s = _side(student, student_encodings, base, text_end_before)
    t = _side(teacher, teacher_encodings, base, text_end_before)
    return s, t, _align(s, t, len(texts))


def align_spans(text: str, student, teacher, *, add_special_tokens: bool = False) -> Alignment:
    """Align one text's student and teacher tokenizations (byte offsets into `text.encode()`)."""
    if not isinstance(text, str):
        raise XtokError(f"align_spans needs a str text, got {type(text).__name__}; decode bytes first")
    student, teacher = load_tokenizer(student), load_tokenizer(teacher)
    se = student.encode(text, add_special_tokens=add_special_tokens)
    te = teacher.encode(text, add_special_tokens=add_special_tokens)
    s, t, g = align_encodings([text], student, teacher, [se], [te])
    ranks = np.arange(len(g.kind))
    # a side without tokens in a group gets an empty range where that group would stand
    s_at = np.searchsorted(np.maximum.accumulate(g.s_group), ranks) if len(g.s_group) else np.zeros_like(ranks)
    t_at = np.searchsorted(np.maximum.accumulate(g.t_group), ranks) if len(g.t_group) else np.zeros_like(ranks)
    groups = [Group(range(a, b + 1) if a >= 0 else range(sa, sa), range(c, d + 1) if c >= 0 else range(ta, ta), KINDS[k])
              for a, b, c, d, k, sa, ta in zip(g.s_start.tolist(), g.s_end.tolist(), g.t_start.tolist(), g.t_end.tolist(),
                                               g.kind.tolist(), s_at.tolist(), t_at.tolist())]
    return Alignment(text, student, teacher, se.ids, te.ids, se.offsets, te.offsets, s.spans, t.spans,
                     g.s_group, g.t_group, groups)


# ----------------------------------------------------------------------------- batches for training
@dataclass
class BatchAlignment:
    """A padded batch (batch-first, right-padded) of aligned tokenizations, as torch tensors.

    student_ids, student_mask, student_group: (B, T_s) long / bool / long (group index, -1 on padding);
    teacher_ids, teacher_mask, teacher_group: (B, T_t).
    s_start, s_end, t_start, t_end: (B, G) long, first and last (inclusive) position of every group on
        each side; -1 where the group has no token on that side (special and unaligned groups) and on
        padding groups.
    group_mask: (B, G) bool, True for text groups with tokens on both sides.
    group_kind: (B, G) long, codes into `KINDS` (-1 on padding).
    """

    student_ids: "torch.Tensor"
    student_mask: "torch.Tensor"
    teacher_ids: "torch.Tensor"
    teacher_mask: "torch.Tensor"
    student_group: "torch.Tensor"
    teacher_group: "torch.Tensor"
    s_start: "torch.Tensor"
    s_end: "torch.Tensor"
    t_start: "torch.Tensor"
    t_end: "torch.Tensor"
    group_mask: "torch.Tensor"
    group_kind: "torch.Tensor"

    def to(self, device) -> "BatchAlignment":
        return BatchAlignment(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def kinds(self) -> dict[str, int]:
        """Number of groups of every kind over the batch."""
        counts = np.bincount(self.group_kind[self.group_kind >= 0].numpy(), minlength=len(KINDS))
        return dict(zip(KINDS, counts.tolist()))


def align_batch(texts: list[str], student, teacher, *, add_special_tokens: bool = True,
                max_length: int | None = None) -> BatchAlignment:
    """Tokenize and align a batch of texts for training (no Python work per token).

    With `max_length`, each text keeps the longest run of whole groups that fits in `max_length`
    positions on both sides, so the two sides always cover the same text prefix.
    """
    if isinstance(texts, str):
        raise XtokError("align_batch takes a list of texts, got one str; wrap it in a list or use align_spans")
    if max_length is not None and max_length < 1:
        raise XtokError(f"max_length must be a positive number of tokens, got {max_length}; pass e.g. 2048 or None")
    student, teacher = load_tokenizer(student), load_tokenizer(teacher)
    texts = list(texts)
    se = student.encode_batch(texts, add_special_tokens=add_special_tokens)
    te = teacher.encode_batch(texts, add_special_tokens=add_special_tokens)
    s, t, g = align_encodings(texts, student, teacher, se, te)
    return _pad(len(texts), s, t, g, max_length)


def _pad(n_texts: int, s: _Side, t: _Side, g: _Groups, max_length: int | None) -> BatchAlignment:
    import torch

    keep = np.ones(len(g.doc), bool)
    if max_length is not None:
        fits = (g.s_end < max_length) & (g.t_end < max_length)
        # keep the groups before the first one that does not fit, per text
        first_misfit = np.full(n_texts, np.iinfo(np.int64).max)
        np.minimum.at(first_misfit, g.doc[~fits], g.rank[~fits])
        keep = g.rank < first_misfit[g.doc]
    n_groups = np.bincount(g.doc[keep], minlength=n_texts)
    G = int(n_groups.max()) if n_texts else 0
    gd, gr = g.doc[keep], g.rank[keep]

    def grid(values, fill=-1):
        out = np.full((n_texts, G), fill, np.int64)
        out[gd, gr] = values[keep]
        return torch.from_numpy(out)

    def tokens(side: _Side, group: np.ndarray):
        pos = np.arange(len(side.ids)) - side.first[side.doc]
        kept = group < n_groups[side.doc] if len(side.ids) else np.zeros(0, bool)
        length = np.bincount(side.doc[kept], minlength=n_texts)
        T = int(length.max()) if n_texts else 0
        ids = np.zeros((n_texts, T), np.int64)
        grp = np.full((n_texts, T), -1, np.int64)
        ids[side.doc[kept], pos[kept]] = side.ids[kept]
        grp[side.doc[kept], pos[kept]] = group[kept]
        mask = np.arange(T)[None, :] < length[:, None]
        return torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(grp)

    s_ids, s_mask, s_grp = tokens(s, g.s_group)
    t_ids, t_mask, t_grp = tokens(t, g.t_group)
    kind = grid(g.kind)
    return BatchAlignment(s_ids, s_mask, t_ids, t_mask, s_grp, t_grp, grid(g.s_start), grid(g.s_end),
                          grid(g.t_start), grid(g.t_end), (kind >= 0) & (kind < _SPECIAL), kind)
