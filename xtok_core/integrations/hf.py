"""Cross-tokenizer distillation inside a Hugging Face `Trainer` (and so under accelerate, torchrun, FSDP).

    examples ({"text": ...})  -> CrossTokenizerCollator -> student input_ids / attention_mask / labels
                                                           + per teacher: its own ids from the text and
                                                             the alignment tensors (align_batch)
    CrossTokenizerDistillTrainer.compute_loss -> student forward, teachers forward (no grad)
                                               -> losses.DistillLoss: CE + λ·Σ α_m KD_m

`xtok distill` batches its steps with the same collator and builds its loss with the same
`distill_objective`, so the two paths compute one loss. Use the Trainer when the rest of your stack is
already a Trainer (your datasets, callbacks, DeepSpeed/FSDP configs, Hub pushes); use `xtok distill`
for the run directory the explorer reads, on-policy sampling and the bundled corpus and eval.
"""

from __future__ import annotations

import warnings
from dataclasses import fields

import torch

from ..align import BatchAlignment, align_batch
from ..distill.data import encode_padded
from ..errors import XtokError
from ..losses import DistillLoss, Teacher
from ..losses.names import LOSS_KINDS
from ..models import LoadedModel
from ..tok import Tok, load_tokenizer

LOSSES = (*LOSS_KINDS, "auto")
_ALIGNMENT_FIELDS = tuple(f.name for f in fields(BatchAlignment))


# ------------------------------------------------------------------------ models and tokenizers
def _tok_of(x) -> Tok:
    """The xtok tokenizer of a LoadedModel (anything with `.tok`), or of a bundled name / path / Tok."""
    return x.tok if hasattr(x, "tok") else load_tokenizer(x)


def _width_of(x) -> int | None:
    """Logit width of a LoadedModel; None for a bare tokenizer (the tokenizer's size is checked then)."""
    return int(x.vocab_size) if hasattr(x, "tok") and hasattr(x, "vocab_size") else None


def shares_tokenizer(student, teacher) -> bool:
    """Same tokenizer file and (when known) the same logit width: KL at every position, no W, no alignment."""
    ws, wt = _width_of(student), _width_of(teacher)
    return _tok_of(student).sha256 == _tok_of(teacher).sha256 and (ws is None or wt is None or ws == wt)


def as_loaded(model, tokenizer=None, *, what: str = "model") -> LoadedModel:
    """A LoadedModel from a LoadedModel, a (model, tokenizer) pair, or a model plus `tokenizer`."""
    if hasattr(model, "model") and hasattr(model, "tok"):
        return model
    if isinstance(model, (tuple, list)) and len(model) == 2:
        model, tokenizer = model
    if not isinstance(model, torch.nn.Module):
        raise XtokError(f"{what} must be a LoadedModel (xtok_core.load_model) or a (model, tokenizer) pair, "
                        f"got {type(model).__name__}; load it with xtok_core.load_model(spec)")
    if tokenizer is None:
        raise XtokError(f"{what} {type(model).__name__} has no xtok tokenizer; pass a LoadedModel or "
                        "(model, tokenizer) with the tokenizer's bundled name or directory")
    return LoadedModel(getattr(getattr(model, "config", None), "name_or_path", "") or what, model,
                       load_tokenizer(tokenizer))


# ------------------------------------------------------------------------ the collator
class CrossTokenizerCollator:
    """Raw examples -> one training batch for a student and its teachers (no Python loop over tokens).

    Args:
        student: LoadedModel, or its tokenizer (bundled name, directory, `Tok`).
        teachers: one or a list of the same.
        max_length: token cap per example on every side; each example keeps the longest run of whole
            aligned groups that fits on all sides, so every model sees the same text prefix.
        chat: examples carry `messages` (rendered by each model's own chat template; needs
            `xtok_core.chat`) instead of `text`.

    `collator(examples)` with examples `{"text": str, ...}` (or plain str) returns
        input_ids (B, T_s) long, attention_mask (B, T_s) long, labels (B, T_s) long (-100 on padding),
        teacher_inputs: one dict per teacher: input_ids (B, T_t) long — the teacher's own tokenization
            of the text, never student ids — attention_mask (B, T_t) long, and alignment: the
            `BatchAlignment` fields as a dict of tensors (None for a teacher sharing the student's
            tokenizer, which reads the student's ids).
    Nested dicts and lists of tensors are what Trainer/accelerate move to the device on their own.
    """

    def __init__(self, student, teachers, *, max_length: int, chat: bool = False):
        teachers = list(teachers) if isinstance(teachers, (list, tuple)) else [teachers]
        if not teachers:
            raise XtokError("CrossTokenizerCollator needs at least one teacher; pass teachers=[...]")
        if max_length is None or int(max_length) < 2:
            raise XtokError(f"max_length must be at least 2 tokens, got {max_length}; pass e.g. max_length=512")
        self.student = _tok_of(student)
        self.teachers = [_tok_of(t) for t in teachers]
        self.student_width = _width_of(student)
        self.teacher_widths = [_width_of(t) or tk.vocab_size for t, tk in zip(teachers, self.teachers)]
        self.direct = [shares_tokenizer(student, t) for t in teachers]
        self.max_length, self.chat = int(max_length), bool(chat)
        if self.chat:
            raise XtokError("chat=True needs xtok_core.chat, which this install does not have; pass examples "
                            "with a rendered 'text' and chat=False")

    def __call__(self, examples) -> dict:
        return self.encode(self.texts(examples))

    @staticmethod
    def texts(examples) -> list[str]:
        out = []
        for i, ex in enumerate(examples):  # one lookup per example
            text = ex if isinstance(ex, str) else ex.get("text") if hasattr(ex, "get") else None
            if not isinstance(text, str):
                keys = sorted(ex) if hasattr(ex, "keys") else type(ex).__name__
                raise XtokError(f"example {i} has no 'text' string (keys: {keys}); give every row a 'text' field "
                                "(or 'messages' with chat=True)")
            out.append(text)
        if not out:
            raise XtokError("empty batch; the dataset yielded no examples")
        return out

    def encode(self, texts: list[str], *, ce_rows: torch.Tensor | None = None) -> dict:
        """The batch for `texts`; `ce_rows (B,) bool` excludes rows from CE (labels -100), e.g. the
        student's own on-policy samples, which are KD-only."""
        views = [None if d else align_batch(texts, self.student, t, add_special_tokens=True, max_length=self.max_length)
                 for t, d in zip(self.teachers, self.direct)]
        views = common_student_prefix(views)
        first = next((v for v in views if v is not None), None)
        if first is not None:
            ids, mask = first.student_ids, first.student_mask
        else:
            ids, mask = encode_padded(self.student, texts, self.max_length)
        keep = mask if ce_rows is None else mask & ce_rows.to(mask.device).bool()[:, None]
        batch = {"input_ids": ids, "attention_mask": mask.long(), "labels": ids.masked_fill(~keep, -100),
                 "teacher_inputs": []}
        for m, v in enumerate(views):
            if v is None:
                batch["teacher_inputs"].append({"input_ids": ids, "attention_mask": mask.long(), "alignment": None})
                continue
            self._check_ids(m, v.teacher_ids[v.teacher_mask])
            batch["teacher_inputs"].append({"input_ids": v.teacher_ids, "attention_mask": v.teacher_mask.long(),
                                            "alignment": {k: getattr(v, k) for k in _ALIGNMENT_FIELDS}})
        if self.student_width is not None and ids.numel() and int(ids.max()) >= self.student_width:
            raise XtokError(f"the student tokenizer {self.student.name} produced id {int(ids.max())} but the student "
                            f"has {self.student_width:,} logits; resize its embeddings or use the model's own tokenizer")
        return batch

    def _check_ids(self, m: int, ids: torch.Tensor) -> None:
        if ids.numel() and (int(ids.max()) >= self.teacher_widths[m] or int(ids.min()) < 0):
            raise XtokError(f"teacher {m} ({self.teachers[m].name}) got id {int(ids.max())} outside its "
                            f"{self.teacher_widths[m]:,} logits; give the teacher the tokenizer it was trained with")

    @staticmethod
    def alignments(batch: dict) -> list[BatchAlignment | None]:
        """The `BatchAlignment` per teacher from a (device-moved) batch, for `DistillLoss`."""
        return [None if t["alignment"] is None else BatchAlignment(**t["alignment"]) for t in batch["teacher_inputs"]]


def common_student_prefix(views: list) -> list:
    """Cut every cross-tokenizer view to the student prefix all of them kept (vectorised).

    With several teachers, `align_batch` truncates each pair at its own group boundaries, so the views
    may keep different numbers of student tokens. Every view keeps the shortest one; its groups from
    the first one reaching past that cut are dropped (no pair, no teacher tokens), so one student batch
    serves all teachers. One teacher: unchanged.
    """
    cross = [v for v in views if v is not None]
    if len(cross) < 2:
        return views
    lengths = torch.stack([v.student_mask.sum(1) for v in cross]).min(0).values          # (B,)
    if all(torch.equal(v.student_mask.sum(1), lengths) for v in cross):
        return views
    out = []
    for v in views:
        if v is None:
            out.append(None)
            continue
        cut = lengths[:, None]
        dropped = (v.s_end >= cut).long().cummax(1).values.bool()                         # (B, G)

        def tokens_of_dropped(group):
            return (group >= 0) & dropped.gather(1, group.clamp(min=0))

        s_pos = torch.arange(v.student_mask.shape[1])[None, :]
        s_mask = v.student_mask & (s_pos < cut)
        s_group = v.student_group.masked_fill(tokens_of_dropped(v.student_group) | ~s_mask, -1)
        t_drop = tokens_of_dropped(v.teacher_group)
        t_mask = v.teacher_mask & ~t_drop
        t_len, s_len = max(1, int(t_mask.sum(1).max())), max(1, int(lengths.max()))
        grid = {k: getattr(v, k).masked_fill(dropped, -1) for k in ("s_start", "s_end", "t_start", "t_end", "group_kind")}
        out.append(BatchAlignment(
            student_ids=v.student_ids.masked_fill(~s_mask, 0)[:, :s_len], student_mask=s_mask[:, :s_len], student_group=s_group[:, :s_len],
            teacher_ids=v.teacher_ids.masked_fill(t_drop, 0)[:, :t_len], teacher_mask=t_mask[:, :t_len],
            teacher_group=v.teacher_group.masked_fill(t_drop, -1)[:, :t_len],
            group_mask=v.group_mask & ~dropped, **grid))
    return out


# ------------------------------------------------------------------------ the loss
_W_CACHE: dict = {}


def teacher_projection(student: LoadedModel, teacher: LoadedModel, w=None):
    """W for one teacher, sized to both models' logits: a `Projection`, a W file, or None (built, cached
    per tokenizer pair and widths). Checked against both tokenizers' hashes and both logit widths."""
    from ..projection import Projection, build_projection

    if isinstance(w, Projection):
        w.check_tokenizers(student.tok, teacher.tok)
    elif w:
        w = Projection.load(w, student=student.tok, teacher=teacher.tok)
    else:
        key = (student.tok.sha256, teacher.tok.sha256, student.vocab_size, teacher.vocab_size)
        if key not in _W_CACHE:
            _W_CACHE[key] = build_projection(student.tok, teacher.tok, student_vocab_size=student.vocab_size,
                                             teacher_vocab_size=teacher.vocab_size)
        w = _W_CACHE[key]
    w.check_logits(student.vocab_size, teacher.vocab_size)
    return w


def audit_loss(student: LoadedModel, teacher: LoadedModel) -> tuple[str, str]:
    """`auto`: the coverage audit's choice for this pair (P-KL when numerals, prices, dates or code are
    poorly covered by exact matches, else H-KL) and its one-line reason."""
    from ..audit import coverage_audit

    report = coverage_audit(student.tok, teacher.tok)
    return {"P-KL": "pkl", "H-KL": "hkl"}[report.recommendation], report.reason


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
        specs.append(Teacher(W=None if direct else teacher_projection(student, t, w), alpha=a, loss=kind,
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
        max_length: token cap per example of the default collator.

    The raw-text collator needs the `text` column, so `args.remove_unused_columns` is set to False.
    `compute_loss` returns the micro-batch mean (CE and KD are means over tokens / aligned pairs), and the
    Trainer divides it by the accumulation steps as for any custom loss. Training logs gain ce, kd,
    lambda, kd/t<m>, pairs/t<m> and unreachable_mass/t<m>, averaged over the logging interval and the
    ranks, through `self.log` (so TensorBoard/W&B callbacks see them).
    """

    loss_is_scaled_for_ga = False

    def __init__(self, model=None, args=None, *, teachers, student_tokenizer=None, projections=None,
                 loss: "str | list" = "pkl", alphas=None, temperature: float = 1.0, kd_weight: float | None = None,
                 position: str = "boundary", max_length: int = 512, teacher_device=None, data_collator=None,
                 **kwargs):
        student = as_loaded(model, student_tokenizer, what="student")
        teachers = [as_loaded(t, what=f"teacher {m}")
                    for m, t in enumerate(teachers if isinstance(teachers, (list, tuple)) else [teachers])]
        if data_collator is None:
            data_collator = CrossTokenizerCollator(student, teachers, max_length=max_length)
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
