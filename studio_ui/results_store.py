"""The results store the app reads and writes ($MIXQUANT_HOME/results.sqlite), opened once per server."""
from __future__ import annotations

import streamlit as st

from mixquant_core.errors import MixQuantError, one_line


@st.cache_resource(show_spinner=False)
def _results_store(path: str) -> tuple:
    from mixquant_core.evaluation.store import open_store

    try:
        return open_store(path), None
    except MixQuantError as exc:
        return None, one_line(exc)


def results_store():
    """The results store, or None after saying why results are not kept."""
    from mixquant_core.evaluation.store import default_store_path

    store, problem = _results_store(str(default_store_path()))
    if problem:
        st.warning(f"Evaluations are not kept between runs: {problem}")
    return store
