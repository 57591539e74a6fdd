#!/usr/bin/env bash
# FSDP check for a machine with CUDA GPUs: runs examples/hf_trainer_distill.py for 3 steps under
# torchrun with fsdp="full_shard auto_wrap" (one process per GPU), then checks from each rank's probe
# file that FSDP was active, that the ranks read different data and that the gathered student weights
# are identical on every rank after every step. accelerate turns FSDP on only for GPU runs, so on CPU
# the same command is data-parallel (tests/test_integrations_hf.py covers that with gloo).
#
#   scripts/check_fsdp_gpu.sh                         # all visible GPUs, SmolLM2-135M-Instruct teacher
#   NPROC=2 TEACHER=tiny:qwen2.5 scripts/check_fsdp_gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
NPROC=${NPROC:-$(python -c "import torch; print(max(1, torch.cuda.device_count()))")}
TEACHER=${TEACHER:-smollm2-135m-instruct}
WORK=$(mktemp -d)
export PYTHONPATH=$PWD HF_HUB_OFFLINE=1
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU: FSDP needs one (see README)')"
python - "$WORK/data.jsonl" <<'PY'
import json, sys
from xtok_core.corpus import sample_texts
with open(sys.argv[1], "w") as f:
    for t in sample_texts()[:64]:
        f.write(json.dumps({"text": t}) + "\n")
PY
python -c "from xtok_core import load_model; load_model('$TEACHER')" >/dev/null  # convert once, not per rank
torchrun --nproc_per_node "$NPROC" tests/hf_probe.py "$WORK/probe" examples/hf_trainer_distill.py \
    "$WORK/data.jsonl" "$WORK/run" --teacher "$TEACHER" --max-steps 3 --batch-size 2 --max-length 64 \
    --fsdp "full_shard auto_wrap"
python - "$WORK/probe" "$NPROC" <<'PY'
import json, sys
from pathlib import Path
rows = {int(p.stem.split("-")[1]): [json.loads(l) for l in p.read_text().splitlines()] for p in Path(sys.argv[1]).glob("rank-*.jsonl")}
assert sorted(rows) == list(range(int(sys.argv[2]))), f"probe files for ranks {sorted(rows)}"
for r, steps in rows.items():
    assert [s["step"] for s in steps] == [1, 2, 3], (r, [s["step"] for s in steps])
    assert all(s["fsdp"] for s in steps), f"rank {r}: FSDP was not active (wrapper {steps[0]['wrapper']})"
for i in range(3):
    prints = {tuple(steps[i]["fingerprint"]) for steps in rows.values()}
    assert len(prints) == 1, f"step {i + 1}: ranks hold different weights {prints}"
    batches = [json.dumps(steps[i]["ids"]) for steps in rows.values()]
    assert len(set(batches)) == len(batches), f"step {i + 1}: two ranks read the same data"
print(f"FSDP ok: {len(rows)} rank(s), wrapper {rows[0][0]['wrapper']}, identical weights after each of 3 steps")
PY
