"""Row-wise losses evaluated in chunks of rows, recomputed in backward.

The same memory discipline as `ProjectedKL`, for losses whose backward autograd can derive (H-KL, GOLD,
ULD, direct KL): forward runs the row kernel chunk by chunk without a graph and keeps only the per-row
losses; backward re-runs one chunk at a time under autograd and writes its gradient into the gradient
of the student rows. A full sort of the vocabulary (ULD) or a log-softmax over V_t is therefore held for
one chunk at a time, never for all N rows.

A row kernel is `kernel(s_rows (c, V_s), t_rows (c, V_t), s_off (c,) | None, t_off (c,) | None) -> (c,)`.
"""

from __future__ import annotations

import torch


class ChunkedRows(torch.autograd.Function):
    """Per-row losses `(N,)` of `kernel` over chunks of `chunk_size` rows; the teacher gets no gradient."""

    @staticmethod
    def forward(ctx, kernel, chunk_size, s_rows, t_rows, s_off, t_off):
        n = s_rows.shape[0]
        outs = []
        with torch.no_grad():
            for i in range(0, n, chunk_size):
                j = min(n, i + chunk_size)
                outs.append(kernel(s_rows[i:j], t_rows[i:j], _part(s_off, i, j), _part(t_off, i, j)))
        ctx.kernel, ctx.chunk_size = kernel, chunk_size
        ctx.save_for_backward(s_rows, t_rows, s_off, t_off)
        if not outs:
            return s_rows.new_zeros(0, dtype=torch.float32)
        return torch.cat(outs)

    @staticmethod
    def backward(ctx, grad_out):
        s_rows, t_rows, s_off, t_off = ctx.saved_tensors
        need_x, _, need_off, _ = ctx.needs_input_grad[2:6]
        gx = torch.zeros_like(s_rows) if need_x else None
        goff = torch.zeros_like(s_off) if need_off else None
        n = s_rows.shape[0]
        for i in range(0, n, ctx.chunk_size):
            j = min(n, i + ctx.chunk_size)
            with torch.enable_grad():
                xs = s_rows[i:j].detach().requires_grad_(need_x)
                so = _part(s_off, i, j)
                so = None if so is None else so.detach().requires_grad_(need_off)
                out = ctx.kernel(xs, t_rows[i:j].detach(), so, _part(t_off, i, j))
                wrt = [a for a, need in ((xs, need_x), (so, need_off)) if need]
                grads = torch.autograd.grad(out, wrt, grad_out[i:j].to(out.dtype), allow_unused=True)
            grads = list(grads)
            if need_x:
                g = grads.pop(0)
                if g is not None:
                    gx[i:j] = g
            if need_off:
                g = grads.pop(0)
                if g is not None:
                    goff[i:j] = g
        return None, None, gx, None, goff, None


def _part(t, i, j):
    return None if t is None else t[i:j]


def chunked_rows(kernel, s_rows, t_rows, s_off=None, t_off=None, *, chunk_size: int) -> torch.Tensor:
    """`kernel` over all rows, chunked with recompute: `(N,)` per-row losses."""
    return ChunkedRows.apply(kernel, int(chunk_size), s_rows, t_rows, s_off, t_off)
