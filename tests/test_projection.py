"""The projection matrix W (SPEC §2) on the real bundled tokenizers."""

import subprocess
import sys
from collections import defaultdict

import numpy as np
import pytest
import torch

from xtok_core import XtokError
from xtok_core.projection import ROW_KINDS, Projection, build_projection

PAIRS = [("llama-3.2", "qwen2.5"), ("gpt2", "qwen2.5"), ("mistral-7b", "llama-3.2"), ("qwen2.5", "gemma")]


def row_dict(proj, s):
    cols, vals = proj.row(s)
    return {int(c): float(v) for c, v in zip(cols, vals)}


def one_token(tok, text):
    ids = tok.encode(text, dummy_prefix=False).ids.tolist()
    assert len(ids) == 1, f"{text!r} is {len(ids)} tokens of {tok.name}"
    return ids[0]


@pytest.mark.parametrize("student,teacher", PAIRS)
def test_every_row_sums_to_one(projection, student, teacher):
    w = projection(student, teacher)
    sums = np.asarray(w.matrix.sum(axis=1)).ravel()
    assert np.abs(sums - 1).max() <= 1e-6
    assert w.matrix.dtype == np.float32 and (w.matrix.data > 0).all()
    assert np.diff(w.matrix.indptr).max() <= w.params["top_k"]


@pytest.mark.parametrize("student,teacher", PAIRS)
def test_kinds_are_consistent_with_rows(projection, tok, student, teacher):
    w = projection(student, teacher)
    s, t = tok(student), tok(teacher)
    nnz = np.diff(w.matrix.indptr)
    first = w.matrix.indices[w.matrix.indptr[:-1]]
    exact = np.flatnonzero(w.kinds == ROW_KINDS.index("exact"))
    assert (nnz[exact] == 1).all() and np.allclose(w.matrix.data[w.matrix.indptr[exact]], 1.0)
    assert all(s.token_bytes[i] == t.token_bytes[first[i]] for i in exact[:: max(1, len(exact) // 2000)])
    special = np.flatnonzero(w.kinds == ROW_KINDS.index("special"))
    assert set(special.tolist()) == set(np.flatnonzero(s.special).tolist())
    trunc = w.kinds == ROW_KINDS.index("truncated")
    retok = w.kinds == ROW_KINDS.index("retokenized")
    assert (w.n_pieces[trunc] > w.params["max_pieces"]).all()
    assert (w.n_pieces[retok] <= w.params["max_pieces"]).all() and (w.n_pieces[retok] >= 1).all()
    # a re-tokenized row never equals a single teacher token with the same bytes
    assert not any(s.token_bytes[i] == t.token_bytes[first[i]] and nnz[i] == 1 for i in np.flatnonzero(retok)[:3000])


def test_retokenized_rows_match_the_per_token_reference(projection, tok):
    """A slow, obviously-correct per-token build of 300 rows agrees with the batched build."""
    s, t = tok("llama-3.2"), tok("qwen2.5")
    w = projection("llama-3.2", "qwen2.5")
    rows = np.flatnonzero(np.isin(w.kinds, [ROW_KINDS.index("retokenized"), ROW_KINDS.index("truncated")]))
    for i in np.random.default_rng(0).choice(rows, 300, replace=False).tolist():
        text = s.token_bytes[i].decode("utf-8", errors="strict") if _valid(s.token_bytes[i]) else None
        if text is None:
            continue
        ids = t.backend.encode(text, add_special_tokens=False).ids[:4]
        acc = defaultdict(float)
        for k, j in enumerate(ids):
            acc[j] += 0.9 * 0.1**k
        z = sum(acc.values())
        assert row_dict(w, i) == pytest.approx({j: v / z for j, v in acc.items()}, abs=1e-6), i


def _valid(b):
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def test_two_builds_give_byte_identical_files(tmp_path):
    a = build_projection("gpt2", "qwen2.5").save(tmp_path / "a.safetensors")
    b = build_projection("gpt2", "qwen2.5").save(tmp_path / "b.safetensors")
    assert a.read_bytes() == b.read_bytes()


def test_llama_202_maps_to_qwen_2_and_0(projection, tok):
    s, t = tok("llama-3.2"), tok("qwen2.5")
    w = projection("llama-3.2", "qwen2.5")
    row = row_dict(w, one_token(s, "202"))
    assert row == pytest.approx({one_token(t, "2"): 0.909 / 0.999, one_token(t, "0"): 0.09 / 0.999}, abs=1e-6)
    assert round(row[one_token(t, "2")], 5) == 0.90991 and round(row[one_token(t, "0")], 5) == 0.09009


def test_gpt2_2019_maps_to_four_qwen_digits(projection, tok):
    s, t = tok("gpt2"), tok("qwen2.5")
    w = projection("gpt2", "qwen2.5")
    sid = one_token(s, "2019")
    assert w.kind(sid) == "retokenized" and w.n_pieces[sid] == 4
    want = {one_token(t, d): 0.9 * 0.1**i / 0.9999 for i, d in enumerate("2019")}
    assert row_dict(w, sid) == pytest.approx(want, abs=1e-6)
    exp = w.explain(sid)
    assert [p.text for p in exp.sequence] == ["2", "0", "1", "9"] and "0.9999" in exp.formula


def test_gpt2_space_2024_is_truncated_and_repeated_pieces_share_a_column(projection, tok):
    s, t = tok("gpt2"), tok("qwen2.5")
    w = projection("gpt2", "qwen2.5")
    sid = one_token(s, " 2024")
    assert w.kind(sid) == "truncated" and w.n_pieces[sid] == 5
    z = 0.9999
    want = {one_token(t, " "): 0.9 / z, one_token(t, "2"): (0.09 + 0.0009) / z, one_token(t, "0"): 0.009 / z}
    assert row_dict(w, sid) == pytest.approx(want, abs=1e-6)


def test_shared_word_maps_exactly(projection, tok):
    s, t = tok("llama-3.2"), tok("qwen2.5")
    w = projection("llama-3.2", "qwen2.5")
    sid = one_token(s, " distillation") if len(s.encode(" distillation").ids) == 1 else one_token(s, " the")
    assert w.kind(sid) == "exact"
    assert row_dict(w, sid) == {t.backend.token_to_id(t.backend.id_to_token(one_token(t, s.token_text(sid)))): 1.0}


def test_sentencepiece_the_matches_byte_level_the(projection, tok):
    s, t = tok("mistral-7b"), tok("llama-3.2")
    w = projection("mistral-7b", "llama-3.2")
    sid = s.backend.token_to_id("▁the")
    assert w.kind(sid) == "exact" and row_dict(w, sid) == {t.backend.token_to_id("Ġthe"): 1.0}


def test_byte_fallback_twin_loses_to_the_regular_piece(projection, tok):
    # mistral has both 'A' and '<0x41>' for byte 0x41: a teacher-side collision
    s, t = tok("llama-3.2"), tok("mistral-7b")
    w = projection("llama-3.2", "mistral-7b")
    sid = one_token(s, "A")
    assert row_dict(w, sid) == {t.backend.token_to_id("A"): 1.0}
    assert t.backend.token_to_id("<0x41>") is not None


def test_begin_of_text_maps_by_role(projection, tok):
    s = tok("llama-3.2")
    bos = s.roles["bos"]
    qw = projection("llama-3.2", "qwen2.5")  # Qwen has no bos: eos, flagged
    assert row_dict(qw, bos) == {tok("qwen2.5").roles["eos"]: 1.0} and not qw.role_matched[bos] and qw.kind(bos) == "special"
    assert "lacks" in qw.explain(bos).reason
    ms = projection("llama-3.2", "mistral-7b")  # Mistral has <s>: matched by role
    assert row_dict(ms, bos) == {tok("mistral-7b").roles["bos"]: 1.0} and ms.role_matched[bos]


def test_o200k_holes_and_padded_teacher_vocab_size_w(tok):
    w = build_projection("gpt-4o", "qwen2.5", teacher_vocab_size=151_936)
    assert w.shape == (200_019, 151_936)
    holes = np.arange(200_000, 200_018)
    assert (w.kinds[holes] == ROW_KINDS.index("padding")).all()
    assert w.matrix[:, 151_665:].nnz == 0  # padding columns stay empty
    padded = build_projection("gpt2", "qwen2.5", student_vocab_size=50_304)
    assert padded.shape == (50_304, 151_665) and (padded.kinds[50_257:] == ROW_KINDS.index("padding")).all()
    assert np.abs(np.asarray(padded.matrix.sum(axis=1)).ravel() - 1).max() <= 1e-6


def test_a_logits_width_matching_neither_size_is_an_error(projection):
    w = projection("llama-3.2", "qwen2.5")
    with pytest.raises(XtokError, match="151,936"):
        w.check_logits(teacher_width=151_936)
    with pytest.raises(XtokError, match="smaller"):
        build_projection("gpt2", "qwen2.5", teacher_vocab_size=1000)


def test_reverse_pass_adds_teacher_to_student_mass(projection):
    plain, both = projection("gpt2", "qwen2.5"), projection("gpt2", "qwen2.5", reverse_pass=True)
    assert np.abs(np.asarray(both.matrix.sum(axis=1)).ravel() - 1).max() <= 1e-6
    assert (plain.kinds == both.kinds).all()
    exact = plain.kinds == ROW_KINDS.index("exact")
    same = (plain.matrix != both.matrix).sum(axis=1) == 0
    assert np.asarray(same).ravel()[exact].all() and not np.asarray(same).ravel().all()


def test_save_load_round_trip_and_hash_check(projection, tok, tmp_path):
    w = projection("gpt2", "qwen2.5")
    p = w.save(tmp_path / "w.safetensors")
    back = Projection.load(p, student="gpt2", teacher="qwen2.5")
    assert (back.matrix != w.matrix).nnz == 0 and (back.kinds == w.kinds).all() and back.sha256 == w.sha256
    with pytest.raises(XtokError) as e:
        Projection.load(p, student="llama-3.2", teacher="qwen2.5")
    msg = str(e.value)
    assert "\n" not in msg and w.student_sha256[:12] in msg and tok("llama-3.2").sha256[:12] in msg and "xtok build-w" in msg


@pytest.mark.parametrize("damage", ["truncate", "garbage", "missing"])
def test_corrupt_w_file_is_a_one_line_error(projection, tmp_path, damage):
    p = projection("gpt2", "qwen2.5").save(tmp_path / "w.safetensors")
    if damage == "truncate":
        p.write_bytes(p.read_bytes()[:5000])
    elif damage == "garbage":
        p.write_bytes(b"\x00" * 64)
    else:
        p.unlink()
    with pytest.raises(XtokError) as e:
        Projection.load(p)
    assert "\n" not in str(e.value)


def test_nemo_round_trip_preserves_every_nonzero(projection, tmp_path):
    w = projection("llama-3.2", "qwen2.5")
    p = w.save_nemo(tmp_path / "w.pt")
    raw = torch.load(p, weights_only=True)
    assert raw["indices"].shape == (w.shape[0], 4) and (raw["indices"][:, 0] >= 0).all()
    assert ((raw["indices"] == -1) == (raw["likelihoods"] == 0)).all()
    back = Projection.load_nemo(p, "llama-3.2", "qwen2.5")
    assert back.shape == w.shape and (back.matrix != w.matrix).nnz == 0
    assert (back.kinds == w.kinds).all()


def test_pickled_pt_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    p = tmp_path / "evil.pt"
    torch.save({"indices": torch.zeros(2, 2, dtype=torch.long), "likelihoods": torch.zeros(2, 2), "x": Evil()}, p)
    with pytest.raises(XtokError, match="pickled"):
        Projection.load_nemo(p, "gpt2", "qwen2.5")


def test_to_torch_matches_scipy(projection):
    w = projection("gpt2", "qwen2.5")
    x = np.random.default_rng(0).random((3, w.shape[0])).astype(np.float32)
    want = x @ w.matrix
    got = (w.to_torch().t() @ torch.from_numpy(x).t()).t()
    # both sides round a float32 sum per column: n terms (the column's non-zeros), each x·w ≤ 1
    n_terms = np.bincount(w.matrix.indices, minlength=w.shape[1])
    assert (np.abs(got.numpy() - want) <= 2 * n_terms * np.finfo(np.float32).eps).all()


def test_cli_errors_are_one_line_without_traceback(tmp_path):
    bad = tmp_path / "w.safetensors"
    bad.write_bytes(b"not a safetensors file")
    r = subprocess.run([sys.executable, "-m", "xtok_core", "explain", "--w", str(bad), "--id", "5"], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    tj = tmp_path / "tokenizer.json"
    tj.write_text("{ broken")
    r = subprocess.run([sys.executable, "-m", "xtok_core", "build-w", "--student", str(tj), "--out", str(tmp_path / "o.safetensors")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "not a readable tokenizer.json" in r.stderr


def test_cli_build_and_explain(tmp_path):
    out = tmp_path / "w.safetensors"
    r = subprocess.run([sys.executable, "-m", "xtok_core", "build-w", "--student", "gpt2", "--teacher", "qwen2.5", "--out", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "xtok_core", "explain", "--w", str(out), "--token", "2019"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "'2' '0' '1' '9'" in r.stdout and "0.90009" in r.stdout and "0.00090" in r.stdout


def test_cli_export_round_trips_through_nemo_and_csv(projection, tmp_path):
    w = projection("gpt2", "qwen2.5")
    src = w.save(tmp_path / "w.safetensors")
    run = lambda *a: subprocess.run([sys.executable, "-m", "xtok_core", "export", *map(str, a)], capture_output=True, text=True)  # noqa: E731
    r = run("--w", src, "--out", tmp_path / "w.pt")
    assert r.returncode == 0, r.stderr
    r = run("--w", tmp_path / "w.pt", "--student", "gpt2", "--teacher", "qwen2.5", "--out", tmp_path / "back.safetensors")
    assert r.returncode == 0, r.stderr
    back = Projection.load(tmp_path / "back.safetensors")
    assert (back.matrix != w.matrix).nnz == 0 and (back.kinds == w.kinds).all()
    r = run("--w", tmp_path / "w.pt", "--out", tmp_path / "x.safetensors")
    assert r.returncode == 2 and "--student and --teacher" in r.stderr and "Traceback" not in r.stderr
    r = run("--w", src, "--student", "gpt2", "--teacher", "qwen2.5", "--out", tmp_path / "w.csv")
    assert r.returncode == 0, r.stderr
    import csv

    with open(tmp_path / "w.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))  # tokens with newlines are quoted fields
    assert len(rows) == w.matrix.nnz + 1 and rows[0][0] == "student_id"
    assert float(rows[1][-1]) == pytest.approx(float(w.matrix.data[0]), abs=1e-6)


def test_cli_export_writes_run_metrics_as_csv(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text('{"step": 0, "loss": 2.5}\n{"step": 1, "loss": 2.25, "eval_accuracy": 0.5}\n{"step": 2, "lo')
    r = subprocess.run([sys.executable, "-m", "xtok_core", "export", "--run", str(run_dir), "--out", str(tmp_path / "m.csv")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = (tmp_path / "m.csv").read_text().splitlines()
    assert rows[0].split(",")[0] == "step" and len(rows) == 3  # the torn last line is skipped


def test_retokenize_pass_reads_special_token_text_as_plain_text(projection, tok):
    """Qwen's plain-text tokens `<s>` / `</s>` are not Mistral's bos / eos: Mistral tokenizes their bytes
    as text; Qwen's `<unk>` text is not Gemma's unk."""
    q, m, g = tok("qwen2.5"), tok("mistral-7b"), tok("gemma")
    w = projection("qwen2.5", "mistral-7b")
    for text in ("<s>", "</s>"):
        sid = q.id_of_bytes(text.encode())
        assert sid is not None and not q.special[sid]
        cols, _ = w.row(sid)
        assert not set(cols.tolist()) & {m.roles["bos"], m.roles["eos"]}
        assert b"".join(m.token_bytes[c] for c in m.retokenize_batch([text])[0]) == text.encode()
        assert set(cols.tolist()) == set(m.retokenize_batch([text])[0]) and w.kind(sid) == "retokenized"
    unk = q.id_of_bytes(b"<unk>")
    assert g.roles["unk"] not in projection("qwen2.5", "gemma").row(unk)[0].tolist()


def _nemo_rl_rows(student, teacher, rows, tokens_to_cut=4, top_k=4):
    """A small independent port of NeMo-RL's bidirectional rule for a few student rows: each token's
    first `tokens_to_cut` pieces get 0.9·0.1^i normalised to sum to 1 *per token*
    (create_weight_distribution), added up in both directions, then each row's top_k kept and
    normalised. Tokenizes with the raw `tokenizers` backends, special-token text read as text."""
    from tokenizers import Tokenizer

    def plain(tok):
        b = Tokenizer.from_str(tok.backend.to_str())
        b.encode_special_tokens = True
        return b

    def dist(n):
        w = [0.9 * 0.1 ** i for i in range(n)]
        return [x / sum(w) for x in w]

    counts = {r: {} for r in rows}
    for r in rows:
        ids = plain(teacher).encode(student.token_bytes[r].decode(), add_special_tokens=False).ids[:tokens_to_cut]
        for t_id, w in zip(ids, dist(len(ids))):
            counts[r][t_id] = counts[r].get(t_id, 0.0) + w
    t_ids = [i for i in range(teacher.vocab_size) if teacher.token_bytes[i] is not None and not teacher.special[i]]
    encs = plain(student).encode_batch([teacher.token_bytes[i].decode("utf-8", "replace") for i in t_ids], add_special_tokens=False)
    for t_id, e in zip(t_ids, encs):
        ids = e.ids[:tokens_to_cut]
        for s_id, w in zip(ids, dist(len(ids))):
            if s_id in counts:
                counts[s_id][t_id] = counts[s_id].get(t_id, 0.0) + w
    out = {}
    for r, row in counts.items():
        kept = sorted(row.items(), key=lambda kv: (-kv[1], kv[0]))[:top_k]
        z = sum(v for _, v in kept)
        out[r] = {t: v / z for t, v in kept}
    return out


def test_reverse_pass_normalises_each_teacher_tokens_pieces_as_nemo_rl(projection, tok):
    """gpt2 `arsh` with Qwen2.5 teachers: NeMo-RL keeps `marsh` among the top 4, raw 0.9·0.1^i kept `marshal`."""
    s, t = tok("gpt2"), tok("qwen2.5")
    w = projection("gpt2", "qwen2.5", reverse_pass=True)
    names = [b"arsh", b"2019", b" Kubernetes", b"ingly", b"orship"]
    rows = [s.id_of_bytes(b) for b in names]
    rows = [r for r in rows if r is not None and w.kind(r) != "exact"]
    assert s.id_of_bytes(b"arsh") in rows and len(rows) >= 3
    want = _nemo_rl_rows(s, t, rows)
    for r in rows:
        # both sum in float64; W stores float32: a few eps32 per weight
        assert row_dict(w, r) == pytest.approx(want[r], abs=4 * float(np.finfo(np.float32).eps)), s.token_bytes[r]
    arsh = row_dict(w, s.id_of_bytes(b"arsh"))
    assert t.id_of_bytes(b"marsh") in arsh and t.id_of_bytes(b"marshal") not in arsh
