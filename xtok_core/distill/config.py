"""Hyper-parameters of a distillation run: one plain dataclass, one line of reason per field."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

from ..errors import XtokError
from ..losses.names import LOSS_KINDS, POSITION_MODES as POSITIONS

LOSSES = (*LOSS_KINDS, "ce", "auto")


@dataclass
class DistillConfig:
    # models: `tiny:<bundled tokenizer>` or a local Hugging Face directory
    student: str = "tiny:llama-3.2"
    teachers: list = field(default_factory=lambda: ["tiny:qwen2.5"])
    alphas: list | None = None          # teacher weights in Σ α_m KD_m; None = equal, summing to 1
    projections: list | None = None     # W file per teacher (None entries: built from the tokenizers)
    loss: str = "pkl"                   # pkl | hkl | gold | uld | ce | auto (the audit's recommendation)
    position: str = "boundary"          # where aligned distributions are compared (SPEC §5)
    temperature: float = 1.0            # τ on both sides; KD is multiplied by τ²
    kd_weight: float | None = None      # None: dynamic λ = sg(CE)/sg(KD) (the paper); a number: fixed λ
    learnable_w: bool = False           # the paper's best P-KL variant: train W's non-zeros
    w_lr: float = 1e-2                  # the paper's learning rate for learned W

    # optimisation
    steps: int = 300
    batch_size: int = 8
    seq_len: int = 96                   # token cap per example (student and teacher side)
    lr: float = 1e-3                    # tiny models tolerate a high rate; scale down for real ones
    weight_decay: float = 0.01
    warmup: int = 20                    # linear warm-up steps, then cosine to lr/10
    grad_clip: float = 1.0
    seed: int = 0

    # data
    corpus_lines: int = 20_000          # generated training texts (xtok_core.corpus)
    text_chars: int = 200               # texts are packed into examples of about this many characters
    fixed_batch: bool = False           # every step sees batch 0: the overfit check

    # on-policy: the student samples, the text is decoded and re-tokenized for each teacher
    on_policy_ratio: float = 0.0        # fraction of each batch replaced by student samples
    max_new_tokens: int = 24
    sample_temperature: float = 1.0

    # evaluation and bookkeeping
    eval_every: int = 50                # greedy exact-match arithmetic accuracy every N steps (0: never)
    eval_size: int = 64
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    device: str = "auto"                # auto: CUDA when present (bf16 autocast), else CPU
    tiny_dim: int = 192                 # `tiny:` student: hidden size
    tiny_layers: int = 6                # `tiny:` student: layers (192 x 6 ≈ 2.7M non-embedding params)
    train_demo_teacher: bool = True     # `tiny:` teacher: the cached demo teacher (False: random init)
    teacher_steps: int = 300            # training steps of the demo teacher when it is not cached yet
    runs_dir: str = "runs"              # where demo teachers are cached

    def __post_init__(self):
        if isinstance(self.teachers, str):
            self.teachers = [self.teachers]
        self.teachers = list(self.teachers)
        if self.loss not in LOSSES:
            raise XtokError(f"unknown loss {self.loss!r}; pass one of {', '.join(LOSSES)}")
        if self.position not in POSITIONS:
            raise XtokError(f"unknown position mode {self.position!r}; pass one of {', '.join(POSITIONS)}")
        if self.loss != "ce" and not self.teachers:
            raise XtokError(f"loss {self.loss!r} needs at least one --teacher; add one or use --loss ce")
        if self.alphas is not None and len(self.alphas) != len(self.teachers):
            raise XtokError(f"{len(self.alphas)} --alpha values for {len(self.teachers)} teachers; give one per teacher")
        if self.projections is not None and len(self.projections) != len(self.teachers):
            raise XtokError(f"{len(self.projections)} --w files for {len(self.teachers)} teachers; give one per teacher")
        if not 0.0 <= self.on_policy_ratio <= 1.0:
            raise XtokError(f"--on-policy-ratio {self.on_policy_ratio} is outside [0, 1]; pass a fraction")
        if self.steps < 1 or self.batch_size < 1:
            raise XtokError("--steps and --batch-size must be at least 1")

    @property
    def teacher_weights(self) -> list:
        if self.alphas is not None:
            return [float(a) for a in self.alphas]
        return [1.0 / len(self.teachers)] * len(self.teachers) if self.teachers else []

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "DistillConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise XtokError(f"unknown run config keys {unknown}; remove them or upgrade xtok")
        return cls(**d)

    def replace(self, **changes) -> "DistillConfig":
        return dataclasses.replace(self, **changes)


def config_hash(d: dict) -> str:
    """Short content hash of a JSON-able dict (sorted keys): names cached teachers."""
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]
