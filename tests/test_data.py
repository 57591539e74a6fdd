"""--data PATH: user text for a run (.txt, .jsonl, .parquet, .csv), its checks, its held-out split and windows."""

import json

import pytest

from xtok_core.cli import main
from xtok_core.distill import DistillConfig, run_distillation
from xtok_core.distill.data import TextBatches, read_documents, split_heldout, window_documents
from xtok_core.errors import XtokError

DOCS = ["The first document talks about rivers and mountains.",
        "A second one, with numbers: 1234 + 5678 = 6912.\nIt has two lines.",
        "Third: Straße, naïve, 日本語, and an emoji 😀."]
SMALL = dict(student="tiny:llama-3.2", teachers=["tiny:qwen2.5"], batch_size=2, seq_len=24, tiny_dim=32, tiny_layers=2,
             train_demo_teacher=False, warmup=1, lr=1e-2, eval_every=0, text_chars=60)


def _write(tmp_path, suffix):
    p = tmp_path / f"data{suffix}"
    if suffix == ".txt":
        p.write_text("\n\n".join(DOCS) + "\n", encoding="utf-8")
    elif suffix == ".jsonl":
        p.write_text("".join(json.dumps({"id": i, "text": d}) + "\n" for i, d in enumerate(DOCS)), encoding="utf-8")
    else:
        import pandas as pd

        df = pd.DataFrame({"id": range(len(DOCS)), "text": DOCS})
        df.to_parquet(p) if suffix == ".parquet" else df.to_csv(p, index=False)
    return p


@pytest.mark.parametrize("suffix", [".txt", ".jsonl", ".parquet", ".csv"])
def test_each_format_reads_the_same_documents(tmp_path, suffix):
    assert read_documents(_write(tmp_path, suffix)) == DOCS


def test_txt_documents_are_separated_by_blank_lines_only(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("one\nstill one\n \t\ntwo\r\n\r\nthree\n\n\n\n", encoding="utf-8")
    assert read_documents(p) == ["one\nstill one", "two", "three"]


def test_heldout_split_depends_on_the_text_not_the_order():
    docs = [f"document number {i} about topic {i % 7}" for i in range(200)]
    train, held = split_heldout(docs, 0.1)
    train_r, held_r = split_heldout(docs[::-1], 0.1)
    assert set(held) == set(held_r) and set(train) == set(train_r)
    assert set(train) | set(held) == set(docs) and not set(train) & set(held)
    assert 5 <= len(held) <= 40  # about 10 % of 200
    assert len(split_heldout(docs[:2], 0.01)[1]) == 1  # at least one held out


def test_long_documents_are_windowed_and_nothing_is_dropped(tok):
    t = tok("llama-3.2")
    long = " ".join(f"word{i} 😀 日本" for i in range(300))
    windows = window_documents([long, "short"], t, 23)
    assert "".join(windows[:-1]) == long and windows[-1] == "short"
    assert len(windows) > 2 and all(len(t.encode(w)) <= 23 + 1 for w in windows)  # a cut may re-merge one token


def test_batches_are_a_pure_function_of_step_and_rank():
    ex = [f"text {i}" for i in range(10)]
    a, b = TextBatches(0, 0, 3, seed=1, examples=ex), TextBatches(0, 0, 3, seed=1, examples=list(ex))
    assert [a(s) for s in (5, 0, 7)] == [b(s) for s in (5, 0, 7)]
    r0, r1 = TextBatches(0, 0, 3, 1, rank=0, world=2, examples=ex), TextBatches(0, 0, 3, 1, rank=1, world=2, examples=ex)
    assert not set(r0(0)) & set(r1(0))


# ------------------------------------------------------------------------ bad data: one line, no run directory
def _bad(tmp_path, name, content: bytes):
    p = tmp_path / name
    p.write_bytes(content)
    return p


@pytest.mark.parametrize("name,content,expect", [
    ("empty.txt", b"", "is empty"),
    ("blank.txt", b"\n\n  \n", "no text"),
    ("rows.jsonl", b'{"body": "x", "id": 1}\n', "no field 'text' (fields found: body, id)"),
    ("latin1.txt", "caf\u00e9 ok\n".encode("utf-8") + "na\u00efve".encode("latin-1"),
     "byte 0xef at byte offset %d" % len("caf\u00e9 ok\nna".encode())),
    ("broken.jsonl", b'{"text": "a"}\n{"text": \n', "line 2 is not JSON"),
    ("notes.docx", b"PK", "unknown file type"),
])
def test_bad_data_gets_one_line_and_no_run_directory(tmp_path, capsys, name, content, expect):
    p = _bad(tmp_path, name, content)
    with pytest.raises(XtokError) as e:
        run_distillation(DistillConfig(**SMALL, steps=1, data=str(p)), tmp_path / "run", progress=False)
    assert expect in str(e.value) and str(p) in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "run").exists()
    rc = main(["distill", "--data", str(p), "--steps", "1", "--out", str(tmp_path / "run2")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and expect in err and not (tmp_path / "run2").exists()


def test_missing_column_in_parquet_names_the_columns(tmp_path):
    import pandas as pd

    p = tmp_path / "d.parquet"
    pd.DataFrame({"content": ["a"], "lang": ["en"]}).to_parquet(p)
    with pytest.raises(XtokError, match=r"no field 'text' \(fields found: content, lang\)"):
        read_documents(p)
    assert read_documents(p, "content") == ["a"]


@pytest.mark.slow
def test_a_run_on_user_jsonl_trains_on_that_text(tmp_path, monkeypatch):
    """Fixed batch on the user's text: every batch comes from the file, and the student's CE on it falls."""
    from xtok_core.distill import loop as loop_module

    texts = [f"Zorblax {i} quivers near the amber lighthouse of Quillon." for i in range(12)]
    p = tmp_path / "mine.jsonl"
    p.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    seen = []
    original = loop_module.TextBatches.__call__
    monkeypatch.setattr(loop_module.TextBatches, "__call__", lambda self, step: seen.append(original(self, step)) or seen[-1])
    cfg = DistillConfig(**{**SMALL, "loss": "ce", "teachers": [], "eval_every": 8}, steps=8, data=str(p), fixed_batch=True,
                        heldout_fraction=0.2)
    result = run_distillation(cfg, tmp_path / "run", progress=False)
    rows = result.metrics
    assert result.state == "finished" and len(rows) == 8
    assert len(seen) == 8 and all(t in texts for batch in seen for t in batch)
    assert rows[-1]["ce"] < rows[0]["ce"] - 1.0
    assert {"eval_ce", "eval_ce_per_byte", "eval_numeral_ce"} <= set(rows[-1]) and "eval_accuracy" not in rows[-1]
