"""Cross-tokenizer distillation inside a Hugging Face `Trainer` (and so under accelerate, torchrun, FSDP).

    examples ({"text": ...})  -> CrossTokenizerCollator -> student input_ids / attention_mask / labels
                                                           + per teacher: its own ids from the text and
                                                             the alignment tensors (align_batch)
    CrossTokenizerDistillTrainer.compute_loss -> student forward, teachers forward (no grad)
                                               -> losses.DistillLoss: CE + λ·Σ α_m KD_m

`xtok distill` batches its steps with the same collator, builds W through the same step and computes
the same `DistillLoss` (a test checks one batch gives one loss through both). Use the Trainer when the rest of your stack is
already a Trainer (your datasets, callbacks, DeepSpeed/FSDP configs, Hub pushes); use `xtok distill`
for the run directory the explorer reads, on-policy sampling and the bundled corpus and eval.
"""

from __future__ import annotations

import warnings

import torch

from ..errors import XtokError
from ..losses import DistillLoss, TeacherTerm
from ..losses.names import LOSS_KINDS
from ..models import LoadedModel
from .collator import CrossTokenizerCollator, as_loaded, common_student_prefix, shares_tokenizer  # noqa: F401

LOSSES = (*LOSS_KINDS, "auto")


# ------------------------------------------------------------------------ the loss
def teacher_projection(student: LoadedModel, teacher: LoadedModel, w=None):
    """W for one teacher, sized to both models' logits: a `Projection` (checked against both tokenizers'
    hashes here), a W file or None (built from the tokenizers) — those two through `xtok distill`'s own W
    step (`distill.objective.run_projection`), so both paths share its checks and its per-pair cache."""
    from ..distill.objective import run_projection
    from ..projection import Projection

    if not isinstance(w, Projection):
        return run_projection(student, teacher, w or None)
    w.check_tokenizers(student.tok, teacher.tok)
    w.check_logits(student.vocab_size, teacher.vocab_size)
    return w


def audit_loss(student: LoadedModel, teacher: LoadedModel) -> tuple[str, str]:
    """`auto`: the coverage audit's choice for this pair and its one-line reason (as `xtok distill --loss auto`)."""
    from ..distill.objective import audit_loss as run_audit_loss

    return run_audit_loss(student, teacher)


def distill_objective(student, teachers, *, loss: "str | list" = "pkl", alphas=None, projections=None,
                      temperature: float = 1.0, kd_weight: float | None = None, position: str = "boundary",
                      ce_weight: float = 1.0, learnable: bool = False, log=None) -> DistillLoss:
    """The `DistillLoss` for a student and its teachers (LoadedModels): one W per cross-tokenizer teacher
    (none for a teacher sharing the student's tokenizer: direct KL), α equal and summing to 1 unless
    given, `loss` one kind for all teachers or one per teacher; `auto` asks the audit per teacher.
    Teachers are named t0, t1, … in the stats (kd/t0, unreachable_mass/t0)."""
    losses = list(loss) if isinstance(loss, (list, tuple)) else [loss] * len(teachers)
    alphas = [1.0 / len(teachers)] * len(teachers) if alphas is None else [float(a) for a in alphas]
    files = list(projections) if projections is not None else [None] * len(teachers)
    for what, given in (("loss", losses), ("alphas", alphas), ("projections", files)):
        if len(given) != len(teachers):
            raise XtokError(f"{len(given)} {what} for {len(teachers)} teachers; give one per teacher")
    specs = []
    for m, (t, kind, a, w) in enumerate(zip(teachers, losses, alphas, files)):
        if kind not in LOSSES:
            raise XtokError(f"unknown loss {kind!r} for teacher {m}; use one of {', '.join(LOSSES)}")
        direct = shares_tokenizer(student, t)
        if kind == "auto":
            kind, reason = ("pkl", "same tokenizer") if direct else audit_loss(student, t)
            if log:
                log(f"loss auto -> {kind} for teacher {m}: {reason}")
        specs.append(TeacherTerm(W=None if direct else teacher_projection(student, t, w), alpha=a, loss=kind,
                                 learnable=learnable and not direct, name=f"t{m}"))
    return DistillLoss(specs, temperature=temperature, kd_weight=kd_weight, position=position, ce_weight=ce_weight)


# ------------------------------------------------------------------------ the Trainer
def _trainer_base():
    from transformers import Trainer

    return Trainer


class CrossTokenizerDistillTrainer(_trainer_base()):
    """`transformers.Trainer` that distils `teachers` into `model` across tokenizers.

    Args (besides every Trainer argument; `data_collator` defaults to a `CrossTokenizerCollator`):
        model: the student, a LoadedModel (`xtok_core.load_model`) or a model with `student_tokenizer`.
        teachers: a LoadedModel or a list; frozen, eval mode, no grad, moved to `teacher_device`
            (default: the student's device). They are not part of `self.model`, so checkpoints hold
            the student only.
        projections: per teacher a `Projection`, a W file, or None (built from both tokenizers).
        loss: pkl | hkl | gold | gold-trl | uld | auto (the coverage audit per teacher), or one per teacher.
        alphas, temperature, kd_weight (None: dynamic λ = sg(CE)/sg(KD)), position: as `DistillLoss`.
        max_length, chat: the default collator's token cap per example, and whether rows are `messages`
            (each model's own chat template; CE and KD on the assistant's content only) rather than `text`.

    The raw-text collator needs the `text` column, so `args.remove_unused_columns` is set to False.
    `compute_loss` returns the micro-batch mean (CE and KD are means over tokens / aligned pairs), and the
    Trainer divides it by the accumulation steps as for any custom loss. Training logs gain ce, kd,
    lambda, kd/t<m>, pairs/t<m> and unreachable_mass/t<m>, averaged over the logging interval and the
    ranks, through `self.log` (so TensorBoard/W&B callbacks see them).
    """

    loss_is_scaled_for_ga = False

    def __init__(self, model=None, args=None, *, teachers, student_tokenizer=None, projections=None,
                 loss: "str | list" = "pkl", alphas=None, temperature: float = 1.0, kd_weight: float | None = None,
                 position: str = "boundary", max_length: int = 512, chat: bool = False, teacher_device=None,
                 data_collator=None, **kwargs):
        student = as_loaded(model, student_tokenizer, what="student")
        teachers = [as_loaded(t, what=f"teacher {m}")
                    for m, t in enumerate(teachers if isinstance(teachers, (list, tuple)) else [teachers])]
        if data_collator is None:
            data_collator = CrossTokenizerCollator(student, teachers, max_length=max_length, chat=chat)
        super().__init__(model=student.model, args=args, data_collator=data_collator, **kwargs)
        self.args.remove_unused_columns = False  # the collator reads `text`, which no model forward takes
        self.model_accepts_loss_kwargs = False   # the loss is ours: no label counting for the model's loss
        if self.args.fsdp and not self.is_fsdp_enabled and self.is_world_process_zero():
            # accelerate enables its FSDP plugin only on accelerators; on CPU the run is plain DDP
            warnings.warn(f"fsdp={self.args.fsdp!r} is not active on {self.args.device.type} (accelerate turns FSDP on only "
                          "for GPU runs); this run is data-parallel with full replicas", stacklevel=2)
        self.student, self.teachers = student, teachers
        device = torch.device(teacher_device) if teacher_device is not None else self.args.device
        for t in teachers:
            t.model.to(device).eval().requires_grad_(False)
        self.distill_loss = distill_objective(student, teachers, loss=loss, alphas=alphas, projections=projections,
                                              temperature=temperature, kd_weight=kd_weight, position=position,
                                              log=print if self.is_world_process_zero() else None).to(self.args.device)
        self._stat_sums: dict = {}
        self._stat_steps = 0

    def teacher_logits(self, teacher_inputs: list) -> list:
        """Each teacher's logits `(B, T_t, V_t)` on its own ids, without grad, under the run's autocast."""
        out = []
        with torch.no_grad(), self.accelerator.autocast():
            for t, inp in zip(self.teachers, teacher_inputs):
                dev = next(t.model.parameters()).device
                z = t.model(input_ids=inp["input_ids"].to(dev), attention_mask=inp["attention_mask"].to(dev)).logits
                out.append(z.to(self.args.device))
        return out

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        t_logits = self.teacher_logits(inputs["teacher_inputs"])
        loss, stats = self.distill_loss(out.logits.float(), [z.float() for z in t_logits],
                                        CrossTokenizerCollator.alignments(inputs), input_ids=inputs["input_ids"],
                                        attention_mask=inputs["attention_mask"].bool(), labels=inputs.get("labels"))
        if model.training:
            self._accumulate(stats)
        return (loss, out) if return_outputs else loss

    def _accumulate(self, stats: dict) -> None:
        for k, v in stats.items():
            if k != "loss":  # the Trainer logs its own loss
                v = v.detach().float() if torch.is_tensor(v) else float(v)
                self._stat_sums[k] = self._stat_sums.get(k, 0.0) + v
        self._stat_steps += 1

    def _drain_stats(self) -> dict:
        """Means of the accumulated stats since the last log, over micro-batches and ranks."""
        keys = sorted(self._stat_sums)
        means = torch.tensor([float(self._stat_sums[k]) for k in keys], dtype=torch.float64) / self._stat_steps
        if self.accelerator.num_processes > 1:
            means = self.accelerator.reduce(means.to(self.args.device), reduction="mean").cpu()
        self._stat_sums, self._stat_steps = {}, 0
        return dict(zip(keys, means.tolist()))

    def log(self, logs: dict, start_time=None) -> None:
        if self._stat_steps and "loss" in logs:  # a training log: add what the loss was made of
            logs = {**logs, **self._drain_stats()}
        super().log(logs, start_time)
