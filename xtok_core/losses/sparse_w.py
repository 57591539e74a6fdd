"""W as the losses see it: one sparse (V_s, V_t) pattern with its transpose and derived index sets.

Every loss accepts W in the forms a user has at hand (a `Projection`, a torch sparse CSR or COO tensor, a
scipy sparse matrix) and turns it once into a `SparseW`: CSR index tensors for W and for W^T (the
transpose is a fixed permutation of the same values, so a learned W only needs one value vector), the
teacher columns that no student row reaches, and the common sets of H-KL and GOLD. The result is cached
per W object and device, so a training loop that passes the same W every step converts it once.
"""

from __future__ import annotations

import warnings
import weakref
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import XtokError
from ..projection import EXACT as EXACT_KIND  # the W contract: row kind codes and the Projection type
from ..projection import Projection

# torch prints this once per process for every sparse CSR tensor; xtok builds them deliberately.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)

# torch warns that sparse CSR is beta and that invariant checks are off; our patterns come from a
# validated CSR matrix, so both warnings are noise for users.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")


@dataclass(frozen=True)
class CommonSet:
    """Student ids paired one-to-one with teacher ids (the vocabulary both models "share").

    `student`, `teacher`: (K,) long, pairs in increasing student id; `student_rest` (V_s - K,) and
    `teacher_rest` (V_t - K,): the uncommon ids of each side, increasing.
    """

    student: torch.Tensor
    teacher: torch.Tensor
    student_rest: torch.Tensor
    teacher_rest: torch.Tensor


@dataclass
class SparseW:
    """A (V_s, V_t) sparse W on one device.

    `crow (V_s+1,)`, `col (nnz,)`, `values (nnz,) float32`: CSR of W with sorted columns per row;
    `t_crow (V_t+1,)`, `t_col (nnz,)`, `t_perm (nnz,)`: CSR of W^T whose values are `values[t_perm]`;
    `row_of (nnz,)`: the student row of every non-zero; `reachable (V_t,) bool`: teacher columns with
    at least one non-zero; `kinds`: np.uint8 row kinds when W came from a `Projection`, else None.
    """

    shape: tuple[int, int]
    crow: torch.Tensor
    col: torch.Tensor
    values: torch.Tensor
    t_crow: torch.Tensor
    t_col: torch.Tensor
    t_perm: torch.Tensor
    row_of: torch.Tensor
    reachable: torch.Tensor
    kinds: np.ndarray | None
    _np: tuple[np.ndarray, np.ndarray, np.ndarray] = field(repr=False, default=None)
    _common: dict = field(repr=False, default_factory=dict)

    @property
    def device(self) -> torch.device:
        return self.values.device

    def matrix(self, values: torch.Tensor | None = None, dtype=torch.float32) -> torch.Tensor:
        """W as a torch sparse CSR tensor (V_s, V_t), optionally with other values on the same pattern."""
        v = (self.values if values is None else values).to(dtype)
        return torch.sparse_csr_tensor(self.crow, self.col, v, self.shape, check_invariants=False)

    def matrix_t(self, values: torch.Tensor | None = None, dtype=torch.float32) -> torch.Tensor:
        """W^T as a torch sparse CSR tensor (V_t, V_s)."""
        v = (self.values if values is None else values)[self.t_perm].to(dtype)
        return torch.sparse_csr_tensor(self.t_crow, self.t_col, v, self.shape[::-1], check_invariants=False)

    def columns(self, cols: torch.Tensor, values: torch.Tensor | None = None, dtype=torch.float32,
                layout: torch.layout | None = None):
        """W restricted to teacher columns `cols` (sorted, distinct), gathered from the CSR of W^T without
        touching the other columns: `(W[:, cols] (V_s, len(cols)), W[:, cols]^T (len(cols), V_s))` as sparse
        COO on the CPU (dense @ sparse COO is the fastest product there, no transposes of the V_s-wide
        operand) and sparse CSR elsewhere (used as CSR @ dense, as W itself is); `layout` forces one."""
        start = self.t_crow[cols]
        lens = self.t_crow[cols + 1] - start
        crow = torch.zeros(len(cols) + 1, dtype=self.t_crow.dtype, device=cols.device)
        torch.cumsum(lens, 0, out=crow[1:])
        n = int(crow[-1])
        pos = torch.repeat_interleave(start - crow[:-1], lens, output_size=n) + torch.arange(n, device=cols.device)
        rows, v = self.t_col[pos], (self.values if values is None else values)[self.t_perm[pos]].to(dtype)
        which = torch.repeat_interleave(torch.arange(len(cols), device=cols.device), lens, output_size=n)
        v_s, u = self.shape[0], len(cols)
        if (layout or (torch.sparse_coo if cols.device.type == "cpu" else torch.sparse_csr)) == torch.sparse_coo:
            w_t = torch.sparse_coo_tensor(torch.stack([which, rows]), v, (u, v_s), is_coalesced=True)
            w = torch.sparse_coo_tensor(torch.stack([rows, which]), v, (v_s, u)).coalesce()
            return w, w_t
        w_t = torch.sparse_csr_tensor(crow, rows, v, (u, v_s), check_invariants=False)
        order = torch.argsort(rows, stable=True)  # by student row; columns stay sorted within a row
        s_crow = torch.zeros(v_s + 1, dtype=self.crow.dtype, device=cols.device)
        torch.cumsum(torch.bincount(rows, minlength=v_s), 0, out=s_crow[1:])
        w = torch.sparse_csr_tensor(s_crow, which[order], v[order], (v_s, u), check_invariants=False)
        return w, w_t

    def row_sums(self, values: torch.Tensor | None = None, dtype=torch.float32) -> torch.Tensor:
        """Σ_t W[s, t] for every student row `(V_s,)` (1 for a `Projection`; a learned W's own sums)."""
        v = (self.values if values is None else values).to(dtype)
        return torch.zeros(self.shape[0], dtype=dtype, device=v.device).index_add_(0, self.row_of, v)

    def check_vocab(self, v_s: int, v_t: int, what: str = "logits") -> None:
        if (v_s, v_t) != self.shape:
            raise XtokError(
                f"W is {self.shape[0]} x {self.shape[1]} but the {what} have vocabularies {v_s} (student) and "
                f"{v_t} (teacher); build W with student_vocab_size={v_s}, teacher_vocab_size={v_t}")

    def common_set(self, rule: str, threshold: float = 0.6) -> CommonSet:
        """The one-to-one student/teacher pairs of GOLD (`rule="exact"`) or H-KL (`rule="top1"`).

        exact: rows of kind `exact` (for a bare sparse W without kinds: rows whose only non-zero is 1.0),
               paired with that column; a teacher column claimed twice goes to the lowest student id.
        top1:  every row whose largest weight is >= `threshold`, paired with that column (ties inside a
               row: lowest column); a column claimed twice goes to the highest weight, then the lowest
               student id.
        Computed once per W, rule and threshold, vectorised over the whole vocabulary.
        """
        key = (rule, float(threshold))
        if key not in self._common:
            self._common[key] = self._compute_common(rule, threshold)
        return self._common[key]

    def _compute_common(self, rule: str, threshold: float) -> CommonSet:
        indptr, indices, data = self._np
        v_s, v_t = self.shape
        counts = np.diff(indptr)
        rows = np.repeat(np.arange(v_s), counts)
        # first non-zero of each row after sorting by (row, weight desc, column): the row's top-1
        order = np.lexsort((indices, -data.astype(np.float64), rows))
        first = order[indptr[:-1][counts > 0]]
        top_row, top_col, top_w = rows[first], indices[first].astype(np.int64), data[first]
        if rule == "exact":
            if self.kinds is not None:
                keep = self.kinds[top_row] == EXACT_KIND
            else:
                keep = (counts[top_row] == 1) & (top_w == 1.0)
            top_row, top_col, top_w = top_row[keep], top_col[keep], top_w[keep]
            winner = np.lexsort((top_row, top_col))  # per column, lowest student id first
        elif rule == "top1":
            keep = top_w.astype(np.float64) >= threshold
            top_row, top_col, top_w = top_row[keep], top_col[keep], top_w[keep]
            winner = np.lexsort((top_row, -top_w.astype(np.float64), top_col))
        else:
            raise XtokError(f"unknown common-set rule {rule!r}; use 'exact' (GOLD) or 'top1' (H-KL)")
        top_col_sorted = top_col[winner]
        head = np.ones(len(winner), dtype=bool)
        head[1:] = top_col_sorted[1:] != top_col_sorted[:-1]
        chosen = winner[head]
        chosen = chosen[np.argsort(top_row[chosen], kind="stable")]
        s_ids, t_ids = top_row[chosen], top_col[chosen]
        s_rest = np.setdiff1d(np.arange(v_s), s_ids, assume_unique=True)
        t_rest = np.setdiff1d(np.arange(v_t), t_ids, assume_unique=True)
        dev = self.device
        as_t = lambda a: torch.as_tensor(np.ascontiguousarray(a, dtype=np.int64), device=dev)  # noqa: E731
        return CommonSet(as_t(s_ids), as_t(t_ids), as_t(s_rest), as_t(t_rest))


_CACHE: dict[tuple[int, str], SparseW] = {}


def _csr_arrays(W) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int], np.ndarray | None]:
    """(indptr, indices, data, shape, kinds) of any accepted W form, on the CPU."""
    kinds = None
    if isinstance(W, Projection):
        kinds = np.asarray(W.kinds, dtype=np.uint8) if W.kinds is not None else None
        W = W.matrix
    if isinstance(W, torch.Tensor):
        if W.layout == torch.sparse_coo:
            W = W.coalesce().to_sparse_csr()
        if W.layout != torch.sparse_csr:
            raise XtokError(
                f"W is a {W.layout} torch tensor; pass a Projection or a sparse (V_s, V_t) tensor "
                "(W.to_sparse_csr()), never a dense V_s x V_t matrix")
        W = W.detach().cpu()
        indptr = W.crow_indices().numpy().astype(np.int64)
        indices = W.col_indices().numpy().astype(np.int64)
        data = W.values().float().numpy()
        shape = tuple(W.shape)
    elif hasattr(W, "tocsr"):  # scipy sparse
        W = W.tocsr()
        W.sort_indices()
        indptr, indices = W.indptr.astype(np.int64), W.indices.astype(np.int64)
        data, shape = W.data.astype(np.float32), tuple(W.shape)
    else:
        raise XtokError(
            f"W of type {type(W).__name__} is not supported; pass a Projection (build_projection) or a "
            "torch sparse (V_s, V_t) tensor")
    if kinds is not None and len(kinds) != shape[0]:
        kinds = None
    # sort columns inside each row (torch CSR built from COO already is; scipy after sort_indices)
    rows = np.repeat(np.arange(shape[0]), np.diff(indptr))
    order = np.lexsort((indices, rows))
    return indptr, indices[order], data[order], shape, kinds


def as_sparse_w(W, device=None) -> SparseW:
    """`SparseW` for any accepted form of W on `device` (cached per W object and device)."""
    if isinstance(W, SparseW):
        if device is None or torch.device(device) == W.device:
            return W
    device = torch.device(device if device is not None else "cpu")
    key = (id(W), str(device))
    if key in _CACHE:
        return _CACHE[key]
    indptr, indices, data, shape, kinds = _csr_arrays(W)
    v_s, v_t = shape
    rows = np.repeat(np.arange(v_s), np.diff(indptr))
    t_perm = np.lexsort((rows, indices))
    t_crow = np.concatenate(([0], np.cumsum(np.bincount(indices, minlength=v_t))))
    as_t = lambda a, dt=torch.long: torch.as_tensor(np.ascontiguousarray(a), dtype=dt, device=device)  # noqa: E731
    sw = SparseW(
        shape=(int(v_s), int(v_t)),
        crow=as_t(indptr), col=as_t(indices), values=as_t(data, torch.float32),
        t_crow=as_t(t_crow), t_col=as_t(rows[t_perm]), t_perm=as_t(t_perm), row_of=as_t(rows),
        reachable=as_t(np.bincount(indices, minlength=v_t) > 0, torch.bool),
        kinds=kinds, _np=(indptr, indices, data),
    )
    try:
        weakref.finalize(W, _CACHE.pop, key, None)
        _CACHE[key] = sw
    except TypeError:  # an object without weak references: convert again next time
        pass
    return sw


def identity_w(v: int, device=None) -> torch.Tensor:
    """The (v, v) identity as a torch sparse CSR tensor: W for a teacher sharing the student's tokenizer."""
    ar = torch.arange(v, device=device)
    return torch.sparse_csr_tensor(torch.arange(v + 1, device=device), ar, torch.ones(v, device=device), (v, v),
                                   check_invariants=False)
