"""Vocabulary overlap between tokenizers, measured on canonical bytes.

Our measure: for tokenizers A (row) and B (column), `overlap(A, B)` is the share of A's distinct
regular-token byte strings (special tokens, id holes and empty tokens left out) that are also the
bytes of a regular B token. Tokens compare by the bytes they add to text (`Ġ`/`▁` → space,
`<0x0A>` → newline, `##x` → `x`), never by display string, which is W's exact rule: the share is
(up to byte-fallback twins) the share of A's rows of W(A→B) that are `exact`. It is asymmetric (a
small vocabulary inside a large one scores 1 one way) and the diagonal is 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .tok import Tok

_SETS: dict = {}


def _regular(tok: Tok) -> np.ndarray:
    """(V,) bool: tokens with bytes that are not special."""
    n = len(tok.token_bytes)
    return (np.asarray(tok.byte_lengths)[:n] > 0) & ~np.asarray(tok.special, dtype=bool)[:n]


def _bytes(tok: Tok) -> pd.Series:
    return pd.Series(tok.token_bytes, dtype=object)


def byte_set(tok: Tok) -> frozenset:
    """The distinct byte strings of `tok`'s regular tokens, cached per tokenizer hash."""
    if tok.sha256 not in _SETS:
        _SETS[tok.sha256] = frozenset(_bytes(tok)[_regular(tok)].tolist())
    return _SETS[tok.sha256]


def overlap_matrix(toks: list[Tok]) -> np.ndarray:
    """(n, n) float64: entry [i, j] = overlap(toks[i], toks[j]) (see the module docstring)."""
    sets = [byte_set(t) for t in toks]
    m = np.ones((len(toks), len(toks)))
    for i, a in enumerate(sets):
        for j, b in enumerate(sets):
            if i != j:
                m[i, j] = len(a & b) / max(len(a), 1)  # set intersection runs in C over the whole vocabulary
    return m


@dataclass
class Split:
    """Regular token ids of a pair by whether the other side has their bytes."""

    student_only: np.ndarray   # student ids whose bytes no teacher token has
    teacher_only: np.ndarray   # teacher ids whose bytes no student token has
    both: np.ndarray           # student ids whose bytes a teacher token has


def _members(tok: Tok, other: frozenset) -> np.ndarray:
    """(V,) bool: tokens whose bytes are in `other`. `map` of the set's C `__contains__` runs no Python
    bytecode per token (pandas' `isin` hashes bytes as C strings and would merge b"\\x00" with b"")."""
    return np.fromiter(map(other.__contains__, tok.token_bytes), dtype=bool, count=len(tok.token_bytes))


def split_vocabularies(student: Tok, teacher: Tok) -> Split:
    """Which regular tokens of each side the other side has."""
    s_reg, t_reg = _regular(student), _regular(teacher)
    s_in = _members(student, byte_set(teacher)) & s_reg
    t_in = _members(teacher, byte_set(student)) & t_reg
    return Split(np.flatnonzero(s_reg & ~s_in), np.flatnonzero(t_reg & ~t_in), np.flatnonzero(s_in))
