"""Projection: one row of W, which teacher pieces a student token maps to, with what weights, and why."""

import plotly.graph_objects as go
import streamlit as st

from xtok_app import state
from xtok_app.render import CHIP_CSS, chips_html, colour, hex_bytes, md_text, table_html, visible_bytes
from xtok_app.search import MAX_QUERY, find_tokens, parse_id, typed_text, worked_example
from xtok_core import XtokError

st.title("Projection")
ss = st.session_state
student, teacher = state.current_pair()
state.pair_caption(student, teacher)
st.markdown(CHIP_CSS, unsafe_allow_html=True)
try:
    w = state.projection_with_progress(student, teacher)
except XtokError as e:
    st.error(str(e))
    st.stop()


def _set_token() -> None:
    ss.token = ss.token_query.strip()


def _pick_match() -> None:
    if ss.token_pick is not None:
        ss.token = f"id:{ss.token_pick}"


# A first visit opens on a worked example (a numeral whose row has several teacher pieces), not an
# empty box; once shown, clearing the box keeps it empty.
opened = ss.setdefault("projection_opened", [])
if (student.sha256, teacher.sha256) not in opened:
    opened.append((student.sha256, teacher.sha256))
    if not ss.token:
        ss.token = worked_example(student, w)
        state.sync_url("projection")

ss.token_query = ss.token
st.text_input("Student token: type its text (`2019`, `·the` for a leading space) or `id:N` for a token id",
              key="token_query", on_change=_set_token, placeholder="2019", max_chars=MAX_QUERY)
s_id = None
if not ss.token:
    st.info("Type a student token above to see its row of W.")
elif parse_id(ss.token) is not None:
    i = parse_id(ss.token)
    if 0 <= i < student.vocab_size:
        s_id = i
    else:
        st.warning(f"{student.name} has no token id {i:,}; ids run from 0 to {student.vocab_size - 1:,}.")
else:
    text = typed_text(ss.token)
    matches = find_tokens(student, ss.token)
    labels = {m.token_id: f"{visible_bytes(student.token_bytes[m.token_id], student.token_text(m.token_id))}  ·  id {m.token_id}  ·  {m.how}"
              for m in matches}
    if matches and matches[0].how == "text":
        s_id = matches[0].token_id
        if len(matches) > 1:
            ss.token_pick = s_id
            st.selectbox(f"{len(matches)} matching student tokens", list(labels), key="token_pick",
                         format_func=labels.get, on_change=_pick_match)
    else:
        pieces = student.encode(text).ids.tolist() if text else []
        st.warning(md_text(f"{visible_bytes(text.encode())} is not one {student.name} token: the student "
                           f"tokenizes it into {len(pieces)} pieces, each a link to its row of W."))
        st.markdown("Student pieces " + chips_html(student, pieces, show_ids=True, href=state.row_url),
                    unsafe_allow_html=True)
        if matches:
            st.selectbox(f"{len(matches)} student tokens containing it (or with a leading space)", list(labels),
                         key="token_pick", index=None, placeholder="pick one to see its row", format_func=labels.get,
                         on_change=_pick_match)

if s_id is not None:
    ex = w.explain(s_id)
    left, right = st.columns([3, 2])
    with left:
        st.subheader("Row")
        st.markdown(f"Student token {chips_html(student, [s_id], show_ids=True)}"
                    f"<p>kind <b>{ex.kind}</b> · bytes <code>{hex_bytes(ex.student_bytes)}</code></p>",
                    unsafe_allow_html=True)
        rows = [[p.teacher_id, visible_bytes(p.bytes, p.text), hex_bytes(p.bytes), f"{p.weight:.5f}"] for p in ex.pieces]
        st.markdown(table_html(["teacher id", "teacher piece", "bytes", "weight"], rows, css_class="xtok-row",
                               numeric={0, 3}, mono={1, 2}), unsafe_allow_html=True)
        if ex.sequence:
            dropped = {i for i, p in enumerate(ex.sequence) if p.weight == 0.0}
            st.markdown("Teacher pieces in order " + chips_html(teacher, [p.teacher_id for p in ex.sequence], show_ids=True,
                                                                faded=dropped), unsafe_allow_html=True)
            if dropped:
                st.caption(f"Struck-through pieces come after max_pieces={w.params['max_pieces']} and are dropped.")
    with right:
        st.subheader("Why")
        st.markdown(ex.reason)
        if ex.formula:
            st.code(ex.formula, language=None, wrap_lines=True)
        fig = go.Figure(go.Bar(x=[visible_bytes(p.bytes, p.text) for p in ex.pieces], y=[p.weight for p in ex.pieces],
                               marker_color=[colour(p.teacher_id, 70) for p in ex.pieces],
                               text=[f"{p.weight:.4f}" for p in ex.pieces], textposition="outside"))
        fig.update_layout(height=240, margin=dict(l=10, r=10, t=10, b=10), yaxis=dict(range=[0, 1.15], title="weight"),
                          xaxis=dict(type="category"))
        st.plotly_chart(fig, key="row_weights")
    with st.expander("Row as text (as `xtok explain` prints it)"):
        st.code(ex.to_text(), language=None)

st.divider()
hist, exports = st.columns([3, 2])
with hist:
    st.subheader("Row kinds")
    counts = w.kind_counts()
    fig = go.Figure(go.Bar(x=list(counts), y=list(counts.values()), text=[f"{n:,}" for n in counts.values()],
                           textposition="outside", marker_color="#3b6fd8"))
    fig.update_layout(height=280, margin=dict(l=10, r=10, t=10, b=10), yaxis=dict(type="log", title="student rows"))
    st.plotly_chart(fig, key="kinds")
with exports:
    st.subheader("Export W")
    st.caption(f"{w.shape[0]:,} × {w.shape[1]:,}, {w.matrix.nnz:,} non-zeros, sha256 {w.sha256[:16]}")
    st.download_button("W · safetensors (xtok)", lambda: state.w_export(w, "safetensors"),
                       file_name=state.w_filename(w, "safetensors"), mime="application/octet-stream", key="dl_w_st", on_click="ignore")
    st.download_button("W · NeMo-RL top-k (.pt)", lambda: state.w_export(w, "pt"),
                       file_name=state.w_filename(w, "pt"), mime="application/octet-stream", key="dl_w_pt", on_click="ignore")
    st.download_button("W · CSV of rows", lambda: state.w_export(w, "csv"),
                       file_name=state.w_filename(w, "csv"), mime="text/csv", key="dl_w_csv", on_click="ignore")
