"""The demo teacher: a tiny Llama-style model trained on the generated corpus, cached and reused.

It is trained by the same loop as a distillation run (`--loss ce`, no teacher), in
`<runs_dir>/teachers/<tokenizer>-<hash>/run/`, then saved as a plain Hugging Face directory next to it.
The hash covers everything that changes the weights (tokenizer bytes, sizes, steps, seed, corpus),
so a changed setting trains a new teacher and an unchanged one is loaded in a second. An
interrupted training resumes from its last checkpoint.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch.distributed as dist

from ..tok import load_tokenizer
from .config import DistillConfig, config_hash
from .models import non_embedding_params, save_model_dir

TEACHER_DIM, TEACHER_LAYERS = 256, 4   # larger than the default student (192 x 6 is deeper but narrower)
CORPUS_VERSION = 1                      # bump when xtok_core.corpus changes its output


def default_teacher_steps(device: str = "auto") -> int:
    """A few minutes on a 2-core CPU, well under a minute on a GPU."""
    import torch

    return 2000 if device != "cpu" and torch.cuda.is_available() else 300


def teacher_config(tokenizer: str, *, steps: int = 300, dim: int = TEACHER_DIM, layers: int = TEACHER_LAYERS,
                   seed: int = 0, runs_dir: str = "runs", device: str = "auto", batch_size: int = 8,
                   seq_len: int = 64, lr: float = 2e-3) -> DistillConfig:
    return DistillConfig(student=f"tiny:{tokenizer}", teachers=[], loss="ce", steps=steps, batch_size=batch_size,
                         seq_len=seq_len, lr=lr, seed=seed, tiny_dim=dim, tiny_layers=layers, runs_dir=runs_dir,
                         device=device, eval_every=max(1, steps // 4), checkpoint_every=max(1, steps // 10))


def teacher_dir(cfg: DistillConfig) -> Path:
    tok = load_tokenizer(cfg.student[len("tiny:"):])
    key = {"tokenizer": tok.sha256, "dim": cfg.tiny_dim, "layers": cfg.tiny_layers, "steps": cfg.steps,
           "seed": cfg.seed, "batch": cfg.batch_size, "seq_len": cfg.seq_len, "lr": cfg.lr, "corpus": CORPUS_VERSION}
    return Path(cfg.runs_dir) / "teachers" / f"{tok.name}-{config_hash(key)}"


def train_demo_teacher(tokenizer: str, *, steps: int = 300, dim: int = TEACHER_DIM, layers: int = TEACHER_LAYERS,
                  seed: int = 0, runs_dir: str = "runs", device: str = "auto", progress: bool = True,
                  log=print, **overrides) -> Path:
    """Path of a trained demo teacher for `tokenizer` (a bundled name): from the cache, or trained now."""
    from ..models import build_tiny
    from .loop import Prepared, resume_distillation, run_distillation
    from .rundir import RunDir

    cfg = teacher_config(tokenizer, steps=steps, dim=dim, layers=layers, seed=seed, runs_dir=runs_dir, device=device, **overrides)
    out = teacher_dir(cfg)
    if (out / "teacher.json").is_file() and (out / "config.json").is_file():
        return out
    run_path = out / "run"
    log(f"training the demo teacher for {tokenizer} ({steps} steps) in {out}")
    # its own run, prepared here (a tiny student, CE only): it never prepares (or trains) another teacher
    prepared = Prepared(build_tiny(cfg.student, dim=cfg.tiny_dim, layers=cfg.tiny_layers, seed=cfg.seed), [], "ce", [])
    if RunDir(run_path).latest_checkpoint() is not None:
        result = resume_distillation(run_path, progress=progress, log=log, prepared=prepared)
    else:
        result = run_distillation(cfg, run_path, progress=progress, log=log, prepared=prepared)
    if result.state != "finished":
        return out  # stopped: the next call resumes it
    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank == 0:
        save_model_dir(result.student.model, result.student.tok, out)
        last = result.metrics[-1] if result.metrics else {}
        record = {"tokenizer": tokenizer, "steps": result.step, "final_loss": last.get("loss"),
                  "non_embedding_params": non_embedding_params(result.student.model),
                  "eval_accuracy": result.final_accuracy, "config": cfg.to_dict()}
        (out / "teacher.json").write_text(json.dumps(record, indent=2, sort_keys=True), encoding="utf-8")
        shutil.rmtree(run_path / "checkpoints", ignore_errors=True)  # the model directory replaces them
    if dist.is_initialized():  # under torchrun every rank trained it; all wait for rank 0's copy
        dist.barrier()
    return out
