"""Step time of a cross-tokenizer KD step vs a same-tokenizer KD step: the price of alignment + W.

Both runs go through the real training loop (`xtok_core.distill.run_distillation`) in this process,
with the same student (tiny Llama-3.2 vocabulary, same seed), the same batches (same corpus and seed),
the same loss settings and a teacher of the same body size:
  - cross: the teacher has the Qwen2.5 tokenizer; every step re-tokenizes the text for it, aligns the
    two tokenizations (align_batch) and projects the student's distribution through W (P-KL);
  - same:  the teacher has the student's tokenizer; direct KL at every position, no alignment, no W.
Step time = wall time of one whole step (data, tokenization, forwards, loss, backward, AdamW), median
over the measured steps after warm-up. The ratio cross/same is the overhead; goal <= 1.15x.
The cross teacher's output layer is wider (151,665 vs 128,256 logits), which is part of the cost of
having that teacher, not of xtok.

    python bench/bench_distill.py                      # CPU defaults: batch 4 x 64 tokens
    python bench/bench_distill.py --device cuda --batch-size 32 --seq-len 256
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import machine, table  # noqa: E402

from xtok_core.align import align_batch  # noqa: E402
from xtok_core.distill import DistillConfig, run_distillation  # noqa: E402
from xtok_core.distill.data import TextBatches  # noqa: E402
from xtok_core.tok import load_tokenizer  # noqa: E402


def step_times(cfg: DistillConfig, warmup: int) -> list[float]:
    with tempfile.TemporaryDirectory() as d:
        result = run_distillation(cfg, Path(d) / "run", progress=False, log=lambda *a: None)
    return [m["step_time"] for m in result.metrics[warmup:]]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--student", default="llama-3.2")
    ap.add_argument("--teacher", default="qwen2.5")
    ap.add_argument("--loss", default="pkl", choices=["pkl", "hkl", "gold", "uld"])
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--dim", type=int, default=192)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--steps", type=int, default=6, help="measured steps")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = ap.parse_args()

    base = DistillConfig(student=f"tiny:{args.student}", loss=args.loss, steps=args.warmup + args.steps,
                         batch_size=args.batch_size, seq_len=args.seq_len, tiny_dim=args.dim, tiny_layers=args.layers,
                         train_demo_teacher=False, eval_every=0, checkpoint_every=10**9, device=args.device)
    runs = {
        "cross": base.replace(teachers=[f"tiny:{args.teacher}"]),
        "same": base.replace(teachers=[f"tiny:{args.student}"]),
    }
    med = {name: statistics.median(step_times(cfg, args.warmup)) for name, cfg in runs.items()}

    # the alignment alone on one batch of the same data (included in the cross step above)
    texts = TextBatches(base.corpus_lines, base.text_chars, base.batch_size, base.seed)(0)
    s, t = load_tokenizer(args.student), load_tokenizer(args.teacher)
    align_batch(texts, s, t, max_length=args.seq_len)
    t0 = time.perf_counter()
    for _ in range(20):
        align_batch(texts, s, t, max_length=args.seq_len)
    align_ms = (time.perf_counter() - t0) / 20 * 1000

    device = "cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu"
    print(f"machine: {machine()}; device {device}" + (f" ({torch.cuda.get_device_name()})" if device == "cuda" else ""))
    print(f"student tiny:{args.student} {args.dim}x{args.layers}, teacher same body, loss {args.loss}, "
          f"batch {args.batch_size} x {args.seq_len} tokens, median of {args.steps} steps after {args.warmup} warm-up\n")
    print(table(["KD step", "teacher", "ms / step", "vs same-tokenizer"], [
        ["same-tokenizer (direct KL, baseline)", f"tiny:{args.student}", f"{med['same'] * 1000:.1f}", "1.00x"],
        [f"cross-tokenizer ({args.loss}, align + W)", f"tiny:{args.teacher}", f"{med['cross'] * 1000:.1f}",
         f"{med['cross'] / med['same']:.2f}x"],
        ["  of which align_batch", "", f"{align_ms:.1f}", f"{align_ms / 1000 / med['same']:.2f}x"],
    ]))
    ratio = med["cross"] / med["same"]
    print(f"\noverhead ratio {ratio:.2f}x (goal <= 1.15x): {'met' if ratio <= 1.15 else 'not met'}")


if __name__ == "__main__":
    main()
