"""Evaluation of a run: held-out CE (per token, per byte, on numerals) and top-1 agreement with each
teacher (`heldout_metrics`, any corpus, real models), and, on the generated corpus, greedy exact match
on held-out additions (`arithmetic_accuracy`).

A prompt such as "123 + 456 =" is correct when the greedy continuation, cut at the first newline,
is exactly the answer " 579" (leading space included, nothing after it). The prompts come from
`xtok_core.corpus.arithmetic_eval_set` and never occur in the training corpus.
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch

from ..corpus import arithmetic_eval_set
from ..tok import Tok
from .data import encode_padded
from .models import pad_id


@torch.no_grad()
def arithmetic_accuracy(model: torch.nn.Module, tok: Tok, *, n: int = 64, seed: int = 1234, batch_size: int = 32,
                        device="cpu", max_new_tokens: int | None = None) -> dict:
    """{"accuracy": fraction correct, "n": prompts, "examples": first 3 (prompt, answer, output)}."""
    pairs = arithmetic_eval_set(n, seed)
    # enough tokens for the longest answer digit by digit, plus the newline that ends it
    max_new = max_new_tokens or max(len(a) for _, a in pairs) + 2
    was_training = model.training
    model.eval()
    correct, examples = 0, []
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i:i + batch_size]
        ids, mask = encode_padded(tok, [p for p, _ in chunk], 64, left=True)
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.long().to(device), max_new_tokens=max_new,
                             do_sample=False, pad_token_id=pad_id(tok), eos_token_id=tok.roles.get("eos"))
        for (prompt, answer), row in zip(chunk, out[:, ids.shape[1]:].tolist()):
            text = tok.decode(row, skip_special_tokens=True).split("\n", 1)[0]
            correct += text == answer
            if len(examples) < 3:
                examples.append((prompt, answer, text))
    model.train(was_training)
    return {"accuracy": correct / len(pairs), "n": len(pairs), "examples": examples}


# ------------------------------------------------------------------------ held-out text (any corpus, real models)
_TOP_COLUMN: dict = {}


def _w_top_column(w) -> np.ndarray:
    """Per student row, the teacher column W puts the most weight on (exact rows: the same bytes)."""
    key = id(w)
    if key not in _TOP_COLUMN:
        _TOP_COLUMN.clear()
        _TOP_COLUMN[key] = np.asarray(w.matrix.argmax(axis=1)).ravel().astype(np.int64)
    return _TOP_COLUMN[key]


def _digit_tokens(tok: Tok) -> np.ndarray:
    return np.array([bool(b) and any(48 <= c <= 57 for c in b) for b in (x or b"" for x in tok.token_bytes)], dtype=bool)


@torch.no_grad()
def heldout_metrics(student, teachers: list, projections: list, texts: list[str], *, seq_len: int, batch_size: int = 8,
                    device="cpu", autocast=None) -> dict:
    """Held-out evaluation that fits pretrained models and any text:
    eval_ce (nats per student token), eval_ce_per_byte (nats per UTF-8 byte predicted: comparable across
    tokenizers), eval_numeral_ce (nats per student token holding a digit; None without one) and, per
    teacher i, eval_top1_agreement/t<i>: on aligned group ends (where both models predict the same next
    byte), how often the student's top token, carried through W to its heaviest teacher column, is the
    teacher's top token (a teacher with the student's tokenizer: argmax against argmax)."""
    from ..align import align_batch

    if not texts:
        return {}
    autocast = autocast or nullcontext()
    tok = student.tok
    digits = torch.from_numpy(np.pad(_digit_tokens(tok), (0, max(0, student.vocab_size - tok.vocab_size))))
    blen = torch.from_numpy(np.pad(tok.byte_lengths, (0, max(0, student.vocab_size - tok.vocab_size))))
    sums = torch.zeros(5, dtype=torch.float64)   # nats, tokens, bytes, numeral nats, numeral tokens
    agree = [[0, 0] for _ in teachers]
    was_training = student.model.training
    student.model.eval()
    for i in range(0, len(texts), batch_size):
        chunk = texts[i:i + batch_size]
        ids, mask = encode_padded(tok, chunk, seq_len)
        ids, mask = ids.to(device), mask.to(device)
        with autocast:
            logits = student.model(input_ids=ids, attention_mask=mask.long()).logits.float()
        tgt, m = ids[:, 1:], mask[:, 1:] & mask[:, :-1]
        nll = -torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, tgt[..., None])[..., 0]
        nll, tgt_c, m_c = nll.double().cpu(), tgt.cpu(), m.cpu()
        dm = digits[tgt_c] & m_c
        sums += torch.stack([nll[m_c].sum(), m_c.sum().double(), blen[tgt_c][m_c].sum().double(), nll[dm].sum(),
                             dm.sum().double()])
        for k, (t, w) in enumerate(zip(teachers, projections)):
            if getattr(t, "model", None) is None:
                continue  # a teacher cache: no teacher forward pass to compare with
            if w is None:
                with autocast:
                    t_top = t.model(input_ids=ids, attention_mask=mask.long()).logits.argmax(-1)
                agree[k][0] += int(((t_top == logits.argmax(-1)) & mask).sum())
                agree[k][1] += int(mask.sum())
                continue
            a = align_batch(chunk, tok, t.tok, add_special_tokens=True, max_length=seq_len).to(device)
            with autocast:
                t_top = t.model(input_ids=a.teacher_ids, attention_mask=a.teacher_mask.long()).logits.argmax(-1)
            s_top = student.model(input_ids=a.student_ids, attention_mask=a.student_mask.long()).logits.argmax(-1) \
                if a.student_ids.shape != ids.shape or not torch.equal(a.student_ids, ids) else logits.argmax(-1)
            g = a.group_mask
            s_at = s_top.gather(1, a.s_end.clamp(min=0))[g]
            t_at = t_top.gather(1, a.t_end.clamp(min=0))[g]
            mapped = torch.from_numpy(_w_top_column(w)).to(s_at.device)[s_at]
            agree[k][0] += int((mapped == t_at).sum())
            agree[k][1] += int(g.sum())
    student.model.train(was_training)
    nats, n, nbytes, num_nats, num_n = sums.tolist()
    out = {"eval_ce": nats / max(n, 1), "eval_ce_per_byte": nats / max(nbytes, 1),
           "eval_numeral_ce": num_nats / num_n if num_n else None}
    for k, (hit, total) in enumerate(agree):
        if total:
            out[f"eval_top1_agreement/t{k}"] = hit / total
    return out
