"""Cross-tokenizer distillation losses (SPEC §5).

On already-aligned rows, `f(student_logits (N, V_s), teacher_logits (N, V_t), W, *, temperature=1.0)`
-> scalar mean over N (× τ²): `pkl_loss`, `hkl_loss`, `gold_loss` (NeMo-RL's GOLD), `trl_gold_loss`
(TRL's hybrid GOLD) and `uld_loss` (no W). W is a
`Projection` or a torch sparse (V_s, V_t) tensor. `DistillLoss` works on whole batches: (B, T, V)
logits, a `BatchAlignment`, CE, several teachers, position modes, dynamic scaling and learned W.
"""

from .distill_loss import DistillLoss, LearnedW, TeacherTerm, host_stats
from .functional import gold_loss, hkl_loss, kl_loss, pkl_loss, sorted_l1, trl_gold_loss, uld_loss
from .names import LOSS_KINDS, POSITION_MODES
from .positions import AlignedRows, aligned_rows
from .sparse_w import CommonSet, SparseW, as_sparse_w, identity_w
from .teacher_dist import TeacherDistribution, TeacherRows

__all__ = ["pkl_loss", "hkl_loss", "gold_loss", "trl_gold_loss", "uld_loss", "kl_loss", "sorted_l1", "DistillLoss", "TeacherTerm",
           "LearnedW", "LOSS_KINDS", "POSITION_MODES", "AlignedRows", "aligned_rows", "CommonSet", "SparseW",
           "as_sparse_w", "identity_w", "TeacherDistribution", "TeacherRows", "host_stats"]
