"""A run's objective, shared by `xtok distill` and the Hugging Face Trainer integration: W per teacher, the
loss `auto` resolves to, and the loss module of a step.

    run_projection(student, teacher, path)   W sized to both models' logits (from a file, else built, cached)
    audit_loss(student, teacher)             `auto`: the coverage audit's P-KL / H-KL and its reason
    build_objective(cfg, prep)               CrossEntropyOnly or losses.DistillLoss, one TeacherTerm per teacher
"""

from __future__ import annotations

import torch

from ..errors import XtokError
from ..models import LoadedModel
from .config import DistillConfig

_W_CACHE: dict = {}  # W per (student tokenizer, teacher tokenizer, logit widths), for the process


def run_projection(student: LoadedModel, teacher: LoadedModel, path: str | None):
    """W for one teacher, sized to both models' logits; from a file when given (checked against both
    tokenizers' hashes), else built from the tokenizers (cached per pair). Always checked against both widths."""
    from ..projection import Projection, build_projection

    if path:
        w = Projection.load(path, student=student.tok, teacher=teacher.tok)
    else:
        key = (student.tok.sha256, teacher.tok.sha256, student.vocab_size, teacher.vocab_size)
        if key not in _W_CACHE:
            _W_CACHE[key] = build_projection(student.tok, teacher.tok, student_vocab_size=student.vocab_size,
                                             teacher_vocab_size=teacher.vocab_size)
        w = _W_CACHE[key]
    w.check_logits(student.vocab_size, teacher.vocab_size)
    return w


def audit_loss(student: LoadedModel, teacher: LoadedModel, projection=None) -> tuple[str, str]:
    """`auto`: the coverage audit's choice for this pair (P-KL when numerals, prices, dates or code are
    poorly covered by exact matches, else H-KL), on `projection` when given, and its one-line reason."""
    from ..audit import coverage_audit

    report = coverage_audit(student.tok, teacher.tok, projection)
    return {"P-KL": "pkl", "H-KL": "hkl"}[report.recommendation], report.reason


def resolve_loss(cfg: DistillConfig, student: LoadedModel, teachers: list, projection=None) -> tuple[str, str | None]:
    """A run's loss: `auto` -> the audit's choice for the first teacher, on the run's own W when there is one."""
    if cfg.loss != "auto":
        return cfg.loss, None
    loss, reason = audit_loss(student, teachers[0], projection)
    return loss, f"loss auto -> {loss}: {reason}"


class CrossEntropyOnly(torch.nn.Module):
    """Next-token CE of the student: the `--loss ce` baseline and the demo teacher's objective."""

    def forward(self, s_logits, t_logits=(), alignments=(), *, input_ids=None, attention_mask=None, labels=None):
        ce = torch.nn.functional.cross_entropy(s_logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
        return ce, {"ce": ce.detach(), "kd": 0.0, "lambda": 0.0}


def build_objective(cfg: DistillConfig, prep) -> torch.nn.Module:
    """CE alone, or losses.DistillLoss with one TeacherTerm per teacher of `prep` (a `loop.Prepared`): its W,
    none for a teacher that shares the student's tokenizer (direct KL, no alignment)."""
    if prep.loss == "ce":
        return CrossEntropyOnly()
    from ..losses import DistillLoss, TeacherTerm

    if cfg.teacher_topk is not None and prep.loss != "pkl":  # --loss auto resolved to another loss
        raise XtokError(f"--teacher-topk is P-KL's teacher top-k, and this run's loss is {prep.loss!r}; "
                        "drop --teacher-topk or pass --loss pkl")
    # a teacher with the student's tokenizer (W None) is direct KL: teacher top-k does not apply to it
    terms = [TeacherTerm(W=w, alpha=a, loss=prep.loss, learnable=cfg.learnable_w and w is not None, name=f"t{i}",
                         topk=cfg.teacher_topk if w is not None else None)
             for i, (w, a) in enumerate(zip(prep.projections, cfg.teacher_weights))]
    # pure on-policy (every row sampled by the student) is KD only: there is no corpus row for CE
    return DistillLoss(terms, temperature=cfg.temperature, kd_weight=cfg.kd_weight, position=cfg.position,
                       ce_weight=0.0 if cfg.on_policy_ratio >= 1.0 else 1.0)
