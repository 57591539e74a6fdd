"""What a teacher's next-token distribution looks like next to a student's, through W, position by position.

`position_distributions(text, student, teacher)` runs both models once on the text, aligns the two
tokenizations (SeDi groups) and, at each group boundary where both models predict the first token of
the next group, returns the teacher's top next tokens, the student's, the student's distribution
projected through W into the teacher's vocabulary (q = p_s W), the per-position value of P-KL, H-KL,
GOLD and ULD (each computed by the loss functions of `xtok_core.losses` on that one row pair, so
their mean over positions is the loss of the whole text) and the teacher mass that no student row
reaches (all-zero W columns). `feeders` says which student tokens carry mass to a teacher column.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .align import token_label

LOSS_NAMES = ("pkl", "hkl", "gold", "uld")


@dataclass
class Position:
    """One compared row pair: after group `group`, both models predict the start of the next group."""

    group: int
    student_pos: int
    teacher_pos: int
    text: str                      # the group's text (visible)
    next_text: str                 # the next group's text: what both models should predict
    losses: dict                   # loss name -> this row pair's value (no τ²; τ = 1 here)
    teacher_top: list              # [(teacher id, p_t)]
    student_top: list              # [(student id, p_s)]
    projected_top: list            # [(teacher id, q = (p_s W)_j)]
    unreachable_mass: float        # teacher mass on columns no student row reaches


@dataclass
class Distributions:
    alignment: object
    positions: list
    student_probs: torch.Tensor = field(repr=False)    # (P, V_s) at the compared positions
    teacher_probs: torch.Tensor = field(repr=False)    # (P, V_t)
    projected: torch.Tensor = field(repr=False)        # (P, V_t) = student_probs @ W
    w: object = field(repr=False)
    _csc: object = field(default=None, repr=False)

    def feeders(self, i: int, teacher_id: int, k: int = 8) -> list:
        """The student tokens that carry position i's projected mass to `teacher_id`: [(student id,
        W weight, p_s · W)], largest contribution first (a teacher `5` fed by student `5`, `50`, `512`…)."""
        if self._csc is None:
            self._csc = self.w.matrix.tocsc()
        c, j = self._csc, int(teacher_id)
        rows, weights = c.indices[c.indptr[j]:c.indptr[j + 1]], c.data[c.indptr[j]:c.indptr[j + 1]]
        if not len(rows):
            return []
        contrib = self.student_probs[i, torch.as_tensor(rows, dtype=torch.long)].double().numpy() * weights
        order = np.lexsort((rows, -contrib))[:k]
        return [(int(rows[o]), float(weights[o]), float(contrib[o])) for o in order]


def _top(p: torch.Tensor, k: int) -> list:
    v, i = torch.topk(p, min(k, p.shape[-1]))
    return list(zip(i.tolist(), v.tolist()))


@torch.no_grad()
def _logits(lm, ids: np.ndarray) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(ids, dtype=np.int64))[None]
    return lm.model(input_ids=x).logits[0].float()


def position_distributions(text: str, student, teacher, w=None, *, k: int = 10) -> Distributions:
    """See the module docstring. `student`, `teacher`: `LoadedModel`s (`xtok_core.load_model`); `w`: a
    Projection sized to their logits (built when None)."""
    from . import align_spans, build_projection
    from .losses import gold_loss, hkl_loss, pkl_loss, uld_loss

    s_tok, t_tok = student.tok, teacher.tok
    al = align_spans(text, s_tok, t_tok)
    if w is None:
        w = build_projection(s_tok, t_tok, student_vocab_size=student.vocab_size, teacher_vocab_size=teacher.vocab_size)
    zs, zt = _logits(student, al.student_ids), _logits(teacher, al.teacher_ids)
    pairs = []  # (group, student row, teacher row): boundary positions, as DistillLoss compares them
    groups = al.groups
    for g in range(len(groups) - 1):
        a, b = groups[g], groups[g + 1]
        if a.kind in ("special", "unaligned") or not len(a.student) or not len(a.teacher):
            continue
        if not len(b.student) or not len(b.teacher):
            continue
        pairs.append((g, a.student[-1], a.teacher[-1]))
    if not pairs:
        return Distributions(al, [], zs[:0], zt[:0], zt[:0], w)
    si = torch.tensor([p[1] for p in pairs])
    ti = torch.tensor([p[2] for p in pairs])
    s_rows, t_rows = zs[si], zt[ti]
    ps, pt = torch.softmax(s_rows, -1), torch.softmax(t_rows, -1)
    m = w.matrix.tocsr()
    # q = p_s W, dense only for these few rows (P × V_t)
    q = torch.from_numpy(np.asarray(m.T.dot(ps.double().numpy().T).T)).float()
    reached = torch.from_numpy(np.diff(m.tocsc().indptr) > 0)
    unreachable = (pt * ~reached).sum(-1)
    fns = {"pkl": lambda s, t: pkl_loss(s, t, w), "hkl": lambda s, t: hkl_loss(s, t, w),
           "gold": lambda s, t: gold_loss(s, t, w), "uld": lambda s, t: uld_loss(s, t)}
    per = {name: [float(fn(s_rows[n:n + 1], t_rows[n:n + 1])) for n in range(len(pairs))] for name, fn in fns.items()}
    positions = []
    for n, (g, i, j) in enumerate(pairs):
        positions.append(Position(
            g, int(i), int(j), token_label_text(al, g), token_label_text(al, g + 1),
            {name: per[name][n] for name in LOSS_NAMES}, _top(pt[n], k), _top(ps[n], k), _top(q[n], k),
            float(unreachable[n])))
    return Distributions(al, positions, ps, pt, q, w)


def token_label_text(al, g: int) -> str:
    from .align import visible

    return visible(al.group_bytes(al.groups[g]))


__all__ = ["position_distributions", "Distributions", "Position", "LOSS_NAMES", "token_label"]
