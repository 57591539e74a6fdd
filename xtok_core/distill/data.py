"""Batches of text for a run, and the student's own samples for on-policy steps.

Batches are a pure function of (step, rank): examples are packed once from the generated corpus,
shuffled per epoch with the run's seed, and step `s` on rank `r` of `w` reads the slice
`(s * w + r) * B ... + B`. A resumed run therefore needs only the step number to see exactly the
batches it would have seen.

Off-policy, every model tokenizes the raw text itself. On-policy, the student's sampled ids are
decoded to text first and every tokenizer (the student's included) re-tokenizes that text, so the
teacher never receives ids from a vocabulary it does not have.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from ..corpus import generate_corpus
from ..tok import Tok
from .models import pad_id


def pack_examples(texts: list[str], text_chars: int) -> list[str]:
    """Join consecutive texts with blank lines into examples of about `text_chars` characters."""
    out, cur = [], ""
    for t in texts:
        cur = f"{cur}\n\n{t}" if cur else t
        if len(cur) >= text_chars:
            out.append(cur)
            cur = ""
    if cur:
        out.append(cur)
    return out


class TextBatches:
    """Deterministic batches of training texts (see the module docstring)."""

    def __init__(self, corpus_lines: int, text_chars: int, batch_size: int, seed: int,
                 rank: int = 0, world: int = 1, fixed: bool = False):
        self.examples = pack_examples(generate_corpus(corpus_lines, seed), text_chars)
        self.batch_size, self.seed, self.rank, self.world, self.fixed = batch_size, seed, rank, world, fixed
        self._orders: dict = {}

    def __call__(self, step: int) -> list[str]:
        if self.fixed:
            step = 0
        n = len(self.examples)
        start = (step * self.world + self.rank) * self.batch_size
        out = []
        for i in range(start, start + self.batch_size):
            epoch, j = divmod(i, n)
            out.append(self.examples[self._order(epoch)[j]])
        return out

    def _order(self, epoch: int) -> list:
        if epoch not in self._orders:
            self._orders = {epoch: random.Random(self.seed * 1_000_003 + epoch).sample(range(len(self.examples)), len(self.examples))}
        return self._orders[epoch]


def encode_padded(tok: Tok, texts: list[str], max_length: int, *, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (B, T) long, mask (B, T) bool) with the tokenizer's special tokens (bos), truncated to
    `max_length` and padded right (training) or left (generation)."""
    encs = tok.encode_batch(texts, add_special_tokens=True)
    rows = [e.ids[:max_length] for e in encs]
    T = max(1, max(len(r) for r in rows))
    ids = np.full((len(rows), T), pad_id(tok), dtype=np.int64)
    mask = np.zeros((len(rows), T), dtype=bool)
    for i, r in enumerate(rows):  # one slice per example, not per token
        sl = slice(T - len(r), T) if left else slice(0, len(r))
        ids[i, sl] = r
        mask[i, sl] = True
    return torch.from_numpy(ids), torch.from_numpy(mask)


def split_prompt(text: str) -> str:
    """The prompt an on-policy sample continues: the first line up to its first '=', else the first
    half of the first line. Arithmetic then asks the student for the result."""
    line = text.split("\n", 1)[0]
    if "=" in line:
        return line[: line.index("=") + 1]
    return line[: max(1, len(line) // 2)]


@torch.no_grad()
def sample_continuations(model: torch.nn.Module, tok: Tok, prompts: list[str], *, max_new_tokens: int,
                         temperature: float, max_length: int, device) -> list[list[int]]:
    """The student's sampled continuation ids for each prompt (prompt excluded, padding removed)."""
    ids, mask = encode_padded(tok, prompts, max_length, left=True)
    ids, mask = ids.to(device), mask.to(device)
    out = model.generate(input_ids=ids, attention_mask=mask.long(), max_new_tokens=max_new_tokens,
                         do_sample=temperature > 0, temperature=max(temperature, 1e-5), top_k=0, top_p=1.0,
                         pad_token_id=pad_id(tok), eos_token_id=tok.roles.get("eos"))
    new = out[:, ids.shape[1]:].tolist()
    eos = tok.roles.get("eos")
    return [r[: r.index(eos)] if eos in r else r for r in new]


def decode_samples(tok: Tok, prompts: list[str], continuations: list[list[int]]) -> list[str]:
    """Prompt + decoded continuation: the text every tokenizer re-tokenizes on an on-policy step.
    The continuation is decoded after the prompt's ids, so decoders that treat a leading space
    specially (SentencePiece) produce the same characters as in context."""
    out = []
    for p, c in zip(prompts, continuations):  # one decode per example
        p_ids = tok.encode(p).ids.tolist()
        head, full = tok.decode(p_ids), tok.decode(p_ids + list(c))
        out.append(p + full[len(head):] if full.startswith(head) else full)
    return out
