"""Step time of a cross-tokenizer KD step vs a same-tokenizer KD step: the price of alignment + W.

Both runs go through the real training loop (`xtok_core.distill.run_distillation`) in this process,
with the same student (tiny Llama-3.2 vocabulary, same seed), the same batches (same corpus and seed),
the same loss settings and a teacher of the same body size:
  - cross: the teacher has the Qwen2.5 tokenizer; every step re-tokenizes the text for it, aligns the
    two tokenizations (align_batch) and projects the student's distribution through W (P-KL);
  - same:  the teacher has the student's tokenizer; direct KL at every position, no alignment, no W.
Step time = wall time of one whole step (data, tokenization, forwards, loss, backward, AdamW), median
over the measured steps after warm-up. The whole-step ratio also contains the cost of the teacher
itself: Qwen2.5 writes numbers digit by digit (more teacher tokens per text) and has a wider output
layer (151,665 vs 128,256 logits). xtok's own overhead is therefore also reported on its own: the
alignment plus the extra forward+backward time of the projected loss over direct KL on the same
batch, added to the same-tokenizer step; goal <= 1.15x.

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
from xtok_core.distill import loop  # noqa: E402
from xtok_core.distill.objective import build_objective, run_projection  # noqa: E402
from xtok_core.integrations.collator import shares_tokenizer  # noqa: E402
from xtok_core.distill.data import TextBatches  # noqa: E402
from xtok_core.distill.models import build_tiny  # noqa: E402
from xtok_core.integrations.collator import CrossTokenizerCollator  # noqa: E402
from xtok_core.tok import load_tokenizer  # noqa: E402


def step_times(cfg: DistillConfig, warmup: int) -> list[float]:
    with tempfile.TemporaryDirectory() as d:
        result = run_distillation(cfg, Path(d) / "run", progress=False, log=lambda *a: None)
    return [m["step_time"] for m in result.metrics[warmup:]]


def loss_case(cfg: DistillConfig, texts: list[str]):
    """A closure running forward + backward of the loss the loop builds, on one batch's fixed logits."""
    student = build_tiny(cfg.student, dim=cfg.tiny_dim, layers=cfg.tiny_layers)
    teacher = build_tiny(cfg.teachers[0], dim=cfg.tiny_dim, layers=cfg.tiny_layers, seed=1)
    same = shares_tokenizer(student, teacher)
    prep = loop.Prepared(student, [teacher], cfg.loss, [None if same else run_projection(student, teacher, None)])
    objective = build_objective(cfg, prep)
    batch = CrossTokenizerCollator(student, [teacher], max_length=cfg.seq_len).encode(texts)  # the loop's batching
    (view,) = CrossTokenizerCollator.alignments(batch)
    ids, mask = batch["input_ids"], batch["attention_mask"].bool()
    with torch.no_grad():
        zs = student.model(input_ids=ids, attention_mask=mask.long()).logits
        zt = teacher.model(input_ids=view.teacher_ids if view else ids,
                           attention_mask=(view.teacher_mask if view else mask).long()).logits

    def run():
        z = zs.clone().requires_grad_()
        loss, _ = objective(z, [zt], [view], input_ids=ids, attention_mask=mask, labels=ids.masked_fill(~mask, -100))
        loss.backward()
    return run


def interleaved_ms(cases: dict, repeats: int) -> dict:
    """Median wall and CPU milliseconds per case, the cases alternating so that load drifts hit all."""
    wall, cpu = {k: [] for k in cases}, {k: [] for k in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            w, c = time.perf_counter(), time.process_time()
            fn()
            wall[name].append((time.perf_counter() - w) * 1000)
            cpu[name].append((time.process_time() - c) * 1000)
    return {k: (statistics.median(wall[k]), statistics.median(cpu[k])) for k in cases}


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
    view = align_batch(texts, s, t, max_length=args.seq_len)
    t_per_s = float(view.teacher_mask.sum() / view.student_mask.sum())
    t0 = time.perf_counter()
    for _ in range(20):
        align_batch(texts, s, t, max_length=args.seq_len)
    align_ms = (time.perf_counter() - t0) / 20 * 1000
    cases = {name: loss_case(cfg, texts) for name, cfg in runs.items()}
    for fn in cases.values():
        fn()
    loss_ms = interleaved_ms(cases, repeats=5)

    device = "cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu"
    print(f"machine: {machine()}; device {device}" + (f" ({torch.cuda.get_device_name()})" if device == "cuda" else ""))
    print(f"student tiny:{args.student} {args.dim}x{args.layers}, teacher same body, loss {args.loss}, "
          f"batch {args.batch_size} x {args.seq_len} tokens, median of {args.steps} steps after {args.warmup} warm-up\n")
    # what xtok adds to a step: the alignment and the loss's extra cost (projection through W);
    # the rest of the difference is the teacher's own cost (longer sequences, wider output layer)
    same_ms = med["same"] * 1000
    (ls_wall, ls_cpu), (lc_wall, lc_cpu) = loss_ms["same"], loss_ms["cross"]
    added = align_ms + lc_wall - ls_wall
    print(table(["KD step", "ms / step (wall)", "ms (CPU time)", "vs same-tokenizer"], [
        [f"same-tokenizer: teacher tiny:{args.student}, direct KL (baseline)", f"{same_ms:.1f}", "", "1.00x"],
        [f"cross-tokenizer: teacher tiny:{args.teacher}, {args.loss} through W, whole step", f"{med['cross'] * 1000:.1f}", "",
         f"{med['cross'] * 1000 / same_ms:.2f}x"],
        ["  alignment (align_batch)", f"{align_ms:.1f}", "", ""],
        ["  KD loss fwd+bwd, same-tokenizer (direct KL)", f"{ls_wall:.1f}", f"{ls_cpu:.1f}", "1.00x"],
        [f"  KD loss fwd+bwd, cross-tokenizer ({args.loss} through W)", f"{lc_wall:.1f}", f"{lc_cpu:.1f}",
         f"{lc_cpu / ls_cpu:.2f}x (CPU time)"],
        ["baseline + alignment + extra loss time (xtok's overhead)", f"{same_ms + added:.1f}", "", f"{(same_ms + added) / same_ms:.2f}x"],
    ]))
    print(f"\nteacher tokens per student token: {t_per_s:.2f} (the {args.teacher} teacher reads longer sequences: "
          f"part of the whole-step difference that no aligner removes)")
    ratio = (same_ms + added) / same_ms
    print(f"xtok overhead ratio {ratio:.2f}x (goal <= 1.15x): {'met' if ratio <= 1.15 else 'not met'}")


if __name__ == "__main__":
    main()
