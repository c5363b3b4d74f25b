"""Figure builders: pure functions from core results to plotly figures, for the app and reports.
Imports mixquant_core and plotly only (never Streamlit)."""
