"""The one chunked-rows engine of the KD losses: rows go through in chunks, one chunk's graph at a time.

Every loss is a row kernel plugged into `ChunkedRows`, the single autograd driver: only one chunk's working
set (a log-softmax over V_t, q = p @ W, a sort of the vocabulary for ULD) exists at a time, never all N rows'.
- fused (default): forward computes each chunk's gradient for a unit upstream gradient at once into a buffer
  shaped like the student rows and frees the chunk; backward only scales each row by its upstream gradient
  (rows are independent, so this is exact). A second backward through a retained graph recomputes.
- recompute (`recompute=True`, or a kernel with a learned parameter, whose gradient mixes rows): forward keeps
  only the per-row losses; backward re-runs one chunk at a time with the upstream gradient.

A kernel has `value_and_grad(s (c, V_s), s_off (c,) | None, teacher: TeacherRows, params | None, scale (c,) |
None, need=(need_s, need_off, need_params))` -> `(loss (c,), aux (c,) | None, ∂s, ∂s_off, ∂params)` (the
gradients of Σ scale·loss, None when not needed; scale None: forward only). `AutogradKernel(fn)` derives them
for a row function `fn(s, s_off, teacher) -> (c,)` by autograd; P-KL (`projected.PKLKernel`) writes them by hand.
The teacher is a `TeacherDistribution` (full logits or top-K + tail): constant, it gets no gradient.
"""

from __future__ import annotations

import torch

from .teacher_dist import TeacherDistribution

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


def part(t, i, j):
    return None if t is None else t[i:j]


def scale_rows_(g: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """g[n] *= scale[n] in place. A low-precision `g` goes in blocks of rows (16 MiB in fp32): a bf16 `g`
    times an fp32 `scale` would otherwise make a full fp32 copy of g inside one mixed-dtype kernel."""
    if g.numel() == 0:
        return g
    if g.dtype == scale.dtype:
        return g.mul_(scale.view(-1, *([1] * (g.dim() - 1))))
    if g.device.type == "cpu" and bool((scale == scale[0]).all()):  # a mean upstream: one pass, no stall on CPU
        return g.mul_(float(scale[0]))
    block = max(1, (1 << 22) // max(1, g[0].numel()))
    for i in range(0, g.shape[0], block):
        g[i:i + block] = g[i:i + block].to(scale.dtype).mul_(scale[i:i + block, None])
    return g


class AutogradKernel:
    """A row loss `fn(s (c, V_s), s_off (c,) | None, teacher: TeacherRows) -> (c,)` whose gradient autograd derives."""

    def __init__(self, fn, temperature: float):
        self.fn, self.temperature = fn, float(temperature)

    def reference(self, s, s_off, teacher, params=None):
        return self.fn(s, s_off, teacher), None

    def value_and_grad(self, s, s_off, teacher, params, scale, need):
        need_s, need_off, _ = need
        if scale is None:
            with torch.no_grad():
                return self.fn(s, s_off, teacher), None, None, None, None
        with torch.enable_grad():
            xs = s.detach().requires_grad_(need_s)
            so = None if s_off is None else s_off.detach().requires_grad_(need_off)
            out = self.fn(xs, so, teacher)
            wrt = [a for a, n in ((xs, need_s), (so, need_off)) if n]
            grads = list(torch.autograd.grad(out, wrt, scale.to(out.dtype), allow_unused=True)) if wrt else []
        g_s = grads.pop(0) if need_s else None
        g_off = grads.pop(0) if need_off else None
        return out.detach(), None, g_s, g_off, None


class ChunkedRows(torch.autograd.Function):
    """Per-row losses `(N,)` and a per-row auxiliary statistic `(N,)` (zeros if the kernel has none)."""

    @staticmethod
    def forward(ctx, kernel, teacher, chunk_size, fused, s_rows, s_off, params):
        n, dev = s_rows.shape[0], s_rows.device
        need = (s_rows.requires_grad, s_off is not None and s_off.requires_grad, False)
        losses, aux = [], []
        gx = torch.empty_like(s_rows) if fused and need[0] else None
        goff = torch.empty_like(s_off) if fused and need[1] else None
        for i in range(0, n, chunk_size):
            j = min(n, i + chunk_size)
            tr = teacher.rows(i, j, kernel.temperature, compute_dtype(s_rows))
            scale = torch.ones(j - i, dtype=compute_dtype(s_rows), device=dev) if fused else None
            out, a, g_s, g_off, _ = kernel.value_and_grad(s_rows[i:j], part(s_off, i, j), tr, params, scale, need)
            del tr
            losses.append(out)
            aux.append(a if a is not None else torch.zeros_like(out))
            if gx is not None:
                gx[i:j] = 0.0 if g_s is None else g_s
            if goff is not None:
                goff[i:j] = 0.0 if g_off is None else g_off
            del g_s, g_off  # the chunk's gradient is in the buffer: free it before the next chunk
        ctx.kernel, ctx.teacher, ctx.chunk_size, ctx.fused = kernel, teacher, chunk_size, fused
        # the inputs are saved in both modes: a second backward through a retained graph recomputes
        ctx.save_for_backward(s_rows, s_off, params)
        ctx.buffers = (gx, goff)  # not saved tensors: backward scales them in place
        empty = s_rows.new_zeros(0, dtype=compute_dtype(s_rows))
        out = torch.cat(losses) if losses else empty
        aux_out = torch.cat(aux) if aux else empty
        ctx.mark_non_differentiable(aux_out)
        return out, aux_out

    @staticmethod
    def backward(ctx, grad_out, _grad_aux):
        if ctx.fused and not getattr(ctx, "consumed", False):
            gx, goff = ctx.buffers
            ctx.buffers = None
            ctx.consumed = True  # the buffers are scaled in place: a second backward takes the recompute path
            gx = None if gx is None else scale_rows_(gx, grad_out)
            goff = None if goff is None else goff.mul_(grad_out.to(goff.dtype))
            return None, None, None, None, gx, goff, None
        s_rows, s_off, params = ctx.saved_tensors
        need = tuple(ctx.needs_input_grad[4:7])
        gx = torch.zeros_like(s_rows) if need[0] else None
        goff = torch.zeros_like(s_off) if need[1] else None
        gp = None
        n, cd = s_rows.shape[0], compute_dtype(s_rows)
        for i in range(0, n, ctx.chunk_size):
            j = min(n, i + ctx.chunk_size)
            tr = ctx.teacher.rows(i, j, ctx.kernel.temperature, cd)
            _, _, g_s, g_off, g_p = ctx.kernel.value_and_grad(s_rows[i:j], part(s_off, i, j), tr, params,
                                                              grad_out[i:j].to(cd), need)
            if g_s is not None:
                gx[i:j] = g_s
            if g_off is not None:
                goff[i:j] = g_off
            del tr, g_s, g_off
            if g_p is not None:
                gp = g_p if gp is None else gp + g_p
        if need[2] and gp is not None:
            gp = gp.to(params.dtype)
        return None, None, None, None, gx, goff, gp


def chunked_rows(kernel, s_rows, teacher, s_off=None, params=None, *, chunk_size: int | None = None,
                 recompute: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """`kernel` over all rows in chunks: `(losses (N,), aux (N,))` (see the module docstring for the modes)."""
    teacher = TeacherDistribution.of(teacher)
    if chunk_size is None:
        chunk_size = auto_chunk_size(s_rows.shape[-1], teacher.vocab_size)
    learned = params is not None and params.requires_grad
    fused = (not recompute and not learned and torch.is_grad_enabled()
             and (s_rows.requires_grad or (s_off is not None and s_off.requires_grad)))
    return ChunkedRows.apply(kernel, teacher, max(1, int(chunk_size)), fused, s_rows, s_off, params)


def dense_rows(kernel, s_rows, teacher, s_off=None, params=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The naive path: the kernel's row function on all rows at once with autograd keeping every intermediate
    (the reference the chunked path is tested and benchmarked against)."""
    teacher = TeacherDistribution.of(teacher)
    tr = teacher.rows(0, len(teacher), kernel.temperature, compute_dtype(s_rows))
    return kernel.reference(s_rows, s_off, tr, params)
