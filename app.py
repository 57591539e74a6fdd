"""xtok explorer: `streamlit run app.py` (add `-- --allow-local` to open local paths and hub ids).

Pages are thin views over `xtok_core`; the pair (and the inspected token) live in the session and in
the URL (`?student=…&teacher=…&token=…`), so a view can be shared as a link. A link names only
bundled tokenizers, named models and uploads (see `xtok_app.state.check_source`).
"""

from pathlib import Path

import streamlit as st

from xtok_app import state
from xtok_app.render import md_text

# The favicon is a file of ours served by this server: nothing the page loads leaves the machine
# (an emoji or Material icon favicon would be fetched from a CDN).
FAVICON = str(Path(__file__).parent / "xtok_app" / "assets" / "favicon.png")
st.set_page_config(page_title="xtok explorer", page_icon=FAVICON, layout="wide")
state.init_state()

pages = [
    st.Page("app_pages/pair.py", title="Pair", icon=":material/compare_arrows:", default=True),
    st.Page("app_pages/vocabularies.py", title="Vocabularies", icon=":material/join_inner:", url_path="vocabularies"),
    st.Page("app_pages/projection.py", title="Projection", icon=":material/grid_on:", url_path="projection"),
    st.Page("app_pages/audit.py", title="Audit", icon=":material/fact_check:", url_path="audit"),
    st.Page("app_pages/alignment.py", title="Alignment", icon=":material/link:", url_path="alignment"),
    st.Page("app_pages/distributions.py", title="Distributions", icon=":material/bar_chart:", url_path="distributions"),
    st.Page("app_pages/distill.py", title="Distill", icon=":material/show_chart:", url_path="distill"),
]
page = st.navigation(pages)
state.sync_url(page.url_path)

with st.sidebar:
    st.markdown(f"**Student** {md_text(state.source_label(st.session_state.student)[:80])}  \n"
                f"**Teacher** {md_text(state.source_label(st.session_state.teacher)[:80])}")
    st.caption("W maps student tokens (rows) to teacher tokens (columns). The pair and the inspected "
               "token are in the URL: copy it to share this view.")

page.run()
