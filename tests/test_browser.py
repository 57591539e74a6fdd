"""End to end in a real browser: Debian's Chromium driven by Playwright against `streamlit run app.py`.

One server for the module, started on a free localhost port with its own runs and upload
directories. Screenshots of every page go to `test-artifacts/` (ignored by git).
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip(f"Debian's Chromium is not at {CHROMIUM}; install it with `apt-get install chromium`", allow_module_level=True)
pytest.importorskip("playwright")
from playwright.sync_api import expect, sync_playwright  # noqa: E402

expect.set_options(timeout=30_000)  # a cold Chromium on two cores takes seconds to draw the first plotly chart

from xtok_core import Projection, align_spans, load_tokenizer  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
QUERY = "student=gpt2&teacher=qwen2.5"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("app")
    port = _free_port()
    env = dict(os.environ, XTOK_RUNS_DIR=str(tmp / "runs"), XTOK_UPLOAD_DIR=str(tmp / "uploads"), HF_HUB_OFFLINE="1")
    log = open(tmp / "streamlit.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
                             "--server.port", str(port), "--server.address", "127.0.0.1",
                             "--browser.gatherUsageStats", "false"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while True:
        try:
            if urllib.request.urlopen(url + "/_stcore/health", timeout=2).read() == b"ok":
                break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail("streamlit did not start: " + (tmp / "streamlit.log").read_text(errors="replace")[-2000:])
        time.sleep(0.3)
    yield {"url": url, "runs": tmp / "runs", "log": tmp / "streamlit.log"}
    # the server and any run it launched share nothing: runs have their own process groups
    for run in [*(tmp / "runs").glob("*/launch.json"), *(tmp / "runs" / "caches").glob("*/launch.json")]:
        pid = json.loads(run.read_text())["pid"]
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    log.close()


@pytest.fixture(scope="module")
def chromium():
    """Launches Debian's Chromium: `chromium()` -> a new browser process."""
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        yield lambda: p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def new_page(browser):
    pg = browser.new_context(viewport={"width": 1400, "height": 1600}, accept_downloads=True).new_page()
    pg.set_default_timeout(90_000)
    return pg


@pytest.fixture
def page(chromium, server):
    """A page whose every request is recorded; at the end all of them went to this server."""
    browser = chromium()
    pg = new_page(browser)
    requests = []
    pg.on("request", lambda r: requests.append(r.url))
    yield pg
    browser.close()
    outside = [u for u in requests if not u.startswith((server["url"], "data:", "blob:", "about:"))]
    assert not outside, outside  # nothing the page loads leaves the machine (favicon, fonts, CDNs)


def wait_idle(pg) -> None:
    """Until the app has finished its current run (the status widget shows no running script)."""
    pg.wait_for_timeout(300)
    expect(pg.locator('[data-testid="stStatusWidget"]')).to_have_count(0, timeout=120_000)


def open_page(pg, url: str, title: str) -> None:
    pg.goto(url)
    expect(pg.get_by_role("heading", name=title, exact=True)).to_be_visible()
    wait_idle(pg)


def nav(pg, title: str) -> None:
    pg.locator('[data-testid="stSidebarNav"]').get_by_text(title, exact=True).click()
    expect(pg.get_by_role("heading", name=title, exact=True)).to_be_visible()
    wait_idle(pg)


def choose(pg, label: str, option: str) -> None:
    box = pg.get_by_role("combobox", name=label)
    box.click()
    pg.get_by_role("option", name=option, exact=True).click()
    expect(box).to_have_value(option)
    wait_idle(pg)


def shot(pg, name: str) -> None:
    pg.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def table_rows(pg, css: str) -> list[list[str]]:
    expect(pg.locator(f"table.{css}").first).to_be_visible()
    return [[c.strip() for c in row.locator("td").all_inner_texts()] for row in pg.locator(f"table.{css} tbody tr").all()]


def query(pg) -> dict:
    from urllib.parse import parse_qs, urlparse

    return {k: v[0] for k, v in parse_qs(urlparse(pg.url).query).items()}


def test_pair_projection_audit_alignment_in_the_browser(server, page):
    pg = page
    # the default pair, from the bundle
    open_page(pg, server["url"] + "/", "Pair")
    assert [r[1] for r in table_rows(pg, "xtok-vocab")] == ["llama-3.2", "qwen2.5"]
    shot(pg, "pair-default")

    # GPT-2 student, Qwen2.5 teacher: the URL follows
    choose(pg, "Student tokenizer", "gpt2")
    choose(pg, "Teacher tokenizer", "qwen2.5")
    expect(pg.locator("table.xtok-vocab tbody tr").first.locator("td").nth(1)).to_have_text("gpt2")
    assert [r[1] for r in table_rows(pg, "xtok-vocab")] == ["gpt2", "qwen2.5"]
    assert query(pg) == {"student": "gpt2", "teacher": "qwen2.5"}
    shot(pg, "pair")

    # Projection: 2019 -> the teacher's 2, 0, 1, 9 with their weights
    nav(pg, "Projection")
    box = pg.get_by_label(re.compile("^Student token"))
    box.fill("2019")
    box.press("Enter")
    expect(pg.locator("table.xtok-row tbody tr")).to_have_count(4)
    rows = table_rows(pg, "xtok-row")
    assert [r[1] for r in rows] == ["2", "0", "1", "9"]
    assert [r[3] for r in rows] == ["0.90009", "0.09001", "0.00900", "0.00090"]
    # the why, in words and in numbers
    expect(pg.get_by_role("paragraph").filter(has_text="re-tokenize pass")).to_be_visible()
    expect(pg.locator("code").filter(has_text="'2' = 0.9/0.9999 = 0.90009").first).to_be_visible()
    assert query(pg) == {"student": "gpt2", "teacher": "qwen2.5", "token": "2019"}
    shot(pg, "projection")
    with pg.expect_download() as dl:
        pg.get_by_role("button", name="W · safetensors (xtok)").click()
    w = Projection.load(dl.value.path(), student=load_tokenizer("gpt2"), teacher=load_tokenizer("qwen2.5"))
    assert w.explain(23344).pieces[0].text == "2" and dl.value.suggested_filename == "W_gpt2_to_qwen2.5.safetensors"

    # Audit: P-KL, and the HTML report downloads with it
    nav(pg, "Audit")
    metric = pg.locator('[data-testid="stMetric"]').filter(has_text="Recommended loss")
    expect(metric.locator('[data-testid="stMetricValue"]')).to_have_text("P-KL")
    shot(pg, "audit")
    with pg.expect_download() as dl:
        pg.get_by_role("button", name="HTML", exact=True).click()
    report = Path(dl.value.path()).read_text(encoding="utf-8")
    assert dl.value.suggested_filename == "audit_gpt2_to_qwen2.5.html"
    assert report.lstrip().lower().startswith("<!doctype html")
    assert "P-KL" in report and "multi_digit_numeral" in report and "gpt2" in report and "qwen2.5" in report

    # Alignment: every group of a typed text is shown
    nav(pg, "Alignment")
    text = "Paid $1,234.56 on 2024-03-15 at 12:30."
    area = pg.get_by_label("Text", exact=True)
    area.fill(text)
    area.press("Control+Enter")
    wait_idle(pg)
    expected = len(align_spans(text, load_tokenizer("gpt2"), load_tokenizer("qwen2.5")).groups)
    groups_tab = pg.get_by_role("tab", name=re.compile(r"^Groups \(\d+\)$"))
    expect(groups_tab).to_have_text(f"Groups ({expected})")
    metric = pg.locator('[data-testid="stMetric"]').filter(has_text="groups")
    expect(metric.locator('[data-testid="stMetricValue"]').first).to_have_text(str(expected))
    expect(pg.locator(".js-plotly-plot")).to_have_count(1)
    shot(pg, "alignment")
    groups_tab.click()
    expect(pg.locator("table.xtok-groups tbody tr")).to_have_count(expected)
    chips = pg.locator(".xtok-student .xtok-chip").all_inner_texts()
    assert "".join(chips).replace("·", " ") == text  # the page shows the text's every byte, spaces visible


def test_a_shared_url_opens_the_same_view(server, page):
    open_page(page, server["url"] + f"/projection?{QUERY}&token=2019", "Projection")
    expect(page.locator("table.xtok-row")).to_be_visible()
    assert [r[1] for r in table_rows(page, "xtok-row")] == ["2", "0", "1", "9"]
    expect(page.get_by_label(re.compile("^Student token"))).to_have_value("2019")
    sidebar = page.locator('[data-testid="stSidebar"]')
    expect(sidebar).to_contain_text("gpt2")


def _points(pg) -> int:
    """Markers drawn in the live loss chart."""
    chart = pg.locator(".js-plotly-plot").first
    return chart.locator(".scatterlayer .trace .points path").count()


def test_distill_run_live_curve_stop_and_reopen(server, chromium):
    # a run that has written no metrics yet is listed without an Arrow error
    empty = server["runs"] / "00000000-000000-no-metrics"
    empty.mkdir(parents=True)
    (empty / "status.json").write_text(json.dumps({"state": "failed", "error": "no metrics yet"}))
    first = chromium()
    pg = new_page(first)
    open_page(pg, server["url"] + f"/distill?{QUERY}", "Distill")
    pg.get_by_text("New run", exact=True).click()  # folded: there are runs already
    # the audit's recommendation is preselected
    expect(pg.get_by_role("combobox", name=re.compile("^Loss"))).to_have_value("P-KL")
    # the second teacher's fields follow their checkbox
    alpha_box = pg.get_by_label(re.compile("^Second teacher"))
    expect(alpha_box).to_be_disabled()
    pg.get_by_text("Add a second teacher", exact=True).click()
    wait_idle(pg)
    expect(alpha_box).to_be_enabled()
    pg.get_by_text("Add a second teacher", exact=True).click()
    wait_idle(pg)
    expect(alpha_box).to_be_disabled()
    choose(pg, "Teacher", "tiny:qwen2.5")  # the toy teacher with random weights: a CPU smoke run
    pg.get_by_label("Steps", exact=True).fill("10")
    pg.get_by_text("More settings").click()
    pg.get_by_label("Batch size", exact=True).fill("2")
    pg.get_by_label(re.compile("^Evaluate arithmetic")).fill("0")
    pg.get_by_text("Trained demo teacher", exact=True).click()  # random tiny teacher: a CPU smoke run
    shot(pg, "distill-form")
    pg.get_by_role("button", name="Launch run").click()
    expect(pg.get_by_text(re.compile(r"^Launched "))).to_be_visible()
    run_dir = next(server["runs"].glob("*/launch.json")).parent
    cmd = json.loads((run_dir / "launch.json").read_text())["command"]
    assert cmd[cmd.index("--config") + 1] == str(run_dir / "request.json")
    request = json.loads((run_dir / "request.json").read_text())
    assert request["steps"] == 10 and request["train_demo_teacher"] is False and request["loss"] == "pkl"
    assert request["teachers"] == ["tiny:qwen2.5"]

    # the live fragment draws the curve as metrics arrive
    deadline = time.time() + 240
    while _points(pg) == 0 and time.time() < deadline:
        pg.wait_for_timeout(1000)
    assert _points(pg) > 0, (run_dir / "app.log").read_text(errors="replace")[-1500:]
    # the comparison (and the runs table, in the same fragment) follows the live run too
    cmp_chart = pg.locator(".js-plotly-plot").last
    n = cmp_chart.locator(".scatterlayer .trace .points path").count()
    deadline = time.time() + 120
    while cmp_chart.locator(".scatterlayer .trace .points path").count() <= n and time.time() < deadline:
        pg.wait_for_timeout(1000)
    assert cmp_chart.locator(".scatterlayer .trace .points path").count() > n
    shot(pg, "distill-running")

    # closing the browser does not end the run; another browser finds it and its curve
    first.close()
    second = chromium()
    pg2 = new_page(second)
    open_page(pg2, server["url"] + f"/distill?{QUERY}", "Distill")
    state = json.loads((run_dir / "status.json").read_text())["state"]
    # 10 steps take about a minute on two CPU cores; a much faster machine may finish first
    assert state in ("running", "finished")
    expect(pg2.locator(".js-plotly-plot").first.locator(".scatterlayer .trace .points path").first).to_be_attached(timeout=60_000)
    if state == "running":
        expect(pg2.get_by_text(re.compile(rf"{re.escape(run_dir.name)} · state running"))).to_be_visible()
        # stop: SIGTERM to the process group; the run checkpoints and says so
        pg2.get_by_role("button", name="Stop run").click()
        deadline = time.time() + 120
        while json.loads((run_dir / "status.json").read_text())["state"] == "running" and time.time() < deadline:
            time.sleep(0.5)
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] in ("stopped", "finished")
    pid = json.loads((run_dir / "launch.json").read_text())["pid"]
    deadline = time.time() + 30
    while Path(f"/proc/{pid}").exists() and Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z" \
            and time.time() < deadline:
        time.sleep(0.2)
    expect(pg2.get_by_text(re.compile(rf"{re.escape(run_dir.name)} · state (stopped|finished)"))).to_be_visible(timeout=30_000)
    expect(pg2.get_by_role("button", name="Stop run")).to_have_count(0)
    # the steps counter says what the CLI says ("stopped at step N": N steps done)
    done = pg2.locator('[data-testid="stMetric"]').filter(has_text="steps done").locator('[data-testid="stMetricValue"]')
    expect(done).to_have_text(f"{status['step']} / 10")
    shot(pg2, "distill-stopped")
    if status["state"] == "stopped":  # resume continues from the checkpoint to the end
        pg2.get_by_role("button", name="Resume run").click()
        # the resumed process writes status.json once it has started (imports, models, W): wait for the file,
        # then for the page, which shows what the file says
        deadline = time.time() + 120
        while json.loads((run_dir / "status.json").read_text())["state"] == "stopped" and time.time() < deadline:
            time.sleep(0.5)
        expect(pg2.get_by_text(re.compile(rf"{re.escape(run_dir.name)} · state (running|finished)"))).to_be_visible(
            timeout=30_000)
        deadline = time.time() + 240
        while json.loads((run_dir / "status.json").read_text())["state"] != "finished" and time.time() < deadline:
            time.sleep(1)
        expect(pg2.get_by_text(re.compile(rf"{re.escape(run_dir.name)} · state finished"))).to_be_visible(timeout=30_000)
        expect(done).to_have_text("10 / 10")
        shot(pg2, "distill-resumed")
    second.close()
    assert "ArrowTypeError" not in server["log"].read_text(errors="replace")


def _fits(locator) -> bool:
    """True when every matched element shows its whole text (nothing cut off with an ellipsis)."""
    return all(locator.evaluate_all("els => els.map(e => e.scrollWidth <= e.clientWidth + 1)"))


def test_what_a_new_user_trips_on(server, page):
    from xtok_app.state import SAMPLE_CORPUS
    from xtok_core import coverage_audit
    from xtok_core.audit import pct
    from xtok_core.corpus import sample_corpus

    pg = page
    # Pair: W's shape is shown whole
    open_page(pg, server["url"] + "/", "Pair")
    facts = pg.locator("table.xtok-wfacts td")
    expect(facts.first).to_have_text("128,256 × 151,665")
    assert _fits(facts) and _fits(pg.locator('[data-testid="stMetricValue"]'))
    shot(pg, "pair-default")

    # Projection opens on a worked example: a numeral whose row has several teacher pieces
    nav(pg, "Projection")
    expect(pg.get_by_label(re.compile("^Student token"))).to_have_value("123")
    assert [r[1] for r in table_rows(pg, "xtok-row")] == ["1", "2", "3"]
    shot(pg, "projection-default")
    # 2019 is text: no single Llama-3 token, so the page says so and links each piece's row
    box = pg.get_by_label(re.compile("^Student token"))
    box.fill("2019")
    box.press("Enter")
    wait_idle(pg)
    expect(pg.locator('[data-testid="stAlert"]').filter(has_text="2019 is not one llama-3.2 token")).to_be_visible()
    expect(pg.locator("table.xtok-row")).to_have_count(0)  # never token id 2019 (' say')
    llama = load_tokenizer("llama-3.2")
    ids = llama.encode("2019").ids.tolist()
    links = pg.locator("a.xtok-chip")
    expect(links).to_have_count(len(ids))
    shot(pg, "projection-not-a-token")
    links.first.click()
    expect(pg.locator("table.xtok-row")).to_be_visible()
    assert query(pg)["token"] == f"id:{ids[0]}"
    expect(pg.get_by_label(re.compile("^Student token"))).to_have_value(f"id:{ids[0]}")
    # what a user types is shown as typed, never as Markdown
    box = pg.get_by_label(re.compile("^Student token"))
    box.fill("a*b*c $1$")
    box.press("Enter")
    wait_idle(pg)
    alert = pg.locator('[data-testid="stAlert"]').filter(has_text="is not one llama-3.2 token")
    expect(alert).to_contain_text("a*b*c·$1$")
    assert alert.locator("em, .katex").count() == 0

    # Audit: one rounding rule (the reports' truncation), counts that agree, the corpus named once
    nav(pg, "Audit")
    report = coverage_audit(llama, load_tokenizer("qwen2.5"), corpus=sample_corpus(), corpus_name=SAMPLE_CORPUS)
    shown = {r[0]: r for r in table_rows(pg, "xtok-audit") + table_rows(pg, "xtok-audit-other")}
    for c in report.categories.values():
        if c.coverage is not None:
            assert shown[c.name][3] == pct(c.coverage), c.name  # whitespace 99.765 %: 99.7 %, not 99.8 %
    ts = report.teacher_side
    expect(pg.get_by_text(f"of the {ts.tokens:,} regular teacher tokens (151,665 minus {151_665 - ts.tokens:,} special")).to_be_visible()
    expect(pg.get_by_text(f"Corpus: {SAMPLE_CORPUS},")).to_be_visible()
    assert "corpus: corpus" not in pg.content().lower()
    shot(pg, "audit-default")

    # Alignment: a zero-width joiner reads as the code point it is
    from urllib.parse import quote

    open_page(pg, server["url"] + "/alignment?text=" + quote("family 👨\u200d👩"), "Alignment")
    expect(pg.locator(".xtok-student .xtok-chip").first).to_be_visible()
    chips = " ".join(pg.locator(".xtok-chip").all_inner_texts())
    assert "\\u200d" in chips and "\\x200d" not in chips


@pytest.mark.parametrize("source", ["/etc/passwd", "meta-llama/Llama-3.2-1B"])
def test_a_link_with_a_path_or_hub_id_is_refused_in_one_line(server, page, source):
    from urllib.parse import quote

    t0 = time.time()
    pg = page
    pg.goto(server["url"] + f"/projection?student={quote(source, safe='')}&teacher=qwen2.5")
    alert = pg.locator('[data-testid="stAlert"]').filter(has_text="refused tokenizer")
    expect(alert).to_be_visible()
    assert len(alert.inner_text().strip().splitlines()) == 1 and source in alert.inner_text()
    assert time.time() - t0 < 30  # no hub retries


def test_vocabularies_page(server, page):
    import csv
    import io

    pg = page
    open_page(pg, server["url"] + "/vocabularies", "Vocabularies")
    # the first visit loads every tokenizer (twelve, about a minute on two busy cores), then it is cached
    expect(pg.locator(".js-plotly-plot")).to_have_count(1, timeout=180_000)
    with pg.expect_download() as dl:
        pg.get_by_role("button", name="Matrix · CSV").click()
    rows = list(csv.reader(io.StringIO(Path(dl.value.path()).read_text())))
    names = rows[0][1:]
    assert "llama-3.2" in names and "qwen2.5" in names
    assert all(float(rows[i + 1][i + 1]) == 1.0 for i in range(len(names)))  # the diagonal is 1
    shot(pg, "vocabularies")
    pg.get_by_text("only in the student", exact=True).click()
    wait_idle(pg)
    first = pg.locator("table.xtok-vocab-tokens tbody tr").first
    sid, text = first.locator("td").nth(0).inner_text().strip(), first.locator("td").nth(1).inner_text().strip()
    qwen = load_tokenizer("qwen2.5")
    llama = load_tokenizer("llama-3.2")
    assert qwen.id_of_bytes(llama.token_bytes[int(sid)]) is None  # really only in the student
    first.locator("a").click()
    expect(pg.locator("table.xtok-row")).to_be_visible()
    assert query(pg)["token"] == f"id:{sid}"


@pytest.mark.slow
def test_distributions_page_with_the_real_teacher(server, page):
    pg = page
    open_page(pg, server["url"] + "/distributions", "Distributions")
    expect(pg.locator("table.xtok-strip")).to_be_attached(timeout=180_000)
    strip = pg.locator("table.xtok-strip tbody tr")
    names = [r.locator("td").first.text_content().strip() for r in strip.all()]  # (in a folded expander)
    assert names == ["P-KL", "H-KL", "GOLD", "ULD", "unreachable mass"]
    from xtok_app.state import converted_models

    al = align_spans("347 + 1286 = 1633", load_tokenizer("llama-3.2"), load_tokenizer(converted_models()["smollm2-135m-instruct"]))
    bounds = sum(1 for a, b in zip(al.groups, al.groups[1:]) if len(a.student) and len(a.teacher) and len(b.student)
                 and len(b.teacher) and a.kind not in ("special", "unaligned"))
    assert all(r.locator("td").count() == 1 + bounds for r in strip.all())  # one value per compared group
    box = pg.get_by_role("combobox", name="Position (or click the strip)")
    box.click()
    pg.get_by_role("option").nth(2).click()
    wait_idle(pg)
    expect(pg.locator(".js-plotly-plot")).to_have_count(4)  # the strip and three bar charts
    expect(pg.locator(".js-plotly-plot").nth(1).locator(".bars path").first).to_be_attached()
    expect(pg.locator("table.xtok-feeders tbody tr").first).to_be_visible()
    shot(pg, "distributions")


def test_a_teacher_cache_built_from_the_page_feeds_a_run(server, page):
    open_page(page, server["url"] + f"/distill?{QUERY}", "Distill")
    page.get_by_text("Build a teacher cache", exact=True).click()
    choose(page, "Model to cache", "tiny:qwen2.5")  # a random tiny teacher: seconds on CPU
    page.get_by_label("Top-K kept", exact=True).fill("8")
    page.get_by_label("Corpus lines to cache", exact=True).fill("200")
    page.get_by_role("button", name="Build cache").click()
    expect(page.get_by_text(re.compile(r"^Building "))).to_be_visible()
    cache_dir = next((server["runs"] / "caches").glob("*/launch.json")).parent
    # the list follows the build until it is complete (a bar while it builds), with no reload
    expect(page.get_by_text(re.compile(rf"{re.escape(cache_dir.name)} · tiny:qwen2.5 · K = 8 · state complete · "
                                       r"\d+ examples · \d+ bytes per teacher token"))).to_be_visible(timeout=240_000)
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    assert manifest["complete"] and manifest["corpus"]["corpus_lines"] == 200 and manifest["top_k"] == 8
    assert json.loads((cache_dir / "progress.json").read_text())["state"] == "complete"
    shot(page, "distill-cache")

    picker = page.get_by_role("combobox", name="Train from a cache", exact=True)
    if not picker.is_visible():
        page.get_by_text("New run", exact=True).click()  # folded when there are runs already
    choose(page, "Train from a cache", f"{cache_dir.name} · tiny:qwen2.5 · K = 8")
    page.get_by_label("Steps", exact=True).fill("2")
    page.get_by_text("More settings").click()
    page.get_by_label("Batch size", exact=True).fill("2")
    page.get_by_label(re.compile("^Evaluate arithmetic")).fill("0")
    page.get_by_label("Generated corpus lines", exact=True).fill("200")  # the corpus the cache holds
    page.get_by_role("button", name="Launch run").click()
    expect(page.get_by_text(re.compile(r"^Launched "))).to_be_visible()
    run_dir = next(p.parent for p in server["runs"].glob("*/request.json")
                   if json.loads(p.read_text()).get("teacher_caches"))
    request = json.loads((run_dir / "request.json").read_text())
    assert request["teacher_caches"] == [str(cache_dir)] and request["teachers"] == ["tiny:qwen2.5"]
    deadline = time.time() + 240
    while time.time() < deadline:
        status = json.loads((run_dir / "status.json").read_text()) if (run_dir / "status.json").exists() else {}
        if status.get("state") in ("finished", "failed"):
            break
        time.sleep(1)
    assert status.get("state") == "finished", (run_dir / "app.log").read_text(errors="replace")[-1500:]
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2 and all(m["pairs/t0"] > 0 and m["kd"] > 0 for m in metrics)
