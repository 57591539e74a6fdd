"""xtok explorer: `streamlit run app.py`.

Pages are thin views over `xtok_core`; the pair (and the inspected token) live in the session and in
the URL (`?student=…&teacher=…&token=…`), so a view can be shared as a link.
"""

import streamlit as st

from xtok_app import state

st.set_page_config(page_title="xtok explorer", page_icon=":material/compare_arrows:", layout="wide")
state.init_state()

pages = [
    st.Page("app_pages/pair.py", title="Pair", icon=":material/compare_arrows:", default=True),
    st.Page("app_pages/projection.py", title="Projection", icon=":material/grid_on:", url_path="projection"),
    st.Page("app_pages/audit.py", title="Audit", icon=":material/fact_check:", url_path="audit"),
    st.Page("app_pages/alignment.py", title="Alignment", icon=":material/link:", url_path="alignment"),
    st.Page("app_pages/distill.py", title="Distill", icon=":material/show_chart:", url_path="distill"),
]
page = st.navigation(pages)

with st.sidebar:
    st.markdown(f"**Student** `{state.source_label(st.session_state.student)}`  \n"
                f"**Teacher** `{state.source_label(st.session_state.teacher)}`")
    st.caption("W maps student tokens (rows) to teacher tokens (columns). The pair and the inspected "
               "token are in the URL: copy it to share this view.")

page.run()
