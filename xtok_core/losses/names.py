"""The names a run chooses from, defined once: the config, the CLI and the app import them from here."""

# KD losses of `DistillLoss` / `TeacherTerm(loss=...)`: X-Token's P-KL and H-KL, GOLD as NeMo-RL computes it,
# GOLD as TRL's trainer computes it (its hybrid JSD + ULD), and ULD.
LOSS_KINDS = ("pkl", "hkl", "gold", "gold-trl", "uld")
# where aligned distributions are compared (xtok_core.losses.positions)
POSITION_MODES = ("boundary", "chunk_mean", "chain")
