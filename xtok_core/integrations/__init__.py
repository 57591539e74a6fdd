"""xtok inside other people's training loops.

`collator.CrossTokenizerCollator` (raw text or conversations -> student ids, each teacher's own ids, the
alignment tensors; also the batching of `xtok distill`) and `hf.CrossTokenizerDistillTrainer` (a
`transformers.Trainer` whose loss is `xtok_core.losses.DistillLoss`). Imported lazily so that `import xtok_core` never pulls transformers.
"""

_LAZY = {"CrossTokenizerCollator": "collator", "CrossTokenizerDistillTrainer": "hf", "distill_objective": "hf"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'xtok_core.integrations' has no attribute {name!r}")


__all__ = list(_LAZY)
