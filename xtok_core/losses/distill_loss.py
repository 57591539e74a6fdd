"""`DistillLoss`: student CE plus one or several teachers' KD terms, as one `nn.Module`.

    loss = CE + λ · Σ_m α_m · KD_m,   KD_m = τ² · mean over aligned pairs of the teacher's loss
    λ = sg(CE) / sg(Σ_m α_m KD_m) (dynamic, default) or a fixed `kd_weight`

Usable in any loop (plain PyTorch, HF Trainer's `compute_loss`, accelerate, FSDP): it only needs the
logits and a `BatchAlignment` per cross-tokenizer teacher. The learned-W variant keeps W's values as a
parameter of this module: give it its own optimizer group with `param_groups(lr_w=1e-2)`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import XtokError
from .functional import (
    HKL_THRESHOLD, UNCOMMON_TOPK, common_set_loss, kl_loss, pkl_rows, restrict_to_teacher_topk, trl_gold_loss, uld_loss,
)
from .names import LOSS_KINDS
from .positions import POSITION_MODES, aligned_rows, same_tokenizer_rows
from .sparse_w import as_sparse_w
from .teacher_dist import TeacherDistribution

LR_W = 1e-2  # X-Token paper: learning rate of the learned W values


@dataclass
class TeacherTerm:
    """One teacher's KD term of a `DistillLoss` (how that teacher enters the loss; the model is elsewhere).

    W: its projection (`Projection`, torch sparse (V_s, V_t)), or None for a teacher with the student's
       own tokenizer (direct KL at every student position, no alignment).
    alpha: weight α_m of its KD term.
    loss: "pkl" | "hkl" | "gold" (NeMo-RL's GOLD) | "gold-trl" (TRL's hybrid GOLD) | "uld" (`LOSS_KINDS`).
    learnable: train W's non-zero values (P-KL only; row softmax over the fixed non-zeros).
    name: key of its entries in the stats dict (default "teacher{m}").
    topk: P-KL only, NeMo-RL's microbatch-global teacher top-k (`pkl_loss(teacher_topk=...)`); None: off.
    """

    W: Any = None
    alpha: float = 1.0
    loss: str = "pkl"
    learnable: bool = False
    name: str | None = None
    topk: int | None = None


class LearnedW(nn.Module):
    """W's non-zero values as a trainable parameter: each row is a softmax over its fixed non-zeros.

    `logits (nnz,)` starts at log W so the initial values equal W. `values()` -> `(nnz,)` rows summing to 1.
    """

    def __init__(self, W):
        super().__init__()
        self.W = W
        sw = as_sparse_w(W)
        self.logits = nn.Parameter(sw.values.clamp(min=1e-30).log())
        self.register_buffer("row_of", sw.row_of.clone(), persistent=False)

    def values(self) -> torch.Tensor:
        row = self.row_of
        top = torch.full((int(row.max()) + 1 if len(row) else 0,), -torch.inf, dtype=self.logits.dtype,
                         device=self.logits.device).scatter_reduce(0, row, self.logits.detach(), "amax")
        e = (self.logits - top[row]).exp()
        return e / torch.zeros_like(top).index_add(0, row, e)[row]

    def matrix(self):
        """The current W as a scipy `csr_array` (V_s, V_t) float32, e.g. to save it next to a checkpoint."""
        import scipy.sparse as sp

        sw = as_sparse_w(self.W)
        v = self.values().detach().float().cpu().numpy()
        return sp.csr_array((v, sw.col.cpu().numpy(), sw.crow.cpu().numpy()), shape=sw.shape)


class DistillLoss(nn.Module):
    """Cross-tokenizer KD loss with CE, several teachers, position modes and dynamic KD/CE scaling.

    Args:
        teachers: a `TeacherTerm`, a list of them, or a bare W (one P-KL teacher).
        temperature: τ on both sides; KD terms are multiplied by τ².
        kd_weight: None for dynamic scaling λ = sg(CE)/sg(KD); a float for a fixed weight.
        position: "boundary" (default), "chunk_mean" or "chain" (see `xtok_core.losses.positions`).
        ce_weight: weight of the student's next-token CE (0 disables it; dynamic scaling then uses λ = 1).
        chunk_size: rows per chunk in the KD losses (None: automatic).
        uncommon_topk, hkl_threshold: GOLD / H-KL parameters (SPEC §5 defaults 8192 and 0.6).

    forward(student_logits (B, T_s, V_s), teacher_logits (B, T_t, V_t) or a list (one per teacher),
            alignment: BatchAlignment or a list (None for a same-tokenizer teacher), *,
            input_ids (B, T_s) = alignment.student_ids, attention_mask (B, T_s) = alignment.student_mask,
            labels (B, T_s) optional, -100 ignored, unshifted as in Hugging Face)
        -> (loss scalar, stats dict: loss, ce, kd, lambda, and per teacher kd/<name>, pairs/<name>,
            unreachable_mass/<name> for P-KL teachers)
    A teacher's logits may instead be a `TeacherDistribution` over (B, T_t): full logits or top-K ids +
    log-probs + log tail mass (a teacher cache, `xtok_core.teacher_cache`); every loss reads both through the
    same code (each loss's docstring says how the tail mass enters). Its temperature must be the loss's.
    The stats are 0-dim tensors (detached; `pairs/<name>` a float): converting them every step would stall a
    GPU, so convert when logging, e.g. with `host_stats(stats)`.
    """

    def __init__(self, teachers, *, temperature: float = 1.0, kd_weight: float | None = None,
                 position: str = "boundary", ce_weight: float = 1.0, chunk_size: int | None = None,
                 uncommon_topk: int = UNCOMMON_TOPK, hkl_threshold: float = HKL_THRESHOLD):
        super().__init__()
        if isinstance(teachers, TeacherTerm):
            teachers = [teachers]
        elif not isinstance(teachers, (list, tuple)):
            teachers = [TeacherTerm(W=teachers)]
        if not teachers:
            raise XtokError("DistillLoss needs at least one teacher; pass TeacherTerm(W=...) for each")
        if position not in POSITION_MODES:
            raise XtokError(f"unknown position mode {position!r}; use one of {', '.join(POSITION_MODES)}")
        self.teachers = [replace(t, name=t.name or f"teacher{m}") for m, t in enumerate(teachers)]
        self.learned = nn.ModuleDict()
        for t in self.teachers:
            if t.loss not in LOSS_KINDS:
                raise XtokError(f"unknown loss {t.loss!r} for {t.name}; use one of {', '.join(LOSS_KINDS)}")
            if t.learnable:
                if t.W is None or t.loss != "pkl":
                    raise XtokError(f"learnable W needs a P-KL teacher with a W ({t.name} has loss={t.loss!r}"
                                    f"{', no W' if t.W is None else ''}); set loss='pkl' or learnable=False")
                self.learned[t.name] = LearnedW(t.W)
            if t.topk is not None and (t.loss != "pkl" or t.W is None or t.learnable):
                raise XtokError(f"topk={t.topk} for {t.name} is P-KL's teacher top-k with a fixed W; set loss='pkl' "
                                "or topk=None")
        self.temperature, self.kd_weight, self.position = float(temperature), kd_weight, position
        self.ce_weight, self.chunk_size = float(ce_weight), chunk_size
        self.uncommon_topk, self.hkl_threshold = uncommon_topk, hkl_threshold
        self.last_stats: dict[str, torch.Tensor | float] = {}

    def param_groups(self, lr_w: float = LR_W) -> list[dict]:
        """Optimizer groups for the learned W values (empty when no W is learned)."""
        params = list(self.learned.parameters())
        return [{"params": params, "lr": lr_w, "weight_decay": 0.0}] if params else []

    def ce(self, student_logits, input_ids, attention_mask=None, labels=None) -> torch.Tensor:
        """Next-token cross-entropy of the student: logits (B, T, V_s), ids (B, T) -> scalar."""
        target = (labels if labels is not None else input_ids)[:, 1:].clone()
        if labels is None and attention_mask is not None:
            target[~(attention_mask[:, 1:].bool() & attention_mask[:, :-1].bool())] = -100
        logits = student_logits[:, :-1]
        if logits.dtype != torch.float64:
            logits = logits.float()
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100)

    def teacher_rows(self, teacher: TeacherTerm, rows) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-pair KD of one teacher `(N,)` (no τ²) and its unreachable mass `(N,)` for P-KL."""
        kw = dict(temperature=rows.temperature, chunk_size=self.chunk_size,
                  student_log_offset=rows.student_offset, teacher_log_offset=rows.teacher_offset)
        if teacher.W is None:
            return kl_loss(rows.student, rows.teacher, reduce=False, **kw), None
        if teacher.loss == "pkl":
            values = self.learned[teacher.name].values() if teacher.learnable else None
            t_rows, W = rows.teacher, teacher.W
            if teacher.topk is not None:
                t_rows, W = restrict_to_teacher_topk(t_rows, W, teacher.topk)
            return pkl_rows(rows.student, t_rows, W, values=values, **kw)
        if teacher.loss == "uld":
            return uld_loss(rows.student, rows.teacher, reduce=False, **kw), None
        if teacher.loss == "gold-trl":
            return trl_gold_loss(rows.student, rows.teacher, teacher.W, reduce=False, **kw), None
        rule = "top1" if teacher.loss == "hkl" else "exact"
        return common_set_loss(rows.student, rows.teacher, teacher.W, rule=rule, threshold=self.hkl_threshold,
                               uncommon_topk=self.uncommon_topk, reduce=False, **kw), None

    def forward(self, student_logits, teacher_logits, alignment=None, *, input_ids=None, attention_mask=None,
                labels=None):
        many = isinstance(teacher_logits, (list, tuple))
        t_logits = list(teacher_logits) if many else [teacher_logits]
        aligns = list(alignment) if isinstance(alignment, (list, tuple)) else [alignment] * len(t_logits)
        if len(t_logits) != len(self.teachers) or len(aligns) != len(self.teachers):
            raise XtokError(f"DistillLoss has {len(self.teachers)} teachers but got {len(t_logits)} teacher logits "
                            f"and {len(aligns)} alignments; pass one of each per teacher, in order")
        first = next((a for a in aligns if a is not None), None)
        if input_ids is None:
            if first is None:
                raise XtokError("DistillLoss needs the student's input_ids when no alignment is given; pass "
                                "input_ids= (and attention_mask=)")
            input_ids = first.student_ids
            attention_mask = first.student_mask if attention_mask is None else attention_mask
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)

        stats: dict[str, torch.Tensor | float] = {}
        kd = student_logits.sum() * 0.0
        for teacher, z_t, al in zip(self.teachers, t_logits, aligns):
            if isinstance(z_t, TeacherDistribution):
                z_t.check_temperature(self.temperature)
            if teacher.W is None:
                rows = same_tokenizer_rows(student_logits, z_t, attention_mask, self.temperature)
            else:
                if al is None:
                    raise XtokError(f"{teacher.name} has a W but no alignment; pass align_batch(...) for it")
                rows = aligned_rows(student_logits, z_t, al, position=self.position, temperature=self.temperature)
            per_pair, lost = self.teacher_rows(teacher, rows)
            kd_m = (per_pair.mean() if per_pair.numel() else student_logits.sum() * 0.0) * self.temperature**2
            kd = kd + teacher.alpha * kd_m
            stats[f"kd/{teacher.name}"] = kd_m.detach()
            stats[f"pairs/{teacher.name}"] = float(per_pair.numel())  # a shape, known on the host: no sync
            if lost is not None:
                stats[f"unreachable_mass/{teacher.name}"] = lost.mean() if lost.numel() else lost.new_zeros(())

        ce = self.ce(student_logits, input_ids, attention_mask, labels) * self.ce_weight if self.ce_weight else kd * 0.0
        if self.kd_weight is None:
            if self.ce_weight:
                k = kd.detach()
                lam = torch.where(k > 0, ce.detach() / torch.where(k > 0, k, 1.0), 0.0)  # no host sync
            else:
                lam = torch.ones_like(kd.detach())
        else:
            lam = torch.as_tensor(float(self.kd_weight), dtype=kd.dtype, device=kd.device)
        loss = ce + lam * kd
        stats.update(loss=loss.detach(), ce=ce.detach(), kd=kd.detach(), **{"lambda": lam.detach()})
        self.last_stats = stats
        return loss, stats


def host_stats(stats: dict) -> dict[str, float]:
    """The stats of `DistillLoss` as Python floats (one host sync for all): call it on logging steps."""
    out = dict(stats)
    keys = [k for k, v in stats.items() if isinstance(v, torch.Tensor)]
    if keys:
        out.update(zip(keys, torch.stack([stats[k].detach().double().reshape(()) for k in keys]).cpu().tolist()))
    return {k: float(v) for k, v in out.items()}
