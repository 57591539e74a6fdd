"""Real models: first load (dequantise the GGUF) vs cached load, the teacher's share of a distill step,
and the time to the first metric line of the default demo.

    python bench/bench_models.py                 # about 3 minutes on 2 CPU cores
    python bench/bench_models.py --skip-first    # cached loads only (no fresh dequantisation)

First loads run in a fresh temporary cache ($XTOK_CACHE) so they measure the one-time conversion; cached
loads read the directory that conversion wrote. The distill step is the default demo's (tiny Llama-3.2
student, SmolLM2-135M-Instruct teacher, P-KL, batch 8 x 96 tokens); the time to first metric line is a
`xtok distill --out DIR` subprocess with the shared cache warm, from start to the first line in
metrics.jsonl.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._measure import machine  # noqa: E402


def load_times(name: str, skip_first: bool) -> tuple[float | None, float]:
    from xtok_core import models as M

    first = None
    if not skip_first:
        with tempfile.TemporaryDirectory() as d:
            old = os.environ.get(M.CACHE_ENV)
            os.environ[M.CACHE_ENV] = d
            try:
                t = time.perf_counter()
                M.load_model(name)
                first = time.perf_counter() - t
                t = time.perf_counter()
                M.load_model(name)
                cached = time.perf_counter() - t
            finally:
                if old is None:
                    os.environ.pop(M.CACHE_ENV)
                else:
                    os.environ[M.CACHE_ENV] = old
            return first, cached
    M.load_model(name)  # make sure the shared cache holds it
    t = time.perf_counter()
    M.load_model(name)
    return first, time.perf_counter() - t


def step_share(repeats: int) -> dict:
    """Seconds per part of the default demo's step (mean of `repeats` after one warm-up)."""
    from xtok_core.align import align_batch
    from xtok_core.distill import DistillConfig
    from xtok_core.distill import loop as L
    from xtok_core.distill.objective import build_objective
    from xtok_core.distill.data import TextBatches

    cfg = DistillConfig(eval_every=0)
    prep = L.prepare(cfg, log=lambda *a: None)
    obj = build_objective(cfg, prep)
    batches = TextBatches(cfg.corpus_lines, cfg.text_chars, cfg.batch_size, cfg.seed)
    opt = torch.optim.AdamW(prep.student.model.parameters(), lr=cfg.lr)
    parts = {"align": 0.0, "teacher forward": 0.0, "student forward + loss + backward + step": 0.0}
    for i in range(repeats + 1):
        texts = batches(i)
        t0 = time.perf_counter()
        a = align_batch(texts, prep.student.tok, prep.teachers[0].tok, add_special_tokens=True, max_length=cfg.seq_len)
        t1 = time.perf_counter()
        with torch.no_grad():
            z = prep.teachers[0].model(input_ids=a.teacher_ids, attention_mask=a.teacher_mask.long()).logits
        t2 = time.perf_counter()
        s = prep.student.model(input_ids=a.student_ids, attention_mask=a.student_mask.long()).logits
        labels = a.student_ids.masked_fill(~a.student_mask, -100)  # HF-style unshifted labels
        loss, _ = obj(s.float(), [z.float()], [a], input_ids=a.student_ids, attention_mask=a.student_mask, labels=labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        t3 = time.perf_counter()
        if i:
            for k, v in zip(parts, (t1 - t0, t2 - t1, t3 - t2)):
                parts[k] += v / repeats
    return parts


def first_metric_line() -> float:
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "demo"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        t = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "xtok_core", "distill", "--out", str(out), "--no-progress",
                                 "--runs-dir", str(Path(d) / "runs")], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            while not ((out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").read_text().strip()):
                if proc.poll() is not None:
                    raise SystemExit("the demo exited before its first metric line")
                time.sleep(0.1)
            return time.perf_counter() - t
        finally:
            proc.terminate()
            proc.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-first", action="store_true", help="no fresh dequantisation (cached loads only)")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    print(f"machine: {machine()}")
    print("\n| model | first load (dequantise + save) s | cached load s | ratio |\n|---|---|---|---|")
    for name in ("smollm2-135m-instruct", "gemma3-270m"):
        first, cached = load_times(name, args.skip_first)
        ratio = "-" if first is None else f"{first / cached:.0f}x faster cached"
        print(f"| {name} | {'-' if first is None else f'{first:.1f}'} | {cached:.2f} | {ratio} |")
    parts = step_share(args.repeats)
    total = sum(parts.values())
    print("\n| part of a default-demo step (batch 8 x 96) | seconds | share |\n|---|---|---|")
    for k, v in parts.items():
        print(f"| {k} | {v:.2f} | {v / total:.0%} |")
    print(f"| whole step | {total:.2f} | 100% |")
    t = first_metric_line()
    print(f"\n| default demo (`xtok distill --out DIR`, cache warm) | seconds | ratio to the 90 s target |\n|---|---|---|\n"
          f"| start to first metric line | {t:.1f} | {t / 90:.2f} |")


if __name__ == "__main__":
    main()
