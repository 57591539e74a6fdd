"""Build W for a pair: xtok's batched build vs the per-token loop of NeMo-RL's reference script.

The baseline does what `minimal_projection_via_multitoken.py` does for the forward pass: for every
student id, transformers `decode` + a tokenizer call, weights 0.9*0.1^i accumulated in a dict,
then each row sorted and cut to top_k. Both run in this process on the same tokenizers.

    python bench/bench_projection.py [--student llama-3.2] [--teacher qwen2.5] [--repeat 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from _measure import PeakRSS, machine, table  # noqa: E402

from xtok_core import load_tokenizer  # noqa: E402
from xtok_core.projection import build_projection  # noqa: E402


def naive_build(s, t, max_pieces=4, top_k=4):
    from transformers import PreTrainedTokenizerFast

    hs = PreTrainedTokenizerFast(tokenizer_object=s.backend)
    ht = PreTrainedTokenizerFast(tokenizer_object=t.backend)
    special = set(np.flatnonzero(s.special).tolist())
    counts = defaultdict(float)
    for sid in range(s.vocab_size):
        if sid in special or s.holes[sid]:
            continue
        text = hs.decode([sid])
        ids = ht(text, add_special_tokens=False, return_attention_mask=False)["input_ids"][:max_pieces]
        w = [0.9 * 0.1**i for i in range(len(ids))]
        z = sum(w)
        for tid, wi in zip(ids, w):
            counts[(sid, tid)] += wi / z
    rows = defaultdict(list)
    for (sid, tid), w in counts.items():
        rows[sid].append((w, tid))
    out = {}
    for sid, lst in rows.items():
        lst.sort(reverse=True)
        lst = lst[:top_k]
        z = sum(w for w, _ in lst)
        out[sid] = [(tid, w / z) for w, tid in lst]
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", default="llama-3.2")
    ap.add_argument("--teacher", default="qwen2.5")
    ap.add_argument("--repeat", type=int, default=3, help="xtok builds to time (best is reported)")
    ap.add_argument("--skip-naive", action="store_true")
    a = ap.parse_args(argv)

    t0 = time.perf_counter()
    s, t = load_tokenizer(a.student), load_tokenizer(a.teacher)
    load_s = time.perf_counter() - t0
    build_projection(s, t)  # warm-up: lazily built tables
    best = None
    for _ in range(a.repeat):
        with PeakRSS() as m:
            w = build_projection(s, t)
        best = m if best is None or m.seconds < best.seconds else best
    rows = [["xtok build_projection (batched)", f"{best.seconds:.3f}", "1.0x", f"{best.extra_mb:.0f}"]]
    if not a.skip_naive:
        with PeakRSS() as n:
            ref = naive_build(s, t)
        rows.append(["per-token loop (NeMo-RL style)", f"{n.seconds:.3f}", f"{n.seconds / best.seconds:.1f}x slower", f"{n.extra_mb:.0f}"])
        # same rows where both define them (the baseline decodes ids, so partial-UTF-8 tokens differ)
        agree = sum(1 for sid, lst in ref.items() if dict((c, round(v, 5)) for c, v in lst) ==
                    {int(c): round(float(v), 5) for c, v in zip(*w.row(sid))})
        print(f"rows identical to the baseline: {agree:,} of {len(ref):,}")
    print(f"\nW {a.student} x {a.teacher}: {w.shape[0]:,} x {w.shape[1]:,}, {w.matrix.nnz:,} non-zeros")
    print(f"tokenizer loading (both, not in the table): {load_s:.2f} s")
    print(f"machine: {machine()}\n")
    print(table(["method", "seconds", "ratio", "peak extra RSS (MB)"], rows))


if __name__ == "__main__":
    main()
