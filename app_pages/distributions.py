"""Distributions: the teacher's next-token distribution, the student's, and the student's carried through W
into the teacher's vocabulary, at every aligned position of a text; where P-KL, H-KL, GOLD and ULD disagree."""

import plotly.graph_objects as go
import streamlit as st

from xtok_app import state
from xtok_app.render import CHIP_CSS, colour, md_text, table_html
from xtok_core import XtokError, bundled_tokenizers

EXAMPLES = {
    "A sum": "347 + 1286 = 1633",
    "A price": "The total was $1,234.56 after tax.",
    "A date": "The meeting is on 2024-03-15 at 12:30.",
    "Code": "def add(a, b):\n    return a + b",
}
MAX_TEXT = 1_000  # characters: a forward pass of both models on ~200 tokens answers in seconds on a CPU
LOSS_LABELS = {"pkl": "P-KL", "hkl": "H-KL", "gold": "GOLD", "uld": "ULD"}

st.title("Distributions")
ss = st.session_state
st.markdown(CHIP_CSS, unsafe_allow_html=True)
st.markdown("Two real models on one text: at each aligned position (the end of an alignment group, where both "
            "models predict the start of the next group) the teacher's next-token distribution, the student's, and "
            "the student's **projected through W** into the teacher's vocabulary (what P-KL compares).")

choices = state.named_models() + [f"tiny:{n}" for n in bundled_tokenizers()]
c1, c2 = st.columns(2)
s_spec = c1.selectbox("Student model", choices, index=choices.index(f"tiny:{ss.student}") if f"tiny:{ss.student}" in choices
                      else choices.index("tiny:llama-3.2"), key="dist_student",
                      help="`tiny:<tokenizer>`: a small randomly initialised Llama-style model with that tokenizer.")
t_spec = c2.selectbox("Teacher model", choices, index=0, key="dist_teacher",
                      help="Named models are real (`xtok models` lists them); they are converted once and cached.")


@st.cache_resource(show_spinner=False, max_entries=4)
def _model(spec: str):
    from xtok_core import load_model

    return load_model(spec)


def _loaded(spec: str, bar, at: float):
    bar.progress(at, text=f"Loading {spec} (once per server)…")
    return _model(spec)


@st.cache_resource(show_spinner=False, max_entries=2)
def _projection(s_spec: str, t_spec: str):
    from xtok_core import build_projection

    s, t = _model(s_spec), _model(t_spec)
    return build_projection(s.tok, t.tok, student_vocab_size=s.vocab_size, teacher_vocab_size=t.vocab_size)


@st.cache_resource(show_spinner=False, max_entries=16)
def _distributions(s_spec: str, t_spec: str, text: str):
    from xtok_core.distributions import position_distributions

    return position_distributions(text, _model(s_spec), _model(t_spec), _projection(s_spec, t_spec))


def _example() -> None:
    ss.dist_text = EXAMPLES[ss.dist_example]


ss.setdefault("dist_text", EXAMPLES["A sum"])
c1, c2 = st.columns([1, 3])
c1.selectbox("Example", list(EXAMPLES), key="dist_example", index=None, placeholder="pick an example", on_change=_example)
text = c2.text_area("Text", key="dist_text", height=90, max_chars=MAX_TEXT)
if not text.strip():
    st.info("Type a text or pick an example.")
    st.stop()

try:
    bar = st.progress(0.0, text="Loading the models…")
    student, teacher = _loaded(s_spec, bar, 0.1), _loaded(t_spec, bar, 0.4)
    bar.progress(0.7, text="Building W and running both models on the text…")
    d = _distributions(s_spec, t_spec, text)
    bar.empty()
except XtokError as e:
    st.error(md_text(str(e)))
    st.stop()

s_tok, t_tok = student.tok, teacher.tok
P = d.positions
st.caption(f"Student **{md_text(s_spec)}** ({s_tok.name}, {student.vocab_size:,} logits) · teacher **{md_text(t_spec)}** "
           f"({t_tok.name}, {teacher.vocab_size:,} logits) · {len(d.alignment.groups)} groups, {len(P)} compared positions")
if not P:
    st.warning("No aligned position with a next group in this text; type a longer text.")
    st.stop()


def _label(tok, i: int) -> str:
    from xtok_app.render import token_label

    return token_label(tok, i)


st.subheader("Losses along the text")
xs = [f"{n}: {p.text}" for n, p in enumerate(P)]
rows = list(LOSS_LABELS) + ["unreachable"]
z, texts = [], []
for r in rows:
    vals = [p.unreachable_mass if r == "unreachable" else p.losses[r] for p in P]
    top = max(max(vals), 1e-12)
    z.append([v / top for v in vals])  # each row on its own scale: where a loss is large, for that loss
    texts.append([f"{v:.2f}" if r != "unreachable" else f"{v:.1%}" for v in vals])
fig = go.Figure(go.Heatmap(z=z, x=list(range(len(P))), y=[LOSS_LABELS.get(r, "unreachable mass") for r in rows],
                           text=texts, texttemplate="%{text}", colorscale="Reds", showscale=False,
                           customdata=[xs for _ in rows],
                           hovertemplate="%{customdata}<br>%{y}: %{text}<extra></extra>"))
fig.update_layout(height=230, margin=dict(l=10, r=10, t=10, b=10), yaxis=dict(autorange="reversed"),
                  xaxis=dict(tickvals=list(range(len(P))), ticktext=[p.text for p in P], tickangle=0, tickfont=dict(family="monospace")))
event = st.plotly_chart(fig, key="strip", on_select="rerun", selection_mode="points")
st.caption("Each row is scaled to its own largest value (colour); the numbers are the per-position values (no τ²). "
           "H-KL and GOLD are large where the student token has no exact teacher twin; P-KL compares the whole "
           "projected distribution. Unreachable: teacher mass on tokens no student row reaches through W.")
strip = [[LOSS_LABELS.get(r, "unreachable mass")] + row for r, row in zip(rows, texts)]
with st.expander("Values as a table"):
    st.markdown(table_html(["loss"] + [p.text for p in P], strip, css_class="xtok-strip",
                           numeric=set(range(1, len(P) + 1))), unsafe_allow_html=True)

picked = None
try:
    pts = event.selection.points if event else []
    if pts:
        picked = int(pts[0]["x"])
except (AttributeError, KeyError, TypeError, ValueError):
    picked = None
if picked is not None:
    ss.dist_pos = picked
ss.setdefault("dist_pos", 0)
if ss.dist_pos >= len(P):
    ss.dist_pos = 0
st.selectbox("Position (or click the strip)", list(range(len(P))), key="dist_pos",
             format_func=lambda n: f"{n}: after “{P[n].text}”, next “{P[n].next_text}”")
n = ss.dist_pos
p = P[n]
st.subheader(f"After “{p.text}”: both should predict “{p.next_text}”")
st.markdown(" · ".join(f"**{LOSS_LABELS[k]}** {v:.3f}" for k, v in p.losses.items())
            + f" · **unreachable teacher mass** {p.unreachable_mass:.2%}")


def bars(title: str, tok, top, key: str):
    labels = [f"{_label(tok, i)} ({i})" for i, _ in top]
    f = go.Figure(go.Bar(x=[v for _, v in top], y=labels, orientation="h", marker_color=[colour(i, 65) for i, _ in top],
                         text=[f"{v:.1%}" if v >= 0.001 else f"{v:.1e}" for _, v in top], textposition="outside",
                         cliponaxis=False))
    f.update_layout(height=330, title=dict(text=title, font=dict(size=14)), margin=dict(l=10, r=40, t=40, b=10),
                    yaxis=dict(autorange="reversed", type="category", tickfont=dict(family="monospace")),
                    xaxis=dict(tickformat=".0%" if max(v for _, v in top) >= 0.01 else ".1e"))
    st.plotly_chart(f, key=key)


c1, c2, c3 = st.columns(3)
with c1:
    bars(f"Teacher {t_spec}: top next tokens", t_tok, p.teacher_top, "bars_teacher")
with c2:
    bars(f"Student {s_spec}: top next tokens", s_tok, p.student_top, "bars_student")
with c3:
    bars("Student through W (teacher's vocabulary)", t_tok, p.projected_top, "bars_projected")

st.markdown("**Which student tokens feed each teacher column through W** (the teacher's top tokens; "
            "contribution = p_student × W weight)")
rows = []
for j, pt in p.teacher_top:
    q = dict(p.projected_top).get(j, float(d.projected[n, j]))
    feeders = d.feeders(n, j, k=6)
    rows.append([f"{_label(t_tok, j)} ({j})", f"{pt:.2%}", f"{q:.2%}",
                 ",  ".join(f"{_label(s_tok, s)} (w {wt:.3f}, {c:.2%})" for s, wt, c in feeders) or "no student row reaches it"])
st.markdown(table_html(["teacher token", "teacher p", "projected q", "student tokens feeding it"], rows,
                       css_class="xtok-feeders", numeric={1, 2}, mono={0, 3}), unsafe_allow_html=True)
