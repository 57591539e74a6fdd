"""Forward+backward time and peak extra memory of the KD losses: chunked (xtok) vs naive dense.

Both run in this process on the same inputs: N aligned rows of student logits (N, V_s) and teacher logits
(N, V_t), bf16 by default, W the real Llama-3.2 x Qwen2.5 projection sized to the models' logits
(128,256 x 151,936). "naive" is the same math on all rows at once with autograd keeping every
intermediate (W stays sparse: a dense V_s x V_t fp32 W would be 78 GB). "xtok" processes chunks of rows
and writes each chunk's gradient while the chunk is in memory ("P-KL-recompute": recomputes the chunk
in backward instead).

Peak extra memory = the highest memory during forward+backward minus the memory before it (inputs
included in neither; the gradient of the logits is in both):
  - CUDA: torch.cuda.max_memory_allocated() - memory_allocated() before the call;
  - CPU: peak RSS (VmHWM, reset through /proc/self/clear_refs) - RSS before the call, with glibc told to
    return freed blocks to the OS at once (mallopt), so the RSS follows the live tensors.

    python bench/bench_losses.py                # CPU: N = 256
    python bench/bench_losses.py --device cuda  # GPU: N = 4096
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import time

import torch

from xtok_core.losses import gold_loss, hkl_loss, pkl_loss, uld_loss

LOSSES = {
    "P-KL": pkl_loss,
    "P-KL-recompute": lambda s, t, W, **kw: pkl_loss(s, t, W, recompute=True, **kw),
    "H-KL": hkl_loss,
    "GOLD": gold_loss,
    "ULD": lambda s, t, W, **kw: uld_loss(s, t, **kw),
}


def _cpu_malloc_returns_memory():
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 16)  # M_MMAP_THRESHOLD: blocks >= 64 KiB are mmapped, unmapped on free
        libc.mallopt(-1, 0)  # M_TRIM_THRESHOLD: trim the heap top on every free
    except OSError:
        pass


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    return 0


class PeakMemory:
    """Peak bytes above the level at entry, for the tensors of one device."""

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self):
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS
            self.base = _status("VmRSS")
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self.peak = _status("VmHWM") - self.base


def default_w(v_s: int, v_t: int):
    from xtok_core import load_tokenizer
    from xtok_core.projection import build_projection

    return build_projection(load_tokenizer("llama-3.2"), load_tokenizer("qwen2.5"), student_vocab_size=v_s,
                            teacher_vocab_size=v_t)


def random_w(v_s: int, v_t: int, per_row: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    rows = torch.arange(v_s).repeat_interleave(per_row)
    cols = torch.randint(0, v_t, (v_s * per_row,), generator=g)
    return torch.sparse_coo_tensor(torch.stack([rows, cols]), torch.rand(v_s * per_row, generator=g),
                                   (v_s, v_t)).coalesce()


def run_once(fn, zs, zt, W, device, **kw):
    zs.grad = None
    with PeakMemory(device) as mem:
        t0, c0 = time.perf_counter(), time.process_time()
        loss = fn(zs, zt, W, **kw)
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
        del loss
    grad = zs.grad
    zs.grad = None
    return seconds, cpu_seconds, mem.peak, grad


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--n", type=int, default=None, help="aligned rows (default 4096 on CUDA, 256 on CPU)")
    ap.add_argument("--v-s", type=int, default=128_256)
    ap.add_argument("--v-t", type=int, default=151_936)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--chunk-size", type=int, default=None, help="rows per chunk (default: automatic)")
    ap.add_argument("--losses", default=",".join(LOSSES))
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per cell, the fastest is kept")
    ap.add_argument("--random-w", action="store_true", help="random 3-per-row W instead of the real pair's")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    n = args.n or (4096 if device.type == "cuda" else 256)
    if device.type == "cpu":
        _cpu_malloc_returns_memory()
    torch.manual_seed(0)
    W = random_w(args.v_s, args.v_t) if args.random_w else default_w(args.v_s, args.v_t)
    dtype = getattr(torch, args.dtype)
    zs = (torch.randn(n, args.v_s, device=device) * 3).to(dtype).requires_grad_()
    zt = (torch.randn(n, args.v_t, device=device) * 3).to(dtype)
    logits_mb = (zs.numel() + zt.numel()) * zs.element_size() / 2**20

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"# KD losses, N={n}, V_s={args.v_s:,}, V_t={args.v_t:,}, {args.dtype} logits ({logits_mb:,.0f} MiB), "
          f"{'random' if args.random_w else 'Llama-3.2 x Qwen2.5'} W, {name}")
    print("| loss | naive s | xtok s | time ratio | naive CPU s | xtok CPU s | CPU ratio | naive peak MiB | "
          "xtok peak MiB | memory ratio | max grad diff |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for label in args.losses.split(","):
        fn = LOSSES[label]
        fn(zs[:2], zt[:2], W, chunk_size=1).backward()  # warm-up: W conversion, common sets, kernels
        zs.grad = None
        runs = {"naive": [], "xtok": []}
        for _ in range(args.repeat):  # interleaved, so a busy machine slows both sides alike
            for impl, kw in (("naive", {"naive": True}), ("xtok", {"chunk_size": args.chunk_size})):
                runs[impl].append(run_once(fn, zs, zt, W, device, **kw))
        (tn, cn, mn), (tx, cx, mx) = ([min(r[k] for r in runs[impl]) if k < 2 else max(r[k] for r in runs[impl])
                                       for k in range(3)] for impl in ("naive", "xtok"))
        diff = float((runs["naive"][-1][3].float() - runs["xtok"][-1][3].float()).abs().max())
        print(f"| {label} | {tn:.2f} | {tx:.2f} | {tx / tn:.2f}x | {cn:.2f} | {cx:.2f} | {cx / cn:.2f}x | "
              f"{mn / 2**20:,.0f} | {mx / 2**20:,.0f} | {mx / max(mn, 1):.2f} | {diff:.1e} |")
        del runs
        gc.collect()


if __name__ == "__main__":
    main()
