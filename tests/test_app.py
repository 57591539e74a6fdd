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

import numpy as np
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
    return [[html.unescape(re.sub(r"<[^>]+>", "", c)) for c in re.findall(r"<td[^>]*>(.*?)</td>", row)]
            for row in re.findall(r"<tr>(.*?)</tr>", body)]


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
    (facts,) = table_cells(html_blocks(at, "xtok-wfacts")[0])
    assert facts[0] == "50,257 × 200,019"
    from xtok_app import state

    w = state.cached_projection(load_tokenizer("gpt2"), load_tokenizer("gpt-4o"))
    assert facts[3] == w.sha256[:16] and facts[1] == f"{w.matrix.nnz:,}"
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


def test_a_missing_local_path_is_one_line_and_keeps_the_pair(tmp_path, monkeypatch):
    monkeypatch.setenv("XTOK_ALLOW_LOCAL", "1")
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
    assert len(at.error) == 1 and "refused tokenizer 'no-such-tokenizer'" in at.error[0].value.replace("\\", "")


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

    from xtok_core.projection import ROW_KINDS

    w = projection("llama-3.2", "qwen2.5")
    s = int(np.flatnonzero((w.kinds == ROW_KINDS.index("truncated")) & (w.n_pieces == 8))[0])
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
    assert "multi_digit_numeral" in cats and "math" not in cats  # critical ones apart from the others
    assert "math" in {r[0] for r in table_cells(html_blocks(at, "xtok-audit-other")[0])}
    unmatched = table_cells(html_blocks(at, "xtok-unmatched")[0])
    assert unmatched and all(r[2] != "exact" for r in unmatched)
    # the most frequent in the corpus first
    counts = [int(r[4].replace(",", "") or 0) for r in unmatched]
    assert counts == sorted(counts, reverse=True) and counts[0] > 0


def test_audit_recommends_hkl_when_the_teacher_shares_numerals():
    at = app("audit", student="qwen2.5", teacher="qwen3")
    assert [m.value for m in at.metric if m.label == "Recommended loss"] == ["H-KL"]


def test_audit_threshold_changes_the_recommendation():
    at = app("audit", student="qwen2.5", teacher="qwen3")
    at.slider[0].set_value(1.0).run()
    cats = {r[0]: r for r in table_cells(html_blocks(at, "xtok-audit")[0])}
    below = any(c[3] not in ("—", "100.0%") for c in cats.values())
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
    assert [(g[1], g[4], g[5]) for g in groups[:5]] == [
        ("1:n", "347", "3 4 7"), ("1:1", "·+", "·+"), ("1:1", "·", "·"), ("1:n", "128", "1 2 8"), ("1:1", "6", "6")]
    assert len(at.get("plotly_chart")) == 1
    assert groups[0][2] == "[0, 3)"  # byte spans
    differ = sum(g.kind not in ("1:1", "special") for g in al.groups)
    assert {m.label: m.value for m in at.metric}["spans where they differ"] == str(differ) and differ > 0
    assert at.query_params["text"] == text  # shareable


def test_alignment_text_comes_from_the_link_and_long_texts_are_paged():
    text = "Paid $1,234.56 on 2024-03-15. " * 40
    at = app("alignment", text=text)
    assert at.text_area(key="align_text").value == text
    al = align_spans(text, load_tokenizer("llama-3.2"), load_tokenizer("qwen2.5"))
    grid = [b for b in html_blocks(at, "xtok-grid") if b.startswith("<div")][0]
    per_page = 150  # app_pages/alignment.py GROUPS_PER_PAGE
    assert len(al.groups) > per_page and grid.count('class="xtok-col') == per_page
    assert any(f"{len(al.groups) - per_page:,} groups are on other pages" in c.value for c in at.caption)
    # every student chip links to its row of W
    assert grid.count('href="projection?') == sum(len(g.student) for g in al.groups[:per_page])


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
        for i in range(steps):  # as the CLI writes them: step counts from 0
            row = {"step": i, "loss": 5.0 / (i + 1), "kd": 3.0 / (i + 1), "ce": 2.0 / (i + 1), "lambda": 1.0, "lr": 1e-3}
            if (i + 1) % 5 == 0:
                row["eval_accuracy"] = (i + 1) / (steps * 2)
            f.write(json.dumps(row) + "\n")
        f.write('{"step": ')  # a line being written: skipped
    return d


def test_distill_preselects_the_audits_loss_and_lists_past_runs():
    root = Path(os.environ["XTOK_RUNS_DIR"])
    _fake_run(root, "a-run", "finished", 10)
    _fake_run(root, "b-run", "stopped", 4)
    at = app("distill", student="gpt2", teacher="qwen2.5")
    assert at.selectbox(key="cfg_loss").value == "pkl"
    runs_table = at.dataframe[0].value
    assert set(runs_table["run"]) == {"a-run", "b-run"}
    assert dict(zip(runs_table["run"], runs_table["state"])) == {"a-run": "finished", "b-run": "stopped"}
    # steps done, as the CLI's "stopped at step N" counts them (metric lines count from step 0)
    assert dict(zip(runs_table["run"], runs_table["steps done"])) == {"a-run": 10, "b-run": 4}
    # the newest run is followed; it has not evaluated yet, so its accuracy chart is a note
    assert at.selectbox(key="selected_run").value == "b-run"
    assert [c.key for c in at.get("plotly_chart")] == ["live_loss", "cmp_loss", "cmp_acc"]
    at.selectbox(key="selected_run").set_value("a-run").run()
    assert [c.key for c in at.get("plotly_chart")] == ["live_loss", "live_acc", "cmp_loss", "cmp_acc"]
    assert [b.label for b in at.get("download_button")] == ["Metrics · JSONL", "Metrics · CSV"]


def test_distill_preselects_hkl_for_a_pair_that_shares_numerals():
    at = app("distill", student="qwen2.5", teacher="qwen3")
    assert at.selectbox(key="cfg_loss").value == "hkl"


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


def test_a_resumed_run_is_running_before_it_rewrites_the_previous_status(tmp_path):
    from xtok_app import runs

    d = tmp_path / "runs" / "resumed"
    d.mkdir(parents=True)
    (d / "status.json").write_text(json.dumps({"state": "stopped", "pid": 1, "step": 4}))  # the first process's
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        (d / "launch.json").write_text(json.dumps({"pid": proc.pid}))  # the resumed process, not started yet
        run = runs.load_run(d)
        assert run.state == "starting" and run.running and not run.resumable
        (d / "status.json").write_text(json.dumps({"state": "running", "pid": proc.pid, "step": 4}))
        assert runs.load_run(d).state == "running"
    finally:
        proc.kill()
        proc.wait(timeout=10)
    (d / "status.json").write_text(json.dumps({"state": "stopped", "pid": 1, "step": 4}))
    assert runs.load_run(d).state == "ended"  # the resumed process died before it said anything


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
    assert [(m.token_id, m.how) for m in got[:2]] == [(23344, "text"), (13130, "text with a leading space")]
    assert 2019 not in [m.token_id for m in got]  # a numeral is text, never the token id
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
    assert at.number_input(key="cfg_steps").value == 300  # the CLI's default, from DistillConfig
    assert at.slider(key="f_alpha").disabled and at.text_input(key="f_second_model").disabled
    at.checkbox(key="f_second").check().run()  # outside the form: the second teacher's fields follow it
    assert not at.slider(key="f_alpha").disabled and not at.text_input(key="f_second_model").disabled
    at.selectbox(key="cfg_loss").set_value("hkl")
    at.number_input(key="cfg_steps").set_value(3)
    at.checkbox(key="f_dynamic").uncheck()
    at.number_input(key="f_kdw").set_value(0.5)
    at.slider(key="f_alpha").set_value(0.25)
    at.checkbox(key="cfg_train_demo_teacher").uncheck()
    at.button[0].click()  # the form's submit button
    at.run()
    assert not at.exception
    (run,) = runs.list_runs()
    try:
        cmd = run.launch["command"]
        assert cmd[:4] == [sys.executable, "-m", "xtok_core", "distill"]
        # the page writes a DistillConfig and the CLI reads it: no argv assembled by hand
        assert cmd[4:] == ["--config", str(run.path / "request.json"), "--no-progress", "--out", str(run.path)]
        from xtok_core.distill import DistillConfig

        cfg = DistillConfig.from_file(run.path / "request.json")
        assert cfg.student == "tiny:gpt2" and cfg.loss == "hkl" and cfg.steps == 3
        assert cfg.teachers == ["smollm2-135m-instruct", "tiny:llama-3.2"]  # the real-teacher demo by default
        assert cfg.alphas == [0.75, 0.25] and cfg.kd_weight == 0.5 and cfg.train_demo_teacher is False
        assert cfg.runs_dir == os.environ["XTOK_RUNS_DIR"]
        assert os.getpgid(run.pid) == run.pid != os.getpgid(0)  # its own process group: the page can end, the run goes on
        assert at.session_state.selected_run == run.name
        assert any(run.name in s.value for s in at.success)
        assert run.setting("loss") == "hkl"  # read back from the request before the CLI writes config.json
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


# ---------------------------------------------------------------- links cannot reach files or the network
_WATCH: dict = {"on": False, "seen": []}


def _hook(event, args):
    if _WATCH["on"] and event in ("open", "os.stat", "os.listdir", "os.scandir", "socket.connect", "socket.getaddrinfo"):
        _WATCH["seen"].append((event, str(args[0]) if args else ""))


sys.addaudithook(_hook)  # audit hooks cannot be removed; this one records only while a test switches it on


@pytest.mark.parametrize("source", ["/etc/passwd", "../../tmp/tokenizer.json", "meta-llama/Llama-3.2-1B", "~/.ssh"])
def test_a_link_with_a_path_or_hub_id_is_refused_in_one_line_without_touching_them(source):
    from xtok_app import state

    with pytest.raises(XtokError) as e:  # the check itself: nothing opened, nothing resolved
        _WATCH.update(on=True, seen=[])
        try:
            state.tokenizer(source)
        finally:
            _WATCH["on"] = False
    touched = [s for s in _WATCH["seen"] if source.split("/")[-1] in s[1] or s[0].startswith("socket")]
    assert not touched, touched
    assert "\n" not in str(e.value) and "refused tokenizer" in str(e.value) and "XTOK_ALLOW_LOCAL=1" in str(e.value)
    t0 = time.time()
    at = app("projection", student=source, teacher="qwen2.5")
    assert time.time() - t0 < 30  # no hub retries
    errors = [x.value.replace("\\", "") for x in at.error]
    assert len(errors) == 1 and "refused tokenizer" in errors[0]


def test_local_paths_need_the_servers_option_even_from_the_pair_page(monkeypatch):
    at = app()
    assert not [t for t in at.text_input if t.key == "add_path"]  # off by default: no field
    assert any("XTOK_ALLOW_LOCAL=1" in c.value for c in at.caption)
    monkeypatch.setenv("XTOK_ALLOW_LOCAL", "1")
    path = str(ASSETS / "gpt2" / "tokenizer.json.gz")
    at = app()
    at.text_input(key="add_path").set_value(path).run()
    at.button(key="add_path_btn").click().run()
    assert not at.error and at.session_state.student == path
    # the same path from a link is still refused
    at = app(student=path, teacher="qwen2.5")
    assert len(at.error) == 1 and "refused tokenizer" in at.error[0].value


# ---------------------------------------------------------------- Projection queries are text
def test_a_numeral_that_is_no_single_token_says_so_and_links_its_pieces():
    at = app("projection", token="2019")  # the default pair: Llama-3 has no 2019 token
    warning = at.warning[0].value
    assert "is not one llama-3.2 token" in warning
    llama = load_tokenizer("llama-3.2")
    pieces = html_blocks(at, "Student pieces")[0]
    ids = llama.encode("2019").ids.tolist()
    assert re.findall(r'href="projection\?[^"]*token=id%3A(\d+)"', pieces) == [str(i) for i in ids]
    assert not html_blocks(at, "xtok-row")  # no row: never token id 2019


def test_projection_opens_on_a_worked_example():
    at = app("projection")
    assert at.session_state.token == "123" and at.query_params["token"] == "123"
    rows = table_cells(html_blocks(at, "xtok-row")[0])
    assert [r[1] for r in rows] == ["1", "2", "3"]


def test_a_query_with_markdown_characters_is_shown_literally():
    from xtok_app.render import md_text

    at = app("projection", token="a*b*c $1$")
    assert md_text("a*b*c·$1$") in at.warning[0].value  # spaces show as ·, as everywhere in the app


# ---------------------------------------------------------------- Vocabularies
def test_vocabulary_overlap_matrix_and_token_lists():
    from xtok_core.overlap import overlap_matrix, split_vocabularies

    s, t = load_tokenizer("llama-3.2"), load_tokenizer("qwen2.5")
    m = overlap_matrix([s, t])
    assert m[0, 0] == m[1, 1] == 1.0
    split = split_vocabularies(s, t)
    t_bytes = {b for b, sp in zip(t.token_bytes, t.special.tolist()) if b and not sp}
    # independent check of the split on a sample of ids
    assert all(s.token_bytes[i] not in t_bytes for i in split.student_only[::500].tolist())
    assert all(s.token_bytes[i] in t_bytes for i in split.both[::500].tolist())
    n_regular = int(sum(1 for b, sp in zip(s.token_bytes, s.special.tolist()) if b and not sp))
    assert len(split.student_only) + len(split.both) == n_regular
    assert m[0, 1] == pytest.approx(len({s.token_bytes[i] for i in split.both}) / len({s.token_bytes[i] for i in np.r_[split.both, split.student_only]}))
    at = app("vocabularies")
    at.radio(key="vocab_side").set_value("only in the student").run()
    at.selectbox(key="vocab_cat").set_value("multi_digit_numeral").run()
    rows = table_cells(html_blocks(at, "xtok-vocab-tokens")[0])
    assert rows and all(r[1].isdigit() and len(r[1]) > 1 for r in rows)  # Qwen splits every digit: all Llama numerals
    block = html_blocks(at, "xtok-vocab-tokens")[0]
    assert f'token=id%3A{rows[0][0]}" target="_self">{rows[0][0]}</a>' in block


# ---------------------------------------------------------------- Distributions
@pytest.mark.slow
def test_distributions_page_on_the_real_teacher():
    at = app("distributions")
    assert at.selectbox(key="dist_teacher").value == "smollm2-135m-instruct"
    assert at.selectbox(key="dist_student").value == "tiny:llama-3.2"
    strip = table_cells(html_blocks(at, "xtok-strip")[0])
    assert [r[0] for r in strip] == ["P-KL", "H-KL", "GOLD", "ULD", "unreachable mass"]
    from xtok_app.state import converted_models

    smollm2 = load_tokenizer(converted_models()["smollm2-135m-instruct"])  # the teacher's own tokenizer files
    al = align_spans("347 + 1286 = 1633", load_tokenizer("llama-3.2"), smollm2)
    bounds = sum(1 for a, b in zip(al.groups, al.groups[1:]) if len(a.student) and len(a.teacher) and len(b.student) and len(b.teacher)
                 and a.kind not in ("special", "unaligned"))
    assert all(len(r) == 1 + bounds for r in strip)  # one value per compared group
    at.selectbox(key="dist_pos").set_value(2).run()
    assert [c.key for c in at.get("plotly_chart")] == ["strip", "bars_teacher", "bars_student", "bars_projected"]
    assert table_cells(html_blocks(at, "xtok-feeders")[0])


# ---------------------------------------------------------------- Distill fixes
def test_the_default_runs_folder_is_outside_the_apps_folder(monkeypatch, tmp_path):
    from xtok_app import runs

    monkeypatch.delenv("XTOK_RUNS_DIR")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert runs.runs_dir() == tmp_path / "data" / "xtok" / "runs"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert ROOT not in runs.runs_dir().resolve().parents  # Streamlit's file watcher never sees checkpoints


def test_accuracy_axis_is_zero_to_one_and_a_random_teacher_run_has_no_demo_note():
    import json as _json

    root = Path(os.environ["XTOK_RUNS_DIR"])
    _fake_run(root, "acc-run", "finished", 5)
    at = app("distill")
    spec = _json.loads([c for c in at.get("plotly_chart") if c.key == "live_acc"][0].proto.spec)
    assert spec["layout"]["yaxis"]["range"] == [0, 1.02]
    # a live run without metrics, launched with a random teacher: no "demo teacher is trained first" note
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        d = root / "zz-live"
        d.mkdir()
        (d / "launch.json").write_text(_json.dumps({"pid": proc.pid, "command": [
            "python", "-m", "xtok_core", "distill", "--teacher", "tiny:qwen2.5", "--random-teacher", "--out", str(d)]}))
        at = app("distill")
        assert at.session_state.selected_run == "zz-live"
        waiting = [c.value for c in at.caption if c.value.startswith("Waiting for the first step")]
        assert waiting and "demo teacher" not in waiting[0]
    finally:
        proc.kill()


def test_alignment_of_a_conversation_greys_the_templates():
    import json as _json

    from xtok_core.chat import align_chat

    at = app("alignment")
    at.radio(key="align_mode").set_value("conversation").run()
    assert not at.exception and not at.error
    messages = _json.loads(at.text_area(key="align_chat").value)
    cal = align_chat(messages, load_tokenizer("llama-3.2"), load_tokenizer("qwen2.5"))
    for side, group in (("student", cal.student_group), ("teacher", cal.teacher_group)):
        block = html_blocks(at, f"xtok-chat-{side}")[0]
        assert block.count("xtok-chip grey") == int((group < 0).sum()) > 0  # the template, greyed
        assert block.count('<span class="xtok-chip') == len(group)
    at.text_area(key="align_chat").set_value('[{"role": "user"').run()
    assert len(at.error) == 1 and "not valid JSON" in at.error[0].value


# ---------------------------------------------------------------- Distill: the run schema and teacher caches
def _cfg_widgets(at: AppTest) -> dict:
    from xtok_app import runs

    kinds = ("selectbox", "number_input", "slider", "checkbox", "text_input")
    return {w.key: w.value for kind in kinds for w in at.get(kind) if str(w.key).startswith(runs.FIELD_PREFIX)}


def test_the_distill_pages_run_fields_are_distill_config_fields_with_its_defaults():
    import dataclasses

    from xtok_app import runs
    from xtok_core.distill import DistillConfig

    at = app("distill", student="gpt2", teacher="qwen2.5")  # a pair whose audit recommends DistillConfig's loss
    fields = runs.widget_config(_cfg_widgets(at))
    assert {"loss", "steps", "lr", "on_policy_ratio", "batch_size", "eval_every", "teacher_topk",
            "train_demo_teacher", "corpus_lines"} <= set(fields)
    assert set(fields) <= {f.name for f in dataclasses.fields(DistillConfig)}
    defaults = DistillConfig()
    assert fields == {name: getattr(defaults, name) for name in fields}


def _fake_cache(root: Path, name: str, *, manifest=None, progress=None, pid=None, log=""):
    d = root / "caches" / name
    d.mkdir(parents=True)
    if manifest is not None:
        (d / "manifest.json").write_text(json.dumps(manifest))
    if progress is not None:
        (d / "progress.json").write_text(json.dumps(progress))
    if pid is not None:
        (d / "launch.json").write_text(json.dumps({"pid": pid, "command": ["true"], "started": time.time()}))
    (d / "app.log").write_text(log)
    return d


def test_the_distill_page_follows_cache_builds_and_launches_a_run_from_a_complete_cache():
    from xtok_app import runs

    root = Path(os.environ["XTOK_RUNS_DIR"])
    now = time.time()
    done = _fake_cache(root, "done", manifest={"complete": True, "teacher": "tiny:qwen2.5", "top_k": 8, "n_examples": 36,
                                               "shards": [{"bytes": 6000, "tokens": 100}]})
    live = subprocess.Popen(["sleep", "60"])
    gone = subprocess.Popen(["true"])
    gone.wait()
    try:
        # 10 of 40 examples in 20 s: 30 left at 2 s each
        _fake_cache(root, "live", pid=live.pid, progress={"state": "building", "done": 10, "total": 40, "started": now - 20,
                                                          "updated": now, "resumed_from": 0})
        _fake_cache(root, "dead", pid=gone.pid, log="loading\nxtok teacher-cache: error: no such model 'x'; see xtok models\n")
        at = app("distill", student="gpt2", teacher="qwen2.5")
        (bar,) = at.get("progress")
        assert bar.proto.value == 25 and "10 / 40 examples" in bar.proto.text
        # the ETA counts down from 60 s by the time since the last progress line
        m = re.search(r"about (?:(\d+) min )?(\d+) s left", bar.proto.text)
        eta = 60 * int(m.group(1) or 0) + int(m.group(2))
        assert 60 - (time.time() - now) - 1 <= eta <= 60, bar.proto.text
        assert [e.value for e in at.error] == ["xtok teacher-cache: error: no such model 'x'; see xtok models"]
        assert [b.label for b in at.button if b.key and b.key.startswith("resume_cache_")] == ["Resume build"]
        assert any("done" in m.value and "60 bytes per teacher token" in m.value for m in at.markdown)
        pick = at.selectbox(key="f_cache")
        assert pick.options[1:] == [f"done · tiny:qwen2.5 · K = 8"]  # only the complete cache is offered
    finally:
        live.kill()
        live.wait()
    pick.set_value("done")
    at.number_input(key="cfg_steps").set_value(2)
    next(b for b in at.button if b.label == "Launch run").click()
    at.run()
    assert not at.exception
    # the build that was live is gone now, without an error of its own: the page says how far it got
    assert sorted(e.value for e in at.error) == [
        "the build ended at 10 / 40 examples without an error (killed?); resume it to go on from its complete shards",
        "xtok teacher-cache: error: no such model 'x'; see xtok models"]
    (run,) = runs.list_runs()
    try:
        request = json.loads((run.path / "request.json").read_text())
        assert request["teacher_caches"] == [str(done)] and request["teachers"] == ["tiny:qwen2.5"]
        assert request["steps"] == 2 and request["teacher_topk"] is None
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.pid, signal.SIGKILL)  # only the request is under test here
