"""xtok: cross-tokenizer knowledge distillation.

The public API (SPEC §0) is re-exported here; submodules import lazily so that `import xtok_core`
stays cheap for the CLI and the app.
"""

from .errors import XtokError
from .tok import Encoding, Tok, TokenizerRef, bundled_tokenizers, load_tokenizer, DEFAULT_STUDENT, DEFAULT_TEACHER

__version__ = "0.1.0"

_LAZY = {
    "build_projection": ("projection", "build_projection"),
    "Projection": ("projection", "Projection"),
    "coverage_audit": ("audit", "coverage_audit"),
    "AuditReport": ("audit", "AuditReport"),
    "align_spans": ("align", "align_spans"),
    "align_batch": ("align", "align_batch"),
    "Alignment": ("align", "Alignment"),
    "load_model": ("models", "load_model"),
    "LoadedModel": ("models", "LoadedModel"),
    "render_chat": ("chat", "render_chat"),
    "align_chat": ("chat", "align_chat"),
    "align_chat_batch": ("chat", "align_chat_batch"),
    "ChatEncoding": ("chat", "ChatEncoding"),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{mod}", __name__), attr)
    if name in ("losses", "distill", "models"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'xtok_core' has no attribute {name!r}")


__all__ = ["XtokError", "Encoding", "Tok", "TokenizerRef", "bundled_tokenizers", "load_tokenizer",
           "DEFAULT_STUDENT", "DEFAULT_TEACHER", *_LAZY, "losses", "distill", "models", "__version__"]
