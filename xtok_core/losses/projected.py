"""P-KL through a sparse W in chunks of positions.

The naive P-KL keeps, for every aligned position, softmax(z_s) (V_s), q = softmax(z_s) @ W (V_t), the
teacher's log-probabilities (V_t) and log q (V_t) alive for backward: about 4·N·V_t floats, 10 GB at
N = 4096 and V_t = 151,936. `ProjectedKL` holds none of them: it walks over chunks of rows, and either
writes each chunk's gradient while the chunk is in memory (fused, the default) or recomputes the chunk in
backward (learned W, `recompute=True`). Peak extra memory is one chunk's working set plus the logits'
gradient. W never exists densely: q is a sparse W^T times dense product (torch sparse CSR, CPU and
CUDA), and the gradient of learned W values is a sampled dense-dense product on W's own pattern.

Math for one row (p = student probabilities with an optional log offset b_s, P-KL's ε = 1e-10):
    q = e^{b_s} softmax(x) @ W,   p_t = e^{b_t} softmax(y),   loss = Σ_t p_t (log p_t − log(q_t + ε))
    g = ∂loss/∂q = −p_t / (q + ε),   ∂loss/∂p = g @ W^T,   ∂loss/∂W[s, t] = p_s g_t
The offsets carry the chain-rule merge of multi-token groups (`position="chain"`); they are zero otherwise.
"""

from __future__ import annotations

import torch

from .chunked import scale_rows_

EPS = 1e-10  # NeMo-RL's smoothing inside log(q + ε)
WORKSET_BYTES = 128 * 2**20  # working set per chunk when chunk_size is not given


def auto_chunk_size(v_s: int, v_t: int, workset_bytes: int = WORKSET_BYTES) -> int:
    """Rows per chunk so that one chunk's working set fits the budget: 38 rows for Llama-3 x Qwen2.5.

    Measured, a row of a P-KL chunk holds about 2·V_s + 4·V_t fp32 values at its peak (softmax, q + ε,
    teacher log-probs and probs, the transposed copies the sparse products want). Smaller chunks cost
    time on CPU: every sparse product pays a fixed ~30 ms (MKL's setup) whatever its width."""
    return max(1, int(workset_bytes // (4 * (2 * v_s + 4 * v_t))))


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """fp32 for fp32/bf16/fp16 logits (bf16 in, fp32 math), fp64 when the input is fp64 (gradcheck)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _scaled(x, temperature, cd):
    """x/τ as a new tensor in the compute dtype (the caller works on it in place)."""
    x = x.to(cd, copy=True)
    return x if temperature == 1.0 else x.div_(temperature)


def _project(w_t, p):
    """q = p @ W as W^T @ p^T with a contiguous right-hand side (a strided one is ~5x slower): (c, V_t)."""
    return (w_t @ p.T.contiguous()).T.contiguous()


def _chunk_state(x, y, s_off, t_off, w_t, temperature, cd):
    """One chunk's softmax (c, V_s), p = softmax·e^{s_off}, q + ε (c, V_t), teacher log-probs and probs."""
    xs = _scaled(x, temperature, cd)
    sm = xs.sub_(torch.logsumexp(xs, -1, keepdim=True)).exp_()
    p = sm if s_off is None else sm * s_off.to(cd).exp()[:, None]
    q_eps = _project(w_t, p).add_(EPS)
    lt = _scaled(y, temperature, cd)
    lt.sub_(torch.logsumexp(lt, -1, keepdim=True))
    if t_off is not None:
        lt.add_(t_off.to(cd)[:, None])
    return sm, p, q_eps, lt, lt.exp()


def _chunk_grads(sm, p, q_eps, pt, scale, w, pattern, temperature, need_w):
    """Gradients of Σ_rows scale·loss for one chunk: (∂x (c, V_s), ∂s_off (c,), ∂W values (nnz,) | None).

    Overwrites `pt` (it becomes ∂loss/∂q = −scale·p_t/(q + ε))."""
    g = pt.div_(q_eps).mul_(-scale[:, None])
    gw = torch.sparse.sampled_addmm(pattern, p.T.contiguous(), g, beta=0.0).values() if need_w else None
    pg = (w @ g.T.contiguous()).T.mul_(p)  # p ⊙ ∂loss/∂p, (c, V_s)
    del g
    pgp = pg.sum(-1)
    # softmax backward: p ⊙ ∂p − softmax · Σ p ⊙ ∂p, then the 1/τ of x/τ
    return pg.addcmul_(sm, pgp[:, None], value=-1.0).div_(temperature), pgp, gw


class ProjectedKL(torch.autograd.Function):
    """Per-row P-KL `(N,)` and unreachable teacher mass `(N,)`, in chunks of rows.

    Inputs: student rows `(N, V_s)` (any float dtype; treated as logits), teacher rows `(N, V_t)`
    (constant: no gradient flows to the teacher), optional log offsets `(N,)` for each side, W's
    non-zero values `(nnz,)` (differentiable when W is learned) and its `SparseW` pattern.

    Two backward strategies, the same numbers:
    - fused (default when W is fixed): while a chunk's intermediates exist in forward, its gradient for a
      unit upstream gradient is written into a buffer shaped like the student rows; backward only scales
      each row by its upstream gradient. No recompute; the buffer is the logits' gradient that backward
      would allocate anyway, only earlier.
    - recompute (learned W, or `recompute=True`): forward keeps nothing but the inputs; backward rebuilds
      each chunk. The W gradient mixes rows (Σ_n p_ns g_nt), so a learned W always takes this path.
    """

    @staticmethod
    def forward(ctx, s_rows, t_rows, s_off, t_off, values, sw, temperature, chunk_size, fused):
        cd = compute_dtype(s_rows)
        n, dev = s_rows.shape[0], s_rows.device
        w_t = sw.matrix_t(values, cd)
        w = sw.matrix(values, cd) if fused else None
        unreachable = (~sw.reachable).to(cd)
        losses, lost = torch.empty(n, dtype=cd, device=dev), torch.empty(n, dtype=cd, device=dev)
        gx = torch.empty_like(s_rows) if fused else None
        goff = torch.empty(n, dtype=cd, device=dev) if fused and s_off is not None else None
        for i in range(0, n, chunk_size):
            j = min(n, i + chunk_size)
            so, to = _part(s_off, i, j), _part(t_off, i, j)
            sm, p, q_eps, lt, pt = _chunk_state(s_rows[i:j], t_rows[i:j], so, to, w_t, temperature, cd)
            lost[i:j] = pt @ unreachable
            lt.masked_fill_(pt == 0, 0.0)  # 0·log 0 = 0 (teacher logits of -inf)
            losses[i:j] = lt.sub_(q_eps.log()).mul_(pt).sum(-1)
            del lt
            if fused:
                ones = torch.ones(j - i, dtype=cd, device=dev)
                gx[i:j], pgp, _ = _chunk_grads(sm, p, q_eps, pt, ones, w, None, temperature, False)
                if goff is not None:
                    goff[i:j] = pgp
            del sm, p, q_eps, pt
        ctx.sw, ctx.temperature, ctx.chunk_size, ctx.fused = sw, temperature, chunk_size, fused
        ctx.off_dtype = None if s_off is None else s_off.dtype
        # the inputs are saved in both modes: a second backward through a retained graph recomputes
        ctx.save_for_backward(s_rows, t_rows, s_off, t_off, values)
        ctx.buffers = (gx, goff)  # not saved tensors: backward scales them in place
        ctx.mark_non_differentiable(lost)
        return losses, lost

    @staticmethod
    def backward(ctx, grad_losses, _grad_lost):
        if ctx.fused and not getattr(ctx, "consumed", False):
            gx, goff = ctx.buffers
            ctx.buffers = None
            ctx.consumed = True  # the buffer is scaled in place: a second backward takes the recompute path
            gx = scale_rows_(gx, grad_losses)
            goff = None if goff is None else (goff * grad_losses).to(ctx.off_dtype)
            return gx, None, goff, None, None, None, None, None, None
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
            sm, p, q_eps, _, pt = _chunk_state(s_rows[i:j], t_rows[i:j], _part(s_off, i, j), _part(t_off, i, j),
                                               w_t, temperature, cd)
            g_x, pgp, g_w = _chunk_grads(sm, p, q_eps, pt, grad_losses[i:j].to(cd), w, pattern, temperature, need_w)
            if need_x:
                gx[i:j] = g_x
            if need_off:
                goff[i:j] = pgp
            if need_w:
                gw += g_w
        return gx, None, goff, None, (gw.to(values.dtype) if need_w else None), None, None, None, None


def _part(t, i, j):
    return None if t is None else t[i:j]


def projected_kl_rows(s_rows, t_rows, sw, *, values=None, s_off=None, t_off=None, temperature=1.0,
                      chunk_size=None, recompute=False):
    """Chunked P-KL per row: `(losses (N,), unreachable_mass (N,))` in the compute dtype."""
    if chunk_size is None:
        chunk_size = auto_chunk_size(*sw.shape)
    learned = values is not None and values.requires_grad
    values = sw.values if values is None else values
    fused = (not recompute and not learned and torch.is_grad_enabled()
             and (s_rows.requires_grad or (s_off is not None and s_off.requires_grad)))
    return ProjectedKL.apply(s_rows, t_rows, s_off, t_off, values, sw, float(temperature), int(chunk_size), fused)


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
    lt = torch.log_softmax(t_rows.detach().to(cd) / temperature, dim=-1)
    if t_off is not None:
        lt = lt + t_off.detach().to(cd)[:, None]
    pt = lt.exp()
    losses = torch.where(pt > 0, pt * (lt - torch.log(q + EPS)), 0.0).sum(-1)
    lost = (pt * (~sw.reachable).to(cd)).sum(-1)
    return losses, lost
