"""Why a row of W is what it is (`Projection.explain`): the pass that made it, its teacher pieces with
bytes and weights, and the formula, using the builder's own weight rule (`piece_weights`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .projection import ROLE_ORDER, piece_weights


@dataclass
class Piece:
    teacher_id: int
    text: str
    bytes: bytes
    weight: float

    def to_dict(self):
        return {"teacher_id": self.teacher_id, "text": self.text, "bytes": self.bytes.hex(" "), "weight": self.weight}


@dataclass
class RowExplanation:
    """Why row `student_id` of W is what it is: the pass that made it, its pieces and the formula."""

    student_id: int
    student_text: str
    student_bytes: bytes | None
    kind: str
    reason: str
    pieces: list  # list[Piece]: the row's non-zeros, heaviest first
    sequence: list = field(default_factory=list)  # teacher pieces in order, before weighting (re-tokenized rows)
    formula: str = ""

    def to_dict(self) -> dict:
        return {"student_id": self.student_id, "student_text": self.student_text,
                "student_bytes": None if self.student_bytes is None else self.student_bytes.hex(" "),
                "kind": self.kind, "reason": self.reason, "pieces": [p.to_dict() for p in self.pieces],
                "sequence": [p.to_dict() for p in self.sequence], "formula": self.formula}

    def to_text(self) -> str:
        lines = [f"student token {self.student_id} {self.student_text!r}  kind: {self.kind}", f"  why: {self.reason}"]
        if self.sequence:
            lines.append("  teacher pieces in order: " + " ".join(f"{p.text!r}" for p in self.sequence))
        for p in self.pieces:
            lines.append(f"  -> teacher {p.teacher_id:>7d} {p.text!r:14s} bytes [{p.bytes.hex(' ')}]  weight {p.weight:.5f}")
        if self.formula:
            lines.append(f"  formula: {self.formula}")
        return "\n".join(lines)


def explain_row(proj, s: int) -> RowExplanation:
    """Why row `s` of W is what it is (`Projection.explain`)."""
    cols, vals = proj.row(s)
    st, tt = proj.student, proj.teacher
    name = (lambda i: tt.token_text(int(i))) if tt else (lambda i: f"#{int(i)}")
    tbytes = (lambda i: tt.token_bytes[int(i)] or b"") if tt else (lambda i: b"")
    pieces = [Piece(int(c), name(c), tbytes(c), float(v)) for c, v in zip(cols, vals)]
    kind = proj.kind(s)
    sbytes = st.token_bytes[s] if st and s < st.vocab_size else None
    stext = st.token_text(s) if st and s < st.vocab_size else f"<padding {s}>" if s >= (st.vocab_size if st else 0) else f"#{s}"
    p = proj.params
    sequence, formula = [], ""
    if kind == "exact":
        reason = f"exact-match pass: the teacher has a token with the same bytes {sbytes!r}, so W[{s}, {pieces[0].teacher_id}] = 1"
        formula = "weight 1 (no re-tokenization)"
    elif kind in ("retokenized", "truncated", "unmapped"):
        n = int(proj.n_pieces[s])
        if tt is not None and sbytes is not None:
            try:
                ids = tt.retokenize_batch([sbytes.decode("utf-8")])[0]
                sequence = [Piece(int(i), name(i), tbytes(i), float(piece_weights(np.array([k]), p["base"], p["decay"])[0]) if k < p["max_pieces"] else 0.0)
                            for k, i in enumerate(ids)]
            except UnicodeDecodeError:
                sequence = []
        reason = (f"re-tokenize pass: no teacher token has the bytes {sbytes!r}; the teacher splits them into {n} piece"
                  f"{'s' if n != 1 else ''}")
        if kind == "truncated":
            reason += f", more than max_pieces={p['max_pieces']}: only the first {p['max_pieces']} are kept"
        if kind == "unmapped":
            reason += "; some bytes have no teacher token, they map to the teacher's unk"
        formula = _formula(proj, sequence, pieces) if sequence else \
            f"w_i = {p['base']}·{p['decay']}^i for the first {p['max_pieces']} pieces, summed per column, top {p['top_k']} kept, normalised"
    elif kind == "special":
        role = next((r for r in ROLE_ORDER if st and st.roles.get(r) == s), None)
        target = pieces[0].text if pieces else "?"
        if proj.role_matched[s]:
            reason = f"special token matched by role: {role} -> the teacher's {role} {target!r}"
        elif role:
            reason = f"special token with role {role}, which the teacher lacks: mapped to the teacher's eos {target!r} (flagged)"
        else:
            reason = f"special token with no shared role: mapped to the teacher's eos {target!r} (flagged)"
        formula = "weight 1 (by role, not by string)"
    else:
        reason = f"padding row: id {s} is past the student tokenizer or unused; mapped to the teacher's eos"
        formula = "weight 1"
    return RowExplanation(s, stext, sbytes, kind, reason, pieces, sequence, formula)

def _formula(proj, sequence: list, pieces: list) -> str:
    p = proj.params
    kept = [q for q in sequence[: p["max_pieces"]]]
    total = sum(q.weight for q in kept)
    parts = []
    for piece in pieces:
        raw = [q.weight for q in kept if q.teacher_id == piece.teacher_id]
        num = " + ".join(f"{w:g}" for w in raw) if raw else "?"
        parts.append(f"{piece.text!r} = ({num})/{total:g} = {piece.weight:.5f}" if len(raw) > 1 else
                     f"{piece.text!r} = {num}/{total:g} = {piece.weight:.5f}")
    head = f"w_i = {p['base']:g}·{p['decay']:g}^i for pieces i = 0..{min(len(sequence), p['max_pieces']) - 1}"
    if len(kept) < len(pieces) or len(pieces) < len({q.teacher_id for q in kept}):
        head += f", top {p['top_k']} columns kept"
    return head + "; repeated pieces share a column; normalised: " + ", ".join(parts)

# ------------------------------------------------------------------ files
