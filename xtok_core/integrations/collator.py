"""`CrossTokenizerCollator`: raw examples -> the student's ids and labels, every teacher's own ids of the
same text, and the alignment tensors `DistillLoss` takes. Shared by `xtok distill`'s loop and the Hugging
Face Trainer (`xtok_core.integrations.hf`); it needs torch and the tokenizers, not transformers.
"""

from __future__ import annotations

from dataclasses import fields

import torch

from ..align import BatchAlignment, align_batch
from ..errors import XtokError
from ..models import LoadedModel
from ..tok import Tok, load_tokenizer

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
        teachers: one or a list of the same (an empty list gives student-only batches, for CE alone).
        max_length: token cap per example on every side; each example keeps the longest run of whole
            aligned groups that fits on all sides, so every model sees the same text prefix.
        chat: examples carry `messages` instead of `text`; each model renders them with its own chat
            template and only the assistant's content (and end-of-turn) is trained (`encode_chat`).

    `collator(examples)` with examples `{"text": str, ...}` (or plain str) returns
        input_ids (B, T_s) long, attention_mask (B, T_s) long, labels (B, T_s) long (-100 on padding),
        teacher_inputs: one dict per teacher: input_ids (B, T_t) long — the teacher's own tokenization
            of the text, never student ids — attention_mask (B, T_t) long, and alignment: the
            `BatchAlignment` fields as a dict of tensors (None for a teacher sharing the student's
            tokenizer, which reads the student's ids).
    Nested dicts and lists of tensors are what Trainer/accelerate move to the device on their own.
    """

    def __init__(self, student, teachers, *, max_length: int, chat: bool = False):
        teachers = list(teachers) if isinstance(teachers, (list, tuple)) else [teachers]  # [] : student-only batches
        if max_length is None or int(max_length) < 2:
            raise XtokError(f"max_length must be at least 2 tokens, got {max_length}; pass e.g. max_length=512")
        self.student = _tok_of(student)
        self.teachers = [_tok_of(t) for t in teachers]
        self.student_width = _width_of(student)
        self.teacher_widths = [_width_of(t) or tk.vocab_size for t, tk in zip(teachers, self.teachers)]
        self.direct = [shares_tokenizer(student, t) for t in teachers]
        self.max_length, self.chat = int(max_length), bool(chat)

    def __call__(self, examples) -> dict:
        if self.chat:
            return self.encode_chat(self.conversations(examples))
        return self.encode(self.texts(examples))

    @staticmethod
    def conversations(examples) -> list:
        return _column(examples, "messages", list, "'messages' list", "give every row 'messages' (role/content "
                       "dicts) or use chat=False with a 'text' field")

    @staticmethod
    def texts(examples) -> list[str]:
        return _column(examples, "text", str, "'text' string", "give every row a 'text' field (or 'messages' with chat=True)")

    def encode(self, texts: list[str], *, ce_rows: torch.Tensor | None = None) -> dict:
        """The batch for `texts`; `ce_rows (B,) bool` excludes rows from CE (labels -100), e.g. the
        student's own on-policy samples, which are KD-only."""
        alignments = [None if d else align_batch(texts, self.student, t, add_special_tokens=True, max_length=self.max_length)
                 for t, d in zip(self.teachers, self.direct)]
        alignments = common_student_prefix(alignments)
        first = next((v for v in alignments if v is not None), None)
        if first is not None:
            ids, mask = first.student_ids, first.student_mask
        else:
            from ..distill.data import encode_padded  # here: the distill package imports this module

            ids, mask = encode_padded(self.student, texts, self.max_length)
        keep = mask if ce_rows is None else mask & ce_rows.to(mask.device).bool()[:, None]
        return self._batch(ids, mask, ids.masked_fill(~keep, -100), alignments)

    def encode_chat(self, conversations: list) -> dict:
        """The batch for conversations (`messages` lists), each model rendering its own chat template
        (`xtok_core.chat.align_chat_batch`): CE labels and KD pairs only on the assistant's content and
        end-of-turn tokens. Conversations too long are cut at their start, whole messages at a time, by
        one cut that fits every pair; one whose last exchange fits no pair is left out of the batch."""
        from ..chat import align_chat_batch

        cross = [t for t, d in zip(self.teachers, self.direct) if not d] or [self.student]
        convs, names = list(conversations), [f"example {i}" for i in range(len(conversations))]
        for _ in range(len(cross)):
            alignments = [align_chat_batch(convs, self.student, t, max_length=self.max_length, names=names) for t in cross]
            rows = [v.rows.tolist() for v in alignments]
            kept = [dict(zip(r, v.kept.tolist())) for r, v in zip(rows, alignments)]
            if all(r == rows[0] for r in rows) and all(k == kept[0] for k in kept):
                break
            # pairs cut differently: every conversation takes the deepest cut, then all pairs align again
            common = sorted(set.intersection(*(set(r) for r in rows)))
            convs = [_cut_conversation(convs[i], max(k[i] for k in kept)) for i in common]
            names = [names[i] for i in common]
        else:
            raise XtokError(f"the teachers' templates cut {names[0]}... differently at max_length {self.max_length}; "
                            "raise max_length or shorten the conversations")
        first, it = alignments[0], iter(alignments)
        alignments = [None if d else next(it) for d in self.direct]  # a same-tokenizer teacher reads the student's ids
        return self._batch(first.student_ids, first.student_mask, first.labels, alignments)

    def _batch(self, ids, mask, labels, alignments) -> dict:
        batch = {"input_ids": ids, "attention_mask": mask.long(), "labels": labels, "teacher_inputs": []}
        for m, v in enumerate(alignments):
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


def _column(examples, key: str, kind: type, what: str, fix: str) -> list:
    """`example[key]` of every example (a bare `kind` value stands for itself), or one line naming the row."""
    out = []
    for i, ex in enumerate(examples):  # one lookup per example
        value = ex if isinstance(ex, kind) else ex.get(key) if hasattr(ex, "get") else None
        if not isinstance(value, kind):
            keys = sorted(ex) if hasattr(ex, "keys") else type(ex).__name__
            raise XtokError(f"example {i} has no {what} (keys: {keys}); {fix}")
        out.append(value)
    if not out:
        raise XtokError("empty batch; the dataset yielded no examples")
    return out


def _cut_conversation(messages: list, k: int) -> list:
    """`messages` from message k on, a leading system message kept (the chat module's truncation rule)."""
    head = messages[:1] if k and messages[0].get("role") == "system" else []
    return messages if k == 0 else head + messages[k:]


def common_student_prefix(alignments: list) -> list:
    """Cut every cross-tokenizer view to the student prefix all of them kept (vectorised).

    With several teachers, `align_batch` truncates each pair at its own group boundaries, so the alignments
    may keep different numbers of student tokens. Every view keeps the shortest one; its groups from
    the first one reaching past that cut are dropped (no pair, no teacher tokens), so one student batch
    serves all teachers. One teacher: unchanged.
    """
    cross = [v for v in alignments if v is not None]
    if len(cross) < 2:
        return alignments
    lengths = torch.stack([v.student_mask.sum(1) for v in cross]).min(0).values          # (B,)
    if all(torch.equal(v.student_mask.sum(1), lengths) for v in cross):
        return alignments
    out = []
    for v in alignments:
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
