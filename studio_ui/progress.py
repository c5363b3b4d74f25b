"""A Streamlit progress bar driven by the core's (done, total, what) callbacks."""
from __future__ import annotations

from contextlib import contextmanager

import streamlit as st


@contextmanager
def progress(label: str):
    """Created on the first call only, so cached work draws nothing, and removed when the work ends."""
    slot = st.empty()
    bar = []

    def update(done: int, total: int, what: str) -> None:
        frac = min(max(done / total, 0.0), 1.0) if total else 1.0
        text = f"{label}: {what} ({done}/{total})"
        if not bar:
            bar.append(slot.progress(frac, text=text))
        else:
            bar[0].progress(frac, text=text)

    try:
        yield update
    finally:
        slot.empty()


def attempt(label: str, failure: str, work, results: dict, key) -> None:
    """``results[key] = work(callback)`` under a progress bar labelled ``label``; a user error (bad
    input, a failed measurement) is one ``st.error`` line naming ``failure`` and leaves ``results``
    as it was."""
    from .state import USER_ERRORS, one_line

    try:
        with progress(label) as cb:
            results[key] = work(cb)
    except USER_ERRORS as exc:
        st.error(f"{failure} failed: {one_line(exc)}")
