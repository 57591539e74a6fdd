"""Audit: how much of each critical category the teacher matches exactly, and P-KL or H-KL."""

import plotly.graph_objects as go
import streamlit as st

from xtok_app import state
from xtok_app.render import CHIP_CSS, table_html, visible_bytes
from xtok_core import XtokError

st.title("Audit")
student, teacher = state.current_pair()
state.pair_caption(student, teacher)
st.markdown(CHIP_CSS, unsafe_allow_html=True)
try:
    w = state.projection_with_progress(student, teacher)
    with st.spinner("Auditing critical tokens on the sample corpus…"):
        base = state.audit(student, teacher, w)
except XtokError as e:
    st.error(str(e))
    st.stop()

threshold = st.slider("Coverage threshold for the recommendation", 0.5, 1.0, float(base.threshold), 0.01,
                      help="P-KL if any critical category's exact-match coverage is below this, else H-KL (SPEC §3).")
report = base.with_threshold(threshold) if threshold != base.threshold else base

rec, why = st.columns([1, 4])
rec.metric("Recommended loss", report.recommendation)
why.markdown(f"**Why.** {report.reason}")
if report.recommendation == "P-KL":
    why.caption("P-KL projects the student's whole distribution through W, so a numeral the teacher splits still "
                "gets its teacher pieces' probability mass; H-KL would drop such rows from the common set.")
else:
    why.caption("The teacher matches the critical tokens exactly, so H-KL's exact common set loses little and "
                "its direct KL on shared tokens is the sharper signal.")

st.subheader("Critical categories")
cats = list(report.categories.values())
has_corpus = any(c.weighted_coverage is not None for c in cats)
headers = ["category", "critical", "student tokens", "exact-matched", "coverage"]
if has_corpus:
    headers += ["corpus occurrences", "frequency-weighted coverage"]
rows = []
for c in cats:
    row = [c.name, "yes" if c.critical else "", f"{c.total:,}", f"{c.matched:,}", "—" if c.coverage is None else f"{c.coverage:.1%}"]
    if has_corpus:
        row += ["—" if c.occurrences is None else f"{c.occurrences:,}",
                "—" if c.weighted_coverage is None else f"{c.weighted_coverage:.1%}"]
    rows.append(row)
st.markdown(table_html(headers, rows, css_class="xtok-audit", numeric={2, 3, 4, 5, 6}), unsafe_allow_html=True)
fig = go.Figure(go.Bar(y=[c.name for c in cats], x=[c.coverage or 0 for c in cats], orientation="h",
                       marker_color=["#d8593b" if c.critical and (c.coverage or 0) < threshold else "#3b6fd8" for c in cats],
                       text=["—" if c.coverage is None else f"{c.coverage:.0%}" for c in cats], textposition="outside"))
fig.add_vline(x=threshold, line_dash="dash", line_color="grey", annotation_text=f"threshold {threshold:.2f}")
fig.update_layout(height=260, margin=dict(l=10, r=30, t=30, b=10), xaxis=dict(range=[0, 1.12], tickformat=".0%"),
                  yaxis=dict(autorange="reversed"), title=dict(text="Exact-match coverage by category", font=dict(size=14)))
st.plotly_chart(fig, key="coverage")
with st.expander("Category definitions"):
    for c in cats:
        st.markdown(f"- **{c.name}**: {c.definition}")

st.subheader("Unmatched critical tokens and their W rows")
critical = [c for c in cats if c.critical and c.unmatched]
if not critical:
    st.success("Every critical student token has an exact teacher match.")
else:
    pick = st.selectbox("Category", [c.name for c in critical], key="audit_cat",
                        format_func=lambda n: f"{n} ({len(report.categories[n].unmatched):,} unmatched)")
    ids = report.categories[pick].unmatched
    limit = 200
    out = []
    for s in ids[:limit]:
        r = report.rows.get(s)
        if r is not None:
            pieces = ",  ".join(f"{visible_bytes(p.text.encode('utf-8'))} → {p.weight:.3f}" for p in r.pieces)
            out.append([s, visible_bytes(student.token_bytes[s], r.text), r.kind, pieces, "" if r.occurrences is None else r.occurrences])
        else:
            ex = w.explain(s)
            pieces = ",  ".join(f"{visible_bytes(p.bytes, p.text)} → {p.weight:.3f}" for p in ex.pieces)
            out.append([s, visible_bytes(student.token_bytes[s], ex.student_text), ex.kind, pieces, ""])
    st.markdown(table_html(["student id", "token", "kind", "teacher pieces and weights", "corpus count"], out,
                           css_class="xtok-unmatched", numeric={0, 4}, mono={1, 3}), unsafe_allow_html=True)
    if len(ids) > limit:
        st.caption(f"First {limit} of {len(ids):,}; the JSON report holds every one "
                   "(Markdown and HTML list the first 100 per category).")

ts = report.teacher_side
st.caption(f"Teacher tokens no student row reaches (P-KL can never put mass there): {ts.unreachable:,} of {ts.tokens:,}"
           + (f", {ts.unreachable_share:.2%} of the teacher's corpus tokens" if ts.unreachable_share is not None else ""))

st.subheader("Export the report")
stem = f"audit_{student.name}_to_{teacher.name}".replace("/", "_")
downloads = (("Markdown", report.to_markdown, "md", "text/markdown"), ("HTML", report.to_html, "html", "text/html"),
             ("JSON", report.to_json, "json", "application/json"))
for col, (label, render, ext, mime) in zip(st.columns(3), downloads):
    col.download_button(label, render, file_name=f"{stem}.{ext}", mime=mime, key=f"dl_{ext}", on_click="ignore")
