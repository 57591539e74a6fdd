"""Alignment: both tokenizations of one text, their span-alignment groups and the bipartite graph."""

import streamlit as st

from xtok_app import state
from xtok_app.render import CHIP_CSS, bipartite_figure, chips_html, table_html, token_label, visible_bytes
from xtok_core import XtokError, align_spans

EXAMPLES = {
    "Arithmetic": "347 + 1286 = 1633",
    "Price and date": "Paid $1,234.56 on 2024-03-15 at 12:30.",
    "Code": "def total(xs):\n    return sum(x * 2 for x in xs) != 0",
    "Accents and emoji": "Café déjà vu — naïve 🙂 façade",
    "CJK": "東京都は日本の首都です。",
    "Whitespace": "a\tb  c\n\n   d",
}
GRAPH_LIMIT = 160  # tokens per side drawn in the graph; longer texts show their start

st.title("Alignment")
ss = st.session_state
student, teacher = state.current_pair()
state.pair_caption(student, teacher)
st.markdown(CHIP_CSS, unsafe_allow_html=True)


def _example() -> None:
    ss.align_text = EXAMPLES[ss.align_example]


ss.setdefault("align_text", EXAMPLES["Price and date"])
c1, c2 = st.columns([1, 3])
c1.selectbox("Example", list(EXAMPLES), key="align_example", index=None, placeholder="pick an example",
             on_change=_example)
colour_by = c1.radio("Colour tokens by", ("group", "token id"), horizontal=True, key="align_colour")
text = c2.text_area("Text", key="align_text", height=110)
if not text:
    st.info("Type a text to align.")
    st.stop()
try:
    al = align_spans(text, student, teacher)
except XtokError as e:
    st.error(str(e))
    st.stop()

kinds = al.kinds()
cols = st.columns(2 + len([k for k, n in kinds.items() if n]))
cols[0].metric("groups", len(al.groups))
cols[1].metric("tokens (student / teacher)", f"{len(al.student_ids)} / {len(al.teacher_ids)}")
for col, (k, n) in zip(cols[2:], ((k, n) for k, n in kinds.items() if n)):
    col.metric(k, n)

keys_s = al.student_group if colour_by == "group" else al.student_ids
keys_t = al.teacher_group if colour_by == "group" else al.teacher_ids
st.markdown(f"**Student · {student.name}** ({len(al.student_ids)} tokens)"
            + chips_html(student, al.student_ids, keys_s, css_class="xtok-student")
            + f"**Teacher · {teacher.name}** ({len(al.teacher_ids)} tokens)"
            + chips_html(teacher, al.teacher_ids, keys_t, css_class="xtok-teacher"), unsafe_allow_html=True)
st.caption("Spaces show as ·, newlines ↵, tabs ⇥; `\\xNN` is a byte of a character that a byte-level token splits. "
           "Hover a token for its id and bytes. With colour by group, tokens of one group share a colour on both sides.")

graph_tab, table_tab = st.tabs(["Bipartite graph", f"Groups ({len(al.groups)})"])
with graph_tab:
    st.plotly_chart(bipartite_figure(al.to_networkx(), al.student_group, al.teacher_group, student.name, teacher.name,
                                     limit=GRAPH_LIMIT), key="bipartite")
    if max(len(al.student_ids), len(al.teacher_ids)) > GRAPH_LIMIT:
        st.caption(f"The graph shows the first {GRAPH_LIMIT} tokens of each side; the groups table lists all.")
with table_tab:
    rows = [[i, grp.kind, visible_bytes(al.group_bytes(grp)) or "(special)",
             " ".join(token_label(student, t) for t in al.student_ids[list(grp.student)].tolist()),
             " ".join(token_label(teacher, t) for t in al.teacher_ids[list(grp.teacher)].tolist())]
            for i, grp in enumerate(al.groups)]
    st.markdown(table_html(["group", "kind", "text", f"student pieces ({student.name})", f"teacher pieces ({teacher.name})"],
                           rows, css_class="xtok-groups", numeric={0}, mono={2, 3, 4}), unsafe_allow_html=True)
