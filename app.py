"""MixQuant Studio: the Streamlit entry point (`streamlit run app.py`).

It registers the pages and runs the one the user picked. Each page draws the shared sidebar
(studio_ui.sidebar), reads its Settings, calls mixquant_core and draws; nothing is computed here.
"""
import streamlit as st

st.set_page_config(page_title="MixQuant Studio", page_icon="assets/logo.svg", layout="wide")

PAGES = [
    st.Page("app_pages/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("app_pages/explore.py", title="Explore", icon=":material/grid_on:", url_path="explore"),
    st.Page("app_pages/tradeoff.py", title="Trade-off", icon=":material/show_chart:", url_path="tradeoff"),
    st.Page("app_pages/sensitivity.py", title="Sensitivity", icon=":material/tune:", url_path="sensitivity"),
    st.Page("app_pages/export.py", title="Export", icon=":material/download:", url_path="export"),
]
page = st.navigation(PAGES)
st.logo("assets/logo.svg")
page.run()
