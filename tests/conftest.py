"""Shared fixtures: real bundled tokenizers and W, each built once per test session."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")


@pytest.fixture(scope="session")
def tok():
    """tok(name) -> Tok; load_tokenizer caches per file, so every test shares one object."""
    from xtok_core import load_tokenizer

    return load_tokenizer


_W_CACHE: dict = {}


@pytest.fixture(scope="session")
def projection():
    """projection(student, teacher, **params) -> Projection, built once per session per arguments."""
    from xtok_core.projection import build_projection

    def get(student="llama-3.2", teacher="qwen2.5", **params):
        key = (student, teacher, tuple(sorted(params.items())))
        if key not in _W_CACHE:
            _W_CACHE[key] = build_projection(student, teacher, **params)
        return _W_CACHE[key]

    return get


@pytest.fixture(scope="session")
def default_pair(tok):
    return tok("llama-3.2"), tok("qwen2.5")
