"""Pair: choose the student and the teacher tokenizer, see their vocabularies, build or load W."""

import tempfile
from pathlib import Path

import numpy as np
import streamlit as st

from xtok_app import state
from xtok_app.render import CHIP_CSS, md_text, table_html
from xtok_core import XtokError

st.title("Pair")
st.markdown("Pick the **student** (the model you train; rows of W) and the **teacher** (columns of W). "
            "Bundled tokenizers load without network access.")

ss = st.session_state
options = state.sources()


def _pick(side: str) -> None:
    ss[side] = ss[f"pick_{side}"]
    ss.token = ""


cols = st.columns(2)
for col, side in zip(cols, ("student", "teacher")):
    ss[f"pick_{side}"] = ss[side]
    col.selectbox(f"{side.capitalize()} tokenizer", options, key=f"pick_{side}", on_change=_pick, args=(side,),
                  format_func=state.source_label)

with st.expander("Add a tokenizer: upload a tokenizer.json, a local path, or a hub id"):
    target = st.radio("Use it as", ("student", "teacher"), horizontal=True, key="add_side")
    upload = st.file_uploader(f"tokenizer.json or tokenizer.json.gz (up to {state.UPLOAD_LIMIT_MB} MB)",
                              type=["json", "gz"], key="upload_tok", max_upload_size=state.UPLOAD_LIMIT_MB)
    if upload is not None and ss.get("upload_seen") != upload.file_id:
        ss.upload_seen = upload.file_id
        try:
            src = state.save_upload(upload.name, upload.getvalue())
        except XtokError as e:
            ss.upload_error = md_text(str(e))
        else:
            ss.upload_error = None
            state.add_source(src)
            ss[target] = src
            st.rerun()
    if upload is not None and ss.get("upload_error"):
        st.error(ss.upload_error)
    if state.allow_local():
        path = st.text_input("Local tokenizer.json, Hugging Face directory, or hub id (hub ids need network)",
                             key="add_path", placeholder="/models/my-tokenizer/tokenizer.json", max_chars=1000)
        if st.button("Add", key="add_path_btn", disabled=not path):
            try:
                state.add_local(path.strip())
            except XtokError as e:
                st.error(md_text(str(e)))
            else:
                state.add_source(path.strip())
                ss[target] = path.strip()
                st.rerun()
    else:
        st.caption(f"Local paths and hub ids are off: this server opens no file and no network address for a "
                   f"page. Start it with `{state.ALLOW_LOCAL_ENV}=1 streamlit run app.py` to type them here.")

student, teacher = state.current_pair()

st.subheader("Vocabularies")
st.markdown(CHIP_CSS, unsafe_allow_html=True)
rows = []
for label, t in (("student", student), ("teacher", teacher)):
    roles = ", ".join(f"{r} {t.token_text(i)}" for r, i in t.roles.items()) or "—"
    rows.append([label, t.name, t.family, f"{t.vocab_size:,}", f"{int(t.special.sum()):,}",
                 f"{int(t.byte_fallback_ids.sum()):,}", ", ".join(t.normalizes) or "none", roles, t.sha256[:16]])
st.markdown(table_html(["side", "name", "family", "vocab", "special", "byte fallback", "normalises", "roles",
                        "sha256"], rows, css_class="xtok-vocab", numeric={3, 4, 5}, mono={8}), unsafe_allow_html=True)

st.subheader("Projection W")
try:
    w = state.projection_with_progress(student, teacher)  # built once per pair, then from the cache
except XtokError as e:
    st.error(str(e))
    w = None
if w is not None:
    from xtok_core.projection import ROW_KINDS

    counts = {k: int(n) for k, n in zip(ROW_KINDS, np.bincount(w.kinds, minlength=len(ROW_KINDS))) if n}
    # A table, not st.metric: a metric cuts long values ("128,256 × 15…") to its column's width.
    st.markdown(table_html(["shape (student × teacher)", "non-zeros", "exact rows", "W sha256"],
                           [[f"{w.shape[0]:,} × {w.shape[1]:,}", f"{w.matrix.nnz:,}",
                             f"{counts.get('exact', 0) / max(w.shape[0], 1):.1%}", w.sha256[:16]]],
                           css_class="xtok-wfacts", numeric={1, 2}, mono={3}), unsafe_allow_html=True)
    st.caption("Kinds: " + ", ".join(f"{k} {n:,}" for k, n in counts.items()))
    st.page_link("app_pages/projection.py", label="Inspect rows on the Projection page", icon=":material/grid_on:")

with st.expander("Load a W file built elsewhere (.safetensors from `xtok build-w`)"):
    wfile = st.file_uploader("W (.safetensors)", type=["safetensors"], key="upload_w",
                             max_upload_size=state.UPLOAD_LIMIT_MB)
    if wfile is not None:
        from xtok_core import Projection

        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "W.safetensors"
            p.write_bytes(wfile.getvalue())
            try:
                loaded = Projection.load(str(p), student=student, teacher=teacher)
            except XtokError as e:
                st.error(str(e).replace(str(p), wfile.name))
            except Exception as e:  # noqa: BLE001 - a corrupt upload is one line, never a traceback
                st.error(f"{wfile.name} is not a W file ({type(e).__name__}); upload a .safetensors written by xtok build-w")
            else:
                state.adopt_projection(loaded)
                st.success(f"Loaded {wfile.name}: W {loaded.shape[0]:,} × {loaded.shape[1]:,} for this pair.")
