"""The explorer's pages, run headless with streamlit.testing.v1.AppTest on the real bundled tokenizers."""

import contextlib
import gzip
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from xtok_core import XtokError, align_spans, load_tokenizer  # noqa: E402
from xtok_core.tok import ASSETS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "app.py")


@pytest.fixture(autouse=True)
def _app_dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("XTOK_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("XTOK_UPLOAD_DIR", str(tmp_path / "uploads"))
    monkeypatch.chdir(ROOT)


def app(page: str | None = None, **query) -> AppTest:
    """The app opened at `page` (e.g. "projection") from a URL with `query`, after one run."""
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params.update(query)
    at.run()
    if page:
        at.switch_page(f"app_pages/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def html_blocks(at: AppTest, css_class: str) -> list[str]:
    return [m.value for m in at.markdown if css_class in m.value]


def table_cells(block: str) -> list[list[str]]:
    """Rows of the first HTML table in a block, cells as the page shows them (entities decoded)."""
    import html

    body = block.split("<tbody>", 1)[1]
    return [[html.unescape(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row)] for row in re.findall(r"<tr>(.*?)</tr>", body)]


# ---------------------------------------------------------------- Pair
def test_default_pair_loads_from_the_bundle():
    at = app()
    assert at.session_state.student == "llama-3.2" and at.session_state.teacher == "qwen2.5"
    rows = table_cells(html_blocks(at, "xtok-vocab")[0])
    assert [r[1] for r in rows] == ["llama-3.2", "qwen2.5"]
    assert rows[0][3] == "128,256" and rows[1][3] == "151,665"
    assert rows[1][6] == "NFC"  # Qwen normalises; the page says so


def test_picking_a_student_puts_it_in_the_url():
    at = app()
    at.selectbox(key="pick_student").set_value("gpt2").run()
    assert at.query_params["student"] == "gpt2"
    assert at.query_params["teacher"] == "qwen2.5"
    assert table_cells(html_blocks(at, "xtok-vocab")[0])[0][1] == "gpt2"


def test_pair_page_reports_w():
    at = app(student="gpt2", teacher="gpt-4o")
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["shape"] == "50,257 × 200,019"
    from xtok_app import state

    w = state.cached_projection(load_tokenizer("gpt2"), load_tokenizer("gpt-4o"))
    assert metrics["W sha256"] == w.sha256[:12]
    assert any(f"exact {w.kind_counts()['exact']:,}" in c.value for c in at.main.caption)


def test_a_bad_upload_is_one_line_in_the_page(tmp_path):
    at = app()
    at.file_uploader(key="upload_tok").upload("broken.json", b'{"model": {"type": "BPE", "vocab": ', "application/json").run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "\n" not in errors[0]
    assert "broken.json" in errors[0] and str(tmp_path) not in errors[0]
    assert at.session_state.student == "llama-3.2"  # the pair is unchanged


def test_a_corrupt_gzip_upload_is_one_line_too():
    at = app()
    at.file_uploader(key="upload_tok").upload("tokenizer.json.gz", b"\x1f\x8b not really gzip", "application/gzip").run()
    assert not at.exception and len(at.error) == 1
    assert "tokenizer.json.gz" in at.error[0].value and "\n" not in at.error[0].value


def test_a_missing_local_path_is_one_line_and_keeps_the_pair(tmp_path):
    at = app()
    at.text_input(key="add_path").set_value(str(tmp_path / "nowhere" / "tokenizer.json")).run()
    at.button(key="add_path_btn").click().run()
    assert not at.exception and len(at.error) == 1 and "\n" not in at.error[0].value
    assert at.session_state.student == "llama-3.2"


def test_an_uploaded_tokenizer_becomes_the_student():
    raw = gzip.decompress((ASSETS / "gpt2" / "tokenizer.json.gz").read_bytes())
    at = app()
    at.file_uploader(key="upload_tok").upload("my-tokenizer.json", raw, "application/json").run()
    assert not at.exception and not at.error
    assert at.session_state.student.startswith("upload:")
    assert at.query_params["student"] == at.session_state.student
    rows = table_cells(html_blocks(at, "xtok-vocab")[0])
    assert rows[0][3] == "50,257" and rows[0][8] == load_tokenizer("gpt2").sha256[:16]
    # cached by content hash: the uploaded copy of GPT-2 shares the bundled GPT-2's W
    from xtok_app import state

    uploaded = state.tokenizer(at.session_state.student)
    assert uploaded.sha256 == load_tokenizer("gpt2").sha256
    assert state.cached_projection(uploaded, load_tokenizer("qwen2.5")) is state.projection(load_tokenizer("gpt2"), load_tokenizer("qwen2.5"))


def test_an_oversized_upload_is_refused_with_the_limit():
    from xtok_app import state

    with pytest.raises(XtokError, match=r"big\.json is 50\.0 MB, over the 50 MB upload limit"):
        state.save_upload("big.json", b" " * (50 * 2**20 + 1))


def test_an_upload_name_in_the_url_cannot_leave_the_upload_directory():
    at = app(student="upload:../../etc", teacher="qwen2.5")
    assert len(at.error) == 1 and "is not on this server any more" in at.error[0].value


def test_an_unknown_tokenizer_in_the_url_is_an_error_not_a_traceback():
    at = app("projection", student="no-such-tokenizer", teacher="qwen2.5")
    assert len(at.error) == 1 and "unknown tokenizer 'no-such-tokenizer'" in at.error[0].value


# ---------------------------------------------------------------- Projection
def test_shared_url_opens_projection_on_the_token():
    at = app("projection", student="gpt2", teacher="qwen2.5", token="2019")
    assert at.text_input(key="token_query").value == "2019"
    rows = table_cells(html_blocks(at, "xtok-row")[0])
    assert [r[1] for r in rows] == ["2", "0", "1", "9"]
    assert [r[3] for r in rows] == ["0.90009", "0.09001", "0.00900", "0.00090"]
    assert at.query_params == {"student": "gpt2", "teacher": "qwen2.5", "token": "2019"}


def test_projection_explains_the_spec_example_in_words_and_numbers():
    at = app("projection")
    at.text_input(key="token_query").set_value("202").run()
    rows = table_cells(html_blocks(at, "xtok-row")[0])
    assert [(r[1], r[3]) for r in rows] == [("2", "0.90991"), ("0", "0.09009")]
    why = " ".join(m.value for m in at.markdown)
    assert "re-tokenize pass" in why
    formula = [c.value for c in at.code if "(0.9 + 0.009)/0.999 = 0.90991" in c.value]
    assert formula, [c.value for c in at.code]
    assert at.query_params["token"] == "202"


def test_a_truncated_row_shows_which_pieces_were_dropped(projection):
    import numpy as np

    from xtok_core.projection import KINDS

    w = projection("llama-3.2", "qwen2.5")
    s = int(np.flatnonzero((w.kinds == KINDS.index("truncated")) & (w.n_pieces == 8))[0])
    at = app("projection", token=f"id:{s}")
    order = [m.value for m in at.markdown if m.value.startswith("Teacher pieces in order")][0]
    assert order.count('class="xtok-chip faded"') == 4 and order.count('class="xtok-chip"') == 4
    assert any("after max_pieces=4" in c.value for c in at.caption)


def test_picking_another_match_shares_it_by_id():
    at = app("projection", student="gpt2", teacher="qwen2.5", token="2019")
    at.selectbox(key="token_pick").set_value(13130).run()  # ' 2019'
    assert at.query_params["token"] == "id:13130"
    rows = table_cells(html_blocks(at, "xtok-row")[0])
    assert [r[1] for r in rows][:2] == ["·", "2"]  # the leading space is its own Qwen piece, shown visibly


def test_projection_row_kind_histogram_and_exports():
    at = app("projection", student="gpt2", teacher="qwen2.5")
    labels = [b.label for b in at.get("download_button")]
    assert labels == ["W · safetensors (xtok)", "W · NeMo-RL top-k (.pt)", "W · CSV of rows"]


def test_exported_w_round_trips(tmp_path):
    from xtok_app import state
    from xtok_core import Projection

    s, t = load_tokenizer("gpt2"), load_tokenizer("qwen2.5")
    w = state.projection(s, t)
    (tmp_path / "W.safetensors").write_bytes(state.w_export(w, "safetensors"))
    assert Projection.load(tmp_path / "W.safetensors", s, t).sha256 == w.sha256
    import csv
    import io

    rows = list(csv.reader(io.StringIO(state.w_export(w, "csv").decode())))
    assert rows[0][0] == "student_id" and len(rows) == w.matrix.nnz + 1


# ---------------------------------------------------------------- Audit
def test_audit_recommends_pkl_when_the_teacher_splits_digits():
    at = app("audit")
    assert [m.value for m in at.metric if m.label == "Recommended loss"] == ["P-KL"]
    reason = " ".join(m.value for m in at.markdown if m.value.startswith("**Why.**"))
    assert "multi_digit_numeral" in reason
    cats = {r[0]: r for r in table_cells(html_blocks(at, "xtok-audit")[0])}
    assert cats["multi_digit_numeral"][1] == "yes"
    unmatched = table_cells(html_blocks(at, "xtok-unmatched")[0])
    assert unmatched and all(r[2] != "exact" for r in unmatched)


def test_audit_recommends_hkl_when_the_teacher_shares_numerals():
    at = app("audit", student="qwen2.5", teacher="qwen3")
    assert [m.value for m in at.metric if m.label == "Recommended loss"] == ["H-KL"]


def test_audit_threshold_changes_the_recommendation():
    at = app("audit", student="qwen2.5", teacher="qwen3")
    at.slider[0].set_value(1.0).run()
    cats = {r[0]: r for r in table_cells(html_blocks(at, "xtok-audit")[0])}
    below = any(c[1] == "yes" and c[4] not in ("—", "100.0%") for c in cats.values())
    assert [m.value for m in at.metric if m.label == "Recommended loss"] == ["P-KL" if below else "H-KL"]
    assert [b.label for b in at.get("download_button")] == ["Markdown", "HTML", "JSON"]


# ---------------------------------------------------------------- Alignment
def test_alignment_shows_every_group_and_the_graph():
    text = "347 + 1286 = 1633"
    at = app("alignment", student="llama-3.2", teacher="qwen2.5")
    at.text_area(key="align_text").set_value(text).run()
    al = align_spans(text, load_tokenizer("llama-3.2"), load_tokenizer("qwen2.5"))
    assert {m.label: m.value for m in at.metric}["groups"] == str(len(al.groups))
    groups = table_cells(html_blocks(at, "xtok-groups")[0])
    assert len(groups) == len(al.groups)
    # Llama-3 has 3-digit number tokens, Qwen one token per digit
    assert [(g[1], g[3], g[4]) for g in groups[:5]] == [
        ("1:n", "347", "3 4 7"), ("1:1", "·+", "·+"), ("1:1", "·", "·"), ("1:n", "128", "1 2 8"), ("1:1", "6", "6")]
    assert len(at.get("plotly_chart")) == 1


def test_alignment_shows_whitespace_and_split_bytes_visibly():
    at = app("alignment", student="gpt2", teacher="mistral-7b")
    at.text_area(key="align_text").set_value("a\tb\n🦀").run()
    student_chips = html_blocks(at, "xtok-student")[0]
    assert "⇥" in student_chips and "↵" in student_chips
    # GPT-2 splits the crab's four bytes over three tokens: each shows its bytes, never a blank
    assert ">&#92;xf0&#92;x9f<" in student_chips and ">&#92;xa6<" in student_chips and ">&#92;x80<" in student_chips


# ---------------------------------------------------------------- Distill
def _fake_run(root: Path, name: str, state: str, steps: int, pid: int | None = None) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"loss": "pkl", "student": "tiny:gpt2", "teachers": ["tiny:qwen2.5"]}))
    (d / "status.json").write_text(json.dumps({"state": state, **({"pid": pid} if pid else {})}))
    with open(d / "metrics.jsonl", "w") as f:
        for i in range(1, steps + 1):
            row = {"step": i, "loss": 5.0 / i, "kd": 3.0 / i, "ce": 2.0 / i, "lambda": 1.0, "lr": 1e-3}
            if i % 5 == 0:
                row["eval_accuracy"] = i / (steps * 2)
            f.write(json.dumps(row) + "\n")
        f.write('{"step": ')  # a line being written: skipped
    return d


def test_distill_preselects_the_audits_loss_and_lists_past_runs():
    root = Path(os.environ["XTOK_RUNS_DIR"])
    _fake_run(root, "a-run", "finished", 10)
    _fake_run(root, "b-run", "stopped", 4)
    at = app("distill", student="gpt2", teacher="qwen2.5")
    assert at.selectbox(key="f_loss").value == "pkl"
    runs_table = at.dataframe[0].value
    assert set(runs_table["run"]) == {"a-run", "b-run"}
    assert dict(zip(runs_table["run"], runs_table["state"])) == {"a-run": "finished", "b-run": "stopped"}
    assert dict(zip(runs_table["run"], runs_table["step"])) == {"a-run": 10, "b-run": 4}
    # the newest run is followed; it has not evaluated yet, so its accuracy chart is a note
    assert at.selectbox(key="selected_run").value == "b-run"
    assert [c.key for c in at.get("plotly_chart")] == ["live_loss", "cmp_loss", "cmp_acc"]
    at.selectbox(key="selected_run").set_value("a-run").run()
    assert [c.key for c in at.get("plotly_chart")] == ["live_loss", "live_acc", "cmp_loss", "cmp_acc"]
    assert [b.label for b in at.get("download_button")] == ["Metrics · JSONL", "Metrics · CSV"]


def test_distill_preselects_hkl_for_a_pair_that_shares_numerals():
    at = app("distill", student="qwen2.5", teacher="qwen3")
    assert at.selectbox(key="f_loss").value == "hkl"


def test_a_run_process_group_is_stopped_by_sigterm_and_seen_as_ended(tmp_path):
    from xtok_app import runs

    d = tmp_path / "runs" / "live"
    d.mkdir(parents=True)
    # A run stand-in: a shell that starts a child in the same group, like the CLI's data workers.
    proc = subprocess.Popen(["sh", "-c", "sleep 60 & wait"], start_new_session=True)
    (d / "launch.json").write_text(json.dumps({"pid": proc.pid}))
    run = runs.load_run(d)
    assert run.state == "starting" and run.running
    assert runs.stop_run(run)
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGTERM
    time.sleep(0.2)
    out = subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True, text=True)
    assert not [p for p in out.stdout.split() if runs._alive(int(p))]  # the child in the group got the signal too
    assert runs.load_run(d).state == "ended" and not runs.stop_run(runs.load_run(d))


def test_launch_records_the_command_and_the_output(tmp_path):
    from xtok_app import runs

    run = runs.launch_run(["--help"], tmp_path / "runs" / "help")
    deadline = time.time() + 60
    while runs._alive(run.pid) and time.time() < deadline:
        time.sleep(0.1)
    launch = json.loads((run.path / "launch.json").read_text())
    assert launch["command"][:4] == [sys.executable, "-m", "xtok_core", "distill"]
    assert launch["command"][-2:] == ["--out", str(run.path)]
    assert "usage: xtok distill" in (run.path / "app.log").read_text()


# ---------------------------------------------------------------- search and display
def test_find_tokens_by_text_space_and_id():
    from xtok_app.search import find_tokens

    gpt2 = load_tokenizer("gpt2")
    got = find_tokens(gpt2, "2019")
    assert [(m.token_id, m.how) for m in got[:3]] == [(23344, "text"), (13130, "text with a leading space"), (2019, "id")]
    assert find_tokens(gpt2, "·2019")[0].token_id == 13130
    assert [m.token_id for m in find_tokens(gpt2, "id:13130")] == [13130]
    assert find_tokens(gpt2, "id:99999999") == []
    assert all("ello" in gpt2.token_text(m.token_id) for m in find_tokens(gpt2, "ello")[1:])


def test_visible_bytes_show_whitespace_and_partial_characters():
    from xtok_app.render import esc, visible_bytes

    assert visible_bytes(b" a\n\tb") == "·a↵⇥b"
    assert visible_bytes("🙂".encode()[:2]) == "\\xf0\\x9f"
    assert visible_bytes(None, "<|endoftext|>") == "<|endoftext|>"
    assert "$" not in esc("$1,234") and "&#36;1,234" == esc("$1,234")


def test_the_run_form_launches_the_cli_with_the_chosen_settings():
    from xtok_app import runs

    at = app("distill", student="gpt2", teacher="qwen2.5")
    at.selectbox(key="f_loss").set_value("hkl")
    at.number_input(key="f_steps").set_value(3)
    at.checkbox(key="f_dynamic").uncheck()
    at.number_input(key="f_kdw").set_value(0.5)
    at.checkbox(key="f_second").check()
    at.slider(key="f_alpha").set_value(0.25)
    at.checkbox(key="f_demo").uncheck()
    at.button[0].click()  # the form's submit button
    at.run()
    assert not at.exception
    (run,) = runs.list_runs()
    try:
        cmd = run.launch["command"]
        flags = {a: cmd[i + 1] for i, a in enumerate(cmd[:-1]) if a.startswith("--")}
        assert cmd[:4] == [sys.executable, "-m", "xtok_core", "distill"]
        assert flags["--student"] == "tiny:gpt2" and flags["--loss"] == "hkl" and flags["--steps"] == "3"
        assert [cmd[i + 1] for i, a in enumerate(cmd) if a == "--teacher"] == ["tiny:qwen2.5", "tiny:llama-3.2"]
        assert [cmd[i + 1] for i, a in enumerate(cmd) if a == "--alpha"] == ["0.75", "0.25"]
        assert flags["--kd-weight"] == "0.5" and "--random-teacher" in cmd
        assert flags["--runs-dir"] == os.environ["XTOK_RUNS_DIR"] and flags["--out"] == str(run.path)
        assert os.getpgid(run.pid) == run.pid != os.getpgid(0)  # its own process group: the page can end, the run goes on
        assert at.session_state.selected_run == run.name
        assert any(run.name in s.value for s in at.success)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.pid, signal.SIGKILL)  # only the command line is under test here


def test_the_graph_draws_every_overlap_and_colours_a_group_alike_on_both_sides():
    from xtok_app.render import bipartite_figure

    s, t = load_tokenizer("gpt2"), load_tokenizer("qwen2.5")
    al = align_spans("Paid $1,234.56 on 2024-03-15", s, t)
    graph = al.to_networkx()
    edges, student, teacher = bipartite_figure(graph, al.student_group, al.teacher_group, "gpt2", "qwen2.5").data
    assert len(student.x) == len(al.student_ids) and len(teacher.x) == len(al.teacher_ids)
    assert len(edges.x) == 3 * graph.number_of_edges()
    for grp in al.groups:
        colours = {student.marker.color[i] for i in grp.student} | {teacher.marker.color[j] for j in grp.teacher}
        assert len(colours) == 1
    assert len(set(student.marker.color)) > 1
