"""Distillation runs (SPEC §6): tiny or local HF models, off- and on-policy, crash-safe run directories.

Python API: `run_distillation(DistillConfig(...), out) -> RunResult`, `resume_distillation(run_dir)`,
`train_demo_teacher(tokenizer) -> Path`, `arithmetic_accuracy(model, tok)`.

Run directory (read by the app while the run is going):

    config.json       the DistillConfig as JSON (sorted keys)
    metrics.jsonl     one JSON object per completed step, appended, flushed and fsynced per step:
                        step (0-based), loss, ce, kd, lambda (λ of CE + λ·KD, dynamic or fixed),
                        lr, grad_norm, tokens (this step, all ranks), tokens_per_s, step_time (s),
                        wall_time (unix s), elapsed (s since this process started training),
                        on_policy (fraction of the batch sampled by the student),
                        further loss statistics (kd/<teacher index>, unreachable_mass, ...) and,
                        on evaluation steps, eval_ce, eval_ce_per_byte, eval_numeral_ce,
                        eval_top1_agreement/t<i> (held-out text) and, on the generated corpus,
                        eval_accuracy (greedy exact match on held-out arithmetic)
    status.json       {"state": running|finished|failed|stopped, "step": completed steps, "steps": target,
                       "pid", "updated" (unix s), "error": one line (failed), "checkpoint": "step-N"};
                      "running" with a pid that no longer exists means the process was killed
                      (resume it)
    checkpoints/step-N/  model.safetensors, optimizer.safetensors + optimizer.json, rng.safetensors,
                       w.safetensors (learned W), step.json  (N = last completed step, 0-based)
    checkpoints/latest   the name of the newest complete checkpoint, replaced atomically
    replicas/rank-R.json each rank's final step and weight fingerprint (identical under DDP)

Resuming (`xtok distill --resume RUN_DIR`) restores the latest checkpoint and drops metric lines after
it, so every step appears exactly once.
"""

from .config import DistillConfig
from .evaluate import arithmetic_accuracy
from .loop import RunHooks, RunResult, resume_distillation, run_distillation
from .loop import Prepared, prepare
from .models import LoadedModel, build_tiny, load_model, load_model_dir, save_model_dir
from .demo_teacher import train_demo_teacher

__all__ = ["DistillConfig", "RunHooks", "RunResult", "run_distillation", "resume_distillation", "train_demo_teacher",
           "arithmetic_accuracy", "Prepared", "prepare", "load_model", "LoadedModel", "build_tiny", "load_model_dir", "save_model_dir"]
