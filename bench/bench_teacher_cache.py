"""Teacher cache: bytes per teacher token, distill step time from the cache vs online, loss deviation vs K.

All in this process, on the real SmolLM2-135M-Instruct teacher and texts of the generated corpus:
- bytes per teacher token of a cache (shards + headers) for K = 16, 64, 256 (fp16 log-probabilities);
- one KD training step (student forward + backward, teacher side, loss, AdamW) of a tiny student (192 x 6):
  (a) online, same tokenizer: the student has SmolLM2's tokenizer, the teacher runs every step, direct KL;
  (b) from the cache, cross tokenizer: a GPT-2-tokenizer student (a vocabulary of SmolLM2's size, so the two
      students cost the same), alignment + the cache's top-K + P-KL through W; median of the timed steps;
- the deviation of each loss from the cache against the same loss on the teacher's full logits, on the same
  batch, for each K: |cached − full| / full.

    python bench/bench_teacher_cache.py                               # 2-core CPU: about 3 minutes
    python bench/bench_teacher_cache.py --deviation-student gemma3-270m  # deviation only, a trained student
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from xtok_core import align_batch, load_tokenizer
from xtok_core.corpus import generate_corpus
from xtok_core.distill.data import pack_examples
from xtok_core.losses import DistillLoss, TeacherTerm
from xtok_core.models import load_model, tiny_config
from xtok_core.projection import build_projection
from xtok_core.teacher_cache import build_teacher_cache

TEACHER = "smollm2-135m-instruct"


def tiny_student(tok, seed=0):
    """A tiny Llama (192 x 6) with the given tokenizer, as `tiny:` builds for bundled ones."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_config(tok)).train()


def timed_steps(step, n: int) -> float:
    step()  # warm-up
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=32, help="texts in the caches")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=96)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per side (the median is kept)")
    ap.add_argument("--ks", default="16,64,256")
    ap.add_argument("--deviation-student", default=None,
                    help="a real model (e.g. gemma3-270m) as the student of the deviation table instead of the "
                         "untrained tiny one; skips the timing")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    texts = pack_examples(generate_corpus(4 * args.examples, seed=0), 300)[:args.examples]
    teacher = load_model(TEACHER)
    teacher.model.eval().requires_grad_(False)
    ks = [int(k) for k in args.ks.split(",")]
    out = Path(tempfile.mkdtemp(prefix="xtok-cache-bench-"))
    caches = {}
    print(f"# teacher {TEACHER} (V = {teacher.vocab_size:,}), {len(texts)} texts, {torch.get_num_threads()} threads")
    print("| K | bytes per teacher token | build s |\n| ---: | ---: | ---: |")
    for k in ks:
        t0 = time.perf_counter()
        caches[k] = build_teacher_cache(teacher, texts, out / f"k{k}", top_k=k, max_length=args.seq_len,
                                        batch_size=args.batch_size, show_progress=False)
        print(f"| {k} | {caches[k].bytes_per_token():,.0f} | {time.perf_counter() - t0:.1f} |")

    batch = texts[:args.batch_size]
    if args.deviation_student:
        real = load_model(args.deviation_student)
        W = build_projection(real.tok, teacher.tok, student_vocab_size=real.vocab_size,
                             teacher_vocab_size=teacher.vocab_size)
        deviation_table(real.model.eval(), real.tok, W, teacher, caches, ks, batch, args.seq_len)
        return
    # (a) online, same tokenizer
    smol_tok = teacher.tok
    s_same = tiny_student(smol_tok)
    opt_a = torch.optim.AdamW(s_same.parameters(), lr=1e-3)
    crit_same = DistillLoss(TeacherTerm(None, loss="pkl"))
    enc = smol_tok.encode_batch(batch, add_special_tokens=True)
    T = min(args.seq_len, max(len(e.ids) for e in enc))
    ids = torch.zeros(len(batch), T, dtype=torch.long)
    mask = torch.zeros(len(batch), T, dtype=torch.bool)
    for i, e in enumerate(enc):
        n = min(T, len(e.ids))
        ids[i, :n], mask[i, :n] = torch.as_tensor(e.ids[:n]), True

    def online_step():
        z = s_same(input_ids=ids, attention_mask=mask.long()).logits
        with torch.no_grad():
            zt = teacher.model(input_ids=ids, attention_mask=mask.long()).logits
        loss, _ = crit_same(z.float(), [zt.float()], [None], input_ids=ids, attention_mask=mask)
        opt_a.zero_grad(set_to_none=True)
        loss.backward()
        opt_a.step()

    # (b) from the cache, cross tokenizer
    s_tok = load_tokenizer("gpt2")
    s_cross = tiny_student(s_tok)
    W = build_projection(s_tok, smol_tok, student_vocab_size=s_cross.config.vocab_size,
                         teacher_vocab_size=teacher.vocab_size)
    crit_cross = DistillLoss(TeacherTerm(W, loss="pkl"))
    opt_b = torch.optim.AdamW(s_cross.parameters(), lr=1e-3)
    cache = caches[64 if 64 in caches else ks[0]]

    def cached_step():
        al = align_batch(batch, s_tok, smol_tok, add_special_tokens=True, max_length=args.seq_len)
        z = s_cross(input_ids=al.student_ids, attention_mask=al.student_mask.long()).logits
        td = cache.distribution(batch, al.teacher_ids, al.teacher_mask)
        loss, _ = crit_cross(z.float(), [td], [al])
        opt_b.zero_grad(set_to_none=True)
        loss.backward()
        opt_b.step()

    t_online = timed_steps(online_step, args.steps)
    t_cached = timed_steps(cached_step, args.steps)
    print(f"\n| step | s | ratio |\n| --- | ---: | ---: |\n| online, same tokenizer (teacher runs) | {t_online:.2f} | 1.00 |")
    print(f"| from the cache, cross tokenizer, K = {cache.top_k}, P-KL | {t_cached:.2f} | {t_cached / t_online:.2f} |")

    deviation_table(s_cross, s_tok, W, teacher, caches, ks, batch, args.seq_len)


def deviation_table(student, s_tok, W, teacher, caches, ks, batch, seq_len):
    """Each loss from each cache against the same loss on the teacher's full logits, on one batch: the value's
    relative deviation, and the gradient w.r.t. the student's logits (what training follows) as cosine and
    relative error ‖g_K − g‖ / ‖g‖."""
    al = align_batch(batch, s_tok, teacher.tok, add_special_tokens=True, max_length=seq_len)
    with torch.no_grad():
        z = student(input_ids=al.student_ids, attention_mask=al.student_mask.long()).logits.float()
        zt = teacher.model(input_ids=al.teacher_ids, attention_mask=al.teacher_mask.long()).logits.float()
    print(f"\n# loss deviation, student {type(student).__name__} with tokenizer {s_tok.name}")
    print("\n| loss | full logits | " + " | ".join(f"K = {k}: value · grad cos · grad rel-err" for k in ks) + " |")
    print("| --- | ---: | " + " | ".join("---:" for _ in ks) + " |")

    def value_and_grad(crit, t):
        zz = z.clone().requires_grad_(True)
        loss = crit(zz, [t], [al])[0]
        (g,) = torch.autograd.grad(loss, zz)
        return float(loss.detach()), g.flatten().double()

    for name in ("pkl", "hkl", "gold", "gold-trl", "uld"):
        crit = DistillLoss(TeacherTerm(W, loss=name), ce_weight=0.0, kd_weight=1.0)
        full, g = value_and_grad(crit, zt)
        cells = []
        for k in ks:
            v, gk = value_and_grad(crit, caches[k].distribution(batch, al.teacher_ids, al.teacher_mask))
            cos = float(g @ gk / (g.norm() * gk.norm()).clamp_min(1e-300))
            rel = float((gk - g).norm() / g.norm().clamp_min(1e-300))
            cells.append(f"{abs(v - full) / abs(full):.2%} · {cos:.5f} · {rel:.2%}")
        print(f"| {name} | {full:.4f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
