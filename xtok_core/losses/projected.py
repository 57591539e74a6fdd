"""P-KL as a row kernel of the one chunked-rows engine (`chunked.ChunkedRows`), gradient written by hand.

The naive P-KL keeps, for every aligned position, softmax(z_s) (V_s), q = softmax(z_s) @ W (V_t), the
teacher's log-probabilities (V_t) and log q (V_t) alive for backward: about 4·N·V_t floats, 10 GB at
N = 4096 and V_t = 151,936. Through the engine none of them outlives its chunk. W never exists densely: q is
a sparse W^T times dense product (torch sparse CSR, CPU and CUDA), and the gradient of learned W values is a
sampled dense-dense product on W's own pattern (a learned W makes the engine recompute in backward).

Math for one row (p = student probabilities with an optional log offset b_s, P-KL's ε = 1e-10):
    q = e^{b_s} softmax(x) @ W,   loss = Σ_{t kept} p_t (log p_t − log(q_t + ε)) + r (log r − log d)
    d = Σ_{t not kept} (q_t + ε),  r = teacher mass outside the kept ids (0 for full logits: no tail term)
    g = ∂loss/∂q = −p_t / (q_t + ε) on kept ids, −r / d elsewhere,   ∂loss/∂p = g @ W^T,   ∂loss/∂W[s, t] = p_s g_t
With a top-K teacher the tail is one bucket: the KL of the two distributions coarsened to the K kept ids plus
"the rest", the student's side of the rest being its projected mass outside the kept ids. By the log-sum
inequality it is never above the full P-KL, and below it by at most
    r · log(p_K · d / (r · (min_{t not kept} q_t + ε)))      (p_K: the smallest kept teacher probability),
since every tail probability is at most p_K. The offsets carry the chain-rule merge of multi-token groups.
"""

from __future__ import annotations

import torch

from .chunked import auto_chunk_size, chunked_rows, compute_dtype, dense_rows  # noqa: F401 - re-exported
from .teacher_dist import TeacherRows

EPS = 1e-10  # NeMo-RL's smoothing inside log(q + ε)


def _scaled(x, temperature, cd):
    """x/τ as a new tensor in the compute dtype (the caller works on it in place)."""
    x = x.to(cd, copy=True)
    return x if temperature == 1.0 else x.div_(temperature)


def _project(w_t, p):
    """q = p @ W as W^T @ p^T with a contiguous right-hand side (a strided one is ~5x slower): (c, V_t)."""
    return (w_t @ p.T.contiguous()).T.contiguous()


def _tail_parts(tr: TeacherRows, q: torch.Tensor):
    """(r, log r with 0 where r = 0, d = Σ_{not kept} (q + ε) with 1 where r = 0, not-kept mask) of one chunk."""
    rest = ~tr.kept
    r = tr.tail()
    has = r > 0
    d = torch.where(has, (q * rest).sum(-1) + rest.sum(-1) * EPS, 1.0)
    return r, torch.where(has, tr.log_tail, 0.0), d, rest


class PKLKernel:
    """P-KL per row `(c,)` with the teacher's unreachable mass `(c,)` as the auxiliary output.

    params: W's non-zero values `(nnz,)` on the `SparseW` pattern (differentiable when W is learned)."""

    def __init__(self, sw, temperature: float):
        self.sw, self.temperature = sw, float(temperature)
        self._mats: dict = {}

    def _matrix(self, values, cd, transposed: bool):
        key = (cd, transposed)
        if key not in self._mats:
            self._mats[key] = (self.sw.matrix_t if transposed else self.sw.matrix)(values, cd)
        return self._mats[key]

    def value_and_grad(self, x, s_off, tr: TeacherRows, values, scale, need):
        if tr.ids is not None and not need[2]:
            return self._topk_value_and_grad(x, s_off, tr, values, scale, need)
        cd, tau = compute_dtype(x), self.temperature
        xs = _scaled(x, tau, cd)
        sm = xs.sub_(torch.logsumexp(xs, -1, keepdim=True)).exp_()
        p = sm if s_off is None else sm * s_off.to(cd).exp()[:, None]
        q = _project(self._matrix(values, cd, True), p)
        lt = tr.logp  # a fresh tensor per chunk: worked on in place
        pt = lt.exp()
        lost = pt @ (~self.sw.reachable).to(cd)
        tail = _tail_parts(tr, q) if tr.has_tail else None
        q_eps = q.add_(EPS)
        lt.masked_fill_(pt == 0, 0.0)  # 0·log 0 = 0 (teacher logits of -inf, ids not kept)
        loss = lt.sub_(q_eps.log()).mul_(pt).sum(-1)
        del lt
        if tail is not None:
            r, log_r, d, rest = tail
            loss = loss + r * (log_r - d.log())
        if scale is None:
            return loss, lost, None, None, None
        g = pt.div_(q_eps).mul_(-scale[:, None])  # ∂loss/∂q on the kept ids
        del q_eps
        if tail is not None:
            g.addcmul_(rest.to(cd), (scale * r / d)[:, None], value=-1.0)  # the bucket: −r/d on the rest
        gw = None
        if need[2]:
            pattern = torch.sparse_csr_tensor(self.sw.crow, self.sw.col, torch.zeros_like(values, dtype=cd),
                                              self.sw.shape, check_invariants=False)
            gw = torch.sparse.sampled_addmm(pattern, p.T.contiguous(), g, beta=0.0).values()
        pg = (self._matrix(values, cd, False) @ g.T.contiguous()).T.mul_(p)  # p ⊙ ∂loss/∂p, (c, V_s)
        del g
        pgp = pg.sum(-1)
        # softmax backward: p ⊙ ∂p − softmax · Σ p ⊙ ∂p, then the 1/τ of x/τ
        gx = pg.addcmul_(sm, pgp[:, None], value=-1.0).div_(tau) if need[0] else None
        return loss, lost, gx, (pgp if need[1] else None), gw

    def _topk_value_and_grad(self, x, s_off, tr: TeacherRows, values, scale, need):
        """The same P-KL for a top-K teacher on the union U of the chunk's kept ids alone (a few thousand
        teacher columns instead of V_t): q on U through W[:, U]; the bucket's d from Σ_t q_t = Σ_s p_s·rowsum_s,
        d = Σ_s p_s·rowsum_s − Σ_kept q + (V_t − K)·ε; and since ∂loss/∂q is the row constant −r/d off the
        kept ids, ∂loss/∂p = W[:, U] (g_kept + r/d) − (r/d)·rowsum. (A learned W's own gradient takes the
        dense path.)"""
        cd, tau = compute_dtype(x), self.temperature
        xs = _scaled(x, tau, cd)
        sm = xs.sub_(torch.logsumexp(xs, -1, keepdim=True)).exp_()
        p = sm if s_off is None else sm * s_off.to(cd).exp()[:, None]
        cols, inv = torch.unique(tr.ids, return_inverse=True)  # sorted union of the kept ids; ids → its index
        wu, wu_t = self.sw.columns(cols, values, cd)
        q_u = torch.mm(p, wu) if wu.layout == torch.sparse_coo else _project(wu_t, p)  # (c, |U|)
        qk = q_u.gather(1, inv)  # (c, K): q on each row's kept ids
        rowsum = self.sw.row_sums(values, cd)
        lk = tr.topk_logp.to(cd)
        pk = lk.exp()
        lost = (pk * (~self.sw.reachable[tr.ids]).to(cd)).sum(-1)
        qk_eps = qk + EPS
        loss = torch.where(pk > 0, pk * (lk - qk_eps.log()), 0.0).sum(-1)
        r = tr.tail()
        has = r > 0
        n_rest = self.sw.shape[1] - tr.ids.shape[1]
        d = torch.where(has, (p @ rowsum - qk.sum(-1)).clamp_min(0.0) + n_rest * EPS, 1.0)
        loss = loss + torch.where(has, r * (torch.where(has, tr.log_tail, 0.0) - d.log()), 0.0)
        if scale is None:
            return loss, lost, None, None, None
        c_row = torch.where(has, scale * r / d, 0.0)  # −∂loss/∂q on every id not kept
        gk = -(pk / qk_eps) * scale[:, None] + c_row[:, None]
        g_u = torch.zeros(len(x), len(cols), dtype=cd, device=x.device).scatter_(1, inv, gk)
        # ∂loss/∂p = W[:, U] g_u − c·rowsum, (c, V_s)
        dp = torch.mm(g_u, wu_t) if wu_t.layout == torch.sparse_coo else (wu @ g_u.T.contiguous()).T
        pg = dp.sub_(c_row[:, None] * rowsum[None, :]).mul_(p)  # p ⊙ ∂loss/∂p
        pgp = pg.sum(-1)
        gx = pg.addcmul_(sm, pgp[:, None], value=-1.0).div_(tau) if need[0] else None
        return loss, lost, gx, (pgp if need[1] else None), None

    def reference(self, x, s_off, tr: TeacherRows, values):
        """All rows at once under autograd (W sparse COO, so autograd reaches learned values)."""
        sw, cd = self.sw, compute_dtype(x)
        values = sw.values if values is None else values
        w_t = torch.sparse_coo_tensor(torch.stack([sw.col, sw.row_of]), values.to(cd), sw.shape[::-1])
        p = torch.softmax(x.to(cd) / self.temperature, dim=-1)
        if s_off is not None:
            p = p * s_off.to(cd).exp()[:, None]
        q = torch.sparse.mm(w_t, p.T).T
        lt = tr.logp
        pt = lt.exp()
        losses = torch.where(pt > 0, pt * (lt - torch.log(q + EPS)), 0.0).sum(-1)
        if tr.has_tail:
            r, log_r, d, _ = _tail_parts(tr, q)
            losses = losses + r * (log_r - d.log())
        return losses, (pt * (~sw.reachable).to(cd)).sum(-1)


def projected_kl_rows(s_rows, teacher, sw, *, values=None, s_off=None, temperature=1.0, chunk_size=None,
                      recompute=False):
    """Chunked P-KL per row: `(losses (N,), unreachable_mass (N,))` in the compute dtype."""
    if chunk_size is None:
        chunk_size = auto_chunk_size(*sw.shape)
    return chunked_rows(PKLKernel(sw, temperature), s_rows, teacher, s_off, sw.values if values is None else values,
                        chunk_size=chunk_size, recompute=recompute)


def projected_kl_rows_dense(s_rows, teacher, sw, *, values=None, s_off=None, temperature=1.0):
    """The naive P-KL: all rows at once, every intermediate kept by autograd (reference and baseline)."""
    return dense_rows(PKLKernel(sw, temperature), s_rows, teacher, s_off, values)
