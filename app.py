"""MixQuant Studio: the Streamlit entry point (`streamlit run app.py`).

It draws the sidebar every page shares (so its choices survive page changes), then runs the page
the user picked. The pages are thin: they read the sidebar's Settings, call mixquant_core, draw.
"""
import streamlit as st

from studio_ui import sidebar

st.set_page_config(page_title="MixQuant Studio", page_icon="assets/logo.svg", layout="wide")

PAGES = [
    st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("pages/explore.py", title="Explore", icon=":material/grid_on:", url_path="explore"),
    st.Page("pages/tradeoff.py", title="Trade-off", icon=":material/show_chart:", url_path="tradeoff"),
    st.Page("pages/sensitivity.py", title="Sensitivity", icon=":material/tune:", url_path="sensitivity"),
    st.Page("pages/export.py", title="Export", icon=":material/download:", url_path="export"),
]
page = st.navigation(PAGES)
st.logo("assets/logo.svg")
sidebar.render()
page.run()
