"""Span alignment between two tokenizations of one text (SeDi, SPEC §4).

Nodes are the student's and the teacher's tokens, edges join tokens whose byte spans overlap, and the
alignment groups are the connected components. Both tokenizations cover the same bytes in order, so
a component is a contiguous run on both sides that ends where both sides have a boundary: the fast
path marks each side's possible cut bytes, intersects them, and numbers the groups with a `cumsum`,
for a whole batch of texts at once (concatenated, no Python loop over tokens or groups). The
bipartite `networkx` graph is built only for display (`Alignment.to_networkx`); tests check that its
connected components are the fast groups.

The spans the groups are computed on are `Tok.encode` offsets, which tile the text (families.py):
  * an empty span (a special token the tokenizer added: bos, eos, [CLS]) is a group of its own and never
    joins text; a special token spelled in the text covers its bytes and groups with the other side's
    pieces of them, as [UNK] does;
  * tokens sharing one character share its span; a side may cut only where every token before the cut
    ends at or before it: cut before i+1 iff max(end[0..i]) <= start[i+1]; a group starts where both
    sides may cut at the same byte;
  * a text that only one side tokenizes (a whitespace run that a WordPiece tokenizer drops) gives one
    "unaligned" group per token, as the graph (no edges there) does.
Groups are listed in text order; a lone token comes before the text group at its byte, after it
when no text of its side follows (an eos).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

from .display import token_label, visible  # noqa: F401 (re-exported: the one glyph set)
from .errors import XtokError
from .tok import Tok, load_tokenizer

GROUP_KINDS = ("1:1", "1:n", "n:1", "n:m", "special", "unaligned")
_SPECIAL, _UNALIGNED = 4, 5
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
        counts = dict.fromkeys(GROUP_KINDS, 0)
        for g in self.groups:
            counts[g.kind] += 1
        return counts

    def group_span(self, g: Group) -> tuple[int, int] | None:
        """[start, end) bytes of the text a group covers; None for a special group."""
        if g.kind == "special":
            return None
        spans = np.concatenate([self.student_spans[g.student.start:g.student.stop],
                                self.teacher_spans[g.teacher.start:g.teacher.stop]])
        return int(spans[:, 0].min()), int(spans[:, 1].max())

    def group_bytes(self, g: Group) -> bytes:
        """The text bytes a group covers (empty for special groups)."""
        span = self.group_span(g)
        return b"" if span is None else self.text.encode("utf-8", errors="surrogatepass")[span[0]:span[1]]

    def to_networkx(self):
        """The bipartite overlap graph, for display.

        Nodes ("student", i) / ("teacher", j) with attributes side, position, id, text (visible bytes,
        or the special token's name), start/end (alignment span), offsets (as reported), special.
        Edges join a student and a teacher token whose alignment spans overlap; special tokens have
        none. `nx.connected_components` of this graph equals `groups`.
        """
        import networkx as nx

        graph = nx.Graph()
        for side, tok, ids, spans, offsets in (
            ("student", self.student, self.student_ids, self.student_spans, self.student_offsets),
            ("teacher", self.teacher, self.teacher_ids, self.teacher_spans, self.teacher_offsets),
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
        span = a.group_span(g)
        where = "" if span is None else f"[{span[0]}, {span[1]})"
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
class _SideTokens:
    """One side of a batch, all texts concatenated: token i of text d sits at `first[d] + position`."""

    ids: np.ndarray       # (N,)
    doc: np.ndarray       # (N,) text index of every token
    first: np.ndarray     # (B + 1,) index of every text's first token
    start: np.ndarray     # (N,) byte spans [start, end) in batch byte coordinates (text d starts at base[d])
    end: np.ndarray
    lone: np.ndarray      # (N,) bool: empty spans (special tokens the tokenizer added), a group each
    text: np.ndarray      # indices of the other tokens
    can_cut: np.ndarray   # (len(text),) bool: this side may start a group at this token
    has_text: np.ndarray  # (B,) bool: the text has text tokens on this side

    @property
    def spans(self) -> np.ndarray:
        return np.stack([self.start, self.end], axis=1)


def _firsts(doc: np.ndarray, n_texts: int) -> tuple[np.ndarray, np.ndarray]:
    """For tokens sorted by text: index of every text's first token (B + 1,), and which texts have any."""
    first = np.searchsorted(doc, np.arange(n_texts + 1))
    return first, first[1:] > first[:-1]


def _side_tokens(encodings: list, base: np.ndarray) -> _SideTokens:
    """Concatenate one side's encodings (whose offsets tile each text, see `Tok.encode`) and find
    where this side may cut: before token i+1 iff every token up to i ends at or before its start."""
    n_texts = len(encodings)
    counts = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=n_texts)
    first = np.concatenate(([0], np.cumsum(counts)))
    ids = np.concatenate([e.ids for e in encodings] + [np.zeros(0, np.int64)]).astype(np.int64, copy=False)
    offsets = np.concatenate([e.offsets.reshape(-1, 2) for e in encodings] + [np.zeros((0, 2), np.int64)])
    doc = np.repeat(np.arange(n_texts), counts)
    offsets = offsets + np.repeat(base[:-1], counts)[:, None]
    start, end = offsets[:, 0], offsets[:, 1]
    lone = end <= start
    text = np.flatnonzero(~lone)
    s, e = start[text], end[text]
    text_first, has_text = _firsts(doc[text], n_texts)
    can_cut = np.ones(len(text), bool)
    if len(text):
        covered_up_to = np.maximum.accumulate(e)  # how far the tokens so far reach (texts follow each other)
        can_cut[1:] = covered_up_to[:-1] <= s[1:]
        can_cut[text_first[:-1][has_text]] = True
    return _SideTokens(ids, doc, first, start, end, lone, text, can_cut, has_text)


@dataclass
class _BatchGroups:
    """Every group of a batch, sorted by (text, order in text); positions are within their text, -1 = none."""

    doc: np.ndarray
    rank: np.ndarray       # index of the group within its text
    kind: np.ndarray       # codes into GROUP_KINDS
    s_start: np.ndarray
    s_end: np.ndarray
    t_start: np.ndarray
    t_end: np.ndarray
    s_group: np.ndarray    # (N_s,) group rank of every student token
    t_group: np.ndarray


def _text_follows(side: _SideTokens, text: np.ndarray, lone: np.ndarray) -> np.ndarray:
    """For lone tokens: does a text token of the same text come after it on its side?"""
    nxt = np.searchsorted(text, lone)
    ok = nxt < len(text)
    ok[ok] &= side.doc[text[nxt[ok]]] == side.doc[lone[ok]]
    return ok


def _align(student: _SideTokens, teacher: _SideTokens, n_texts: int, n_bytes: int) -> _BatchGroups:
    """Groups of a whole batch: boundary intersection, no loop over tokens or groups."""
    s_text, s_can, s_has = student.text, student.can_cut, student.has_text
    t_text, t_can, t_has = teacher.text, teacher.can_cut, teacher.has_text
    two_sided = s_has & t_has
    everywhere = bool(two_sided.all())
    s_two = True if everywhere else two_sided[student.doc[s_text]]
    t_two = True if everywhere else two_sided[teacher.doc[t_text]]
    # A group starts where both sides may cut at the same byte (a text only one side tokenizes: every token).
    s_byte, t_byte = student.start[s_text], teacher.start[t_text]
    s_cut, t_cut = np.zeros(n_bytes, bool), np.zeros(n_bytes, bool)
    s_cut[s_byte[s_can if everywhere else s_can & s_two]] = True
    t_cut[t_byte[t_can if everywhere else t_can & t_two]] = True
    s_head, t_head = s_can & t_cut[s_byte], t_can & s_cut[t_byte]
    if not everywhere:
        s_head |= ~s_two
        t_head |= ~t_two
    s_run, t_run = _side_groups(s_text, s_head), _side_groups(t_text, t_head)

    # Text groups, in text order, as columns: doc, start byte, kind, first/last position on each side.
    s_doc = student.doc[s_run.first]
    s_pos, s_end = s_run.first - student.first[s_doc], s_run.last - student.first[s_doc]
    if everywhere:  # the common case: the i-th run of one side is the i-th run of the other
        if len(s_run.first) != len(t_run.first):
            raise XtokError("span alignment found different group boundaries on the two sides; report this text as a bug")
        t_off = teacher.first[s_doc]
        cols = [s_doc, s_byte[s_run.head], (t_run.count > 1) + 2 * (s_run.count > 1),
                s_pos, s_end, t_run.first - t_off, t_run.last - t_off]
        t_seq = None
    else:
        cols, t_seq = _text_groups_with_one_sided(student, teacher, two_sided, s_run, t_run, s_doc, s_byte, t_byte, s_pos, s_end)

    # Lone tokens (few) go between the text groups: before the text group at their byte, unless no
    # text of their side follows them in the text (an eos); ties by side, then position.
    s_lone, t_lone = np.flatnonzero(student.lone), np.flatnonzero(teacher.lone)
    lone_side = np.repeat([0, 1], [len(s_lone), len(t_lone)])
    lone_tok = np.concatenate((s_lone, t_lone))
    lone_doc = np.concatenate((student.doc[s_lone], teacher.doc[t_lone]))
    lone_byte = np.concatenate((student.start[s_lone], teacher.start[t_lone]))
    lone_class = np.where(np.concatenate((_text_follows(student, s_text, s_lone), _text_follows(teacher, t_text, t_lone))), 0, 2)
    order = np.lexsort((lone_tok, lone_side, lone_class, lone_byte, lone_doc))
    # Text groups' start bytes and texts increase through the batch: a lone token goes before the
    # text groups from its byte on, or (trailing) after those starting at or before it in its text.
    lone_byte, lone_doc, trailing = lone_byte[order], lone_doc[order], lone_class[order] == 2
    insert_at = np.searchsorted(cols[1], lone_byte)
    insert_at[trailing] = np.minimum(np.searchsorted(cols[1], lone_byte[trailing], side="right"),
                                     np.searchsorted(cols[0], lone_doc[trailing], side="right"))
    position = (lone_tok - np.concatenate((student.first[student.doc[s_lone]], teacher.first[teacher.doc[t_lone]])))[order]
    on_s = lone_side[order] == 0
    s_pos, t_pos = np.where(on_s, position, -1), np.where(on_s, -1, position)
    doc, kind, s_first, s_last, t_first, t_last = (np.insert(c, insert_at, v) for c, v in zip(
        cols[:1] + cols[2:], (lone_doc, _SPECIAL, s_pos, s_pos, t_pos, t_pos)))
    n = len(doc)
    rank = np.arange(n) - np.searchsorted(doc, np.arange(n_texts))[doc]

    # Every token's group rank: text tokens through their run, lone tokens are their record.
    lone_at = insert_at + np.arange(len(order))
    text_rank = np.delete(rank, lone_at)
    lone_rank = np.empty(len(order), np.int64)
    lone_rank[order] = rank[lone_at]
    s_group = np.empty(len(student.ids), np.int64)
    s_group[s_text] = text_rank[s_run.of_token] if t_seq is None else text_rank[t_seq[0]][s_run.of_token]
    s_group[s_lone] = lone_rank[:len(s_lone)]
    t_group = np.empty(len(teacher.ids), np.int64)
    t_group[t_text] = text_rank[t_run.of_token] if t_seq is None else text_rank[t_seq[1]][t_run.of_token]
    t_group[t_lone] = lone_rank[len(s_lone):]
    return _BatchGroups(doc, rank, kind, s_first, s_last, t_first, t_last, s_group, t_group)


def _text_groups_with_one_sided(student, teacher, two_sided, s_run, t_run, s_doc, s_byte, t_byte, s_pos, s_end):
    """Text-group columns when some texts have text tokens on one side only: those give one
    "unaligned" group per token; also returns the text-group index of every student and teacher run."""
    t_doc = teacher.doc[t_run.first]
    s_pair, t_pair = np.flatnonzero(two_sided[s_doc]), np.flatnonzero(two_sided[t_doc])
    if len(s_pair) != len(t_pair):
        raise XtokError("span alignment found different group boundaries on the two sides; report this text as a bug")
    t_only = np.flatnonzero(~two_sided[t_doc])
    # every student run (paired or student-only), and the teacher-only runs, merged by text index
    s_seq = np.arange(len(s_run.first)) + np.searchsorted(t_doc[t_only], s_doc)
    t_only_seq = np.arange(len(t_only)) + np.searchsorted(s_doc, t_doc[t_only])
    n = len(s_seq) + len(t_only)
    cols = [np.full(n, -1, np.int64) for _ in range(7)]
    doc, byte, kind, s_first, s_last, t_first, t_last = cols
    doc[s_seq], doc[t_only_seq] = s_doc, t_doc[t_only]
    byte[s_seq], byte[t_only_seq] = s_byte[s_run.head], t_byte[t_run.head[t_only]]
    kind[:] = _UNALIGNED
    kind[s_seq[s_pair]] = (t_run.count[t_pair] > 1) + 2 * (s_run.count[s_pair] > 1)
    s_first[s_seq], s_last[s_seq] = s_pos, s_end
    t_seq = np.empty(len(t_run.first), np.int64)
    t_seq[t_pair], t_seq[t_only] = s_seq[s_pair], t_only_seq
    t_first[t_seq], t_last[t_seq] = t_run.first - teacher.first[t_doc], t_run.last - teacher.first[t_doc]
    return cols, (s_seq, t_seq)


@dataclass
class _SideGroups:
    """One side's groups of text tokens (runs between cuts both sides share): where each starts among
    the text tokens, first/last token (batch indices), token count, and the run of every text token."""

    head: np.ndarray
    first: np.ndarray
    last: np.ndarray
    count: np.ndarray
    of_token: np.ndarray


def _side_groups(text: np.ndarray, head: np.ndarray) -> _SideGroups:
    heads = np.flatnonzero(head)
    count = np.diff(heads, append=len(text))
    return _SideGroups(heads, text[heads], text[heads + count - 1], count, np.cumsum(head) - 1)


def align_encodings(texts: list[str], student: Tok, teacher: Tok, student_encodings: list, teacher_encodings: list):
    """Group a batch of already-encoded texts: (student side, teacher side, groups), all vectorised."""
    lengths = np.fromiter((len(t.encode("utf-8", errors="surrogatepass")) for t in texts), dtype=np.int64, count=len(texts))
    base = np.concatenate(([0], np.cumsum(lengths)))  # every text's offset in the batch's bytes
    s, t = _side_tokens(student_encodings, base), _side_tokens(teacher_encodings, base)
    return s, t, _align(s, t, len(texts), int(base[-1]) + 1)


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
    groups = [Group(range(a, b + 1) if a >= 0 else range(sa, sa), range(c, d + 1) if c >= 0 else range(ta, ta), GROUP_KINDS[k])
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
    group_kind: (B, G) long, codes into `GROUP_KINDS` (-1 on padding).
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
        counts = np.bincount(self.group_kind[self.group_kind >= 0].numpy(), minlength=len(GROUP_KINDS))
        return dict(zip(GROUP_KINDS, counts.tolist()))


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


def _pad(n_texts: int, s: _SideTokens, t: _SideTokens, g: _BatchGroups, max_length: int | None) -> BatchAlignment:
    """Right-padded tensors. Groups, and each side's tokens, are stored text after text, so a boolean
    mask of the padded grid takes them in order."""
    import torch

    keep = None
    if max_length is not None:
        fits = (g.s_end < max_length) & (g.t_end < max_length)
        # keep the groups before the first one that does not fit, per text
        first_misfit = np.full(n_texts, np.iinfo(np.int64).max)
        np.minimum.at(first_misfit, g.doc[~fits], g.rank[~fits])
        keep = g.rank < first_misfit[g.doc]
    n_groups = np.bincount(g.doc if keep is None else g.doc[keep], minlength=n_texts)
    slots = np.arange(int(n_groups.max(initial=0)))[None, :] < n_groups[:, None]

    def grid(values, fill=-1):
        out = np.full(slots.shape, fill, np.int64)
        out[slots] = values if keep is None else values[keep]
        return torch.from_numpy(out)

    def tokens(side: _SideTokens, group: np.ndarray):
        kept = None if keep is None else group < n_groups[side.doc]
        length = np.diff(side.first) if kept is None else np.bincount(side.doc[kept], minlength=n_texts)
        mask = np.arange(int(length.max(initial=0)))[None, :] < length[:, None]
        ids = np.zeros(mask.shape, np.int64)
        grp = np.full(mask.shape, -1, np.int64)
        ids[mask] = side.ids if kept is None else side.ids[kept]
        grp[mask] = group if kept is None else group[kept]
        return torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(grp)

    s_ids, s_mask, s_grp = tokens(s, g.s_group)
    t_ids, t_mask, t_grp = tokens(t, g.t_group)
    kind = grid(g.kind)
    group_mask = torch.from_numpy((kind.numpy() >= 0) & (kind.numpy() < _SPECIAL))
    return BatchAlignment(s_ids, s_mask, t_ids, t_mask, s_grp, t_grp, grid(g.s_start), grid(g.s_end),
                          grid(g.t_start), grid(g.t_end), group_mask, kind)
