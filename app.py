"""xtok explorer: `streamlit run app.py`.

Pages are thin views over `xtok_core`; the pair (and the inspected token) live in the session and in
the URL (`?student=…&teacher=…&token=…`), so a view can be shared as a link.
"""

import streamlit as st

from xtok_app import state

st.set_page_config(page_title="xtok explorer", page_icon="🔀", layout="wide")
state.init_state()

pages = [
    st.Page("pages/pair.py", title="Pair", icon="🔀", url_path="pair", default=True),
    st.Page("pages/projection.py", title="Projection", icon="🧮", url_path="projection"),
    st.Page("pages/audit.py", title="Audit", icon="✅", url_path="audit"),
    st.Page("pages/alignment.py", title="Alignment", icon="🔗", url_path="alignment"),
    st.Page("pages/distill.py", title="Distill", icon="📉", url_path="distill"),
]
page = st.navigation(pages)

with st.sidebar:
    st.markdown(f"**Student** `{state.source_label(st.session_state.student)}`  \n"
                f"**Teacher** `{state.source_label(st.session_state.teacher)}`")
    st.caption("W maps student tokens (rows) to teacher tokens (columns). The pair and the inspected "
               "token are in the URL: copy it to share this view.")

page.run()
