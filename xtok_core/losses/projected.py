"""P-KL through a sparse W in chunks of positions, recomputed in backward.

The naive P-KL keeps, for every aligned position, softmax(z_s) (V_s), q = softmax(z_s) @ W (V_t), the
teacher's log-probabilities (V_t) and log q (V_t) alive for backward: about 4·N·V_t floats, 10 GB at
N = 4096 and V_t = 151,936. `ProjectedKL` holds none of them: forward walks over chunks of rows and keeps
only the per-row loss; backward recomputes each chunk and writes its gradient straight into the
gradient of the logits. Peak extra memory is one chunk's working set. W never exists densely: q is a
sparse W^T times dense product (torch sparse CSR, CPU and CUDA), and the gradient of learned W values is
a sampled dense-dense product on W's own pattern.

Math for one row (p = student probabilities with an optional log offset b_s, P-KL's ε = 1e-10):
    q = e^{b_s} softmax(x) @ W,   p_t = e^{b_t} softmax(y),   loss = Σ_t p_t (log p_t − log(q_t + ε))
    g = ∂loss/∂q = −p_t / (q + ε),   ∂loss/∂p = g @ W^T,   ∂loss/∂W[s, t] = p_s g_t
The offsets carry the chain-rule merge of multi-token groups (`position="chain"`); they are zero otherwise.
"""

from __future__ import annotations

import torch

EPS = 1e-10  # NeMo-RL's smoothing inside log(q + ε)
WORKSET_BYTES = 128 * 2**20  # working set per chunk when chunk_size is not given


def auto_chunk_size(v_s: int, v_t: int, workset_bytes: int = WORKSET_BYTES) -> int:
    """Rows per chunk so that one chunk's fp32 working set (≈ 2·V_s + 4·V_t floats/row) fits the budget:
    32 rows for Llama-3 x Qwen2.5, enough to keep the sparse products efficient."""
    return max(1, int(workset_bytes // (4 * (2 * v_s + 4 * v_t))))


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """fp32 for fp32/bf16/fp16 logits (bf16 in, fp32 math), fp64 when the input is fp64 (gradcheck)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _student_probs(x, off, temperature, cd):
    """(softmax, p) of one chunk: p = softmax(x/τ) · e^{off}; both (c, V_s)."""
    if temperature == 1.0:
        sm = torch.softmax(x, dim=-1, dtype=cd)
    else:
        sm = torch.softmax(x.to(cd, copy=True).div_(temperature), dim=-1)
    p = sm if off is None else sm * off.to(cd).exp()[:, None]
    return sm, p


def _teacher_logprobs(y, off, temperature, cd):
    if temperature == 1.0:
        lt = torch.log_softmax(y, dim=-1, dtype=cd)
    else:
        lt = torch.log_softmax(y.to(cd, copy=True).div_(temperature), dim=-1)
    if off is not None:
        lt.add_(off.to(cd)[:, None])
    return lt


class ProjectedKL(torch.autograd.Function):
    """Per-row P-KL `(N,)` and unreachable teacher mass `(N,)`, chunked with recompute.

    Inputs: student rows `(N, V_s)` (any float dtype; treated as logits), teacher rows `(N, V_t)`
    (constant: no gradient flows to the teacher), optional log offsets `(N,)` for each side, W's
    non-zero values `(nnz,)` (differentiable when W is learned) and its `SparseW` pattern.
    """

    @staticmethod
    def forward(ctx, s_rows, t_rows, s_off, t_off, values, sw, temperature, chunk_size):
        cd = compute_dtype(s_rows)
        n = s_rows.shape[0]
        w_t = sw.matrix_t(values, cd)
        unreachable = (~sw.reachable).to(cd)
        losses = torch.empty(n, dtype=cd, device=s_rows.device)
        lost = torch.empty(n, dtype=cd, device=s_rows.device)
        for i in range(0, n, chunk_size):
            j = min(n, i + chunk_size)
            _, p = _student_probs(s_rows[i:j], None if s_off is None else s_off[i:j], temperature, cd)
            logq = (w_t @ p.T).T.add_(EPS).log_()
            del p
            lt = _teacher_logprobs(t_rows[i:j], None if t_off is None else t_off[i:j], temperature, cd)
            pt = lt.exp()
            lost[i:j] = pt @ unreachable
            lt.masked_fill_(pt == 0, 0.0)  # 0·log 0 = 0 (teacher logits of -inf)
            losses[i:j] = lt.sub_(logq).mul_(pt).sum(-1)
            del lt, pt, logq
        ctx.save_for_backward(s_rows, t_rows, s_off, t_off, values)
        ctx.sw, ctx.temperature, ctx.chunk_size = sw, temperature, chunk_size
        ctx.mark_non_differentiable(lost)
        return losses, lost

    @staticmethod
    def backward(ctx, grad_losses, _grad_lost):
        s_rows, t_rows, s_off, t_off, values = ctx.saved_tensors
        sw, temperature, chunk_size = ctx.sw, ctx.temperature, ctx.chunk_size
        cd = compute_dtype(s_rows)
        need_x, _, need_off, _, need_w = ctx.needs_input_grad[:5]
        w, w_t = sw.matrix(values, cd), sw.matrix_t(values, cd)
        n = s_rows.shape[0]
        gx = torch.empty_like(s_rows) if need_x else None
        goff = torch.empty_like(s_off) if need_off else None
        gw = torch.zeros(values.shape[0], dtype=cd, device=values.device) if need_w else None
        pattern = torch.sparse_csr_tensor(sw.crow, sw.col, torch.zeros_like(gw), sw.shape,
                                          check_invariants=False) if need_w else None
        for i in range(0, n, chunk_size):
            j = min(n, i + chunk_size)
            so = None if s_off is None else s_off[i:j]
            sm, p = _student_probs(s_rows[i:j], so, temperature, cd)
            pt = _teacher_logprobs(t_rows[i:j], None if t_off is None else t_off[i:j], temperature, cd).exp_()
            q = (w_t @ p.T).T
            g = pt.div_(q.add_(EPS)).mul_(-grad_losses[i:j].to(cd)[:, None])  # ∂loss/∂q, (c, V_t)
            del q
            if need_w:
                gw += torch.sparse.sampled_addmm(pattern, p.T.contiguous(), g, beta=0.0).values()
            if need_x or need_off:
                pg = (w @ g.T).T.mul_(p)  # p ⊙ ∂loss/∂p, (c, V_s)
                del g
                pgp = pg.sum(-1)
                if need_off:
                    goff[i:j] = pgp.to(goff.dtype)
                if need_x:  # softmax backward: p ⊙ ∂p − softmax · Σ p ⊙ ∂p, then the 1/τ of x/τ
                    gx[i:j] = pg.addcmul_(sm, pgp[:, None], value=-1.0).div_(temperature)
        return gx, None, goff, None, (gw.to(values.dtype) if need_w else None), None, None, None


def projected_kl_rows(s_rows, t_rows, sw, *, values=None, s_off=None, t_off=None, temperature=1.0,
                      chunk_size=None):
    """Chunked P-KL per row: `(losses (N,), unreachable_mass (N,))` in the compute dtype."""
    if chunk_size is None:
        chunk_size = auto_chunk_size(*sw.shape)
    values = sw.values if values is None else values
    return ProjectedKL.apply(s_rows, t_rows, s_off, t_off, values, sw, float(temperature), int(chunk_size))


def projected_kl_rows_dense(s_rows, t_rows, sw, *, values=None, s_off=None, t_off=None, temperature=1.0):
    """The naive P-KL: all rows at once, every intermediate kept by autograd (reference and baseline).

    Same result as `projected_kl_rows`; W stays sparse (COO, so autograd reaches learned values).
    """
    cd = compute_dtype(s_rows)
    values = sw.values if values is None else values
    w_t = torch.sparse_coo_tensor(torch.stack([sw.col, sw.row_of]), values.to(cd), sw.shape[::-1])
    p = torch.softmax(s_rows.to(cd) / temperature, dim=-1)
    if s_off is not None:
        p = p * s_off.to(cd).exp()[:, None]
    q = torch.sparse.mm(w_t, p.T).T
    lt = _teacher_logprobs(t_rows, t_off, temperature, cd).detach()
    pt = lt.exp()
    losses = torch.where(pt > 0, pt * (lt - torch.log(q + EPS)), 0.0).sum(-1)
    lost = (pt * (~sw.reachable).to(cd)).sum(-1)
    return losses, lost
