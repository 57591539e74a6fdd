"""Batches of text for a run, and the student's own samples for on-policy steps.

Batches are a pure function of (step, rank): examples are packed once from the generated corpus,
shuffled per epoch with the run's seed, and step `s` on rank `r` of `w` reads the slice
`(s * w + r) * B ... + B`. A resumed run therefore needs only the step number to see exactly the
batches it would have seen.

Off-policy, every model tokenizes the raw text itself. On-policy, the student's sampled ids are
decoded to text first and every tokenizer (the student's included) re-tokenizes that text, so the
teacher never receives ids from a vocabulary it does not have.

User data (`--data PATH`, see `read_documents`): documents are read and checked before the run
directory is created (a bad file leaves nothing behind), a deterministic share is held out for
evaluation by a hash of each document's text, and every document longer than the context is cut into
windows of at most `seq_len - 1` student tokens (room for bos) at character boundaries: no text is
dropped. A window may need more teacher than student tokens; the teacher side is then cut at
`seq_len` like any other row.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path

import numpy as np
import torch

from ..corpus import generate_corpus
from ..errors import XtokError
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
                 rank: int = 0, world: int = 1, fixed: bool = False, examples: list[str] | None = None):
        """`examples`: the run's own training texts (from --data); default: the generated corpus, packed."""
        self.examples = examples if examples is not None else pack_examples(generate_corpus(corpus_lines, seed), text_chars)
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


# ------------------------------------------------------------------------ user data (--data PATH)
DATA_SUFFIXES = (".txt", ".jsonl", ".parquet", ".csv")


def read_documents(path: "str | Path", text_field: str = "text") -> list[str]:
    """The documents of a user file, checked: `.txt` (documents separated by blank lines), `.jsonl`
    (one object per line with `text_field`), `.parquet` / `.csv` (a `text_field` column, read with the
    `datasets` library). Raises XtokError with one line for an unreadable, empty or non-UTF-8 file, a
    missing field (naming the fields found) and a row whose field is not text."""
    p = Path(path).expanduser()
    suffix = p.suffix.lower()
    if suffix not in DATA_SUFFIXES:
        raise XtokError(f"--data {p}: unknown file type {suffix or '(none)'!r}; pass a .txt, .jsonl, .parquet or .csv file")
    if not p.is_file():
        raise XtokError(f"--data {p}: no such file; check the path")
    if p.stat().st_size == 0:
        raise XtokError(f"--data {p} is empty; pass a file with at least one document")
    if suffix in (".txt", ".jsonl", ".csv"):
        raw = p.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise XtokError(f"--data {p} is not UTF-8: byte 0x{raw[e.start]:02x} at byte offset {e.start}; "
                            f"re-encode the file as UTF-8 (e.g. iconv -t UTF-8)") from None
    if suffix == ".txt":
        docs = [d.strip("\n") for d in re.split(r"\n[ \t\r]*\n", text.replace("\r\n", "\n"))]
    else:
        docs = [row_text(row, text_field, p, i) for i, row in enumerate(_rows(p, suffix))]
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise XtokError(f"--data {p} holds no text (only blank documents); pass a file with at least one document")
    return docs


def row_text(row: dict, text_field: str, path: Path, i: int) -> str:
    """The training text of one structured row. Extend here for other row shapes (a `messages` row,
    for chat data, is rendered by its own reader in chat_data.py)."""
    if text_field not in row:
        found = ", ".join(sorted(map(str, row))) or "none"
        raise XtokError(f"--data {path}: row {i} has no field {text_field!r} (fields found: {found}); "
                        f"pass --text-field NAME or add the field")
    value = row[text_field]
    if value is None:
        return ""
    if not isinstance(value, str):
        raise XtokError(f"--data {path}: row {i} field {text_field!r} is {type(value).__name__}, not text; "
                        f"pass the field that holds the text with --text-field")
    return value


def _rows(p: Path, suffix: str):
    """Rows as dicts: .jsonl line by line (so the line number of a bad row can be named), the columnar
    formats through `datasets`."""
    if suffix == ".jsonl":
        for n, line in enumerate(p.read_text(encoding="utf-8").splitlines()):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise XtokError(f"--data {p}: line {n + 1} is not JSON ({e}); fix or remove it") from None
            if not isinstance(row, dict):
                raise XtokError(f"--data {p}: line {n + 1} is a JSON {type(row).__name__}, not an object with a text field")
            yield row
        return
    try:
        import datasets
    except ImportError:
        raise XtokError("reading .parquet and .csv needs the datasets package; install it with: pip install datasets==5.2.0") from None
    try:
        datasets.disable_progress_bars()
        ds = (datasets.Dataset.from_parquet if suffix == ".parquet" else datasets.Dataset.from_csv)(str(p), keep_in_memory=True)
    except Exception as e:  # noqa: BLE001 - pyarrow raises many types for one damaged file
        first = (str(e).splitlines() or [type(e).__name__])[0][:160]
        raise XtokError(f"--data {p} cannot be read as {suffix[1:]} ({first}); check the file") from None
    yield from ds


def split_heldout(docs: list[str], fraction: float) -> tuple[list[str], list[str]]:
    """(train, held out): a document is held out when the hash of its text falls below `fraction`, so
    the split does not depend on the file's order or the seed. With `fraction` > 0 at least one
    document is held out and at least one is trained on (when there are two)."""
    if fraction <= 0 or len(docs) < 2:
        return list(docs), []
    h = np.array([int.from_bytes(hashlib.sha256(d.encode()).digest()[:8], "big") / 2**64 for d in docs])
    held = h < fraction
    if not held.any():
        held[int(h.argmin())] = True
    if held.all():
        held[int(h.argmax())] = False
    return [d for d, x in zip(docs, held) if not x], [d for d, x in zip(docs, held) if x]


def window_documents(docs: list[str], tok: Tok, max_tokens: int) -> list[str]:
    """Each document as windows of at most `max_tokens` tokens of `tok`, cut at token starts moved back to
    a UTF-8 character start: the windows concatenate to the document exactly (nothing dropped)."""
    out = []
    for doc, enc in zip(docs, tok.encode_batch(docs)):  # one encode per document, cuts vectorised
        if len(enc) <= max_tokens:
            out.append(doc)
            continue
        raw = doc.encode("utf-8")
        cuts = enc.offsets[max_tokens::max_tokens, 0].tolist()
        bounds = [0]
        for c in cuts:
            while 0 < c < len(raw) and (raw[c] & 0xC0) == 0x80:
                c -= 1
            if c > bounds[-1]:
                bounds.append(c)
        bounds.append(len(raw))
        out.extend(raw[a:b].decode("utf-8") for a, b in zip(bounds, bounds[1:]) if b > a)
    return out
