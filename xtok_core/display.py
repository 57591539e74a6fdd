"""How tokens and bytes look to a person: one glyph set for the CLI, the reports and the app.

Whitespace becomes a visible glyph (`·` space, `⇥` tab, `↵` newline, `␍` carriage return, `␌` form feed,
`␋` vertical tab); bytes that are not complete UTF-8 (a byte-level piece of a character) show as `\\xNN`;
zero-width and other invisible characters as `\\uNNNN`; a special token by its name.
"""

from __future__ import annotations

import re

GLYPHS = {" ": "·", "\t": "⇥", "\n": "↵", "\r": "␍", "\f": "␌", "\v": "␋"}
GLYPH_LEGEND = "· space, ⇥ tab, ↵ newline"
_TABLE = str.maketrans(GLYPHS)
# what a person types back for a glyph (plus the tokenizers' own space/newline marks)
TYPED = str.maketrans({**{g: c for c, g in GLYPHS.items()}, "Ġ": " ", "▁": " ", "Ċ": "\n"})
_INVISIBLE = re.compile(r"[\u200b-\u200f\u2060-\u2064\ufeff\u00ad]")


def visible(piece: "bytes | str | None", name: str = "") -> str:
    """Bytes (or text) as readable text in the one glyph set; None (a special token) as `name` or `∅`."""
    if piece is None:
        return name or "∅"
    text = piece.decode("utf-8", errors="backslashreplace") if isinstance(piece, (bytes, bytearray)) else piece
    text = _INVISIBLE.sub(lambda m: f"\\u{ord(m.group()):04x}", text.translate(_TABLE))
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}" for c in text)


def token_label(tok, token_id: int) -> str:
    """What one token shows: its visible bytes, or its name for a special token (or id hole)."""
    if not 0 <= token_id < tok.vocab_size:
        return f"<id {token_id}>"
    b = tok.token_bytes[token_id]
    return visible(b, tok.token_text(token_id) if b is None else "")


def hex_bytes(b: "bytes | None") -> str:
    """Bytes as hex pairs (`—` for a special token)."""
    return "—" if b is None else " ".join(f"{x:02x}" for x in b)
