"""Models for a run live in `xtok_core.models` (tiny, named, GGUF, local directories); the names
below stay importable from here."""

from ..models import (LoadedModel, TINY_PREFIX, build_tiny, is_tiny, load_model, load_model_dir,  # noqa: F401
                      non_embedding_params, pad_id, save_model_dir, tiny_config)
