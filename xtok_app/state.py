"""The app's shared state: the pair in the session and the URL, and the caches.

Tokenizers and W are cached with `st.cache_resource` keyed by content hash (the tokenizer.json
sha256), so two names for the same file share one object and one W.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import threading
from pathlib import Path

import sys
from urllib.parse import urlencode

import streamlit as st

from xtok_core import DEFAULT_STUDENT, DEFAULT_TEACHER, XtokError, bundled_tokenizers, load_tokenizer

UPLOAD_LIMIT_MB = 50  # also server.maxUploadSize in .streamlit/config.toml
UPLOAD_PREFIX = "upload:"
URL_KEYS = ("student", "teacher", "token")
# Keys one page owns in the URL (kept on that page, dropped elsewhere).
PAGE_URL_KEYS = {"alignment": ("text",)}
URL_VALUE_LIMIT = 2_000  # characters taken from one URL value (the alignment text has its own, larger bound)
ALLOW_LOCAL_ENV = "XTOK_ALLOW_LOCAL"
ALLOW_LOCAL_ARG = "--allow-local"


# ------------------------------------------------------------------ what a source may be
def allow_local() -> bool:
    """Local paths and hub ids (typed on the Pair page, never from a link) only when the server was
    started with `XTOK_ALLOW_LOCAL=1` or `streamlit run app.py -- --allow-local`. Off by default: a
    server others can reach must not open its own files or the network for them."""
    return os.environ.get(ALLOW_LOCAL_ENV, "") == "1" or ALLOW_LOCAL_ARG in sys.argv[1:]


def named_models() -> list[str]:
    """Named real models (`xtok models`): a link may name them as models (Distributions page)."""
    from xtok_core.models import REGISTRY

    return list(REGISTRY)


def model_spec_ok(spec: str) -> bool:
    """A model a link may name: a named real model or `tiny:<bundled tokenizer>` (never a path)."""
    return spec in named_models() or (spec.startswith("tiny:") and spec[5:] in bundled_tokenizers())


def _named(source: str) -> bool:
    from xtok_core.tok import ALIASES

    return source in bundled_tokenizers() or source.lower() in ALIASES or source in named_models()


def converted_models() -> dict[str, str]:
    """Named models already converted on this machine (`xtok models`): name -> their directory."""
    from xtok_core.models import cached_models

    return {m["name"]: m["cache_dir"] for m in cached_models() if m.get("name") in named_models()}


def matrix_sources() -> list[str]:
    """Every tokenizer the Vocabularies page compares: bundled ones, then converted named models."""
    return bundled_tokenizers() + sorted(converted_models())


def check_source(source: str, *, local_ok: bool = False) -> None:
    """Refuse, in one line and before anything is opened, a source that a link may not name: only
    bundled names, named models and `upload:<hash>` pass; a local path or hub id passes only when it
    came from the Pair page's own input (`local_ok`) on a server that allows them."""
    if _named(source) or re.fullmatch(UPLOAD_PREFIX + r"[0-9a-f]{16}", source):
        return
    if local_ok and allow_local():
        return
    shown = source if len(source) <= 80 else source[:77] + "…"
    if source.startswith(UPLOAD_PREFIX):
        raise XtokError(f"uploaded tokenizer {shown[len(UPLOAD_PREFIX):]!r} is not on this server any more; "
                        "upload the tokenizer.json again on the Pair page")
    where = ("add it on the Pair page" if allow_local() else
             f"start the server with {ALLOW_LOCAL_ENV}=1 and add it on the Pair page")
    raise XtokError(f"refused tokenizer {shown!r}: a link names only bundled tokenizers ({', '.join(bundled_tokenizers())}) "
                    f"or uploads, never a local path or hub id; {where}")


# ------------------------------------------------------------------ sources
def upload_dir() -> Path:
    return Path(os.environ.get("XTOK_UPLOAD_DIR") or Path(tempfile.gettempdir()) / "xtok-uploads")


def source_path(source: str) -> str:
    """What `load_tokenizer` takes for a source shown in the app (`upload:<sha>` is a saved upload)."""
    if source.startswith(UPLOAD_PREFIX):
        key = source[len(UPLOAD_PREFIX):]
        d = upload_dir() / key
        for name in ("tokenizer.json", "tokenizer.json.gz"):
            if re.fullmatch(r"[0-9a-f]{16}", key) and (d / name).is_file():
                return str(d / name)
        raise XtokError(f"uploaded tokenizer {key} is not on this server any more; upload the tokenizer.json again on the Pair page")
    if source in named_models() and source not in bundled_tokenizers():
        d = converted_models().get(source)
        if d is None:
            raise XtokError(f"model {source!r} is not converted on this server yet; run `xtok models` "
                            f"(or load it once with xtok_core.load_model) and reload")
        return d
    return source


def source_label(source: str) -> str:
    if source.startswith(UPLOAD_PREFIX):
        meta = upload_dir() / source[len(UPLOAD_PREFIX):] / "upload.json"
        try:
            return f"{json.loads(meta.read_text())['name']} (upload {source[len(UPLOAD_PREFIX):][:8]})"
        except (OSError, ValueError, KeyError):
            return source
    return source


def save_upload(filename: str, data: bytes) -> str:
    """Keep an uploaded tokenizer.json (or .json.gz), validate it with `load_tokenizer`, and return
    its source name `upload:<sha256 prefix>`. A bad file raises XtokError naming the upload."""
    size_mb = len(data) / 2**20
    if size_mb > UPLOAD_LIMIT_MB:
        raise XtokError(f"{filename} is {size_mb:.1f} MB, over the {UPLOAD_LIMIT_MB} MB upload limit; pass its local path instead")
    key = hashlib.sha256(data).hexdigest()[:16]
    d = upload_dir() / key
    d.mkdir(parents=True, exist_ok=True)
    path = d / ("tokenizer.json.gz" if filename.endswith(".gz") else "tokenizer.json")
    path.write_bytes(data)
    try:
        load_tokenizer(str(path))
    except Exception as e:  # noqa: BLE001 - whatever a user uploads, the page shows one line
        for p in d.iterdir():
            p.unlink()
        d.rmdir()
        msg = str(e) if isinstance(e, XtokError) else f"{filename} is not a usable tokenizer ({type(e).__name__}); upload a tokenizer.json saved by Hugging Face tokenizers"
        raise XtokError(msg.replace(str(path), filename)) from None
    (d / "upload.json").write_text(json.dumps({"name": filename}))
    return UPLOAD_PREFIX + key


# ------------------------------------------------------------------ caches
SAMPLE_CORPUS = "xtok's bundled sample corpus"

@st.cache_resource(show_spinner=False)
def _store() -> dict:
    return {"tok": {}, "w": {}, "audit": {}, "lock": threading.Lock()}


def tokenizer(source: str, *, local_ok: bool = False):
    """The Tok for a source, one object per content hash; a source a link may not name is refused
    first (`check_source`), without touching the file system or the network."""
    check_source(source, local_ok=local_ok)
    tok = load_tokenizer(source_path(source))
    return _store()["tok"].setdefault(tok.sha256, tok)


def cached_projection(student, teacher):
    """W if it is already built for this pair, else None; never builds."""
    return _store()["w"].get((student.sha256, teacher.sha256))


def projection(student, teacher, progress=None):
    """W for the pair: from the cache, else built once (other sessions wait for the same build)."""
    store = _store()
    with store["lock"]:
        w = cached_projection(student, teacher)
        if w is None:
            from xtok_core import build_projection

            w = build_projection(student, teacher, progress=progress)
            store["w"][(student.sha256, teacher.sha256)] = w
    return w


def adopt_projection(w) -> None:
    """Use a W loaded from a file (already validated against the pair) for its pair."""
    _store()["w"][(w.student_sha256, w.teacher_sha256)] = w


def projection_with_progress(student, teacher):
    """W for the pair, showing a progress bar while it is built."""
    w = cached_projection(student, teacher)
    if w is not None:
        return w
    bar = st.progress(0.0, text=f"Building W for {student.name} → {teacher.name}…")
    w = projection(student, teacher, progress=lambda f, msg="": bar.progress(min(max(float(f), 0.0), 1.0), text=msg or None))
    bar.empty()
    return w


def audit(student, teacher, w):
    """The coverage audit on the bundled sample corpus, cached per (student, teacher, W)."""
    store = _store()
    key = (student.sha256, teacher.sha256, w.sha256)
    if key not in store["audit"]:
        from xtok_core import coverage_audit
        from xtok_core.corpus import sample_corpus

        store["audit"][key] = coverage_audit(student, teacher, w, corpus=sample_corpus(), corpus_name=SAMPLE_CORPUS)
    return store["audit"][key]


# ------------------------------------------------------------------ pair state and URL
def init_state() -> None:
    """On a session's first run, take the pair, the token and page-owned values from the URL (each
    bounded); then keep the URL in step (`sync_url`, once the page is known)."""
    ss = st.session_state
    if "student" not in ss:
        qp = st.query_params
        ss.student = (qp.get("student") or DEFAULT_STUDENT)[:URL_VALUE_LIMIT]
        ss.teacher = (qp.get("teacher") or DEFAULT_TEACHER)[:URL_VALUE_LIMIT]
        ss.token = (qp.get("token") or "")[:URL_VALUE_LIMIT]
        ss.url_values = {k: qp.get(k) for keys in PAGE_URL_KEYS.values() for k in keys if qp.get(k)}
        ss.local_sources = []


def sync_url(page: str = "") -> None:
    """The URL holds the pair, the token, and the keys the current page owns."""
    ss = st.session_state
    want = {k: ss[k] for k in URL_KEYS if ss.get(k)}
    for k in PAGE_URL_KEYS.get(page, ()):
        if k in st.query_params:
            want[k] = st.query_params[k]
    if dict(st.query_params) != want:
        st.query_params.from_dict(want)


def page_url(page: str, **extra) -> str:
    """A link to `page` (its url_path) on the session's pair, e.g. `projection?…&token=id:12`."""
    ss = st.session_state
    q = {"student": ss.student, "teacher": ss.teacher, **{k: v for k, v in extra.items() if v is not None}}
    return f"{page}?{urlencode(q)}"


def row_url(token_id: int) -> str:
    """A link to student token `token_id`'s row of W on the Projection page."""
    return page_url("projection", token=f"id:{int(token_id)}")


def sources() -> list[str]:
    """Choices for a side of the pair: bundled names, then sources added in this session."""
    extra = [s for s in st.session_state.get("extra_sources", []) if s not in bundled_tokenizers()]
    for s in (st.session_state.get("student"), st.session_state.get("teacher")):
        if s and s not in bundled_tokenizers() and s not in extra:
            extra.append(s)
    return bundled_tokenizers() + [m for m in sorted(converted_models()) if m not in extra] + extra


def add_source(source: str) -> None:
    extra = st.session_state.setdefault("extra_sources", [])
    if source not in extra:
        extra.append(source)


def add_local(source: str):
    """A local path or hub id typed on the Pair page (only on a server that allows them): loaded,
    remembered for this session, and returned as a Tok."""
    if not allow_local():
        raise XtokError(f"this server does not open local paths or hub ids; start it with {ALLOW_LOCAL_ENV}=1 "
                        "(or `streamlit run app.py -- --allow-local`), or upload the tokenizer.json")
    tok = tokenizer(source, local_ok=True)
    local = st.session_state.setdefault("local_sources", [])
    if source not in local:
        local.append(source)
    return tok


def side_tokenizer(source: str):
    ss = st.session_state
    return tokenizer(source, local_ok=source in ss.get("local_sources", ()))


def current_pair():
    """(student, teacher) Tok for the session's pair; a bad source stops the page with one line."""
    from .render import md_text

    try:
        return side_tokenizer(st.session_state.student), side_tokenizer(st.session_state.teacher)
    except XtokError as e:
        st.error(md_text(str(e)))
        st.page_link(PAGE_PAIR, label="Choose another pair on the Pair page")
        st.stop()


PAGE_PAIR = "app_pages/pair.py"


def pair_caption(student, teacher) -> None:
    st.caption(f"Student **{student.name}** (rows of W, {student.vocab_size:,} tokens) · "
               f"teacher **{teacher.name}** (columns, {teacher.vocab_size:,} tokens)")


# ------------------------------------------------------------------ exports
def w_export(w, fmt: str) -> bytes:
    """W as a downloadable file: "safetensors" (xtok), "pt" (NeMo-RL top-k dict) or "csv"."""
    if fmt == "csv":
        return w.to_csv().encode("utf-8")
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"W.{fmt}"
        (w.save if fmt == "safetensors" else w.save_nemo)(str(path))
        return path.read_bytes()


def w_filename(w, ext: str) -> str:
    return f"W_{w.student_name}_to_{w.teacher_name}.{ext}".replace("/", "_")
