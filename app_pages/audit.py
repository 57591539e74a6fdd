"""Audit: how much of each critical category the teacher matches exactly, and P-KL or H-KL."""

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from xtok_app import state
from xtok_app.render import CHIP_CSS, md_text, table_html, visible_bytes
from xtok_core import XtokError
from xtok_core.audit import pct

RED, BLUE = "#d8593b", "#3b6fd8"

st.title("Audit")
student, teacher = state.current_pair()
state.pair_caption(student, teacher)
st.markdown(CHIP_CSS, unsafe_allow_html=True)
try:
    w = state.projection_with_progress(student, teacher)
    with st.spinner("Auditing critical tokens on the sample corpus…"):
        base = state.audit(student, teacher, w)
except XtokError as e:
    st.error(md_text(str(e)))
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

# Exports first: the report is what a reader takes away.
stem = f"audit_{student.name}_to_{teacher.name}".replace("/", "_")
downloads = (("Markdown", report.to_markdown, "md", "text/markdown"), ("HTML", report.to_html, "html", "text/html"),
             ("JSON", report.to_json, "json", "application/json"))
for col, (label, render, ext, mime) in zip(st.columns([1.4, 1.1, 1.1, 4]), downloads):
    col.download_button(label, render, file_name=f"{stem}.{ext}", mime=mime, key=f"dl_{ext}", on_click="ignore",
                        icon=":material/download:")
if report.corpus is not None:
    c = report.corpus
    st.caption(f"Corpus: {c.name}, {c.texts:,} texts, {c.student_tokens:,} student tokens, {c.teacher_tokens:,} teacher "
               f"tokens. Percentages are truncated to 0.1 % (as in the reports), never rounded up across the threshold.")

cats = list(report.categories.values())
has_corpus = any(c.weighted_coverage is not None for c in cats)
headers = ["category", "student tokens", "exact-matched", "coverage"]
if has_corpus:
    headers += ["corpus occurrences", "frequency-weighted coverage"]


def _rows(group):
    rows = []
    for c in group:
        row = [c.name, f"{c.total:,}", f"{c.matched:,}", "—" if c.coverage is None else pct(c.coverage)]
        if has_corpus:
            row += ["—" if c.occurrences is None else f"{c.occurrences:,}",
                    "—" if c.weighted_coverage is None else pct(c.weighted_coverage)]
        rows.append(row)
    return rows


def _below(c) -> bool:
    return c.critical and c.coverage is not None and c.coverage < threshold


critical_cats = [c for c in cats if c.critical]
other_cats = [c for c in cats if not c.critical]
st.subheader("Critical categories (they decide the loss)")
st.markdown(table_html(headers, _rows(critical_cats), css_class="xtok-audit", numeric={1, 2, 3, 4, 5}), unsafe_allow_html=True)
# A category below the threshold is red, its name and figure too: a 0 % bar has no length to colour.
names = [f"<span style='color:{RED}'>{c.name}</span>" if _below(c) else c.name for c in critical_cats]
fig = go.Figure(go.Bar(y=names, x=[c.coverage or 0 for c in critical_cats], orientation="h",
                       marker_color=[RED if _below(c) else BLUE for c in critical_cats],
                       text=["no tokens" if c.coverage is None else pct(c.coverage) for c in critical_cats],
                       textfont=dict(color=[RED if _below(c) else "#333" for c in critical_cats]),
                       textposition="outside", cliponaxis=False))
fig.add_vline(x=threshold, line_dash="dash", line_color="grey", annotation_text=f"threshold {pct(threshold)}")
fig.update_layout(height=240, margin=dict(l=10, r=30, t=30, b=10), xaxis=dict(range=[0, 1.12], tickformat=".0%"),
                  yaxis=dict(autorange="reversed"), title=dict(text="Exact-match coverage by critical category", font=dict(size=14)))
st.plotly_chart(fig, key="coverage")
if other_cats:
    st.markdown("**Other categories** (reported, not critical: they do not vote on the loss)")
    st.markdown(table_html(headers, _rows(other_cats), css_class="xtok-audit-other", numeric={1, 2, 3, 4, 5}),
                unsafe_allow_html=True)
with st.expander("Category definitions"):
    for c in cats:
        st.markdown(f"- **{c.name}**: {md_text(c.definition)}")

st.subheader("Unmatched critical tokens and their W rows")
critical = [c for c in cats if c.critical and c.unmatched]
if not critical:
    st.success("Every critical student token has an exact teacher match.")
else:
    pick = st.selectbox("Category", [c.name for c in critical], key="audit_cat",
                        format_func=lambda n: f"{n} ({len(report.categories[n].unmatched):,} unmatched)")
    ids = np.asarray(report.categories[pick].unmatched, dtype=np.int64)
    # Most frequent in the corpus first (ties: lowest id): the tokens a run meets most often.
    freq = np.array([getattr(report.rows.get(int(s)), "occurrences", None) or 0 for s in ids], dtype=np.int64)
    ids = ids[np.lexsort((ids, -freq))]
    limit = 200
    out = []
    for s in ids[:limit].tolist():
        r = report.rows.get(s)
        if r is not None:
            pieces = ",  ".join(f"{visible_bytes(p.text.encode('utf-8'))} → {p.weight:.3f}" for p in r.pieces)
            out.append([s, visible_bytes(student.token_bytes[s], r.text), r.kind, pieces, "" if r.occurrences is None else f"{r.occurrences:,}"])
        else:
            ex = w.explain(s)
            pieces = ",  ".join(f"{visible_bytes(p.bytes, p.text)} → {p.weight:.3f}" for p in ex.pieces)
            out.append([s, visible_bytes(student.token_bytes[s], ex.student_text), ex.kind, pieces, ""])
    st.markdown(table_html(["student id", "token", "kind", "teacher pieces and weights", "corpus count"], out,
                           css_class="xtok-unmatched", numeric={0, 4}, mono={1, 3},
                           links={0: lambda row: state.row_url(row[0])}), unsafe_allow_html=True)
    if len(ids) > limit:
        st.caption(f"The {limit} most frequent of {len(ids):,}; the JSON report holds every one "
                   "(Markdown and HTML list the first 100 per category).")

ts = report.teacher_side
holes = teacher.vocab_size - ts.tokens
st.caption(f"Teacher tokens no student row reaches (P-KL can never put mass there): {ts.unreachable:,} of the "
           f"{ts.tokens:,} regular teacher tokens ({teacher.vocab_size:,} minus {holes:,} special tokens and id holes)"
           + (f", {pct(ts.unreachable_share)} of the teacher's corpus tokens" if ts.unreachable_share is not None else ""))
