"""The X-Token projection matrix W (SPEC §2).

W is V_s x V_t (student rows, teacher columns), every row a probability distribution over teacher
tokens, so `softmax(z_s) @ W` carries a student distribution into the teacher's vocabulary.

How a row is made, in order:
  1. exact    the student token's bytes are a teacher token's bytes: weight 1 on it.
  2. re-tokenize  otherwise the teacher tokenizes those bytes (no special tokens, no dummy prefix);
              the first `max_pieces` pieces get base*decay**i (0.9, 0.09, 0.009, 0.0009), repeated
              pieces add up in one column, the `top_k` largest stay, the row is normalised.
              More pieces than `max_pieces`: kind `truncated`. Bytes the teacher cannot express:
              the teacher's unk (or eos if it has none), kind `unmapped`.
  3. special  special tokens map by role (bos->bos, eos->eos, pad->pad, unk->unk) with weight 1;
              the rest, and roles the teacher lacks, map to the teacher's eos (kind `special`,
              `role_matched` False).
  4. padding  ids past the tokenizer (model logits padded past the vocabulary) and id holes map to
              the teacher's eos; padding columns stay empty.

The build is batched: exact matches are one hash join over canonical bytes (`Tok.bytes_index`), only
the remaining tokens are re-tokenized (one `encode_batch` per chunk), and the CSR is assembled with NumPy.
This module builds W; explanation.py explains a row with the same weight rule (`piece_weights`), and
formats.py reads and writes its files.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from .errors import XtokError
from .tok import Tok, load_tokenizer

FORMAT_VERSION = 1
ROW_KINDS = ("exact", "retokenized", "truncated", "special", "unmapped", "padding")
EXACT, RETOKENIZED, TRUNCATED, SPECIAL, UNMAPPED, PADDING = range(len(ROW_KINDS))
ROLE_ORDER = ("bos", "eos", "pad", "unk")
_CHUNK = 8192  # re-tokenization batch: large enough for encode_batch, small enough for progress


def _xtok_version() -> str:
    from . import __version__

    return __version__


def _short(h: str) -> str:
    return h[:12] + "…"


@dataclass
class _Pieces:
    """Flattened teacher pieces of many student rows: piece j belongs to rows[j], position pos[j]."""

    rows: np.ndarray
    cols: np.ndarray
    pos: np.ndarray
    counts: np.ndarray  # per row in `row_ids`: pieces before truncation
    row_ids: np.ndarray


def _flatten(row_ids: np.ndarray, id_lists: list) -> _Pieces:
    counts = np.fromiter(map(len, id_lists), dtype=np.int64, count=len(id_lists))
    cols = np.fromiter((i for ids in id_lists for i in ids), dtype=np.int64, count=int(counts.sum()))
    rows = np.repeat(row_ids, counts)
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    pos = np.arange(len(cols), dtype=np.int64) - starts
    return _Pieces(rows, cols, pos, counts, row_ids)


def _encode_bytes(teacher: Tok, byte_rows: list, byte_token: np.ndarray, unk: int, progress, p0: float, p1: float):
    """Teacher ids for each student byte string, and which rows the teacher cannot express.

    Valid UTF-8 goes through one `encode_batch` per chunk. The few byte strings that are not valid
    UTF-8 (byte-level tokens holding part of a character) are split into valid runs, encoded the
    same way, and invalid bytes, which become the teacher's single-byte tokens.
    """
    n = len(byte_rows)
    texts, bad = [], []
    for j, b in enumerate(byte_rows):
        try:
            texts.append(b.decode("utf-8"))
        except UnicodeDecodeError:
            texts.append("")
            bad.append(j)
    out: list = [None] * n
    for a in range(0, n, _CHUNK):
        chunk = texts[a:a + _CHUNK]
        out[a:a + _CHUNK] = teacher.retokenize_batch(chunk)
        if progress:
            progress(p0 + (p1 - p0) * min(a + _CHUNK, n) / max(n, 1), f"re-tokenizing {n:,} student tokens with the teacher")
    unmapped = np.zeros(n, dtype=bool)
    for j in bad:
        ids, b = [], byte_rows[j]
        while b:
            try:
                ids += teacher.retokenize_batch([b.decode("utf-8")])[0]
                break
            except UnicodeDecodeError as e:
                if e.start:
                    ids += teacher.retokenize_batch([b[:e.start].decode("utf-8")])[0]
                for x in b[e.start:e.end]:
                    ids.append(int(byte_token[x]) if byte_token[x] >= 0 else unk)
                    unmapped[j] |= byte_token[x] < 0
                b = b[e.end:]
        out[j] = ids
    if "unk" in teacher.roles:
        u = teacher.roles["unk"]
        unmapped |= np.fromiter((u in ids for ids in out), dtype=bool, count=n)
    return out, unmapped


def piece_weights(pos: np.ndarray, base: float, decay: float) -> np.ndarray:
    """The weight rule (SPEC §2.2): piece i (0-based) of a re-tokenization gets base * decay**i, float64."""
    return base * decay ** pos.astype(np.float64)


def _weigh(p: _Pieces, max_pieces: int, base: float, decay: float):
    """Keep the first max_pieces pieces of each row, weight them by `piece_weights`."""
    keep = p.pos < max_pieces
    return p.rows[keep], p.cols[keep], piece_weights(p.pos[keep], base, decay)


def _per_token(owner: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weights normalised to sum to 1 over each owner token's pieces."""
    return w / np.bincount(owner, weights=w)[owner]


def _assemble(rows, cols, vals, n_rows: int, n_cols: int, top_k: int, normalise: bool = True) -> sp.csr_array:
    """Sum duplicates, keep each row's top_k (ties to the lower column), normalise, build CSR.

    normalise=False keeps values whose row already sums to 1 within 1e-6 bit for bit (imports)."""
    key = rows.astype(np.int64) * n_cols + cols
    uniq, inv = np.unique(key, return_inverse=True)
    vals = np.bincount(inv, weights=vals, minlength=len(uniq))
    rows, cols = uniq // n_cols, uniq % n_cols
    order = np.lexsort((cols, -vals, rows))
    rows, cols, vals = rows[order], cols[order], vals[order]
    first = np.searchsorted(rows, rows, side="left")
    keep = (np.arange(len(rows)) - first) < top_k
    rows, cols, vals = rows[keep], cols[keep], vals[keep]
    sums = np.bincount(rows, weights=vals, minlength=n_rows)[rows]
    vals = vals / sums if normalise else np.where(np.abs(sums - 1) > 1e-6, vals / sums, vals)
    order = np.lexsort((cols, rows))
    rows, cols, vals = rows[order], cols[order], vals[order]
    indptr = np.concatenate(([0], np.cumsum(np.bincount(rows, minlength=n_rows)))).astype(np.int64)
    return sp.csr_array((vals.astype(np.float32), cols.astype(np.int32), indptr), shape=(n_rows, n_cols))


def _fallback_id(teacher: Tok) -> int:
    for role in ("eos", "pad", "unk", "bos"):
        if role in teacher.roles:
            return teacher.roles[role]
    raise XtokError(f"teacher {teacher.name} has no eos, pad, unk or bos token to map special and padding rows to; "
                    f"add eos_token to its tokenizer_config.json")


def _check_size(tok: Tok, size, side: str) -> int:
    if size is None:
        return tok.vocab_size
    size = int(size)
    if size < tok.vocab_size:
        raise XtokError(f"{side}_vocab_size={size:,} is smaller than the {side} tokenizer {tok.name} ({tok.vocab_size:,} ids); "
                        f"pass the model's logits width (config.vocab_size), which is at least the tokenizer's")
    return size


def build_projection(student, teacher, *, max_pieces: int = 4, top_k: int = 4, base: float = 0.9, decay: float = 0.1,
                     progress=None, student_vocab_size: int | None = None, teacher_vocab_size: int | None = None,
                     reverse_pass: bool = False) -> "Projection":
    """Build W for `student` (rows) and `teacher` (columns). See the module docstring for the rule.

    progress: optional callable(fraction in [0, 1], message).
    student_vocab_size / teacher_vocab_size: the models' logits widths when padded past the tokenizer.
    reverse_pass: also re-tokenize every teacher token with the student and add those weights
        (NeMo-RL's bidirectional build; off by default, the paper's rule is one-way).
    """
    s, t = load_tokenizer(student), load_tokenizer(teacher)
    if max_pieces < 1 or top_k < 1 or not (0 < base) or not (0 < decay <= 1):
        raise XtokError(f"max_pieces={max_pieces}, top_k={top_k}, base={base}, decay={decay} are invalid; use max_pieces>=1, top_k>=1, base>0, 0<decay<=1")
    V_s, V_t = _check_size(s, student_vocab_size, "student"), _check_size(t, teacher_vocab_size, "teacher")
    say = progress or (lambda f, m: None)
    say(0.0, f"indexing {t.name}'s {t.vocab_size:,} teacher tokens")

    # Teacher bytes -> id with the tie rule of SPEC §2.1 (regular piece over its byte-fallback twin,
    # then the lowest id): the tokenizer's one index.
    tb = t.token_bytes
    has = np.fromiter((b is not None for b in tb), dtype=bool, count=t.vocab_size) & ~t.special
    byte_token = t.ids_of_bytes(bytes([x]) for x in range(256))
    eos = _fallback_id(t)
    unk = t.roles.get("unk", eos)

    say(0.1, "exact matches")
    sb = s.token_bytes
    text_rows = np.flatnonzero(np.fromiter((b is not None for b in sb), dtype=bool, count=s.vocab_size) & ~s.special)
    text_bytes = [sb[i] for i in text_rows]
    exact_col = t.ids_of_bytes(text_bytes)
    is_exact = exact_col >= 0

    kinds = np.full(V_s, PADDING, dtype=np.uint8)
    n_pieces = np.zeros(V_s, dtype=np.int16)
    role_matched = np.zeros(V_s, dtype=bool)
    rows_l, cols_l, vals_l = [], [], []

    ex_rows = text_rows[is_exact]
    kinds[ex_rows], n_pieces[ex_rows] = EXACT, 1
    rows_l.append(ex_rows); cols_l.append(exact_col[is_exact]); vals_l.append(np.ones(len(ex_rows)))

    rt_rows = text_rows[~is_exact]
    rt_bytes = [sb[i] for i in rt_rows]
    id_lists, unmapped = _encode_bytes(t, rt_bytes, byte_token, unk, progress, 0.15, 0.75)
    pieces = _flatten(rt_rows, id_lists)
    r, c, v = _weigh(pieces, max_pieces, base, decay)
    forward_at = len(vals_l)
    rows_l.append(r); cols_l.append(c); vals_l.append(v)
    n_pieces[rt_rows] = np.minimum(pieces.counts, np.iinfo(np.int16).max)
    kinds[rt_rows] = np.where(unmapped, UNMAPPED, np.where(pieces.counts > max_pieces, TRUNCATED, RETOKENIZED))
    empty = pieces.counts == 0  # nothing to re-tokenize (should not happen for real tokens)
    if empty.any():
        kinds[rt_rows[empty]] = UNMAPPED
        rows_l.append(rt_rows[empty]); cols_l.append(np.full(int(empty.sum()), unk)); vals_l.append(np.ones(int(empty.sum())))

    if reverse_pass:
        # NeMo-RL's bidirectional build: each token's piece weights are normalised to 1 per token
        # (its create_weight_distribution) before they are added up, in both directions.
        say(0.78, "reverse pass: re-tokenizing teacher tokens with the student")
        vals_l[forward_at] = _per_token(r, v)
        t_rows = np.flatnonzero(has)
        s_lists = s.retokenize_batch([tb[i].decode("utf-8", errors="replace") for i in t_rows])
        rp = _flatten(t_rows, s_lists)  # here rows are teacher ids and cols student ids
        tr, sc, w = _weigh(rp, max_pieces, base, decay)
        w = _per_token(tr, w)
        target = np.isin(sc, rt_rows)  # exact rows are done; special/padding rows are by role
        rows_l.append(sc[target]); cols_l.append(tr[target]); vals_l.append(w[target])

    say(0.85, "special tokens by role")
    for i in np.flatnonzero(s.special).tolist():
        col = eos
        for role in ROLE_ORDER:
            if s.roles.get(role) == i and role in t.roles:
                col, role_matched[i] = t.roles[role], True
                break
        kinds[i] = SPECIAL
        rows_l.append(np.array([i])); cols_l.append(np.array([col])); vals_l.append(np.ones(1))
    pad_rows = np.flatnonzero(kinds == PADDING)
    rows_l.append(pad_rows); cols_l.append(np.full(len(pad_rows), eos)); vals_l.append(np.ones(len(pad_rows)))

    say(0.9, "assembling the sparse matrix")
    matrix = _assemble(np.concatenate(rows_l), np.concatenate(cols_l).astype(np.int64), np.concatenate(vals_l), V_s, V_t, top_k)
    params = dict(max_pieces=max_pieces, top_k=top_k, base=base, decay=decay, reverse_pass=bool(reverse_pass),
                  student_vocab_size=V_s, teacher_vocab_size=V_t)
    proj = Projection(matrix, kinds, n_pieces, role_matched, params=params,
                      student_name=s.name, teacher_name=t.name, student_sha256=s.sha256, teacher_sha256=t.sha256,
                      student=s, teacher=t)
    say(1.0, f"W {V_s:,} x {V_t:,} with {matrix.nnz:,} non-zeros")
    return proj


class Projection:
    """W plus what it was built from. See the module docstring and docs/CONTRACTS.md."""

    def __init__(self, matrix: sp.csr_array, kinds: np.ndarray, n_pieces: np.ndarray, role_matched: np.ndarray, *,
                 params: dict, student_name: str, teacher_name: str, student_sha256: str, teacher_sha256: str,
                 student: Tok | None = None, teacher: Tok | None = None, xtok_version: str | None = None):
        self.matrix = matrix
        self.kinds = kinds
        self.n_pieces = n_pieces
        self.role_matched = role_matched
        self.params = dict(params)
        self.student_name, self.teacher_name = student_name, teacher_name
        self.student_sha256, self.teacher_sha256 = student_sha256, teacher_sha256
        self.student, self.teacher = student, teacher
        self.xtok_version = xtok_version or _xtok_version()
        self._torch_cache: dict = {}

    # ------------------------------------------------------------------ views
    @property
    def shape(self) -> tuple[int, int]:
        return self.matrix.shape

    @property
    def sha256(self) -> str:
        """Content hash of W: both tokenizer hashes, the parameters and every array."""
        if not hasattr(self, "_sha"):
            h = hashlib.sha256()
            h.update(json.dumps([self.student_sha256, self.teacher_sha256, self.params], sort_keys=True).encode())
            for a in (self.matrix.indptr.astype(np.int64), self.matrix.indices.astype(np.int32), self.matrix.data.astype(np.float32),
                      self.kinds, self.n_pieces, self.role_matched.astype(np.uint8)):
                h.update(np.ascontiguousarray(a).tobytes())
            self._sha = h.hexdigest()
        return self._sha

    def kind(self, s: int) -> str:
        return ROW_KINDS[int(self.kinds[s])]

    def kind_names(self) -> np.ndarray:
        return np.asarray(ROW_KINDS, dtype=object)[self.kinds]

    def kind_counts(self) -> dict[str, int]:
        counts = np.bincount(self.kinds, minlength=len(ROW_KINDS))
        return {k: int(c) for k, c in zip(ROW_KINDS, counts)}

    def row(self, s: int) -> tuple[np.ndarray, np.ndarray]:
        """(teacher ids, weights) of row s, heaviest first, ties to the lower id."""
        if not 0 <= s < self.shape[0]:
            raise XtokError(f"student id {s} is outside W's {self.shape[0]:,} rows; pass an id of {self.student_name}")
        a, b = self.matrix.indptr[s], self.matrix.indptr[s + 1]
        cols, vals = self.matrix.indices[a:b].astype(np.int64), self.matrix.data[a:b]
        order = np.lexsort((cols, -vals))
        return cols[order], vals[order]

    def to_torch(self, device=None, dtype=None):
        """W as a torch sparse CSR tensor (float32 by default), cached per device and dtype."""
        import torch

        dtype = dtype or torch.float32
        key = (str(device), dtype)
        if key not in self._torch_cache:
            import warnings

            m = self.matrix
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
                self._torch_cache[key] = torch.sparse_csr_tensor(
                    torch.from_numpy(m.indptr.astype(np.int64)), torch.from_numpy(m.indices.astype(np.int64)),
                    torch.from_numpy(m.data.astype(np.float32)).to(dtype), size=m.shape, device=device,
                    check_invariants=False)  # built sorted and in range above
        return self._torch_cache[key]

    def check_tokenizers(self, student: Tok | None = None, teacher: Tok | None = None) -> None:
        """Fail with one line if W was built for other tokenizers."""
        for side, tok, want, name in (("student", student, self.student_sha256, self.student_name),
                                      ("teacher", teacher, self.teacher_sha256, self.teacher_name)):
            if tok is not None and tok.sha256 != want:
                raise XtokError(f"W was built for {side} {name} sha256 {_short(want)} but this {side} tokenizer {tok.name} is "
                                f"{_short(tok.sha256)}; rebuild with xtok build-w --student {self.student_name if side == 'teacher' else tok.name} "
                                f"--teacher {tok.name if side == 'teacher' else self.teacher_name}")

    def check_logits(self, student_width: int | None = None, teacher_width: int | None = None) -> None:
        """Fail with one line if model logits do not match W's shape (no silent broadcast)."""
        for side, width, size in (("student", student_width, self.shape[0]), ("teacher", teacher_width, self.shape[1])):
            if width is not None and width != size:
                raise XtokError(f"{side} logits have {width:,} entries but W has {size:,} {side} {'rows' if side == 'student' else 'columns'}; "
                                f"rebuild W with --{side}-vocab-size {width}")

    # ------------------------------------------------------------------ explain (explanation.py)
    def explain(self, s: int) -> "RowExplanation":
        from .explanation import explain_row

        return explain_row(self, s)

    # ------------------------------------------------------------------ files (formats.py)
    def _metadata(self) -> dict:
        from . import formats

        return formats.metadata(self)

    def save(self, path) -> Path:
        """safetensors: indptr, indices, data, kinds, n_pieces, role_matched + one canonical JSON metadata key."""
        from . import formats

        return formats.save(self, path)

    @classmethod
    def load(cls, path, student=None, teacher=None) -> "Projection":
        """Load a W saved by `save`; with tokenizers given, their hashes must match the file's."""
        from . import formats

        return formats.load(cls, path, student, teacher)

    def to_nemo(self) -> dict:
        """NeMo-RL's top-k layout: indices / likelihoods (V_s, top_k), heaviest first, -1 / 0 padding."""
        from . import formats

        return formats.to_nemo(self)

    def save_nemo(self, path) -> Path:
        from . import formats

        return formats.save_nemo(self, path)

    @classmethod
    def load_nemo(cls, path, student, teacher) -> "Projection":
        """Import a NeMo-RL top-k `.pt` (a plain tensor dict; pickled objects are refused)."""
        from . import formats

        return formats.load_nemo(cls, path, student, teacher)

    def to_csv(self, target=None) -> str | None:
        """One line per non-zero: student_id, student_text, kind, teacher_id, teacher_text, weight."""
        from . import formats

        return formats.to_csv(self, target)


from .explanation import Piece, RowExplanation  # noqa: E402,F401 (explanation.py uses this module's weight rule)
