"""Alignment: both tokenizations of one text, their span-alignment groups and the bipartite graph."""

import numpy as np
import streamlit as st

from xtok_app import state
from xtok_app.render import CHIP_CSS, bipartite_figure, chips_html, esc, md_text, table_html, token_label, visible_bytes
from xtok_core import XtokError, align_spans

EXAMPLES = {
    "Arithmetic": "347 + 1286 = 1633",
    "Price and date": "Paid $1,234.56 on 2024-03-15 at 12:30.",
    "Code": "def total(xs):\n    return sum(x * 2 for x in xs) != 0",
    "Accents and emoji": "Café déjà vu — naïve 🙂 façade 👨\u200d👩\u200d👧",
    "CJK": "東京都は日本の首都です。",
    "Whitespace": "a\tb  c\n\n   d",
}
MAX_TEXT = 5_000     # characters: the box and a link's text are cut here (a 20,000-character text took 7 s)
GROUPS_PER_PAGE = 150  # groups drawn as chips at a time; the rest are paged, and the page says how many
GRAPH_WINDOW = 40    # groups drawn in the overlap graph at a time (labels stay readable)
KIND_HELP = {
    "1:1": "one student token, one teacher token, the same bytes",
    "1:n": "one student token, several teacher tokens (the teacher splits it: Qwen's digits)",
    "n:1": "several student tokens, one teacher token (the student splits it)",
    "n:m": "several on both sides with cuts in different places: only the whole group lines up",
    "special": "a special token of one side (bos, eos): a group of its own",
    "unaligned": "text only one side tokenizes",
}

st.title("Alignment")
ss = st.session_state
student, teacher = state.current_pair()
state.pair_caption(student, teacher)
st.markdown(CHIP_CSS + """<style>
.xtok-grid{display:flex;flex-wrap:wrap;gap:6px 4px;font-family:ui-monospace,SFMono-Regular,Menlo,monospace}
.xtok-col{display:inline-flex;flex-direction:column;gap:3px;padding:2px;border-radius:5px}
.xtok-col.disagree{outline:2px solid #d8593b}
.xtok-col .xtok-chips{line-height:1.6}
.xtok-side{font-size:.75rem;opacity:.6}
</style>""", unsafe_allow_html=True)


def _example() -> None:
    ss.align_text = EXAMPLES[ss.align_example]
    _to_url()


def _to_url() -> None:
    st.query_params["text"] = ss.align_text[:MAX_TEXT]  # the text is in the link: a view can be shared


CHAT_EXAMPLE = ('[{"role": "user", "content": "What is 347 + 1286?"},\n'
                ' {"role": "assistant", "content": "347 + 1286 = 1633"}]')
mode = st.radio("Input", ("text", "conversation"), horizontal=True, key="align_mode",
                help="A conversation is rendered by each tokenizer's own chat template and aligned on the messages' "
                     "content (xtok_core.chat.align_chat): template tokens belong to no group.")
if mode == "conversation":
    import json

    from xtok_core.chat import align_chat

    raw = st.text_area("Messages (JSON: a list of {role, content})", CHAT_EXAMPLE, key="align_chat", height=120,
                       max_chars=MAX_TEXT)
    try:
        messages = json.loads(raw)
        cal = align_chat(messages, student, teacher)
    except ValueError as e:
        st.error(md_text(f"the messages are not valid JSON ({e}); paste a list such as {CHAT_EXAMPLE.splitlines()[0]}…"))
        st.stop()
    except XtokError as e:
        st.error(md_text(str(e)))
        st.stop()
    n_tpl = [int((cal.student_group < 0).sum()), int((cal.teacher_group < 0).sum())]
    c = st.columns(3)
    c[0].metric("content groups", len(cal.groups))
    c[1].metric("template tokens (student / teacher)", f"{n_tpl[0]} / {n_tpl[1]}")
    c[2].metric("messages", len(messages))
    for label, tok, ids, grp in (("Student", student, cal.student_ids, cal.student_group),
                                 ("Teacher", teacher, cal.teacher_ids, cal.teacher_group)):
        grp = np.asarray(grp)
        st.markdown(f"**{label} · {md_text(tok.name)}**, its own template (greyed: no group, no loss)"
                    + chips_html(tok, ids, grp, css_class=f"xtok-chat-{label.lower()}",
                                 extra_class=lambda i, g=grp: "grey" if g[i] < 0 else ""), unsafe_allow_html=True)
    st.caption("Content tokens are coloured by alignment group (the same colour on both sides); each assistant turn's "
               "end-of-turn token is paired with the other side's by role.")
    st.stop()

if "align_text" not in ss:
    ss.align_text = (ss.get("url_values", {}).get("text") or EXAMPLES["Price and date"])[:MAX_TEXT]
    _to_url()
c1, c2 = st.columns([1, 3])
c1.selectbox("Example", list(EXAMPLES), key="align_example", index=None, placeholder="pick an example",
             on_change=_example)
colour_by = c1.radio("Colour tokens by", ("group", "token id"), horizontal=True, key="align_colour")
text = c2.text_area("Text", key="align_text", height=110, max_chars=MAX_TEXT, on_change=_to_url,
                    help=f"Up to {MAX_TEXT:,} characters; the text is kept in the page's link.")
if not text:
    st.info("Type a text to align.")
    st.stop()
try:
    al = align_spans(text, student, teacher)
except XtokError as e:
    st.error(md_text(str(e)))
    st.stop()

groups = al.groups
differ = np.array([g.kind not in ("1:1", "special") for g in groups], dtype=bool)
kinds = al.kinds()
cols = st.columns([1, 1.8, 1.8] + [1] * len([k for k, n in kinds.items() if n]))
cols[0].metric("groups", len(groups))
cols[1].metric("tokens (student / teacher)", f"{len(al.student_ids)} / {len(al.teacher_ids)}")
cols[2].metric("spans where they differ", int(differ.sum()),
               help="Groups that are not one token on each side: there the two tokenizers cut the text differently.")
for col, (k, n) in zip(cols[3:], ((k, n) for k, n in kinds.items() if n)):
    col.metric(k, n)
with st.expander("Group kinds"):
    st.markdown("\n".join(f"- **{k}**: {v}" for k, v in KIND_HELP.items()) +
                "\n\nA group is a connected component of the graph whose edges join tokens with overlapping bytes; at "
                "a group's last positions both models predict the same next text, so the losses compare there.")

# Groups side by side: student chips over teacher chips, one column per group, paged.
n_pages = max(1, -(-len(groups) // GROUPS_PER_PAGE))
page = 1
if n_pages > 1:
    page = st.number_input(f"Page of groups ({GROUPS_PER_PAGE} per page)", 1, n_pages, 1, key="align_page")
g0, g1 = (page - 1) * GROUPS_PER_PAGE, min(page * GROUPS_PER_PAGE, len(groups))
if n_pages > 1:
    st.caption(f"Groups {g0 + 1:,}–{g1:,} of {len(groups):,}: {len(groups) - (g1 - g0):,} groups are on other pages.")


def _col(i: int, grp) -> str:
    s_ids, t_ids = al.student_ids[list(grp.student)], al.teacher_ids[list(grp.teacher)]
    key = (lambda ids: [i] * len(ids)) if colour_by == "group" else (lambda ids: ids)
    s = chips_html(student, s_ids, key(s_ids), css_class="xtok-student", href=state.row_url) if len(s_ids) else \
        '<div class="xtok-chips xtok-side">—</div>'
    t = chips_html(teacher, t_ids, key(t_ids), css_class="xtok-teacher") if len(t_ids) else \
        '<div class="xtok-chips xtok-side">—</div>'
    cls = "xtok-col disagree" if differ[i] else "xtok-col"
    return f'<span class="{cls}" title="{esc(f"group {i} · {grp.kind}")}">{s}{t}</span>'


st.markdown(f"**Student · {md_text(student.name)}** over **teacher · {md_text(teacher.name)}**, one column per group; "
            "outlined in red where the tokenizations differ.")
st.markdown('<div class="xtok-grid">' + "".join(_col(i, groups[i]) for i in range(g0, g1)) + "</div>",
            unsafe_allow_html=True)
st.caption("Spaces show as ·, newlines ↵, tabs ⇥; `\\xNN` is a byte of a character that a byte-level token splits, "
           "`\\u200d` an invisible character. Hover a token for its id and bytes; a student token links to its row of W.")

graph_tab, table_tab = st.tabs(["Bipartite graph", f"Groups ({len(groups)})"])
with graph_tab:
    if len(groups) > GRAPH_WINDOW:
        w0 = st.slider("Groups in the graph", 0, len(groups) - 1, (0, min(GRAPH_WINDOW, len(groups)) - 1), key="align_window",
                       help=f"At most {GRAPH_WINDOW} groups at a time, so the labels do not overlap.")
        lo, hi = w0[0], min(w0[1], w0[0] + GRAPH_WINDOW - 1)
    else:
        lo, hi = 0, len(groups) - 1
    st.plotly_chart(bipartite_figure(al.to_networkx(), al.student_group, al.teacher_group, student.name, teacher.name,
                                     groups=(lo, hi)), key="bipartite")
    if len(groups) > GRAPH_WINDOW:
        st.caption(f"The graph shows groups {lo}–{hi} of {len(groups)}; move the window to see the rest.")
with table_tab:
    rows = []
    for i, grp in enumerate(groups):
        span = al.group_span(grp)
        rows.append([i, grp.kind, "" if span is None else f"[{span[0]}, {span[1]})",
                     visible_bytes(al.group_bytes(grp)) or "(special)",
                     " ".join(token_label(student, t) for t in al.student_ids[list(grp.student)].tolist()),
                     " ".join(token_label(teacher, t) for t in al.teacher_ids[list(grp.teacher)].tolist())])
    st.markdown(table_html(["group", "kind", "bytes", "text", f"student pieces ({student.name})",
                            f"teacher pieces ({teacher.name})"],
                           rows, css_class="xtok-groups", numeric={0}, mono={2, 3, 4, 5}), unsafe_allow_html=True)
