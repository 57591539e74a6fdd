"""The project's own training text, generated so that numerals matter.

Cross-tokenizer distillation goes wrong first on numerals, prices, dates and code, where tokenizers
disagree the most (Llama-3 has 3-digit number tokens, Qwen splits every digit). The demo corpus is
therefore made of: multi-digit arithmetic (`347 + 1286 = 1633`), prices (`$1,234.56`), dates and times
(`2024-03-15 12:30`), short indented code snippets and plain prose. It is generated, deterministic
for a seed, and written for this project; `python -m xtok_core.corpus` regenerates the bundled
sample (`assets/corpus/sample.txt`).

Held-out arithmetic: an addition `a + b` is held out when `_held_out(a, b)` is true. Training text never
contains a held-out pair and `arithmetic_eval_set` draws only held-out pairs, so the evaluation is
disjoint from any training corpus, whatever the seeds.
"""

from __future__ import annotations

import random
import sys
from importlib import resources
from pathlib import Path

SAMPLE_PATH = Path(str(resources.files("xtok_core") / "assets" / "corpus" / "sample.txt"))
SAMPLE_LINES = 900

_ITEMS = ["lamp", "chair", "laptop", "bicycle", "coffee maker", "backpack", "monitor", "kettle",
          "desk", "headphones", "tent", "camera", "printer", "jacket", "router", "blender"]
_NAMES = ["Ada", "Bruno", "Chen", "Dana", "Emil", "Farah", "Goran", "Hana", "Ivo", "Jun", "Kira", "Luis"]
_EVENTS = ["the review", "the deploy", "a meeting", "the backup", "the flight", "the invoice run",
           "the lecture", "the release", "a dentist visit", "the training job"]
_PROSE = [
    "The river was quiet in the morning, and the fog lifted slowly over the fields.",
    "A good teacher explains the same idea in several ways until one of them lands.",
    "She packed the notebooks, checked the train times twice, and left before sunrise.",
    "Small models learn quickly when the data is clean and the task is narrow.",
    "The library closes early on Sundays, so plan your visit for the afternoon.",
    "He wrote the numbers down carefully, because one wrong digit changes everything.",
    "Most bugs hide in the places nobody thought to test.",
    "The recipe asks for two eggs, a cup of flour and a pinch of salt.",
    "When the wind turned, the sailors trimmed the sails and headed for the harbour.",
    "Reading old letters is like hearing a voice from another room.",
    "The committee agreed to meet again after the budget was approved.",
    "Every tokenizer cuts text differently, but the bytes underneath are the same.",
]
_SUBJECTS = ["The old bridge", "Our team", "The small cafe", "A curious student", "The city council",
             "The night train", "My neighbour", "The museum"]
_VERBS = ["opened", "finished", "moved", "announced", "repaired", "visited", "planned", "described"]
_OBJECTS = ["a new exhibit", "the project ahead of time", "to a bigger office", "its winter schedule",
            "the broken fence", "the northern coast", "a long weekend", "the results in detail"]
_FUNCS = ["total", "average", "scale", "clamp", "count_even", "last_digit"]


def _held_out(a: int, b: int) -> bool:
    """True for the additions reserved for evaluation (about one pair in thirteen)."""
    return (a * 7919 + b * 104729) % 13 == 0


def _number(rng: random.Random, digits_lo: int = 1, digits_hi: int = 4) -> int:
    d = rng.randint(digits_lo, digits_hi)
    return rng.randint(10 ** (d - 1) if d > 1 else 0, 10 ** d - 1)


def _arithmetic(rng: random.Random) -> str:
    op = rng.choice("++++--*")
    while True:
        a, b = _number(rng), _number(rng)
        if op == "*":
            a, b = _number(rng, 1, 3), _number(rng, 1, 2)
        if op != "+" or not _held_out(a, b):
            break
    if op == "-" and b > a:
        a, b = b, a
    value = a + b if op == "+" else a - b if op == "-" else a * b
    return f"{a} {op} {b} = {value}"


def _money(rng: random.Random) -> str:
    return f"${rng.randint(0, 99_999) / 100 * rng.choice([1, 1, 10]):,.2f}"


def _price(rng: random.Random) -> str:
    item, name = rng.choice(_ITEMS), rng.choice(_NAMES)
    form = rng.randrange(4)
    if form == 0:
        return f"The {item} costs {_money(rng)}."
    if form == 1:
        return f"{name} paid {_money(rng)} for a {item} and {_money(rng)} for shipping."
    if form == 2:
        q, unit = rng.randint(2, 12), rng.randint(100, 99_999) / 100
        return f"{q} x {item} at ${unit:,.2f} each = ${q * unit:,.2f}"
    return f"Invoice #{rng.randint(1000, 99999)}: total {_money(rng)}, tax {rng.randint(0, 25)}.{rng.randint(0, 9)}%"


def _date(rng: random.Random) -> str:
    y, m, d = rng.randint(1990, 2035), rng.randint(1, 12), rng.randint(1, 28)
    hh, mm = rng.randint(0, 23), rng.choice([0, 5, 10, 15, 20, 30, 45, 50])
    form = rng.randrange(4)
    if form == 0:
        return f"{rng.choice(_EVENTS).capitalize()} is scheduled for {y}-{m:02d}-{d:02d} {hh:02d}:{mm:02d}."
    if form == 1:
        return f"[{y}-{m:02d}-{d:02d}T{hh:02d}:{mm:02d}:{rng.randint(0, 59):02d}Z] job {rng.randint(1, 999)} finished in {rng.randint(1, 9999)} ms"
    if form == 2:
        return f"{rng.choice(_NAMES)} was born on {d:02d}/{m:02d}/{y} at {hh:02d}:{mm:02d}."
    return f"From {hh:02d}:{mm:02d} to {(hh + rng.randint(1, 3)) % 24:02d}:{mm:02d} on {y}-{m:02d}-{d:02d}, {rng.choice(_EVENTS)} ran late."


def _code(rng: random.Random) -> str:
    f, n, k = rng.choice(_FUNCS), rng.randint(2, 99), rng.randint(2, 9)
    form = rng.randrange(3)
    if form == 0:
        return (f"def {f}(xs):\n    result = 0\n    for x in xs:\n        if x % {k} == 0:\n"
                f"            result += x\n    return result")
    if form == 1:
        return (f"for i in range({n}):\n    if i != {k}:\n        print(i * {k})\n    else:\n        break")
    items = ", ".join(str(rng.randint(0, 999)) for _ in range(rng.randint(3, 6)))
    return f"values = [{items}]\nassert len(values) >= {k - 1}\nprint(sum(values) // {k})"


def _prose(rng: random.Random) -> str:
    if rng.random() < 0.5:
        return rng.choice(_PROSE)
    return f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} in {rng.randint(1990, 2030)}."


# Arithmetic weighs most: it is what the evaluation measures.
_KINDS = [(_arithmetic, 0.4), (_price, 0.15), (_date, 0.15), (_code, 0.1), (_prose, 0.2)]


def generate_corpus(n_lines: int, seed: int = 0) -> list[str]:
    """`n_lines` training texts (a code snippet is one text with embedded newlines), deterministic
    for `seed`. No text contains a held-out addition."""
    rng = random.Random(seed)
    makers, weights = zip(*_KINDS)
    return [rng.choices(makers, weights)[0](rng) for _ in range(n_lines)]


def arithmetic_eval_set(n: int, seed: int = 1234) -> list[tuple[str, str]]:
    """`n` held-out (prompt, answer) pairs such as ("123 + 456 =", " 579"), distinct prompts,
    two- and three-digit operands. Never seen in `generate_corpus` output."""
    rng = random.Random(seed)
    out, seen = [], set()
    while len(out) < n:
        a, b = _number(rng, 2, 3), _number(rng, 2, 3)
        if _held_out(a, b) and (a, b) not in seen:
            seen.add((a, b))
            out.append((f"{a} + {b} =", f" {a + b}"))
    return out


def sample_corpus() -> str:
    """The bundled sample (about 40 KB): texts separated by blank lines."""
    return SAMPLE_PATH.read_text(encoding="utf-8")


def sample_texts() -> list[str]:
    """The bundled sample split back into its texts."""
    return [t for t in sample_corpus().split("\n\n") if t.strip()]


# ----------------------------------------------------------------------------- the chat set
# Short conversations for chat distillation (`xtok distill --data chat`): questions about arithmetic,
# prices, dates and a little code, answered the way an instruct model should. Every conversation is
# keyed by its first question; `_chat_held_out(key)` sends about one key in ten (and every held-out
# addition of `_held_out`) to the "eval" split, so the two splits never share a question.
CHAT_TRAIN, CHAT_EVAL = 3000, 200
CHAT_SPLITS = ("train", "eval")
_SYSTEMS = ["You are a careful assistant. Answer briefly and show the arithmetic.",
            "You are a helpful assistant for shop and calendar questions.",
            "Answer in one short sentence."]
_WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def _chat_held_out(key: str) -> bool:
    import zlib

    return zlib.crc32(key.encode("utf-8")) % 10 == 0


def _chat_arithmetic(rng: random.Random):
    op = rng.choice("++-*")
    a, b = (_number(rng, 1, 3), _number(rng, 1, 2)) if op == "*" else (_number(rng, 1, 4), _number(rng, 1, 4))
    if op == "-" and b > a:
        a, b = b, a
    value = a + b if op == "+" else a - b if op == "-" else a * b
    ask = rng.choice(["What is {a} {op} {b}?", "Compute {a} {op} {b}.", "How much is {a} {op} {b}?"])
    turns = [ask.format(a=a, op="x" if op == "*" and rng.random() < 0.3 else op, b=b), f"{a} {op} {b} = {value}."]
    if rng.random() < 0.25:
        c = _number(rng, 1, 3)
        turns += [f"And if you add {c}?", f"{value} + {c} = {value + c}."]
    return turns, (op == "+" and _held_out(a, b))


def _cents(c: int) -> str:
    return f"${c // 100:,d}.{c % 100:02d}"


def _chat_price(rng: random.Random):
    # integer cents throughout: every answer is exact
    item, q, unit = rng.choice(_ITEMS), rng.randint(2, 12), rng.randint(100, 99_999)
    form = rng.randrange(3)
    if form == 0:
        return [f"One {item} costs {_cents(unit)}. How much do {q} cost?", f"{q} x {_cents(unit)} = {_cents(q * unit)}."], False
    if form == 1:
        pct = rng.choice([5, 10, 15, 20, 25, 30, 50])
        off = (unit * pct + 50) // 100
        return [f"The {item} is {_cents(unit)} with {pct}% off. What do I pay?",
                f"{pct}% of {_cents(unit)} is {_cents(off)}, so you pay {_cents(unit - off)}."], False
    ship = rng.randint(0, 2_500)
    return [f"I bought a {item} for {_cents(unit)} and paid {_cents(ship)} shipping. What was the total?",
            f"{_cents(unit)} + {_cents(ship)} = {_cents(unit + ship)}."], False


def _chat_date(rng: random.Random):
    import datetime as dt

    day = dt.date(rng.randint(1990, 2035), rng.randint(1, 12), rng.randint(1, 28))
    form = rng.randrange(3)
    if form == 0:
        n = rng.randint(1, 90)
        return [f"What date is {n} days after {day.isoformat()}?", f"{(day + dt.timedelta(days=n)).isoformat()}."], False
    if form == 1:
        return [f"What day of the week was {day.isoformat()}?", f"{day.isoformat()} was a {_WEEKDAYS[day.weekday()]}."], False
    hh, mm, dur = rng.randint(0, 20), rng.choice([0, 15, 30, 45]), rng.choice([30, 45, 60, 90, 120, 150])
    end = dt.datetime(2000, 1, 1, hh, mm) + dt.timedelta(minutes=dur)
    return [f"{rng.choice(_EVENTS).capitalize()} starts at {hh:02d}:{mm:02d} and lasts {dur} minutes. When does it end?",
            f"It ends at {end.hour:02d}:{end.minute:02d}."], False


def _chat_code(rng: random.Random):
    k, n = rng.randint(2, 9), rng.randint(3, 30)
    form = rng.randrange(3)
    if form == 0:
        return [f"Write a Python function that sums the multiples of {k} in a list.",
                f"def sum_multiples(xs):\n    return sum(x for x in xs if x % {k} == 0)"], False
    if form == 1:
        return [f"What does `print(sum(range({n})))` print?", f"It prints {n * (n - 1) // 2}."], False
    return [f"Write a loop that prints the first {n} squares.", f"for i in range({n}):\n    print(i * i)"], False


_CHAT_KINDS = [(_chat_arithmetic, 0.45), (_chat_price, 0.2), (_chat_date, 0.2), (_chat_code, 0.15)]


def generate_chat(n: int, seed: int = 0, split: str = "train") -> list[list[dict]]:
    """`n` conversations (lists of {"role", "content"} messages) of `split` ("train" or "eval"),
    deterministic for `seed`; a question of one split never appears in the other. About a third start
    with a system message and a quarter of the arithmetic ones have a follow-up turn."""
    if split not in CHAT_SPLITS:
        raise ValueError(f"unknown chat split {split!r}; use one of {CHAT_SPLITS}")
    rng = random.Random(f"xtok-chat-{seed}")
    makers, weights = zip(*_CHAT_KINDS)
    out, seen = [], set()
    while len(out) < n:
        turns, held = rng.choices(makers, weights)[0](rng)
        system = rng.choice(_SYSTEMS) if rng.random() < 0.3 else None
        key = turns[0]
        if ((held or _chat_held_out(key)) != (split == "eval")) or key in seen:
            continue
        seen.add(key)
        msgs = [{"role": "system", "content": system}] if system else []
        msgs += [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]
        out.append(msgs)
    return out


def chat_set(split: str = "train", seed: int = 0) -> list[list[dict]]:
    """The bundled chat set: `CHAT_TRAIN` training or `CHAT_EVAL` held-out conversations."""
    return generate_chat(CHAT_TRAIN if split == "train" else CHAT_EVAL, seed, split)


def write_chat_jsonl(path: Path, split: str = "train", seed: int = 0, n: int | None = None) -> Path:
    """The chat set as JSON lines, one {"messages": [...]} object per conversation (`--data` reads it)."""
    import json

    convs = generate_chat(n, seed, split) if n is not None else chat_set(split, seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"messages": c}, ensure_ascii=False) + "\n" for c in convs), encoding="utf-8")
    return path


def write_sample(path: Path = SAMPLE_PATH, n_lines: int = SAMPLE_LINES, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n\n".join(generate_corpus(n_lines, seed)) + "\n", encoding="utf-8")
    return path


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "chat":  # python -m xtok_core.corpus chat OUT.jsonl [train|eval]
        p = write_chat_jsonl(Path(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "train")
    else:
        p = write_sample(Path(sys.argv[1]) if len(sys.argv) > 1 else SAMPLE_PATH)
    print(f"wrote {p} ({p.stat().st_size:,d} bytes)")
