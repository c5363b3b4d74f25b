"""One browser session's state: the sidebar's Settings, widget values kept across pages, the QEM
used on every page, and this session's Evaluations of the shared Workspace.

Shared, cached things live beside it: studio_ui.workspaces (the Workspace), studio_ui.images
(decoded images), studio_ui.results_store; progress bars in studio_ui.progress.
"""
from __future__ import annotations

from typing import List, Sequence

import numpy as np
import streamlit as st

from mixquant_core import EvalTensors, Evaluations, Workspace
from mixquant_core.errors import MixQuantError, one_line  # noqa: F401  (pages call state.one_line)

from .settings import DEFAULT_QEM, Settings

USER_ERRORS = (MixQuantError, OSError, RuntimeError, ValueError, MemoryError, RecursionError)


def settings() -> Settings:
    return st.session_state["settings"]


def data_key(s: Settings, data: EvalTensors) -> tuple:
    return (s.data_key, s.limit, len(data))


def evaluations(ws: Workspace, early_stop: bool = False) -> Evaluations:
    """This session's evaluations of the shared Workspace: the results store and ``early_stop``
    are this script run's own (an immutable value), never written onto the Workspace."""
    from .results_store import results_store

    return Evaluations(ws, store=results_store(), early_stop=bool(early_stop))


def persist(**defaults) -> None:
    """Widget values that survive leaving their page. Streamlit forgets a widget's value once a run
    does not draw it, so a plain copy under another key remembers it, and it is handed back to the
    widget (before the widget exists) when the page is drawn again. Widgets using this take their
    default from here, never from value= (Streamlit warns when both are given)."""
    ss = st.session_state
    for key, default in defaults.items():
        kept = f"kept::{key}"
        value = ss[key] if key in ss else ss.get(kept, default)
        ss[key] = ss[kept] = value


# --- the QEM used everywhere ----------------------------------------------------------------
def current_qem() -> float:
    return float(st.session_state.setdefault("qem", DEFAULT_QEM))


def set_qem(qem: float, source: str) -> None:
    st.session_state["qem"] = float(qem)
    st.session_state["qem_source"] = source


def qem_options(breakpoints: Sequence[float], points: int = 200, extra: Sequence[float] = ()) -> List[float]:
    """Slider stops: a log grid from 1 past the last breakpoint, plus every breakpoint exactly
    (so each distinct plan can be reached and any QEM snaps to one giving the same plan), plus
    ``extra`` QEMs (the one chosen on another page, so the slider shows it as it is)."""
    qems = np.asarray(breakpoints, dtype=float)
    hi = max(float(qems[-1]) * 1.2, 10.0)
    grid = [float(f"{q:.3g}") for q in np.geomspace(1.0, hi, points)]
    return sorted(set(grid) | {float(q) for q in qems} | {float(q) for q in extra if q >= 1} | {1.0})


def snap_qem(options: Sequence[float], qem: float) -> float:
    """The largest stop <= qem. Every breakpoint is a stop, so the stop's plan equals qem's plan."""
    i = int(np.searchsorted(np.asarray(options), float(qem), side="right")) - 1
    return float(options[max(i, 0)])
