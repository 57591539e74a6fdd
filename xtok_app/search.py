"""Find student tokens by what a person types: the token's text, `id:N`, or a piece of text."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd

from xtok_core.display import TYPED as _TYPED  # the page's glyphs typed back mean the same bytes


@dataclass(frozen=True)
class Match:
    token_id: int
    how: str  # "text", "text with a leading space", "id", "contains"


MAX_QUERY = 200  # characters; the box is bounded too (a query is one token's text, not a document)


@lru_cache(maxsize=16)
def _texts(tok) -> pd.Series:
    """Every token's text, built once per tokenizer, for the substring search."""
    return pd.Series(np.array([b.decode("utf-8", "replace") if b else "" for b in tok.token_bytes], dtype=object))


def token_texts(tok) -> pd.Series:
    """Every token's text (bytes decoded, U+FFFD for partial characters), indexed by id."""
    return _texts(tok)


def parse_id(query: str) -> int | None:
    q = query.strip()
    if q.lower().startswith("id:") and q[3:].strip().isdigit():
        return int(q[3:].strip())
    return None


def find_tokens(tok, query: str, limit: int = 25) -> list[Match]:
    """Student tokens for `query`, best first: `id:N` is that id; anything else is text: the token whose
    bytes are exactly the typed text, then the same with a leading space, then tokens containing the
    text (shortest first). A number is text too (`2019` is the numeral, never token id 2019)."""
    if not query:
        return []
    query = query[:MAX_QUERY]
    explicit = parse_id(query)
    if explicit is not None:
        return [Match(explicit, "id")] if 0 <= explicit < tok.vocab_size else []
    texts = _texts(tok)
    text = query.translate(_TYPED)
    out: list[Match] = []
    seen: set[int] = set()

    def add(i, how):
        if i is not None and i not in seen and 0 <= i < tok.vocab_size:
            seen.add(i)
            out.append(Match(int(i), how))

    # the tokenizer's bytes index: W's tie rule (a regular piece over its byte-fallback twin)
    add(tok.id_of_bytes(text.encode("utf-8")), "text")
    if not text.startswith(" "):
        add(tok.id_of_bytes((" " + text).encode("utf-8")), "text with a leading space")
    hits = texts[texts.str.contains(text, regex=False)]
    hits = hits.iloc[np.lexsort((hits.index.to_numpy(), hits.str.len().to_numpy()))]
    for i in hits.index[: limit * 2].tolist():
        if len(out) >= limit:
            break
        add(i, "contains")
    return out[:limit]


def typed_text(query: str) -> str:
    """The text a query stands for (the page's visible whitespace marks typed back as whitespace)."""
    return query[:MAX_QUERY].translate(_TYPED)



EXAMPLES = ("2019", "2024", "123", "365", "100")  # numerals a new user recognises, most familiar first


def worked_example(tok, w) -> str:
    """A numeral that is one student token and whose W row has several teacher pieces (the row that
    shows what W does), or "" when the pair has none among the familiar ones."""
    for text in EXAMPLES:
        i = tok.id_of_bytes(text.encode())
        if i is not None and len(w.explain(i).pieces) > 1:
            return text
    return ""
