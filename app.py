"""MixQuant Studio home page (placeholder until the dashboard lands)."""
import streamlit as st

st.set_page_config(page_title="MixQuant Studio", layout="wide")
st.title("MixQuant Studio")
st.write("Per-layer mixed-precision bit-width search for PyTorch image classifiers.")
