"""Run a Trainer script with a recording CrossTokenizerDistillTrainer (used by test_integrations_hf).

    torchrun --nproc_per_node 2 tests/hf_probe.py PROBE_DIR examples/hf_trainer_distill.py ARGS...

Each rank writes PROBE_DIR/rank-R.jsonl: after every optimizer step, the student ids it trained on in
that step and a float64 fingerprint of the student's weights (identical on all ranks under DDP).
"""
import json
import os
import runpy
import sys
from pathlib import Path

import torch
from transformers import TrainerCallback

import xtok_core.integrations.hf as hf

probe_dir, script, rest = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
probe_dir.mkdir(parents=True, exist_ok=True)


class _Record(TrainerCallback):
    def __init__(self, trainer):
        self.trainer = trainer
        self.path = probe_dir / f"rank-{int(os.environ.get('RANK', '0'))}.jsonl"

    def on_step_end(self, args, state, control, model=None, **kw):
        with torch.no_grad():
            params = [p.full_tensor() if hasattr(p, "full_tensor") else p for p in self.trainer.model.parameters()]
            params = [p.detach().double() for p in params]  # FSDP2 shards are DTensors: gathered first
            fingerprint = [sum(float(p.square().sum()) for p in params), sum(float(p.sum()) for p in params)]
        row = {"step": state.global_step, "ids": self.trainer.seen, "fingerprint": fingerprint,
               "fsdp": bool(self.trainer.is_fsdp_enabled), "wrapper": type(self.trainer.model_wrapped).__name__}
        self.trainer.seen = []
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


class RecordingTrainer(hf.CrossTokenizerDistillTrainer):
    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.seen = []
        self.add_callback(_Record(self))

    def compute_loss(self, model, inputs, *a, **k):
        mask = inputs["attention_mask"].bool().cpu()
        self.seen += [row[m].tolist() for row, m in zip(inputs["input_ids"].cpu(), mask)]
        return super().compute_loss(model, inputs, *a, **k)


hf.CrossTokenizerDistillTrainer = RecordingTrainer
sys.argv = [script, *rest]
runpy.run_path(script, run_name="__main__")
