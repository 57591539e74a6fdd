"""Vocabularies: how much every bundled and model tokenizer shares with every other, and for the pair
which tokens only one side has (each student token links to its row of W)."""

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from xtok_app import state
from xtok_app.render import CHIP_CSS, md_text, table_html, visible_bytes
from xtok_core import XtokError
from xtok_core.audit import category_members, pct
from xtok_core.overlap import overlap_matrix, split_vocabularies

LIST_LIMIT = 200

st.title("Vocabularies")
ss = st.session_state
student, teacher = state.current_pair()
state.pair_caption(student, teacher)
st.markdown(CHIP_CSS, unsafe_allow_html=True)


@st.cache_data(show_spinner="Loading every tokenizer and intersecting their vocabularies…")
def _matrix(names: tuple) -> tuple[list, list]:
    toks = [state.tokenizer(n) for n in names]
    return [t.vocab_size for t in toks], overlap_matrix(toks).tolist()


st.subheader("Overlap matrix")
names = tuple(state.matrix_sources())
try:
    sizes, m = _matrix(names)
except XtokError as e:
    st.error(md_text(str(e)))
    st.stop()
m = np.asarray(m)
labels = [f"{n} ({v:,})" for n, v in zip(names, sizes)]
fig = go.Figure(go.Heatmap(z=m, x=labels, y=labels, zmin=0, zmax=1, colorscale="Blues",
                           text=[[f"{v:.3f}" for v in row] for row in m], texttemplate="%{text}",
                           hovertemplate="row %{y}<br>column %{x}<br>overlap %{z:.3f}<extra></extra>"))
fig.update_layout(height=140 + 42 * len(names), margin=dict(l=10, r=10, t=10, b=10),
                  yaxis=dict(autorange="reversed"), xaxis=dict(side="top"))
st.plotly_chart(fig, key="overlap")
st.caption("Our measure: the share of the **row** tokenizer's distinct regular tokens (special tokens left out) whose "
           "bytes are also a token of the **column** tokenizer. Tokens compare by the bytes they add to text (`Ġ` and "
           "`▁` are a space, `##x` is `x`), as W's exact rule does, so a cell is about the share of exact rows of "
           "W(row → column). It is asymmetric and the diagonal is 1. Other projects publish other measures (e.g. a "
           "symmetric share): compare their figures in kind, not digit for digit.")
pd_matrix = pd.DataFrame(m, index=list(names), columns=list(names))
st.download_button("Matrix · CSV", pd_matrix.to_csv(), file_name="vocabulary_overlap.csv", mime="text/csv",
                   key="dl_overlap", on_click="ignore")

st.subheader(f"{student.name} and {teacher.name}, token by token")
split = split_vocabularies(student, teacher)
members_s, members_t = category_members(student), category_members(teacher)
cats = ["any"] + list(members_s)
c1, c2, c3 = st.columns([2, 2, 3])
side = c1.radio("Tokens", ("only in the student", "only in the teacher", "in both"), key="vocab_side", horizontal=False)
cat = c2.selectbox("Audit category", cats, key="vocab_cat")
query = c3.text_input("Search (part of a token's text; `·` is a space)", key="vocab_query", max_chars=100)
counts = {"only in the student": len(split.student_only), "only in the teacher": len(split.teacher_only),
          "in both": len(split.both)}
st.caption(" · ".join(f"{k}: {v:,}" for k, v in counts.items()))

tok, ids, members = {
    "only in the student": (student, split.student_only, members_s),
    "only in the teacher": (teacher, split.teacher_only, members_t),
    "in both": (student, split.both, members_s),
}[side]
if cat != "any":
    ids = ids[members[cat][ids]]
if query:
    from xtok_app.search import token_texts, typed_text

    ids = ids[token_texts(tok).iloc[ids].str.contains(typed_text(query), regex=False).to_numpy()]
shown = ids[:LIST_LIMIT].tolist()
is_student = tok is student
rows = []
for i in shown:
    row_cats = [c for c, mask in members.items() if mask[i]]
    rows.append([i, visible_bytes(tok.token_bytes[i]), ", ".join(row_cats)])
header = "student id (its W row)" if is_student else "teacher id"
st.markdown(table_html([header, "token", "audit categories"], rows, css_class="xtok-vocab-tokens", numeric={0}, mono={1},
                       links={0: (lambda row: state.row_url(row[0])) if is_student else (lambda row: None)}),
            unsafe_allow_html=True)
st.caption(f"{len(ids):,} tokens match" + (f"; the first {LIST_LIMIT} by id are listed" if len(ids) > LIST_LIMIT else "")
           + (". Student ids link to their row of W on the Projection page." if is_student else
              ". A teacher-only token is a column of W that no exact row reaches."))
