"""The cross-tokenizer KD losses on already-aligned rows (SPEC §5).

Every function takes `student_logits (N, V_s)` and the teacher's rows: `teacher_logits (N, V_t)` or a
`TeacherDistribution` of N rows (full logits, or top-K ids + log-probs + log tail mass from a teacher cache);
row n of each is the pair of distributions to compare (any float dtype; bf16 in, fp32 math). Every loss is a
row kernel of the one chunked-rows engine (`chunked.py`); the teacher reaches it only as `TeacherRows`, so
full logits and top-K go through the same code. With top-K the ids not kept have probability 0 for H-KL,
GOLD, TRL's GOLD and ULD, and their mass r forms one bucket for P-KL and the same-tokenizer KL (each
docstring states the bound this puts on the difference from the full-distribution loss). It returns the mean over the N
rows of the per-row loss, times τ² (the usual temperature correction, so gradients keep their scale).
The teacher never receives a gradient. Rows are processed in chunks recomputed in backward
(`chunk_size`, automatic by default); `naive=True` runs the same math on all rows at once with every
intermediate kept, which is the reference the chunked path is tested and benchmarked against.

`student_log_offset` / `teacher_log_offset` `(N,)` scale each row's probabilities by e^{offset}; the
chain-rule merge of multi-token groups uses them (`DistillLoss(position="chain")`), plain calls don't.

W is a `Projection`, a torch sparse (V_s, V_t) tensor (CSR or COO) or a scipy sparse matrix.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F

from ..errors import XtokError
from .chunked import AutogradKernel, chunked_rows, compute_dtype, dense_rows
from .projected import projected_kl_rows, projected_kl_rows_dense
from .sparse_w import CommonSet, as_sparse_w
from .teacher_dist import TeacherDistribution, TeacherRows

UNCOMMON_TOPK = 8192  # GOLD: sorted probabilities compared on the uncommon vocabularies
HKL_THRESHOLD = 0.6  # X-Token: a row joins the common set when its top-1 weight is at least this
TRL_BETA = 0.5  # TRL GOLD: β of the JSD on matched tokens


def log_rows(x: torch.Tensor, off: torch.Tensor | None, temperature: float) -> torch.Tensor:
    """log softmax(x/τ) + offset, in the compute dtype: `(c, V)`."""
    lp = torch.log_softmax(x.to(compute_dtype(x)) / temperature, dim=-1)
    return lp if off is None else lp + off.to(lp.dtype)[:, None]


def sorted_l1(a: torch.Tensor, b: torch.Tensor, k: int | None = None) -> torch.Tensor:
    """ULD distance per row: L1 between the k largest probabilities of `a (c, A)` and `b (c, B)`,
    each sorted descending and zero-padded to k (k = max(A, B) when None): `(c,)`."""
    width = max(a.shape[-1], b.shape[-1])
    k = width if k is None else min(k, width)

    def top(x):
        m = min(k, x.shape[-1])
        v = torch.sort(x, dim=-1, descending=True).values if m == x.shape[-1] else torch.topk(x, m).values
        return F.pad(v, (0, k - m))

    return (top(a) - top(b)).abs().sum(-1)


def tail_bucket(tr: TeacherRows, ls: torch.Tensor) -> torch.Tensor:
    """r·(log r − log s_rest) per row: the teacher's mass outside the kept ids against the student's
    (same vocabulary) mass outside them, `(c,)`; 0 where r = 0."""
    r = tr.tail()
    has = r > 0
    log_rest = torch.logsumexp(ls.masked_fill(tr.kept & has[:, None], -torch.inf), -1)
    return torch.where(has, r * (torch.where(has, tr.log_tail, 0.0) - log_rest), 0.0)


def kl_fn(s, s_off, tr: TeacherRows, *, temperature):
    """Direct KL(p_t ‖ p_s) per row, both sides in the same vocabulary: `(c,)` (top-K: + the tail bucket)."""
    ls, lt = log_rows(s, s_off, temperature), tr.logp
    pt = lt.exp()
    kl = torch.where(pt > 0, pt * (lt - ls), 0.0).sum(-1)
    return kl + tail_bucket(tr, ls) if tr.has_tail else kl


def common_fn(s, s_off, tr: TeacherRows, *, common: CommonSet, uncommon_topk, temperature):
    """GOLD / H-KL per row: KL on the common pairs + sorted-probability L1 on the rest: `(c,)`."""
    ls, lt = log_rows(s, s_off, temperature), tr.logp
    lt_c, ls_c = lt[:, common.teacher], ls[:, common.student]
    pt_c = lt_c.exp()
    # The generalised KL of the sub-distributions, Σ p_t log(p_t/p_s) − p_t + p_s: every term is >= 0 and
    # zero only where p_s = p_t, so the KD term never goes negative (a plain KL restricted to the common
    # ids can, and dynamic scaling λ = CE/KD then breaks). Its student gradient is p_s − p_t on those ids,
    # the full KL's gradient restricted to them. A teacher id with probability 0 (not kept) adds p_s.
    kl = (torch.where(pt_c > 0, pt_c * (lt_c - ls_c), 0.0) - pt_c + ls_c.exp()).sum(-1)
    if len(common.student_rest) == 0 and len(common.teacher_rest) == 0:
        return kl
    l1 = sorted_l1(ls[:, common.student_rest].exp(), lt[:, common.teacher_rest].exp(), uncommon_topk)
    return kl + l1


def jsd_terms(ls: torch.Tensor, lt: torch.Tensor, beta: float) -> torch.Tensor:
    """Generalised JSD per row of two (sub-)distributions given as log-probabilities `(c, K)`, unnormalised:
    β·Σ p_t log(p_t/m) + (1−β)·Σ p_s log(p_s/m), m = (1−β)·p_s + β·p_t (β = 0.5: the symmetric JSD)."""
    lm = torch.logaddexp(ls + math.log1p(-beta), lt + math.log(beta))
    pt, ps = lt.exp(), ls.exp()
    kl_t = torch.where(pt > 0, pt * (lt - lm), 0.0).sum(-1)
    kl_s = torch.where(ps > 0, ps * (ls - lm), 0.0).sum(-1)
    return beta * kl_t + (1.0 - beta) * kl_s


def trl_gold_fn(s, s_off, tr: TeacherRows, *, common: CommonSet, beta, matched_weight, temperature):
    """TRL's hybrid GOLD per row: w·JSD_β(matched) + (1 − w)·sorted L1(unmatched): `(c,)`."""
    ls, lt = log_rows(s, s_off, temperature), tr.logp
    jsd = jsd_terms(ls[:, common.student], lt[:, common.teacher], beta)
    l1 = sorted_l1(ls[:, common.student_rest].exp(), lt[:, common.teacher_rest].exp())
    return matched_weight * jsd + (1.0 - matched_weight) * l1


def uld_fn(s, s_off, tr: TeacherRows, *, temperature):
    """ULD per row: sorted-probability L1 over the whole vocabularies: `(c,)`."""
    return sorted_l1(log_rows(s, s_off, temperature).exp(), tr.logp.exp())


def _teacher(student_logits, teacher, temperature, teacher_log_offset=None) -> TeacherDistribution:
    """The teacher's rows as a `TeacherDistribution` of N rows, checked against the student's rows."""
    td = TeacherDistribution.of(teacher)
    if student_logits.dim() != 2 or len(td.shape) != 1 or td.shape[0] != len(student_logits):
        what = tuple(td.logits.shape) if td.logits is not None else (*td.shape, f"top-{td.ids.shape[-1]}")
        raise XtokError(
            f"aligned rows must be (N, V_s) and (N, V_t) with the same N, got {tuple(student_logits.shape)} "
            f"and {what}; gather aligned positions first or use DistillLoss")
    td.check_temperature(temperature)
    return td.with_offset(teacher_log_offset)


def _mean(rows: torch.Tensor, student_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    if rows.numel() == 0:
        return student_logits.sum() * 0.0  # keeps the graph (DDP needs every rank to reach backward)
    return rows.mean() * temperature**2


def _run_rows(fn, s, td, s_off, temperature, naive, chunk_size, recompute=False):
    """Per-row losses `(N,)` of a row function through the engine (or all at once with `naive`)."""
    kernel = AutogradKernel(fn, temperature)
    if naive:
        return dense_rows(kernel, s, td, s_off)[0]
    return chunked_rows(kernel, s, td, s_off, chunk_size=chunk_size, recompute=recompute)[0]


def pkl_rows(student_logits, teacher, W, *, temperature=1.0, chunk_size=None, naive=False,
             recompute=False, values=None, student_log_offset=None, teacher_log_offset=None):
    """P-KL per row: `(losses (N,), unreachable_mass (N,))`, no τ² (see `pkl_loss`).

    `values (nnz,)`: other non-zero values on W's pattern (a learned W)."""
    td = _teacher(student_logits, teacher, temperature, teacher_log_offset)
    sw = as_sparse_w(W, student_logits.device)
    sw.check_vocab(student_logits.shape[-1], td.vocab_size)
    fn = projected_kl_rows_dense if naive else partial(projected_kl_rows, chunk_size=chunk_size, recompute=recompute)
    return fn(student_logits, td, sw, values=values, s_off=student_log_offset, temperature=temperature)


def teacher_topk_columns(teacher_logits, W, k: int):
    """NeMo-RL's microbatch-global teacher top-k: the union of every row's k largest teacher ids
    (sorted), and W restricted to those columns (a scipy CSR, rows no longer summing to 1)."""
    import scipy.sparse as sp

    sw = as_sparse_w(W, teacher_logits.device)
    k = min(int(k), teacher_logits.shape[-1])
    if k < 1:
        raise XtokError(f"teacher_topk={k} must be at least 1; pass None to use the whole teacher vocabulary")
    cols = torch.topk(teacher_logits.detach(), k, dim=-1).indices.unique()
    indptr, indices, data = sw._np
    sub = sp.csr_array((data, indices, indptr), shape=sw.shape)[:, cols.cpu().numpy()]
    return cols, sp.csr_array(sub)


def restrict_to_teacher_topk(teacher, W, k: int):
    """(teacher logits restricted to the union of every row's k largest ids, W restricted likewise)."""
    td = TeacherDistribution.of(teacher)
    if td.is_topk:
        raise XtokError("teacher_topk applies to full teacher logits; a top-K teacher (cache) is already restricted")
    cols, sub = teacher_topk_columns(td.logits, W, k)
    return td.logits[:, cols], sub


def pkl_loss(student_logits, teacher_logits, W, *, temperature=1.0, return_stats=False, chunk_size=None,
             naive=False, recompute=False, student_log_offset=None, teacher_log_offset=None, teacher_topk=None):
    """P-KL (X-Token): `KL(p_t ‖ softmax(z_s/τ) @ W)` with log(q + 1e-10), mean over rows, × τ².

    student_logits (N, V_s), teacher_logits (N, V_t) or a `TeacherDistribution`, W (V_s, V_t) -> scalar.
    A teacher token that no student row reaches has q = 0: it adds a constant and no gradient. With
    `return_stats=True` the result is `(loss, {"unreachable_mass": float})`, that mass being the mean
    teacher probability on such tokens. `recompute=True` recomputes each chunk in backward instead of
    writing its gradient during forward (same numbers, less memory held between forward and backward).
    `teacher_topk=k` (off by default; NeMo-RL's speed knob) compares the distributions only on the union
    of every row's k most likely teacher tokens: the teacher is renormalised over those columns and the
    student projected into them alone (`teacher_topk_columns`); `unreachable_mass` then counts only them.
    Teacher as top-K + tail (a teacher cache): KL over the K kept ids plus one tail term
    r·log(r / d), r the teacher's mass outside them and d = Σ_{t not kept}(q_t + ε) the student's projected
    mass outside them: the KL of both distributions coarsened to "K ids + the rest". Per row it is at most the
    full P-KL, and below it by at most r·log(p_K·d / (r·(min_{t not kept} q_t + ε))), p_K the smallest kept
    teacher probability. `unreachable_mass` counts the kept ids only.
    """
    if teacher_topk is not None:
        td = _teacher(student_logits, teacher_logits, temperature)
        as_sparse_w(W, student_logits.device).check_vocab(student_logits.shape[-1], td.vocab_size)
        teacher_logits, W = restrict_to_teacher_topk(td, W, teacher_topk)
    rows, lost = pkl_rows(student_logits, teacher_logits, W, temperature=temperature, chunk_size=chunk_size,
                          naive=naive, recompute=recompute, student_log_offset=student_log_offset,
                          teacher_log_offset=teacher_log_offset)
    loss = _mean(rows, student_logits, temperature)
    if return_stats:
        return loss, {"unreachable_mass": float(lost.mean()) if lost.numel() else 0.0}
    return loss


def common_set_loss(student_logits, teacher, W, *, rule, threshold=HKL_THRESHOLD,
                    uncommon_topk=UNCOMMON_TOPK, temperature=1.0, chunk_size=None, naive=False,
                    student_log_offset=None, teacher_log_offset=None, reduce=True):
    """GOLD (`rule="exact"`) or H-KL (`rule="top1"`); `reduce=False` gives the `(N,)` rows without τ²."""
    td = _teacher(student_logits, teacher, temperature, teacher_log_offset)
    sw = as_sparse_w(W, student_logits.device)
    sw.check_vocab(student_logits.shape[-1], td.vocab_size)
    fn = partial(common_fn, common=sw.common_set(rule, threshold), uncommon_topk=uncommon_topk,
                 temperature=temperature)
    rows = _run_rows(fn, student_logits, td, student_log_offset, temperature, naive, chunk_size)
    return _mean(rows, student_logits, temperature) if reduce else rows


COMMON_TOPK_NOTE = """
    Teacher as top-K + tail (a teacher cache): the teacher ids not kept count as probability 0, so a common
    pair whose teacher id is not kept adds the student's p_s, and the sorted rest holds the kept teacher
    probabilities only. With r the tail mass, p_K the smallest kept teacher probability, m = min(p_K, r) and
    p_s over the common pairs whose teacher id is not kept (C\\K), per row:
    −Σ_{C\\K} p_s − r  ≤  full − top-K  ≤  r·(1 + max(0, log(m / min_{C\\K} p_s) − 1)).
    """


def hkl_loss(student_logits, teacher_logits, W, *, temperature=1.0, threshold=HKL_THRESHOLD,
             uncommon_topk=UNCOMMON_TOPK, chunk_size=None, naive=False, student_log_offset=None,
             teacher_log_offset=None):
    """H-KL (X-Token): KL on the common pairs + ULD on the rest, mean over rows, × τ².

    student_logits (N, V_s), teacher_logits (N, V_t) or a `TeacherDistribution`, W (V_s, V_t) -> scalar.
    Common set: each row whose top-1 weight is >= `threshold` (0.6) with that teacher column; on a
    column claimed twice the highest weight wins, ties to the lowest student id. The KL uses each
    side's full-vocabulary probabilities at the common ids, as the generalised KL of those
    sub-distributions (Σ p_t log(p_t/p_s) − p_t + p_s, never negative, no renormalisation); the uncommon
    probabilities are compared as sorted vectors, truncated to `uncommon_topk` and zero-padded.
    """
    return common_set_loss(student_logits, teacher_logits, W, rule="top1", threshold=threshold,
                           uncommon_topk=uncommon_topk, temperature=temperature, chunk_size=chunk_size,
                           naive=naive, student_log_offset=student_log_offset,
                           teacher_log_offset=teacher_log_offset)


def gold_loss(student_logits, teacher_logits, W, *, temperature=1.0, uncommon_topk=UNCOMMON_TOPK,
              chunk_size=None, naive=False, student_log_offset=None, teacher_log_offset=None):
    """GOLD as NeMo-RL computes it (its `gold` loss; loss name "gold"): `hkl_loss` with the common set =
    rows of kind `exact`, at equal weight: generalised KL on the exact pairs + sorted-probability L1 on the
    top-`uncommon_topk` (8192) of the rest. TRL's GOLD trainer computes another hybrid: `trl_gold_loss`.

    student_logits (N, V_s), teacher_logits (N, V_t) or a `TeacherDistribution`, W (V_s, V_t) -> scalar.
    A column claimed by several exact rows goes to the lowest student id. For a bare sparse W (no
    row kinds) a row is exact when its only non-zero is 1.0.
    """
    return common_set_loss(student_logits, teacher_logits, W, rule="exact", uncommon_topk=uncommon_topk,
                           temperature=temperature, chunk_size=chunk_size, naive=naive,
                           student_log_offset=student_log_offset, teacher_log_offset=teacher_log_offset)


hkl_loss.__doc__ += COMMON_TOPK_NOTE
gold_loss.__doc__ += COMMON_TOPK_NOTE


def trl_gold_loss(student_logits, teacher_logits, W, *, temperature=1.0, beta=TRL_BETA, matched_weight=None,
                  chunk_size=None, naive=False, student_log_offset=None, teacher_log_offset=None, reduce=True):
    """GOLD as TRL's GOLD trainer computes it (its hybrid ULD loss; loss name "gold-trl").

    student_logits (N, V_s), teacher_logits (N, V_t) or a `TeacherDistribution`, W (V_s, V_t) -> scalar
    (mean over rows, × τ²).
    Per row: `w · JSD_β(p_s[matched], p_t[matched]) + (1 − w) · L1(sort p_s[rest], sort p_t[rest])` with
    - matched: GOLD's exact common set (the same pairs as `gold_loss`; TRL pairs tokens whose vocabulary
      strings are equal, which for byte-level vocabularies are the exact rows of W);
    - JSD_β (β = 0.5): the generalised JSD of the matched sub-distributions as they are (no renormalisation),
      β·KL(p_t‖m) + (1−β)·KL(p_s‖m), m = (1−β)·p_s + β·p_t;
    - the unmatched probabilities of both sides sorted descending over the whole rest (no top-k), zero-padded;
    - TRL's adaptive weight w = (number of matched pairs) / V_t (`matched_weight=` fixes it instead).
    Differences from TRL, on purpose: exact log-probabilities where TRL clamps probabilities at 1e-8 before
    the log (equal wherever every probability is above 1e-8), and the τ² factor every xtok loss carries
    (TRL's hybrid has none; at τ = 1 they agree).
    Teacher as top-K + tail: ids not kept count as probability 0. Per row, with r the tail mass and p_s over
    the matched pairs whose teacher id is not kept (C\\K):
    −w·(1−β)·log(1/(1−β))·Σ_{C\\K} p_s − (1−w)·r  ≤  full − top-K  ≤  w·β·log(1/β)·r + (1−w)·r.
    """
    if not 0.0 < float(beta) < 1.0:
        raise XtokError(f"beta={beta} must lie strictly between 0 and 1 (TRL's default 0.5)")
    td = _teacher(student_logits, teacher_logits, temperature, teacher_log_offset)
    sw = as_sparse_w(W, student_logits.device)
    sw.check_vocab(student_logits.shape[-1], td.vocab_size)
    common = sw.common_set("exact")
    w = len(common.teacher) / max(1, sw.shape[1]) if matched_weight is None else float(matched_weight)
    fn = partial(trl_gold_fn, common=common, beta=float(beta), matched_weight=w, temperature=temperature)
    rows = _run_rows(fn, student_logits, td, student_log_offset, temperature, naive, chunk_size)
    return _mean(rows, student_logits, temperature) if reduce else rows


def uld_loss(student_logits, teacher_logits, *, temperature=1.0, chunk_size=None, naive=False,
             student_log_offset=None, teacher_log_offset=None, reduce=True):
    """ULD: L1 between both sides' probabilities sorted descending, zero-padded to the larger vocab.

    student_logits (N, V_s), teacher_logits (N, V_t) or a `TeacherDistribution` -> scalar (mean over rows,
    × τ²). Needs no W. Teacher as top-K + tail: the ids not kept count as probability 0; zeroing entries that
    sum to r moves the sorted teacher vector by exactly r in L1, so per row |full − top-K| ≤ r.
    """
    td = _teacher(student_logits, teacher_logits, temperature, teacher_log_offset)
    rows = _run_rows(partial(uld_fn, temperature=temperature), student_logits, td, student_log_offset,
                     temperature, naive, chunk_size)
    return _mean(rows, student_logits, temperature) if reduce else rows


def kl_loss(student_logits, teacher_logits, *, temperature=1.0, chunk_size=None, naive=False,
            student_log_offset=None, teacher_log_offset=None, reduce=True):
    """Direct KL(p_t ‖ p_s) for a teacher with the student's own vocabulary: `(N, V)` × 2 -> scalar.

    Teacher as top-K + tail: KL over the kept ids plus the bucket r·log(r / s_rest), s_rest the student's
    mass outside the kept ids (P-KL's rule with W = I, the same bound with q = p_s and ε = 0)."""
    td = _teacher(student_logits, teacher_logits, temperature, teacher_log_offset)
    if student_logits.shape[-1] != td.vocab_size:
        raise XtokError(
            f"a same-tokenizer teacher needs logits of the student's width {student_logits.shape[-1]}, got "
            f"{td.vocab_size}; give this teacher its W instead of the identity")
    rows = _run_rows(partial(kl_fn, temperature=temperature), student_logits, td, student_log_offset,
                     temperature, naive, chunk_size)
    return _mean(rows, student_logits, temperature) if reduce else rows
