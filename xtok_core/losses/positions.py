"""Which rows of the (B, T, V) logits the KD losses compare, given a batch alignment.

Logits at position p predict token p+1. A group g ends where both tokenizations have a boundary, so at
its last positions (s_end[g], t_end[g]) both models predict the first token of the next group h, which
starts at the same byte: one aligned pair per such g. The three position modes differ in what stands
for group h's prediction (all three coincide when h is one token on each side):

- `boundary` (default): the distributions at (s_end[g], t_end[g]).
- `chunk_mean`: the mean log-probabilities over all positions predicting h's tokens (s_end[g] ..
  s_end[h]-1 on the student side, the same on the teacher side), renormalised, as NeMo-RL averages
  over a chunk.
- `chain`: the boundary distribution times the probabilities of h's later actual tokens (chain rule,
  X-Token paper / TRL GOLD); returned as the boundary rows plus a per-row log offset, so the loss sees
  the unnormalised merged distribution and its gradient reaches those later positions too.

A pair exists for every g with `group_mask` True whose next position exists on both sides and belongs
to the same group h there (so the last text group before padding has no pair).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import XtokError
from .names import POSITION_MODES
from .teacher_dist import TeacherDistribution


@dataclass
class AlignedRows:
    """Rows to compare: `student (N, V_s)`, `teacher (N, V_t)` logits (or a `TeacherDistribution` of N rows
    for a top-K teacher), optional log offsets `(N,)`, and the temperature the loss still has to apply (τ for
    logits rows, 1 for `chunk_mean`'s log-prob rows)."""

    student: torch.Tensor
    teacher: "torch.Tensor | TeacherDistribution"
    student_offset: torch.Tensor | None = None
    teacher_offset: torch.Tensor | None = None
    temperature: float = 1.0


def _pairs(al, t_s: int, t_t: int):
    """(b, s_pos, t_pos, h) of every aligned pair, each `(N,) long`."""
    s_next, t_next = al.s_end + 1, al.t_end + 1
    ok = al.group_mask.bool() & (al.s_end >= 0) & (al.t_end >= 0) & (s_next < t_s) & (t_next < t_t)
    s_next_c, t_next_c = s_next.clamp(0, t_s - 1), t_next.clamp(0, t_t - 1)
    ok &= al.student_mask.bool().gather(1, s_next_c) & al.teacher_mask.bool().gather(1, t_next_c)
    h = al.student_group.gather(1, s_next_c)
    ok &= (h >= 0) & (h == al.teacher_group.gather(1, t_next_c))
    b, g = ok.nonzero(as_tuple=True)
    return b, al.s_end[b, g], al.t_end[b, g], h[b, g]


def _predicting_positions(groups, mask, b, h, n_groups):
    """Positions p (p+1 valid) whose next token lies in a paired group, and that pair's index.

    groups, mask: (B, T); b, h: (N,) pairs. Returns (pb, pp, pair) each (M,)."""
    bsz, t = groups.shape
    pair_of = torch.full((bsz, max(n_groups, 1)), -1, dtype=torch.long, device=groups.device)
    pair_of[b, h] = torch.arange(len(b), device=groups.device)
    nxt = groups[:, 1:]
    valid = mask[:, :-1].bool() & mask[:, 1:].bool() & (nxt >= 0)
    pair = torch.where(valid, pair_of.gather(1, nxt.clamp(min=0)), -1)
    pb, pp = (pair >= 0).nonzero(as_tuple=True)
    return pb, pp, pair[pb, pp]


def _chain_offset(token_log_probs, ids, groups, mask, b, h, s_pos, n_groups, n):
    """Σ log p(actual next token) over the positions predicting h's later tokens: `(N,)`.

    token_log_probs(pb, pp, tok) -> (M,): the model's log-probability of `tok` at positions (pb, pp)."""
    pb, pp, pair = _predicting_positions(groups, mask, b, h, n_groups)
    later = pp != s_pos[pair]
    pb, pp, pair = pb[later], pp[later], pair[later]
    lp = token_log_probs(pb, pp, ids[pb, pp + 1])
    return torch.zeros(n, dtype=lp.dtype, device=lp.device).index_add(0, pair, lp)


def _logits_token_log_probs(logits, temperature):
    def get(pb, pp, tok):
        z = logits[pb, pp].float() if logits.dtype != torch.float64 else logits[pb, pp]
        z = z / temperature
        return z.gather(1, tok[:, None])[:, 0] - torch.logsumexp(z, dim=-1)
    return get


def _chunk_mean(logits, groups, mask, b, h, n_groups, temperature, n, block: int = 1024):
    """Mean log-softmax(z/τ) over each pair's predicting positions: `(N, V)` in fp32 (fp64 for fp64).

    Without autograd (the teacher) positions go through in blocks, so no (positions, V) fp32 copy exists."""
    pb, pp, pair = _predicting_positions(groups, mask, b, h, n_groups)
    cd = torch.float64 if logits.dtype == torch.float64 else torch.float32
    sums = torch.zeros(n, logits.shape[-1], dtype=cd, device=logits.device)
    step = len(pb) if torch.is_grad_enabled() and logits.requires_grad else block
    for i in range(0, len(pb), max(step, 1)):
        sl = slice(i, i + step)
        lp = torch.log_softmax(logits[pb[sl], pp[sl]].to(cd) / temperature, -1)
        sums.index_add_(0, pair[sl], lp)
    counts = torch.bincount(pair, minlength=n).to(cd)
    return sums / counts.clamp(min=1)[:, None]


def check_alignment(al, student_logits, teacher_logits):
    t_shape = tuple(TeacherDistribution.of(teacher_logits).shape[:2])
    if tuple(al.student_mask.shape) != tuple(student_logits.shape[:2]) or tuple(al.teacher_mask.shape) != t_shape:
        raise XtokError(
            f"alignment is for student {tuple(al.student_mask.shape)} / teacher {tuple(al.teacher_mask.shape)} "
            f"tokens but the logits are {tuple(student_logits.shape[:2])} / {t_shape}; "
            "build the alignment (align_batch) from the same batch with the same max_length")


def aligned_rows(student_logits, teacher_logits, al, *, position="boundary", temperature=1.0) -> AlignedRows:
    """Gather the rows to compare from student `(B, T_s, V_s)` and teacher `(B, T_t, V_t)` logits.

    `al` is a `BatchAlignment` (xtok_core.align.align_batch) or any object with its fields:
    student_ids/teacher_ids, student_mask/teacher_mask, student_group/teacher_group (B, T),
    s_end/t_end (B, G), group_mask (B, G).
    """
    if position not in POSITION_MODES:
        raise XtokError(f"unknown position mode {position!r}; use one of {', '.join(POSITION_MODES)}")
    check_alignment(al, student_logits, teacher_logits)
    td = TeacherDistribution.of(teacher_logits)
    t_s, t_t = student_logits.shape[1], td.shape[1]
    b, s_pos, t_pos, h = _pairs(al, t_s, t_t)
    n, n_groups = len(b), al.group_mask.shape[1]
    if position == "chunk_mean":
        if td.is_topk:
            raise XtokError("position='chunk_mean' averages the teacher's full log-probabilities over each group, "
                            "which a top-K teacher (cache) does not store; use position='boundary' or 'chain'")
        with torch.no_grad():
            t_rows = _chunk_mean(td.logits, al.teacher_group, al.teacher_mask, b, h, n_groups, temperature, n)
        s_rows = _chunk_mean(student_logits, al.student_group, al.student_mask, b, h, n_groups, temperature, n)
        return AlignedRows(s_rows, t_rows, temperature=1.0)
    rows = AlignedRows(student_logits[b, s_pos], td[b, t_pos] if td.is_topk else td.logits[b, t_pos],
                       temperature=temperature)
    if position == "chain":
        rows.student_offset = _chain_offset(_logits_token_log_probs(student_logits, temperature), al.student_ids,
                                            al.student_group, al.student_mask, b, h, s_pos, n_groups, n)
        with torch.no_grad():
            t_lp = (_logits_token_log_probs(td.logits, temperature) if not td.is_topk
                    else lambda pb, pp, tok: td.token_log_probs(pb, pp, tok, temperature))
            rows.teacher_offset = _chain_offset(t_lp, al.teacher_ids, al.teacher_group, al.teacher_mask,
                                                b, h, t_pos, n_groups, n)
    return rows


def same_tokenizer_rows(student_logits, teacher_logits, mask, temperature=1.0) -> AlignedRows:
    """Rows for a teacher sharing the student's tokenizer: every position p with p and p+1 in `mask`."""
    td = TeacherDistribution.of(teacher_logits)
    if (*td.shape, td.vocab_size) != tuple(student_logits.shape):
        raise XtokError(
            f"a same-tokenizer teacher must give logits shaped like the student's {tuple(student_logits.shape)}, "
            f"got {(*td.shape, td.vocab_size)}; give this teacher a W and an alignment instead")
    keep = torch.zeros_like(mask, dtype=torch.bool)
    keep[:, :-1] = mask[:, :-1].bool() & mask[:, 1:].bool()
    return AlignedRows(student_logits[keep], td[keep] if td.is_topk else td.logits[keep], temperature=temperature)
