"""Row-wise losses evaluated in chunks of rows, for losses whose backward autograd can derive.

The same memory discipline as `ProjectedKL`, for H-KL, GOLD, ULD and direct KL: only one chunk's graph
(a log-softmax over V_t, a full sort of the vocabulary for ULD) exists at a time, never all N rows'.
- fused (default): forward runs each chunk under autograd, takes its gradient for a unit upstream
  gradient at once into a buffer shaped like the student rows and frees the chunk; backward only scales
  each row by its upstream gradient (rows are independent, so this is exact). A second backward through
  a retained graph falls back to recomputing.
- recompute: forward keeps only the per-row losses; backward re-runs one chunk at a time.

A row kernel is `kernel(s_rows (c, V_s), t_rows (c, V_t), s_off (c,) | None, t_off (c,) | None) -> (c,)`.
"""

from __future__ import annotations

import torch


def _part(t, i, j):
    return None if t is None else t[i:j]


def scale_rows_(g: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """g[n] *= scale[n] in place, in blocks of rows (16 MiB in fp32): a bf16 `g` times an fp32 `scale`
    would otherwise make a full fp32 copy of g (twice the gradient's size) inside one mixed-dtype kernel."""
    if g.numel() == 0:
        return g
    if bool((scale == scale[0]).all()):  # a mean upstream: one in-place pass with a Python scalar
        return g.mul_(float(scale[0]))
    block = max(1, (1 << 22) // max(1, g[0].numel()))
    for i in range(0, g.shape[0], block):
        g[i:i + block] = g[i:i + block].to(scale.dtype).mul_(scale[i:i + block, None])
    return g


def _chunk_grads(kernel, s, t, s_off, t_off, scale, need_x, need_off):
    """(losses (c,), ∂s (c, V_s) | None, ∂s_off (c,) | None) of Σ scale·kernel over one chunk."""
    with torch.enable_grad():
        xs = s.detach().requires_grad_(need_x)
        so = None if s_off is None else s_off.detach().requires_grad_(need_off)
        out = kernel(xs, t.detach(), so, t_off)
        wrt = [a for a, need in ((xs, need_x), (so, need_off)) if need]
        grads = list(torch.autograd.grad(out, wrt, scale.to(out.dtype), allow_unused=True)) if wrt else []
    g_x = grads.pop(0) if need_x else None
    g_off = grads.pop(0) if need_off else None
    return out.detach(), g_x, g_off


class ChunkedRows(torch.autograd.Function):
    """Per-row losses `(N,)` of `kernel` over chunks of `chunk_size` rows; the teacher gets no gradient."""

    @staticmethod
    def forward(ctx, kernel, chunk_size, fused, s_rows, t_rows, s_off, t_off):
        n = s_rows.shape[0]
        need_x, need_off = s_rows.requires_grad, s_off is not None and s_off.requires_grad
        ctx.kernel, ctx.chunk_size, ctx.fused = kernel, chunk_size, fused
        outs = []
        if fused:
            gx = torch.empty_like(s_rows) if need_x else None
            goff = torch.empty_like(s_off) if need_off else None
            for i in range(0, n, chunk_size):
                j = min(n, i + chunk_size)
                ones = torch.ones(j - i, dtype=torch.float32, device=s_rows.device)
                out, g_x, g_off = _chunk_grads(kernel, s_rows[i:j], t_rows[i:j], _part(s_off, i, j),
                                               _part(t_off, i, j), ones, need_x, need_off)
                outs.append(out)
                if need_x:
                    gx[i:j] = 0.0 if g_x is None else g_x
                if need_off:
                    goff[i:j] = 0.0 if g_off is None else g_off
        else:
            gx = goff = None
            with torch.no_grad():
                for i in range(0, n, chunk_size):
                    j = min(n, i + chunk_size)
                    outs.append(kernel(s_rows[i:j], t_rows[i:j], _part(s_off, i, j), _part(t_off, i, j)))
        # the inputs are saved in both modes: a second backward through a retained graph recomputes
        ctx.save_for_backward(s_rows, t_rows, s_off, t_off)
        ctx.buffers = (gx, goff)  # not saved tensors: backward scales them in place
        return torch.cat(outs) if outs else s_rows.new_zeros(0, dtype=torch.float32)

    @staticmethod
    def backward(ctx, grad_out):
        if ctx.fused and not getattr(ctx, "consumed", False):
            gx, goff = ctx.buffers
            ctx.buffers = None
            ctx.consumed = True  # the buffers are scaled in place: a second backward takes the recompute path
            gx = None if gx is None else scale_rows_(gx, grad_out)
            goff = None if goff is None else goff.mul_(grad_out)
            return None, None, None, gx, None, goff, None
        s_rows, t_rows, s_off, t_off = ctx.saved_tensors
        need_x, _, need_off, _ = ctx.needs_input_grad[3:7]
        gx = torch.zeros_like(s_rows) if need_x else None
        goff = torch.zeros_like(s_off) if need_off else None
        n = s_rows.shape[0]
        for i in range(0, n, ctx.chunk_size):
            j = min(n, i + ctx.chunk_size)
            _, g_x, g_off = _chunk_grads(ctx.kernel, s_rows[i:j], t_rows[i:j], _part(s_off, i, j),
                                         _part(t_off, i, j), grad_out[i:j], need_x, need_off)
            if g_x is not None:
                gx[i:j] = g_x
            if g_off is not None:
                goff[i:j] = g_off
        return None, None, None, gx, None, goff, None


def chunked_rows(kernel, s_rows, t_rows, s_off=None, t_off=None, *, chunk_size: int,
                 recompute: bool = False) -> torch.Tensor:
    """`kernel` over all rows in chunks: `(N,)` per-row losses (see the module docstring for the modes)."""
    fused = (not recompute and torch.is_grad_enabled()
             and (s_rows.requires_grad or (s_off is not None and s_off.requires_grad)))
    return ChunkedRows.apply(kernel, int(chunk_size), fused, s_rows, t_rows, s_off, t_off)
