"""The four cross-tokenizer KD losses on already-aligned rows (SPEC §5).

Every function takes `student_logits (N, V_s)` and `teacher_logits (N, V_t)`: row n of each is the
pair of distributions to compare (any float dtype; bf16 in, fp32 math). It returns the mean over the N
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
from .chunked import chunked_rows
from .projected import auto_chunk_size, compute_dtype, projected_kl_rows, projected_kl_rows_dense
from .sparse_w import CommonSet, as_sparse_w

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


def kl_kernel(s, t, s_off, t_off, *, temperature):
    """Direct KL(p_t ‖ p_s) per row, both sides in the same vocabulary: `(c,)`."""
    ls, lt = log_rows(s, s_off, temperature), log_rows(t, t_off, temperature)
    pt = lt.exp()
    return torch.where(pt > 0, pt * (lt - ls), 0.0).sum(-1)


def common_kernel(s, t, s_off, t_off, *, common: CommonSet, uncommon_topk, temperature):
    """GOLD / H-KL per row: KL on the common pairs + sorted-probability L1 on the rest: `(c,)`."""
    ls, lt = log_rows(s, s_off, temperature), log_rows(t, t_off, temperature)
    lt_c, ls_c = lt[:, common.teacher], ls[:, common.student]
    pt_c = lt_c.exp()
    # The generalised KL of the sub-distributions, Σ p_t log(p_t/p_s) − p_t + p_s: every term is >= 0 and
    # zero only where p_s = p_t, so the KD term never goes negative (a plain KL restricted to the common
    # ids can, and dynamic scaling λ = CE/KD then breaks). Its student gradient is p_s − p_t on those ids,
    # the full KL's gradient restricted to them.
    kl = (pt_c * (lt_c - ls_c) - pt_c + ls_c.exp()).sum(-1)
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


def trl_gold_kernel(s, t, s_off, t_off, *, common: CommonSet, beta, matched_weight, temperature):
    """TRL's hybrid GOLD per row: w·JSD_β(matched) + (1 − w)·sorted L1(unmatched): `(c,)`."""
    ls, lt = log_rows(s, s_off, temperature), log_rows(t, t_off, temperature)
    jsd = jsd_terms(ls[:, common.student], lt[:, common.teacher], beta)
    l1 = sorted_l1(ls[:, common.student_rest].exp(), lt[:, common.teacher_rest].exp())
    return matched_weight * jsd + (1.0 - matched_weight) * l1


def uld_kernel(s, t, s_off, t_off, *, temperature):
    """ULD per row: sorted-probability L1 over the whole vocabularies: `(c,)`."""
    return sorted_l1(log_rows(s, s_off, temperature).exp(), log_rows(t, t_off, temperature).exp())


def _check_rows(student_logits, teacher_logits):
    if student_logits.dim() != 2 or teacher_logits.dim() != 2 or len(student_logits) != len(teacher_logits):
        raise XtokError(
            f"aligned rows must be (N, V_s) and (N, V_t) with the same N, got {tuple(student_logits.shape)} "
            f"and {tuple(teacher_logits.shape)}; gather aligned positions first or use DistillLoss")


def _mean(rows: torch.Tensor, student_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    if rows.numel() == 0:
        return student_logits.sum() * 0.0  # keeps the graph (DDP needs every rank to reach backward)
    return rows.mean() * temperature**2


def _run_rows(kernel, s, t, s_off, t_off, naive, chunk_size, recompute=False):
    if naive:
        return kernel(s, t.detach(), s_off, None if t_off is None else t_off.detach())
    if chunk_size is None:
        chunk_size = auto_chunk_size(s.shape[-1], t.shape[-1])
    return chunked_rows(kernel, s, t.detach(), s_off, None if t_off is None else t_off.detach(),
                        chunk_size=chunk_size, recompute=recompute)


def pkl_rows(student_logits, teacher_logits, W, *, temperature=1.0, chunk_size=None, naive=False,
             recompute=False, values=None, student_log_offset=None, teacher_log_offset=None):
    """P-KL per row: `(losses (N,), unreachable_mass (N,))`, no τ² (see `pkl_loss`).

    `values (nnz,)`: other non-zero values on W's pattern (a learned W)."""
    _check_rows(student_logits, teacher_logits)
    sw = as_sparse_w(W, student_logits.device)
    sw.check_vocab(student_logits.shape[-1], teacher_logits.shape[-1])
    t_off = None if teacher_log_offset is None else teacher_log_offset.detach()
    fn = projected_kl_rows_dense if naive else partial(projected_kl_rows, chunk_size=chunk_size, recompute=recompute)
    return fn(student_logits, teacher_logits.detach(), sw, values=values, s_off=student_log_offset,
              t_off=t_off, temperature=temperature)


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


def pkl_loss(student_logits, teacher_logits, W, *, temperature=1.0, return_stats=False, chunk_size=None,
             naive=False, recompute=False, student_log_offset=None, teacher_log_offset=None, teacher_topk=None):
    """P-KL (X-Token): `KL(p_t ‖ softmax(z_s/τ) @ W)` with log(q + 1e-10), mean over rows, × τ².

    student_logits (N, V_s), teacher_logits (N, V_t), W (V_s, V_t) -> scalar.
    A teacher token that no student row reaches has q = 0: it adds a constant and no gradient. With
    `return_stats=True` the result is `(loss, {"unreachable_mass": float})`, that mass being the mean
    teacher probability on such tokens. `recompute=True` recomputes each chunk in backward instead of
    writing its gradient during forward (same numbers, less memory held between forward and backward).
    `teacher_topk=k` (off by default; NeMo-RL's speed knob) compares the distributions only on the union
    of every row's k most likely teacher tokens: the teacher is renormalised over those columns and the
    student projected into them alone (`teacher_topk_columns`); `unreachable_mass` then counts only them.
    """
    if teacher_topk is not None:
        _check_rows(student_logits, teacher_logits)
        as_sparse_w(W, student_logits.device).check_vocab(student_logits.shape[-1], teacher_logits.shape[-1])
        cols, W = teacher_topk_columns(teacher_logits, W, teacher_topk)
        teacher_logits = teacher_logits[:, cols]
    rows, lost = pkl_rows(student_logits, teacher_logits, W, temperature=temperature, chunk_size=chunk_size,
                          naive=naive, recompute=recompute, student_log_offset=student_log_offset,
                          teacher_log_offset=teacher_log_offset)
    loss = _mean(rows, student_logits, temperature)
    if return_stats:
        return loss, {"unreachable_mass": float(lost.mean()) if lost.numel() else 0.0}
    return loss


def common_set_loss(student_logits, teacher_logits, W, *, rule, threshold=HKL_THRESHOLD,
                    uncommon_topk=UNCOMMON_TOPK, temperature=1.0, chunk_size=None, naive=False,
                    student_log_offset=None, teacher_log_offset=None, reduce=True):
    """GOLD (`rule="exact"`) or H-KL (`rule="top1"`); `reduce=False` gives the `(N,)` rows without τ²."""
    _check_rows(student_logits, teacher_logits)
    sw = as_sparse_w(W, student_logits.device)
    sw.check_vocab(student_logits.shape[-1], teacher_logits.shape[-1])
    kernel = partial(common_kernel, common=sw.common_set(rule, threshold), uncommon_topk=uncommon_topk,
                     temperature=temperature)
    rows = _run_rows(kernel, student_logits, teacher_logits, student_log_offset, teacher_log_offset,
                     naive, chunk_size)
    return _mean(rows, student_logits, temperature) if reduce else rows


def hkl_loss(student_logits, teacher_logits, W, *, temperature=1.0, threshold=HKL_THRESHOLD,
             uncommon_topk=UNCOMMON_TOPK, chunk_size=None, naive=False, student_log_offset=None,
             teacher_log_offset=None):
    """H-KL (X-Token): KL on the common pairs + ULD on the rest, mean over rows, × τ².

    student_logits (N, V_s), teacher_logits (N, V_t), W (V_s, V_t) -> scalar.
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

    student_logits (N, V_s), teacher_logits (N, V_t), W (V_s, V_t) -> scalar.
    A column claimed by several exact rows goes to the lowest student id. For a bare sparse W (no
    row kinds) a row is exact when its only non-zero is 1.0.
    """
    return common_set_loss(student_logits, teacher_logits, W, rule="exact", uncommon_topk=uncommon_topk,
                           temperature=temperature, chunk_size=chunk_size, naive=naive,
                           student_log_offset=student_log_offset, teacher_log_offset=teacher_log_offset)


def trl_gold_loss(student_logits, teacher_logits, W, *, temperature=1.0, beta=TRL_BETA, matched_weight=None,
                  chunk_size=None, naive=False, student_log_offset=None, teacher_log_offset=None, reduce=True):
    """GOLD as TRL's GOLD trainer computes it (its hybrid ULD loss; loss name "gold-trl").

    student_logits (N, V_s), teacher_logits (N, V_t), W (V_s, V_t) -> scalar (mean over rows, × τ²).
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
    """
    _check_rows(student_logits, teacher_logits)
    if not 0.0 < float(beta) < 1.0:
        raise XtokError(f"beta={beta} must lie strictly between 0 and 1 (TRL's default 0.5)")
    sw = as_sparse_w(W, student_logits.device)
    sw.check_vocab(student_logits.shape[-1], teacher_logits.shape[-1])
    common = sw.common_set("exact")
    w = len(common.teacher) / max(1, sw.shape[1]) if matched_weight is None else float(matched_weight)
    kernel = partial(trl_gold_kernel, common=common, beta=float(beta), matched_weight=w, temperature=temperature)
    rows = _run_rows(kernel, student_logits, teacher_logits, student_log_offset, teacher_log_offset,
                     naive, chunk_size)
    return _mean(rows, student_logits, temperature) if reduce else rows


def uld_loss(student_logits, teacher_logits, *, temperature=1.0, chunk_size=None, naive=False,
             student_log_offset=None, teacher_log_offset=None, reduce=True):
    """ULD: L1 between both sides' probabilities sorted descending, zero-padded to the larger vocab.

    student_logits (N, V_s), teacher_logits (N, V_t) -> scalar (mean over rows, × τ²). Needs no W.
    """
    _check_rows(student_logits, teacher_logits)
    rows = _run_rows(partial(uld_kernel, temperature=temperature), student_logits, teacher_logits,
                     student_log_offset, teacher_log_offset, naive, chunk_size)
    return _mean(rows, student_logits, temperature) if reduce else rows


def kl_loss(student_logits, teacher_logits, *, temperature=1.0, chunk_size=None, naive=False,
            student_log_offset=None, teacher_log_offset=None, reduce=True):
    """Direct KL(p_t ‖ p_s) for a teacher with the student's own vocabulary: `(N, V)` × 2 -> scalar."""
    _check_rows(student_logits, teacher_logits)
    if student_logits.shape[-1] != teacher_logits.shape[-1]:
        raise XtokError(
            f"a same-tokenizer teacher needs logits of the student's width {student_logits.shape[-1]}, got "
            f"{teacher_logits.shape[-1]}; give this teacher its W instead of the identity")
    rows = _run_rows(partial(kl_kernel, temperature=temperature), student_logits, teacher_logits,
                     student_log_offset, teacher_log_offset, naive, chunk_size)
    return _mean(rows, student_logits, temperature) if reduce else rows
