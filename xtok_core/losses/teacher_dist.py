"""The teacher's side of every KD loss: full logits or a stored top-K, read through one type.

`TeacherDistribution` holds, for each teacher position, either
- the full logits `(…, V_t)` (the online teacher): the loss applies its temperature τ, or
- the top-K ids `(…, K)` int, their log-probabilities `(…, K)` at the temperature they were computed at,
  and the log of the probability mass outside them `(…,)` (a teacher cache, `xtok_core.teacher_cache`).

The losses never branch on which: per chunk of rows they ask `rows(i, j, …)` for a `TeacherRows`, the
teacher's log-probabilities on its whole vocabulary (−inf on ids not kept), the mask of kept ids and the
tail mass. With the full logits nothing is missing (no mask, no tail) and every loss is the online loss; with
K = V_t the stored distribution is the full one and the result is the same to rounding. How each loss reads
the tail is in its docstring: P-KL compares the tail as one bucket, the others treat the ids not kept as 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from ..errors import XtokError


class TeacherRows:
    """One chunk of teacher rows as a loss kernel reads it.

    logp: `(c, V_t)` log-probabilities (plus the row's log offset), −inf on ids not kept.
    kept: `(c, V_t)` bool, the ids stored (None: every id, the full distribution).
    log_tail: `(c,)` log of the mass outside the kept ids, −inf where none (None: full distribution).
    ids, topk_logp: top-K only, `(c, K)` the kept ids and their log-probabilities (plus the offset). For a
    top-K teacher `logp` and `kept` are built from them on first use, so a kernel that works on the kept ids
    alone (P-KL's) never pays for the `(c, V_t)` tensors.
    """

    def __init__(self, logp: torch.Tensor | None = None, kept: torch.Tensor | None = None,
                 log_tail: torch.Tensor | None = None, ids: torch.Tensor | None = None,
                 topk_logp: torch.Tensor | None = None, vocab_size: int | None = None):
        self._logp, self._kept, self.log_tail = logp, kept, log_tail
        self.ids, self.topk_logp, self.vocab_size = ids, topk_logp, vocab_size

    @property
    def logp(self) -> torch.Tensor:
        if self._logp is None:  # top-K: a fresh tensor, which the kernel may work on in place
            lp = torch.full((self.ids.shape[0], self.vocab_size), -torch.inf, dtype=self.topk_logp.dtype,
                            device=self.ids.device)
            self._logp = lp.scatter_(1, self.ids, self.topk_logp)
        return self._logp

    @property
    def kept(self) -> torch.Tensor | None:
        if self._kept is None and self.ids is not None:
            self._kept = torch.zeros((self.ids.shape[0], self.vocab_size), dtype=torch.bool,
                                     device=self.ids.device).scatter_(1, self.ids, True)
        return self._kept

    @property
    def has_tail(self) -> bool:
        return self.ids is not None or self._kept is not None

    def tail(self) -> torch.Tensor:
        """Tail mass r `(c,)` (zeros for a full distribution)."""
        if self.log_tail is None:
            return self._logp.new_zeros(self._logp.shape[0])
        return self.log_tail.exp()


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


@dataclass
class TeacherDistribution:
    """A teacher's next-token distributions over leading dims (…): full logits or top-K + tail.

    Build with `from_logits(logits)` or `from_topk(ids, log_probs, log_tail, vocab_size, temperature)`.
    `next_log_prob (…)`: log-probability of the actual next teacher token at each position (a top-K store
    keeps it so that `position="chain"` works without the full distribution). Index the leading dims like a
    tensor (`td[b, t]`); `log_offset (…)` scales each row's probabilities by e^{offset} (chain merges).
    """

    vocab_size: int
    logits: torch.Tensor | None = None
    ids: torch.Tensor | None = None
    log_probs: torch.Tensor | None = None
    log_tail: torch.Tensor | None = None
    temperature: float | None = None  # top-K: τ of the stored log-probs; logits: None (the loss's τ)
    next_log_prob: torch.Tensor | None = None
    log_offset: torch.Tensor | None = None

    @classmethod
    def from_logits(cls, logits: torch.Tensor) -> "TeacherDistribution":
        return cls(vocab_size=int(logits.shape[-1]), logits=logits.detach())

    @classmethod
    def from_topk(cls, ids: torch.Tensor, log_probs: torch.Tensor, log_tail: torch.Tensor | None, vocab_size: int,
                  temperature: float = 1.0, next_log_prob: torch.Tensor | None = None) -> "TeacherDistribution":
        """ids `(…, K)` int (distinct per row), log_probs `(…, K)` at `temperature`, log_tail `(…,)`: log of
        the mass outside `ids` (None: computed as log(1 − Σ p), which loses precision for a tiny tail)."""
        if ids.shape != log_probs.shape:
            raise XtokError(f"top-K ids {tuple(ids.shape)} and log-probabilities {tuple(log_probs.shape)} differ in "
                            "shape; pass one log-probability per stored id")
        if ids.shape[-1] > vocab_size:
            raise XtokError(f"K = {ids.shape[-1]} ids per row exceed the teacher vocabulary {vocab_size}")
        if log_tail is None:
            log_tail = torch.log1p(-log_probs.double().exp().sum(-1).clamp(max=1.0)).to(log_probs.dtype)
        return cls(vocab_size=int(vocab_size), ids=ids.long(), log_probs=log_probs, log_tail=log_tail,
                   temperature=float(temperature), next_log_prob=next_log_prob)

    @classmethod
    def of(cls, teacher) -> "TeacherDistribution":
        """A `TeacherDistribution` as is, or one from a logits tensor."""
        return teacher if isinstance(teacher, TeacherDistribution) else cls.from_logits(teacher)

    # ---------------------------------------------------------------- shape and indexing
    @property
    def is_topk(self) -> bool:
        return self.logits is None

    @property
    def _main(self) -> torch.Tensor:
        return self.logits if self.logits is not None else self.ids

    @property
    def shape(self) -> tuple[int, ...]:
        """Leading shape (…), without the vocabulary / K dimension."""
        return tuple(self._main.shape[:-1])

    @property
    def device(self) -> torch.device:
        return self._main.device

    @property
    def dtype(self) -> torch.dtype:
        return (self.logits if self.logits is not None else self.log_probs).dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, idx) -> "TeacherDistribution":
        pick = lambda t: None if t is None else t[idx]  # noqa: E731
        return replace(self, logits=pick(self.logits), ids=pick(self.ids), log_probs=pick(self.log_probs),
                       log_tail=pick(self.log_tail), next_log_prob=pick(self.next_log_prob),
                       log_offset=pick(self.log_offset))

    def with_offset(self, log_offset: torch.Tensor | None) -> "TeacherDistribution":
        if log_offset is None:
            return self
        return replace(self, log_offset=log_offset.detach() if self.log_offset is None
                       else self.log_offset + log_offset.detach())

    def to(self, device) -> "TeacherDistribution":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return replace(self, logits=move(self.logits), ids=move(self.ids), log_probs=move(self.log_probs),
                       log_tail=move(self.log_tail), next_log_prob=move(self.next_log_prob),
                       log_offset=move(self.log_offset))

    def check_temperature(self, temperature: float) -> None:
        if self.is_topk and not math.isclose(self.temperature, float(temperature), rel_tol=1e-9):
            raise XtokError(f"the teacher's top-K log-probabilities were computed at temperature {self.temperature:g} "
                            f"but the loss runs at {float(temperature):g}; use --temperature {self.temperature:g} or "
                            "build the teacher cache at this temperature")

    # ---------------------------------------------------------------- what the kernels read
    def rows(self, i: int, j: int, temperature: float, dtype: torch.dtype | None = None) -> TeacherRows:
        """Rows i..j of a 2-D distribution `(N, …)` as `TeacherRows` in `dtype` (default: fp32, fp64 for fp64)."""
        off = None if self.log_offset is None else self.log_offset[i:j]
        if self.logits is not None:
            z = self.logits[i:j]
            cd = dtype or _compute_dtype(z)
            lp = z.to(cd, copy=True)
            if temperature != 1.0:
                lp.div_(temperature)
            lp.sub_(torch.logsumexp(lp, -1, keepdim=True))
            if off is not None:
                lp.add_(off.to(cd)[:, None])
            return TeacherRows(lp)
        self.check_temperature(temperature)
        ids, stored = self.ids[i:j], self.log_probs[i:j]
        cd = dtype or _compute_dtype(stored)
        tail = self.log_tail[i:j].to(cd)
        topk = stored.to(cd, copy=True)
        if off is not None:
            o = off.to(cd)
            tail = tail + o
            topk.add_(o[:, None])
        return TeacherRows(None, None, tail, ids, topk, self.vocab_size)

    def token_log_probs(self, pb: torch.Tensor, pp: torch.Tensor, tok: torch.Tensor, temperature: float) -> torch.Tensor:
        """log p(tok) at positions (pb, pp) of a `(B, T, …)` distribution, where tok is the actual next token."""
        if self.logits is not None:
            z = self.logits[pb, pp]
            z = (z.float() if z.dtype != torch.float64 else z) / temperature
            return z.gather(1, tok[:, None])[:, 0] - torch.logsumexp(z, dim=-1)
        self.check_temperature(temperature)
        if self.next_log_prob is None:
            raise XtokError("position='chain' needs the teacher's log-probability of each actual next token, which "
                            "this top-K distribution lacks; rebuild the cache or use position='boundary'")
        return self.next_log_prob[pb, pp].float() if self.next_log_prob.dtype != torch.float64 else self.next_log_prob[pb, pp]
