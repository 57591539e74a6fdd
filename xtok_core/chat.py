"""Conversations: each model renders them with its own chat template; alignment and loss see the content.

Two instruct models differ in every byte around a message (Llama-3's
`<|start_header_id|>assistant<|end_header_id|>\\n\\n` against ChatML's `<|im_start|>assistant\\n`), so
aligning the two rendered strings byte by byte would pair template tokens with content tokens. The
content is the text both models share; the template is each model's own.

Rendering (`render_chat`): the template comes from the tokenizer's own files (`tokenizer_config.json`
`chat_template`, `chat_template.jinja` beside it; a converted GGUF model keeps its template in its
cached `tokenizer_config.json`) or from `chat_template=` (a Jinja string or a file), and transformers'
sandboxed `apply_chat_template` renders it. Where each message's content sits is found by rendering the
conversation a second time with every content replaced by a sentinel: the text between sentinels is
template, and each sentinel's place in the real rendering is where that message's content is.
  * A template may strip whitespace around the content (Llama-3's `| trim`, Qwen3's `lstrip('\\n')`):
    the content range then holds what the template kept and `MessageSpan.trimmed` says how many bytes
    it dropped at each end. Any other change (a template that rewrites, drops or repeats a message)
    raises `XtokError` naming the message: content is never guessed.
  * xtok renders with `enable_thinking=False` unless told otherwise (Qwen3's non-thinking mode), so
    that the generation prompt ends exactly where the assistant's content begins; other templates
    ignore the variable. Llama-3.2's template writes today's date (`strftime_now`); pass
    `date_string="26 Jul 2024"` to pin it.
Token ids are the rendered text encoded with its special tokens (`<|im_start|>` is one id), which is what
`apply_chat_template(tokenize=True)` returns.

Tokens and messages: a token is *content* of message m when its byte span overlaps m's content range;
every other token is *template* (headers, role names, special tokens, the template's newlines).
  * A token that straddles a template/content boundary (a template `\\n` merged with the content's
    first bytes) is content: it is the model's prediction of that content, so it belongs to the first
    (or last) group of the message, with its span clipped to the content bytes.
  * A message's end-of-turn token is the special token that closes its content (after whitespace at
    most, before the next message's content): `<|eot_id|>`, `<|im_end|>`, `<|end|>`.

Alignment (`align_chat`): the span aligner (`xtok_core.align`) runs on each message's content, with
each side's content tokens clipped to the bytes both renderings keep; groups never cross a message.
Template tokens are in no group (group -1); each message's end-of-turn tokens form a 1:1 group of their
own (paired by role, the student's `<|eot_id|>` with the teacher's `<|im_end|>`). For training,
`align_chat_batch` gives `align_batch`'s tensors plus the loss masks: CE and KD on the assistant's
content and its end-of-turn token (`loss_on="assistant"`, the default) or on the whole rendering
(`loss_on="all"`: CE on every student token, KD on every message's content and end-of-turn).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from .align import GROUP_KINDS, Alignment, BatchAlignment, Group, align_encodings
from .errors import XtokError
from .tok import ASSETS, Encoding, Tok, load_tokenizer

DEFAULT_TEMPLATE_KWARGS = {"enable_thinking": False}
LOSS_ON = ("assistant", "all")
_SENTINEL = re.compile("\ue000(\\d+)\ue001")
_ONE_ONE = GROUP_KINDS.index("1:1")


def _sentinel(i: int) -> str:
    # private-use characters: no tokenizer or template gives them a meaning, no trim touches them
    return f"\ue000{i}\ue001"


# ----------------------------------------------------------------------------- templates
def template_source(tok: Tok) -> Path | None:
    """The directory holding `tok`'s files (bundled folder or the tokenizer.json's directory)."""
    if tok.source.startswith("bundled:"):
        return ASSETS / tok.source[len("bundled:"):]
    p = Path(tok.source)
    return p.parent if p.exists() else None


def chat_template_of(tok: Tok, chat_template: "str | os.PathLike | None" = None) -> str:
    """The Jinja chat template to render `tok`'s conversations with.

    `chat_template`: a template string, or a path to a `.jinja` file (or to a tokenizer_config.json
    holding one); None reads the tokenizer's own files. Raises XtokError when there is none."""
    if chat_template is not None:
        return _explicit_template(chat_template)
    t = tok.config.get("chat_template")
    if isinstance(t, list):  # the multi-template form: [{"name": "default", "template": ...}, ...]
        t = next((x.get("template") for x in t if isinstance(x, dict) and x.get("name") == "default"), None)
    if isinstance(t, str) and t.strip():
        return t
    d = template_source(tok)
    if d is not None and (d / "chat_template.jinja").is_file():
        return (d / "chat_template.jinja").read_text(encoding="utf-8")
    raise XtokError(f"tokenizer {tok.name} has no chat template (no chat_template in its tokenizer_config.json, "
                    f"no chat_template.jinja); pass one with --chat-template FILE (chat_template= in Python)")


def _explicit_template(t) -> str:
    if isinstance(t, str) and ("{{" in t or "{%" in t):
        return t
    p = Path(os.path.expanduser(str(t)))
    if not p.is_file():
        raise XtokError(f"chat template {str(t)[:80]!r} is neither a Jinja template nor an existing file; "
                        f"pass a .jinja file or the template text")
    text = p.read_text(encoding="utf-8")
    if p.suffix == ".json":
        try:
            text = json.loads(text)["chat_template"]
        except (ValueError, KeyError, TypeError):
            raise XtokError(f"{p} has no chat_template entry; pass a .jinja file or a tokenizer_config.json with one") from None
    if not isinstance(text, str) or not text.strip():
        raise XtokError(f"{p} holds no chat template; pass a non-empty .jinja file")
    return text


_HF: dict = {}


def hf_tokenizer(tok: Tok):
    """A transformers fast tokenizer over a copy of `tok`'s backend with its special tokens named, for
    `apply_chat_template` (cached per tokenizer)."""
    key = (tok.sha256, tok.name, json.dumps({k: tok.config.get(k) for k in ("bos_token", "eos_token", "pad_token", "unk_token")},
                                            sort_keys=True, default=str))
    if key not in _HF:
        from tokenizers import Tokenizer
        from transformers import PreTrainedTokenizerFast

        named = {}
        for role in ("bos", "eos", "pad", "unk"):
            v = tok.config.get(f"{role}_token")
            v = v.get("content") if isinstance(v, dict) else v
            if not isinstance(v, str) and role in tok.roles:
                v = tok.backend.id_to_token(tok.roles[role])
            if isinstance(v, str):
                named[f"{role}_token"] = v
        _HF[key] = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(tok.backend.to_str()), **named)
    return _HF[key]


# ----------------------------------------------------------------------------- rendering
@dataclass(frozen=True)
class MessageSpan:
    """Where one message's content is in a rendering: bytes [start, end) of `ChatEncoding.text`.

    trimmed: (leading, trailing) bytes of the content the template stripped (whitespace only)."""

    index: int
    role: str
    start: int
    end: int
    trimmed: tuple = (0, 0)


@dataclass(eq=False)
class ChatEncoding:
    """A conversation rendered by one tokenizer's chat template.

    text: the rendering (equal to `apply_chat_template(messages, tokenize=False)`).
    ids (n,) int64, offsets (n, 2) int64 bytes into `text.encode()`: `Tok.encode(text)`.
    messages: one `MessageSpan` per message, in the order of `messages`.
    token_message: (n,) int64 index of the message whose content each token is, -1 for template tokens.
    eot: (M,) int64 position of each message's end-of-turn token, -1 where there is none (the open
        assistant turn of a generation prompt).
    """

    text: str
    tok: Tok = field(repr=False)
    ids: np.ndarray = field(repr=False)
    offsets: np.ndarray = field(repr=False)
    messages: list
    token_message: np.ndarray = field(repr=False)
    eot: np.ndarray = field(repr=False)
    add_generation_prompt: bool = False

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def content_ranges(self) -> np.ndarray:
        """(M, 2) int64 content byte ranges, in message order."""
        return np.array([(m.start, m.end) for m in self.messages], dtype=np.int64).reshape(-1, 2)

    def content_bytes(self, i: int) -> bytes:
        m = self.messages[i]
        return self.text.encode("utf-8", errors="surrogatepass")[m.start:m.end]

    def loss_mask(self, loss_on: str = "assistant") -> np.ndarray:
        """(n,) bool: the tokens a loss trains on: assistant content and its end-of-turn token
        ("assistant"), or every token ("all")."""
        if loss_on == "all":
            return np.ones(len(self.ids), dtype=bool)
        if loss_on != "assistant":
            raise XtokError(f"unknown loss_on {loss_on!r}; pass one of {', '.join(LOSS_ON)}")
        roles = np.array([m.role == "assistant" for m in self.messages] + [False])
        mask = roles[self.token_message]
        eot = self.eot[roles[:-1] & (self.eot >= 0)]
        mask[eot] = True
        return mask


def check_messages(messages, name: str = "messages") -> list:
    """The conversation as a list of dicts, or one XtokError line naming `name` and the problem."""
    if isinstance(messages, dict) and "messages" in messages:
        messages = messages["messages"]
    if not isinstance(messages, (list, tuple)) or not messages:
        what = "an empty list" if isinstance(messages, (list, tuple)) else type(messages).__name__
        raise XtokError(f"{name}: a conversation is a non-empty list of {{'role': ..., 'content': ...}} messages, got {what}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise XtokError(f"{name}: message {i} is not a {{'role': ..., 'content': ...}} object; give every message a role and a content")
        if not isinstance(m["role"], str) or not m["role"]:
            raise XtokError(f"{name}: message {i} has role {m['role']!r}; use 'system', 'user' or 'assistant'")
        if not isinstance(m["content"], str):
            raise XtokError(f"{name}: message {i} ({m['role']}) has {type(m['content']).__name__} content; "
                            f"xtok trains on text: give the content as one string")
        out.append(dict(m))
    return out


def _apply(tok: Tok, messages, template, add_generation_prompt, kwargs, name) -> str:
    try:
        return hf_tokenizer(tok).apply_chat_template(messages, chat_template=template, tokenize=False,
                                                     add_generation_prompt=add_generation_prompt, **kwargs)
    except Exception as e:  # noqa: BLE001 - a template's raise_exception, or a Jinja error inside it
        reason = " ".join(str(e).split())[:200] or type(e).__name__
        raise XtokError(f"{name}: the chat template of {tok.name} rejects this conversation ({reason}); "
                        f"change the conversation's roles or pass another --chat-template") from None


def _trims(content: str):
    """Versions of `content` a template may have kept: (start, end) char bounds, least trimmed first."""
    n = len(content)
    heads = sorted({0, n - len(content.lstrip("\n")), n - len(content.lstrip())})
    tails = sorted({n, len(content.rstrip("\n")), len(content.rstrip())}, reverse=True)
    return sorted(((a, b) for a in heads for b in tails if a <= b), key=lambda ab: (ab[0] + n - ab[1], ab[0]))


def locate_contents(rendered: str, skeleton: str, messages: list, name: str, tok_name: str) -> list:
    """(start, end) char ranges of every message's content in `rendered`, given the same rendering with
    sentinels in place of contents (`skeleton`)."""
    pieces = _SENTINEL.split(skeleton)
    literal, order = pieces[0::2], [int(i) for i in pieces[1::2]]
    for i, m in enumerate(messages):
        k = order.count(i)
        if k != 1:
            what = "drops" if k == 0 else "repeats"
            raise XtokError(f"{name}: the chat template of {tok_name} {what} message {i} ({m['role']}), so its content "
                            f"cannot be located; remove that message or pass a --chat-template that renders it once")
    found: dict = {}

    def match(j: int, pos: int) -> bool:
        if j == len(order):
            return pos == len(rendered)
        i = order[j]
        content = messages[i]["content"]
        for a, b in _trims(content):
            piece = content[a:b]
            end = pos + len(piece)
            if rendered.startswith(piece, pos) and rendered.startswith(literal[j + 1], end):
                found[i] = (pos, end, a, len(content) - b)
                if match(j + 1, end + len(literal[j + 1])):
                    return True
        return False

    if not rendered.startswith(literal[0]) or not match(0, len(literal[0])):
        raise XtokError(f"{name}: the chat template of {tok_name} changes message content beyond stripping whitespace "
                        f"(or branches on it), so content cannot be located; pass a --chat-template that inserts "
                        f"message['content'] as it is")
    return [found[i] for i in range(len(messages))]


def _char_to_byte(text: str) -> np.ndarray:
    from .tok import _utf8_char_lengths

    return np.concatenate(([0], np.cumsum(_utf8_char_lengths(text)))).astype(np.int64)


def render_chat(messages, tok, *, add_generation_prompt: bool = False, chat_template=None, name: str = "messages",
                **template_kwargs) -> ChatEncoding:
    """Render `messages` with `tok`'s chat template (see the module docstring): the text, its ids and
    byte offsets, each message's content range and end-of-turn token.

    add_generation_prompt: end with the opening of an assistant turn (for generation).
    chat_template: a Jinja string or file overriding the tokenizer's own.
    name: how errors name this conversation (e.g. "chat.jsonl row 17").
    template_kwargs: extra template variables (default `enable_thinking=False`).
    """
    tok = load_tokenizer(tok)
    messages = check_messages(messages, name)
    template = chat_template_of(tok, chat_template)
    kwargs = {**DEFAULT_TEMPLATE_KWARGS, **template_kwargs}
    text = _apply(tok, messages, template, add_generation_prompt, kwargs, name)
    skeleton = _apply(tok, [dict(m, content=_sentinel(i)) for i, m in enumerate(messages)], template,
                      add_generation_prompt, kwargs, name)
    found = locate_contents(text, skeleton, messages, name, tok.name)
    c2b = _char_to_byte(text)
    spans = []
    for i, (m, (a, b, lead, trail)) in enumerate(zip(messages, found)):
        c = m["content"]
        spans.append(MessageSpan(i, m["role"], int(c2b[a]), int(c2b[b]),
                                 (len(c[:lead].encode("utf-8", "surrogatepass")),
                                  len(c[len(c) - trail:].encode("utf-8", "surrogatepass")) if trail else 0)))
    enc = tok.encode(text, add_special_tokens=False)
    return _finish(text, tok, enc, spans, _special_starts(tok, text, enc, c2b), add_generation_prompt)


def _special_starts(tok: Tok, text: str, enc: Encoding, c2b: np.ndarray) -> np.ndarray:
    """(n,) byte where each special token really stands in `text` (-1 for other tokens): the backend's
    own offsets, which give spelled-out special tokens their span whatever `Tok.encode` reports."""
    special = tok.special[enc.ids]
    out = np.full(len(enc.ids), -1, np.int64)
    if special.any():
        co = np.asarray(tok.backend.encode(text, add_special_tokens=False).offsets, dtype=np.int64).reshape(-1, 2)
        out[special] = c2b[co[special, 0]]
    return out


def _finish(text, tok, enc, spans, special_at, add_generation_prompt) -> ChatEncoding:
    ranges = np.array([(m.start, m.end) for m in spans], dtype=np.int64).reshape(-1, 2)
    token_message = content_tokens(enc.offsets, ranges, tok.special[enc.ids])
    eot = end_of_turn(text.encode("utf-8", errors="surrogatepass"), ranges, special_at)
    return ChatEncoding(text, tok, enc.ids, enc.offsets, spans, token_message, eot, add_generation_prompt)


def content_tokens(offsets: np.ndarray, ranges: np.ndarray, special: np.ndarray) -> np.ndarray:
    """(n,) message index of the content each token overlaps (-1: template), vectorised."""
    n = len(offsets)
    out = np.full(n, -1, np.int64)
    full = np.flatnonzero(ranges[:, 1] > ranges[:, 0])
    if not len(full) or not n:
        return out
    order = full[np.argsort(ranges[full, 0], kind="stable")]
    starts, ends = ranges[order, 0], ranges[order, 1]
    k = np.searchsorted(starts, offsets[:, 1], side="left") - 1  # last content starting before the token ends
    kk = np.maximum(k, 0)
    ok = (k >= 0) & ~special & (offsets[:, 1] > offsets[:, 0]) & (offsets[:, 0] < ends[kk])
    out[ok] = order[kk[ok]]
    return out


def end_of_turn(raw: bytes, ranges: np.ndarray, special_at: np.ndarray) -> np.ndarray:
    """(M,) position of the special token closing each message's content: the first special token after
    the content with only whitespace between, before the next message's content starts; -1 if none."""
    out = np.full(len(ranges), -1, np.int64)
    sp = np.flatnonzero(special_at >= 0)
    if not len(sp):
        return out
    at = special_at[sp]
    starts = np.sort(ranges[:, 0])
    j = np.searchsorted(at, ranges[:, 1], side="left")
    for m, (b, k) in enumerate(zip(ranges[:, 1].tolist(), j.tolist())):  # one check per message
        if k == len(sp):
            continue
        nxt = starts[starts > b]
        where = int(at[k])
        if (not len(nxt) or where < nxt[0]) and not raw[b:where].strip():
            out[m] = sp[k]
    return out


# ----------------------------------------------------------------------------- alignment
@dataclass(eq=False)
class ChatAlignment(Alignment):
    """An `Alignment` of one conversation rendered by each side's own template.

    `text` is the shared content: every message's content (the bytes both renderings keep), concatenated
    in message order; `student_spans` / `teacher_spans` are in its bytes (template tokens: empty spans),
    `student_offsets` / `teacher_offsets` are the tokenizers' offsets into each side's own rendering.
    `student_group` / `teacher_group` are -1 on template tokens. Extra fields:
    student_chat / teacher_chat: the two `ChatEncoding`s; message_spans (M, 2): each message's bytes in
    `text`; group_message (G,): the message of every group; eot_groups: {message index: group index}.
    """

    student_chat: ChatEncoding = None
    teacher_chat: ChatEncoding = None
    message_spans: np.ndarray = None
    group_message: np.ndarray = None
    eot_groups: dict = None

    def _lone(self, side: str) -> np.ndarray:
        group = self.student_group if side == "student" else self.teacher_group
        lone = np.array([g.kind == "special" for g in self.groups] + [True], dtype=bool)
        lone[list(self.eot_groups.values())] = True
        return lone[group]

    def to_networkx(self):
        """The overlap graph (see `Alignment.to_networkx`); template tokens are isolated nodes, and each
        end-of-turn pair is joined by one edge."""
        graph = super().to_networkx()
        for g in self.eot_groups.values():
            grp = self.groups[g]
            graph.add_edge(("student", grp.student.start), ("teacher", grp.teacher.start))
        return graph


@dataclass
class _Plan:
    """One batch of conversations, both sides rendered, cut into per-message aligner inputs."""

    s_chats: list
    t_chats: list
    texts: list          # shared content of every (conversation, message) piece
    piece_conv: np.ndarray
    piece_msg: np.ndarray
    s_encs: list
    t_encs: list
    s_pos: list          # positions (in the conversation) of each piece's tokens
    t_pos: list


def _window(chat: ChatEncoding, i: int, lo: int, hi: int):
    """The content tokens of message i clipped to content bytes [lo, hi) (relative to the untrimmed content)."""
    m = chat.messages[i]
    a = m.start + (lo - m.trimmed[0])
    b = a + (hi - lo)
    pos = np.flatnonzero(chat.token_message == i)
    off = np.clip(chat.offsets[pos], a, b)
    keep = off[:, 1] > off[:, 0]
    pos, off = pos[keep], off[keep] - a
    return pos, Encoding(chat.ids[pos], off)


def _plan(conversations, s_chats, t_chats) -> _Plan:
    texts, conv, msg, s_encs, t_encs, s_pos, t_pos = [], [], [], [], [], [], []
    for c, (messages, sc, tc) in enumerate(zip(conversations, s_chats, t_chats)):  # one slice per message
        for i, m in enumerate(messages):
            raw = m["content"].encode("utf-8", errors="surrogatepass")
            sm, tm = sc.messages[i], tc.messages[i]
            lo = max(sm.trimmed[0], tm.trimmed[0])
            hi = len(raw) - max(sm.trimmed[1], tm.trimmed[1])
            if hi <= lo:
                continue
            sp, se = _window(sc, i, lo, hi)
            tp, te = _window(tc, i, lo, hi)
            texts.append(raw[lo:hi].decode("utf-8", errors="surrogatepass"))
            conv.append(c)
            msg.append(i)
            s_encs.append(se)
            t_encs.append(te)
            s_pos.append(sp)
            t_pos.append(tp)
    return _Plan(s_chats, t_chats, texts, np.asarray(conv, np.int64), np.asarray(msg, np.int64), s_encs, t_encs,
                 s_pos, t_pos)


@dataclass
class _Layout:
    """One conversation's groups (in order) and every token's group; positions are the conversation's."""

    kind: np.ndarray      # (G,) codes into GROUP_KINDS
    msg: np.ndarray       # (G,) message of each group
    eot: np.ndarray       # (G,) bool: an end-of-turn pair
    lead: np.ndarray      # (G,) bool: a trained message's last template token on each side (batches only)
    s_start: np.ndarray
    s_end: np.ndarray
    t_start: np.ndarray
    t_end: np.ndarray
    s_group: np.ndarray   # (n_s,) group of every token, -1 for template tokens
    t_group: np.ndarray
    s_span: np.ndarray    # (n_s, 2) alignment spans in the shared content's bytes (template: empty)
    t_span: np.ndarray
    message_spans: np.ndarray  # (M, 2) each message's bytes in the shared content
    shared: str           # the shared content text


def _layouts(plan: _Plan, student: Tok, teacher: Tok, leads=None) -> list:
    """Run the span aligner once over every message piece of the batch (`align_encodings`), then lay out
    each conversation: per message its content groups, then its end-of-turn pair.

    leads: optional per conversation a set of messages that get a lead group (the token before the
    content on each side, when both are template tokens), so the first content group has a predecessor."""
    if plan.texts:
        s_side, t_side, g = align_encodings(plan.texts, student, teacher, plan.s_encs, plan.t_encs)
        g_first = np.searchsorted(g.doc, np.arange(len(plan.texts) + 1))
        t_base = _piece_starts(plan.texts)
    out = []
    d = 0
    for c, (sc, tc) in enumerate(zip(plan.s_chats, plan.t_chats)):  # per conversation and message: slices only
        rows = {k: [] for k in ("kind", "msg", "eot", "lead", "s_start", "s_end", "t_start", "t_end")}
        s_group, t_group = np.full(len(sc.ids), -1, np.int64), np.full(len(tc.ids), -1, np.int64)
        s_span, t_span = np.zeros((len(sc.ids), 2), np.int64), np.zeros((len(tc.ids), 2), np.int64)
        shared, mspans, base = [], [], 0
        n_groups = 0

        def add(kind, m, eot, lead, a, b, x, y, count=None):
            k = len(a) if count is None else count
            for key, v in (("kind", kind), ("msg", m), ("eot", eot), ("lead", lead)):
                rows[key].append(np.broadcast_to(np.asarray(v), (k,)))
            for key, v in (("s_start", a), ("s_end", b), ("t_start", x), ("t_end", y)):
                rows[key].append(np.asarray(v, np.int64).reshape(k))
            return k

        for i in range(len(sc.messages)):
            here = d < len(plan.texts) and plan.piece_conv[d] == c and plan.piece_msg[d] == i
            if leads is not None and i in leads[c]:
                first_s = plan.s_pos[d][0] if here and len(plan.s_pos[d]) else sc.eot[i]
                first_t = plan.t_pos[d][0] if here and len(plan.t_pos[d]) else tc.eot[i]
                if first_s > 0 and first_t > 0 and s_group[first_s - 1] < 0 and t_group[first_t - 1] < 0:
                    s_group[first_s - 1], t_group[first_t - 1] = n_groups, n_groups
                    n_groups += add(_ONE_ONE, i, False, True, [first_s - 1], [first_s - 1], [first_t - 1], [first_t - 1])
            if here:
                text = plan.texts[d]
                gs = slice(g_first[d], g_first[d + 1])

                def conv_pos(local, pos):
                    return np.where(local >= 0, pos[np.maximum(local, 0)] if len(pos) else -1, -1)

                sp, tp = plan.s_pos[d], plan.t_pos[d]
                s_group[sp] = n_groups + g.s_group[s_side.first[d]:s_side.first[d + 1]]
                t_group[tp] = n_groups + g.t_group[t_side.first[d]:t_side.first[d + 1]]
                s_span[sp] = s_side.spans[s_side.first[d]:s_side.first[d + 1]] - t_base[d] + base
                t_span[tp] = t_side.spans[t_side.first[d]:t_side.first[d + 1]] - t_base[d] + base
                n_groups += add(g.kind[gs], i, False, False, conv_pos(g.s_start[gs], sp), conv_pos(g.s_end[gs], sp),
                                conv_pos(g.t_start[gs], tp), conv_pos(g.t_end[gs], tp))
                mspans.append((base, base + len(text.encode("utf-8", errors="surrogatepass"))))
                shared.append(text)
                base = mspans[-1][1]
                d += 1
            else:
                mspans.append((base, base))
            if sc.eot[i] >= 0 and tc.eot[i] >= 0:
                s_group[sc.eot[i]], t_group[tc.eot[i]] = n_groups, n_groups
                s_span[sc.eot[i]] = t_span[tc.eot[i]] = base
                n_groups += add(_ONE_ONE, i, True, False, [sc.eot[i]], [sc.eot[i]], [tc.eot[i]], [tc.eot[i]])
        cat = {k: (np.concatenate(v) if v else np.zeros(0, np.int64)) for k, v in rows.items()}
        # template tokens: empty spans where the shared content has reached
        for grp, span in ((s_group, s_span), (t_group, t_span)):
            tmpl = grp < 0
            if tmpl.any():
                reach = np.maximum.accumulate(np.where(tmpl, 0, span[:, 1]))
                span[tmpl] = reach[tmpl, None]
        out.append(_Layout(cat["kind"].astype(np.int64), cat["msg"].astype(np.int64), cat["eot"].astype(bool),
                           cat["lead"].astype(bool), cat["s_start"], cat["s_end"], cat["t_start"], cat["t_end"],
                           s_group, t_group, s_span, t_span, np.array(mspans, np.int64).reshape(-1, 2), "".join(shared)))
    return out


def _piece_starts(texts: list) -> np.ndarray:
    lengths = np.fromiter((len(t.encode("utf-8", errors="surrogatepass")) for t in texts), np.int64, len(texts))
    return np.cumsum(lengths) - lengths


def align_chat(messages, student, teacher, *, add_generation_prompt: bool = False, student_template=None,
               teacher_template=None, name: str = "messages", **template_kwargs) -> ChatAlignment:
    """Render `messages` with each side's own template and align the two renderings on message content
    (see the module docstring): template tokens in no group, end-of-turn tokens paired by role."""
    student, teacher = load_tokenizer(student), load_tokenizer(teacher)
    messages = check_messages(messages, name)
    sc = render_chat(messages, student, add_generation_prompt=add_generation_prompt, chat_template=student_template,
                     name=name, **template_kwargs)
    tc = render_chat(messages, teacher, add_generation_prompt=add_generation_prompt, chat_template=teacher_template,
                     name=name, **template_kwargs)
    lay = _layouts(_plan([messages], [sc], [tc]), student, teacher)[0]

    # a side without tokens in a group (a special token of the other side) gets an empty range where
    # its next grouped token stands
    s_at = np.searchsorted(np.maximum.accumulate(lay.s_group), np.arange(len(lay.kind))) if len(lay.s_group) else None
    t_at = np.searchsorted(np.maximum.accumulate(lay.t_group), np.arange(len(lay.kind))) if len(lay.t_group) else None
    groups = []
    for n, (k, a, b, x, y) in enumerate(zip(lay.kind.tolist(), lay.s_start.tolist(), lay.s_end.tolist(),
                                            lay.t_start.tolist(), lay.t_end.tolist())):
        s_rng = range(a, b + 1) if a >= 0 else range(int(s_at[n]), int(s_at[n]))
        t_rng = range(x, y + 1) if x >= 0 else range(int(t_at[n]), int(t_at[n]))
        groups.append(Group(s_rng, t_rng, GROUP_KINDS[k]))
    eot_groups = {int(m): int(g) for g, m in enumerate(lay.msg.tolist()) if lay.eot[g]}
    return ChatAlignment(lay.shared, student, teacher, sc.ids, tc.ids, sc.offsets, tc.offsets, lay.s_span, lay.t_span,
                         lay.s_group, lay.t_group, groups, student_chat=sc, teacher_chat=tc,
                         message_spans=lay.message_spans, group_message=lay.msg, eot_groups=eot_groups)


# ----------------------------------------------------------------------------- batches for training
@dataclass
class ChatBatch(BatchAlignment):
    """`align_batch`'s tensors for a batch of conversations, plus the loss masks.

    student_target (B, T_s) / teacher_target (B, T_t) bool: the tokens the loss trains on (the assistant's
        content and end-of-turn tokens, or every token with loss_on="all");
    labels (B, T_s) long: HF-style unshifted CE labels, -100 off `student_target`;
    kd_target (B, G) bool: the groups KD predicts (content groups of trained messages, their end-of-turn pairs);
    group_message (B, G) long: the message of every group (-1 on padding);
    group_mask (B, G): True for the groups whose last positions predict a `kd_target` group: the trained
        content groups and one "lead" group per trained message (its last template token on each side,
        which predicts the content's first bytes). `xtok_core.losses.DistillLoss` then compares the two
        models exactly where both predict trained content.
    kept (B,) long: index of the first message kept after truncation; rows: index of each row in the input.
    """

    student_target: "torch.Tensor" = None
    teacher_target: "torch.Tensor" = None
    labels: "torch.Tensor" = None
    kd_target: "torch.Tensor" = None
    group_message: "torch.Tensor" = None
    kept: "torch.Tensor" = None
    rows: "torch.Tensor" = None
    student_chats: list = None
    teacher_chats: list = None

    def to(self, device) -> "ChatBatch":
        moved = {f.name: (v.to(device) if hasattr(v := getattr(self, f.name), "to") and not isinstance(v, list) else v)
                 for f in fields(self)}
        return ChatBatch(**moved)


def _truncated(messages, render, max_length):
    """Drop whole messages from the conversation's start (a leading system message stays) until every
    rendering `render(messages)` returns fits in `max_length`; never cuts inside a message. Returns
    (first kept index, kept messages, renderings) or None when not even the last exchange fits."""
    def fits(encs):
        return max_length is None or all(len(e.ids) <= max_length for e in encs)

    encs = render(messages)
    if fits(encs):
        return 0, messages, encs
    head = messages[:1] if messages[0]["role"] == "system" else []
    for k in range(len(head) + 1, len(messages)):
        if messages[k]["role"] != "user" or not any(m["role"] == "assistant" for m in messages[k:]):
            continue
        cut = head + messages[k:]
        encs = render(cut)
        if fits(encs):
            return k, cut, encs
    return None


def fit_conversations(conversations, toks, max_length: int | None, *, templates=None, names=None, **template_kwargs):
    """Cut every conversation (whole messages from its start, as `align_chat_batch` does) so that every
    tokenizer in `toks` renders it in `max_length` tokens: one cut shared by the student and all teachers.
    Returns (conversations, index of each kept one in the input); those that cannot fit are left out."""
    toks = [load_tokenizer(t) for t in toks]
    templates = list(templates) if templates is not None else [None] * len(toks)
    names = list(names) if names is not None else [f"conversation {i}" for i in range(len(conversations))]
    out, rows = [], []
    for i, (msgs, name) in enumerate(zip(conversations, names)):  # rendering is per conversation (Jinja)
        msgs = check_messages(msgs, name)
        got = _truncated(msgs, lambda m, name=name: [render_chat(m, t, chat_template=c, name=name, **template_kwargs)
                                                     for t, c in zip(toks, templates)], max_length)
        if got is not None:
            out.append(got[1])
            rows.append(i)
    return out, rows


def check_trainable(messages, name: str) -> None:
    if not any(m["role"] == "assistant" for m in messages):
        raise XtokError(f"{name}: the conversation has no assistant turn, so there is nothing to train on; "
                        f"add an assistant message or drop the row")


def align_chat_batch(conversations, student, teacher, *, max_length: int | None = None, loss_on: str = "assistant",
                     student_template=None, teacher_template=None, names=None, **template_kwargs) -> ChatBatch:
    """Render every conversation with each side's own template, align on content, pad, and build the
    loss masks (see `ChatBatch`). No Python work per token: one aligner call for the whole batch.

    max_length: both renderings must fit; conversations are cut at their start, whole messages at a time
    (a leading system message stays), never inside a trained turn. A conversation whose last exchange
    alone does not fit is left out (`rows` says which inputs remain); XtokError if none fits.
    names: how errors name each conversation (default "conversation i").
    """
    import torch

    if loss_on not in LOSS_ON:
        raise XtokError(f"unknown --loss-on {loss_on!r}; pass one of {', '.join(LOSS_ON)}")
    if max_length is not None and max_length < 2:
        raise XtokError(f"max_length must be at least 2 tokens, got {max_length}; pass e.g. 1024 or None")
    student, teacher = load_tokenizer(student), load_tokenizer(teacher)
    conversations = list(conversations)
    names = list(names) if names is not None else [f"conversation {i}" for i in range(len(conversations))]
    convs, s_chats, t_chats, kept, rows = [], [], [], [], []
    for i, (msgs, name) in enumerate(zip(conversations, names)):  # rendering is per conversation (Jinja)
        msgs = check_messages(msgs, name)
        if loss_on == "assistant":
            check_trainable(msgs, name)

        def render(m, name=name):
            return (render_chat(m, student, chat_template=student_template, name=name, **template_kwargs),
                    render_chat(m, teacher, chat_template=teacher_template, name=name, **template_kwargs))

        got = _truncated(msgs, render, max_length)
        if got is None:
            continue
        k, cut, (sc, tc) = got
        convs.append(cut)
        s_chats.append(sc)
        t_chats.append(tc)
        kept.append(k)
        rows.append(i)
    if not convs:
        raise XtokError(f"no conversation of the batch fits in {max_length} tokens on both sides, even cut to its "
                        f"last exchange; raise --seq-len or shorten the conversations")
    trained = [{i for i, m in enumerate(c) if loss_on == "all" or m["role"] == "assistant"} for c in convs]
    lays = _layouts(_plan(convs, s_chats, t_chats), student, teacher, leads=trained)

    B = len(convs)
    T_s, T_t = max(len(c.ids) for c in s_chats), max(len(c.ids) for c in t_chats)
    G = max(1, max(len(l.kind) for l in lays))
    s_ids, t_ids = np.zeros((B, T_s), np.int64), np.zeros((B, T_t), np.int64)
    s_mask, t_mask = np.zeros((B, T_s), bool), np.zeros((B, T_t), bool)
    s_grp, t_grp = np.full((B, T_s), -1, np.int64), np.full((B, T_t), -1, np.int64)
    s_tgt, t_tgt = np.zeros((B, T_s), bool), np.zeros((B, T_t), bool)
    grid = {k: np.full((B, G), -1, np.int64) for k in ("s_start", "s_end", "t_start", "t_end", "kind", "msg")}
    g_mask, kd_tgt = np.zeros((B, G), bool), np.zeros((B, G), bool)
    for b, (sc, tc, lay, tr) in enumerate(zip(s_chats, t_chats, lays, trained)):  # one slice per conversation
        n_s, n_t, n_g = len(sc.ids), len(tc.ids), len(lay.kind)
        s_ids[b, :n_s], t_ids[b, :n_t] = sc.ids, tc.ids
        s_mask[b, :n_s], t_mask[b, :n_t] = True, True
        s_grp[b, :n_s], t_grp[b, :n_t] = lay.s_group, lay.t_group
        s_tgt[b, :n_s], t_tgt[b, :n_t] = sc.loss_mask(loss_on), tc.loss_mask(loss_on)
        for key, v in (("s_start", lay.s_start), ("s_end", lay.s_end), ("t_start", lay.t_start), ("t_end", lay.t_end),
                       ("kind", lay.kind), ("msg", lay.msg)):
            grid[key][b, :n_g] = v
        in_trained = np.isin(lay.msg, list(tr))
        content = (lay.kind < GROUP_KINDS.index("special")) & ~lay.eot & ~lay.lead
        g_mask[b, :n_g] = in_trained & (content | lay.lead)
        kd_tgt[b, :n_g] = in_trained & (content | lay.eot)
    # the end-of-turn pairs are KD targets but predict nothing trained: their group_mask stays False
    s_ids_t = torch.from_numpy(s_ids)
    labels = s_ids_t.masked_fill(~torch.from_numpy(s_tgt & s_mask), -100)
    pad_s, pad_t = _pad_id(student), _pad_id(teacher)
    s_ids[~s_mask], t_ids[~t_mask] = pad_s, pad_t
    T = torch.from_numpy
    return ChatBatch(T(s_ids), T(s_mask), T(t_ids), T(t_mask), T(s_grp), T(t_grp), T(grid["s_start"]),
                     T(grid["s_end"]), T(grid["t_start"]), T(grid["t_end"]), T(g_mask), T(grid["kind"]),
                     student_target=T(s_tgt), teacher_target=T(t_tgt), labels=labels, kd_target=T(kd_tgt),
                     group_message=T(grid["msg"]), kept=torch.tensor(kept), rows=torch.tensor(rows),
                     student_chats=s_chats, teacher_chats=t_chats)


def _pad_id(tok: Tok) -> int:
    return int(tok.roles.get("pad", tok.roles.get("eos", 0)))


# ----------------------------------------------------------------------------- on-policy turns
def end_of_turn_ids(tok: Tok, chat_template=None, **template_kwargs) -> list:
    """The ids that close an assistant turn in `tok`'s template (read off a rendered probe
    conversation), then its eos: where a generated assistant turn stops."""
    probe = [{"role": "user", "content": "1 + 1?"}, {"role": "assistant", "content": "2"}]
    c = render_chat(probe, tok, chat_template=chat_template, **template_kwargs)
    ids = [int(c.ids[c.eot[1]])] if c.eot[1] >= 0 else []
    if "eos" in tok.roles and tok.roles["eos"] not in ids:
        ids.append(int(tok.roles["eos"]))
    return ids


def prompt_for_turn(messages, turn: int | None = None) -> list:
    """The messages before the assistant turn `turn` (default: the last assistant turn)."""
    if turn is None:
        turn = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if turn is None or messages[turn]["role"] != "assistant":
        raise XtokError("on-policy needs an assistant turn to regenerate; add one to the conversation")
    return list(messages[:turn])


def decode_turn(tok: Tok, ids, stop_ids) -> str:
    """The text of a generated assistant turn: the ids up to the first end-of-turn id, decoded."""
    ids = [int(i) for i in ids]
    stops = set(int(s) for s in stop_ids)
    cut = next((k for k, i in enumerate(ids) if i in stops), len(ids))
    return tok.decode(ids[:cut], skip_special_tokens=True)


def with_turn(messages, text: str, turn: int | None = None) -> list:
    """The conversation with assistant turn `turn` (default: the last) replaced by `text`, later turns dropped:
    what the teacher (re-rendered with its own template) and the student are trained on."""
    prompt = prompt_for_turn(messages, turn)
    return prompt + [dict(messages[len(prompt)], content=text)]


def on_policy_conversations(model, tok: Tok, conversations, *, max_new_tokens: int = 64, temperature: float = 1.0,
                            chat_template=None, device=None, names=None, **template_kwargs) -> list:
    """The student writes the last assistant turn of every conversation itself.

    Each prompt is the student's own rendering of the messages before that turn with its generation
    prompt; the sampled ids are cut at the first end-of-turn id and decoded to text, and the conversation
    is returned with that text as the assistant's content. Every model (the teacher with its own
    template) then renders it again: no model ever sees another's ids or a template-stripped prompt."""
    import torch

    conversations = [check_messages(c, n) for c, n in zip(conversations, names or [f"conversation {i}" for i in range(len(conversations))])]
    prompts = [prompt_for_turn(c) for c in conversations]
    encs = [render_chat(p, tok, add_generation_prompt=True, chat_template=chat_template, **template_kwargs) for p in prompts]
    T = max(len(e.ids) for e in encs)
    pad = _pad_id(tok)
    ids = np.full((len(encs), T), pad, np.int64)
    mask = np.zeros((len(encs), T), np.int64)
    for i, e in enumerate(encs):  # left padding, one slice per prompt
        ids[i, T - len(e.ids):] = e.ids
        mask[i, T - len(e.ids):] = 1
    stops = end_of_turn_ids(tok, chat_template, **template_kwargs)
    device = device or next(model.parameters()).device
    with torch.no_grad():
        out = model.generate(input_ids=torch.from_numpy(ids).to(device), attention_mask=torch.from_numpy(mask).to(device),
                             max_new_tokens=max_new_tokens, do_sample=temperature > 0, temperature=max(temperature, 1e-5),
                             top_k=0, top_p=1.0, pad_token_id=pad, eos_token_id=stops)
    new = out[:, T:].tolist()
    return [with_turn(c, decode_turn(tok, n, stops)) for c, n in zip(conversations, new)]
