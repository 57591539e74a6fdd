"""Conversations for a run: `--data chat.jsonl` (rows with `messages`) or `--data chat` (the bundled set).

Each step's batch is a pure function of (step, rank), as for text (`data.TextBatches`). A step renders
the conversations with every model's own chat template (`xtok_core.chat`); the student and every teacher
see the same messages, cut from the start (whole messages) so that every rendering fits `--seq-len`.
CE and KD cover the assistant's content and its end-of-turn token (`--loss-on assistant`) or the whole
rendering (`--loss-on all`). On-policy rows: the student writes the last assistant turn from its own
rendering; the text, not its ids, goes back into the conversation, which each teacher renders itself.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from ..chat import align_chat_batch, chat_template_of, check_messages, check_trainable, fit_conversations
from ..errors import XtokError

BUNDLED = ("chat", "chat:train", "chat:eval")


def is_chat_data(spec) -> bool:
    """True for the bundled chat set and for .jsonl files whose first row has `messages`."""
    if spec is None:
        return False
    if str(spec) in BUNDLED:
        return True
    p = Path(str(spec)).expanduser()
    if p.suffix != ".jsonl" or not p.is_file():
        return False
    with open(p, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                try:
                    row = json.loads(line)
                except ValueError:
                    return False
                return isinstance(row, dict) and "messages" in row
    return False


def read_chat_data(spec, seed: int = 0) -> tuple[list, list]:
    """(conversations, names): every row checked (one line naming the row for a bad one)."""
    if str(spec) in BUNDLED:
        from ..corpus import chat_set

        split = "eval" if str(spec) == "chat:eval" else "train"
        convs = chat_set(split, seed)
        return convs, [f"chat set ({split}) conversation {i}" for i in range(len(convs))]
    p = Path(str(spec)).expanduser()
    convs, names = [], []
    with open(p, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):  # rows are numbered by line, from 1
            if not line.strip():
                continue
            name = f"{p.name} row {n}"
            try:
                row = json.loads(line)
            except ValueError as e:
                raise XtokError(f"{name}: not valid JSON ({e.msg}); write one JSON object per line") from None
            if not isinstance(row, dict) or "messages" not in row:
                raise XtokError(f"{name}: no 'messages' field; chat rows are {{\"messages\": [{{\"role\": ..., \"content\": ...}}]}}")
            msgs = check_messages(row["messages"], name)
            check_trainable(msgs, name)
            convs.append(msgs)
            names.append(name)
    if not convs:
        raise XtokError(f"{p} holds no conversation; add rows with a 'messages' list")
    return convs, names


def split_chat_data(spec, heldout_fraction: float = 0.0, seed: int = 0) -> tuple[list, list, list]:
    """(train conversations, their names, held-out conversations). The bundled set has its own held-out
    split (`chat:eval`); a file's conversations are held out by the hash of their JSON, as text documents
    are (`data.split_heldout`), so the split does not depend on the file's order or the seed."""
    from .data import split_heldout

    convs, names = read_chat_data(spec, seed)
    if str(spec) in BUNDLED:
        return convs, names, (read_chat_data("chat:eval", seed)[0] if str(spec) != "chat:eval" else [])
    keys = [json.dumps(c, sort_keys=True, ensure_ascii=False) for c in convs]
    _, held_keys = split_heldout(keys, heldout_fraction)
    held = set(held_keys)
    train = [(c, n) for c, n, k in zip(convs, names, keys) if k not in held]
    return [c for c, _ in train], [n for _, n in train], [c for c, k in zip(convs, keys) if k in held]


def chat_heldout_texts(spec, heldout_fraction: float = 0.0, seed: int = 0) -> list:
    """The held-out conversations as plain text (their contents, blank-line separated): what the run's
    held-out CE reads, the same text for every tokenizer."""
    return ["\n\n".join(m["content"] for m in c) for c in split_chat_data(spec, heldout_fraction, seed)[2]]


class ChatBatches:
    """Deterministic batches of conversations: step `s` on rank `r` of `w` reads conversations
    `(s * w + r) * B ... + B` of the epoch's shuffled order (seeded), like `TextBatches`; held-out
    conversations (`split_chat_data`) are never trained on."""

    def __init__(self, spec, batch_size: int, seed: int, rank: int = 0, world: int = 1, fixed: bool = False,
                 heldout_fraction: float = 0.0):
        self.conversations, self.names, _ = split_chat_data(spec, heldout_fraction, seed)
        self.batch_size, self.seed, self.rank, self.world, self.fixed = batch_size, seed, rank, world, fixed
        self._orders: dict = {}

    def __call__(self, step: int) -> tuple[list, list]:
        if self.fixed:
            step = 0
        n = len(self.conversations)
        start = (step * self.world + self.rank) * self.batch_size
        picked = []
        for i in range(start, start + self.batch_size):
            epoch, j = divmod(i, n)
            picked.append(self._order(epoch)[j])
        return [self.conversations[k] for k in picked], [self.names[k] for k in picked]

    def _order(self, epoch: int) -> list:
        if epoch not in self._orders:
            self._orders = {epoch: random.Random(self.seed * 1_000_003 + epoch).sample(range(len(self.conversations)),
                                                                                      len(self.conversations))}
        return self._orders[epoch]


def check_templates(models, chat_template=None) -> None:
    """At the start of a run: every model needs a chat template (its own, or --chat-template FILE)."""
    for m in models:
        try:
            chat_template_of(m.tok, None)
        except XtokError:
            if chat_template is None:
                raise XtokError(f"model {m.spec} (tokenizer {m.tok.name}) has no chat template, so it cannot read "
                                f"--data conversations; pass --chat-template FILE (a .jinja file) or pick an instruct model") from None
            chat_template_of(m.tok, chat_template)


def template_for(tok, chat_template=None):
    """The template a run renders `tok` with: its own, else the run's --chat-template."""
    try:
        chat_template_of(tok, None)
        return None
    except XtokError:
        return chat_template


def chat_alignments(conversations, names, student, teachers, *, max_length: int, loss_on: str, chat_template=None):
    """One `ChatBatch` per teacher for the same conversations, cut once for all models. Returns
    (cross_alignments, kept rows)."""
    toks = [student.tok] + [t.tok for t in teachers]
    templates = [template_for(t, chat_template) for t in toks]
    fitted, rows = fit_conversations(conversations, toks, max_length, templates=templates, names=names)
    if not fitted:
        raise XtokError(f"no conversation of this batch fits in --seq-len {max_length} tokens for every model, even cut "
                        f"to its last exchange; raise --seq-len")
    kept_names = [names[i] for i in rows]
    cross_alignments = [align_chat_batch(fitted, student.tok, t.tok, loss_on=loss_on, student_template=templates[0],
                                         teacher_template=tt, names=kept_names)
                        for t, tt in zip(teachers, templates[1:])]
    return cross_alignments, fitted, rows


def chat_step(batches: ChatBatches, step: int, student, teachers, *, same_tokenizer, n_on_policy: int, max_length: int,
              loss_on: str, chat_template=None, max_new_tokens: int = 64, temperature: float = 1.0, device=None,
              autocast=None):
    """One step's conversations as a `ChatStep`: alignments per teacher (None for a teacher with the
    student's tokenizer), the student's ids, mask and CE labels, the conversations as trained.

    The first `n_on_policy` conversations get their last assistant turn written by the student; CE then
    skips those rows (the student's own text is no target), KD keeps them."""
    import torch
    from contextlib import nullcontext

    from ..chat import align_chat_batch, on_policy_conversations

    convs, names = batches(step)
    if n_on_policy:
        with autocast or nullcontext():
            convs[:n_on_policy] = on_policy_conversations(
                student.model, student.tok, convs[:n_on_policy], max_new_tokens=max_new_tokens, temperature=temperature,
                chat_template=template_for(student.tok, chat_template), device=device, names=names[:n_on_policy])
    cross = [t for t in teachers if not same_tokenizer(student, t)]
    cross_alignments, fitted, rows = chat_alignments(convs, names, student, cross, max_length=max_length,
                                                     loss_on=loss_on, chat_template=chat_template)
    if not cross_alignments:  # no teacher to align: the student's own rendering and masks
        st = template_for(student.tok, chat_template)
        first = align_chat_batch(fitted, student.tok, student.tok, loss_on=loss_on, student_template=st,
                                 teacher_template=st, names=[names[i] for i in rows])
    else:
        first = cross_alignments[0]
    it = iter(cross_alignments)
    alignments = [None if same_tokenizer(student, t) else next(it).to(device) for t in teachers]
    sampled = torch.tensor([r < n_on_policy for r in rows])
    labels = first.labels.masked_fill(sampled[:, None], -100)
    return ChatStep(alignments, first.student_ids.to(device), first.student_mask.to(device), labels.to(device),
                    fitted, rows, int(sampled.sum()))


@dataclass
class ChatStep:
    alignments: list        # per teacher: ChatBatch, or None for a teacher with the student's tokenizer
    student_ids: object     # (B, T_s) long
    student_mask: object    # (B, T_s) bool
    labels: object          # (B, T_s) long: CE on trained tokens of corpus rows, -100 elsewhere
    conversations: list     # the conversations as rendered (cut to fit; on-policy turns written by the student)
    rows: list              # index in the step's batch of each row
    n_sampled: int          # rows whose last assistant turn the student wrote
