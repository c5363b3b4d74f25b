"""The Workspace for the sidebar's model and settings, shared by every session of the server.

One Workspace per (model, quantizer, bits, keep_first_last, device, engine, cluster, weight ranges) lives in
st.cache_resource. It is immutable once made: a session's own choices (results store, early stop)
go into the Evaluations that ``state.evaluations`` builds for each script run, never onto it.
Uploaded model files are loaded in a child process with a time and memory limit
(registry.load_file, isolate=True): a hostile file costs that child.
"""
from __future__ import annotations

from typing import List, Optional

import streamlit as st

from mixquant_core import Workspace, list_models, load_model
from mixquant_core.data.image_sets import open_calibration_folder
from mixquant_core.data.load import load_tensors
from mixquant_core.errors import MixQuantError, UntrustedCodeError, one_line
from mixquant_core.quant.act_calibration import calibration_notes
from mixquant_core.models.downloads import download_needed

from .progress import progress
from .settings import Settings
from .state import USER_ERRORS, settings

TRUST_ADVICE = ("if you trust this file, tick 'Trust code in this file' in the sidebar "
                "(its code then runs on this server)")


@st.cache_resource(show_spinner=False)
def registry() -> List[tuple]:
    """(name, source) for every model the registry knows: built-in, torchvision (paper's eight first), timm."""
    return [(e.name, e.source) for e in list_models()]


def missing_weights(s: Settings) -> Optional[str]:
    """What a registry model still has to download, or None when it can load offline."""
    if s.model_source != "registry":
        return None
    return download_needed(s.model_name, dict(registry()).get(s.model_name))


@st.cache_resource(max_entries=4, show_spinner=False)
def _workspace(model_key: tuple, model_ref: str, arch: Optional[str], quantizer: str, bits: tuple,
               keep_first_last: bool, device: str, shown_as: Optional[str] = None, trust_code: bool = False, engine: str = "auto",
               cluster_address: str = "", _cluster=None, ranges: str = "weights", acts_key: tuple = (),
               calib_key: tuple = ()) -> Workspace:
    if shown_as is None:  # a registry name
        loaded = load_model(model_ref, arch=arch)
    else:  # an upload: read in a limited child process, named by the user's own file name
        loaded = load_model(model_ref, arch=arch, trust_code=trust_code, isolate=True, shown_as=shown_as)
    calib = None
    if calib_key:  # loss-aware ranges and/or 8-bit activations: calibrated on these images (once per Workspace)
        calib_dir, calib_images = calib_key
        if not calib_dir:
            raise MixQuantError("loss-aware ranges and 8-bit activations need calibration images: set MIXQUANT_DATA "
                                "(its imagenet-calib-1000) or give a calibration folder in the sidebar")
        with progress("Calibration images") as cb:
            calib = load_tensors(open_calibration_folder(calib_dir, calib_images), loaded.preprocess, cb)
    act_bits, act_range, act_outputs = acts_key if acts_key else (None, None, True)
    return Workspace(loaded, quantizer, bits, keep_first_last, (), device, engine=engine, cluster=_cluster,
                     ranges=ranges, act_bits=act_bits, act_range=act_range, calib=calib, act_outputs=act_outputs)


@st.cache_resource(show_spinner=False)
def _ray_cluster(address: str):
    """One connected RayCluster per address for the whole server (a running cluster: a local one
    cannot be started from a Streamlit script's thread)."""
    from mixquant_core.evaluation.cluster import RayCluster

    cluster = RayCluster(address)
    cluster.connect()
    return cluster


def ray_cluster(s: Settings):
    """The sidebar's Ray cluster, connected, or None without one; stops the page when unreachable."""
    if not s.cluster:
        return None
    try:
        with st.spinner(f"Connecting to the Ray cluster ({s.cluster})..."):
            return _ray_cluster(s.cluster)
    except USER_ERRORS as exc:
        st.error(f"Cannot use the Ray cluster: {one_line(exc)}")
        st.stop()


def require_workspace() -> Workspace:
    """The Workspace for the sidebar's choice; on any problem, say what it is and stop the page."""
    s = settings()
    if s.model_source == "upload" and not s.model_path:
        st.info("Upload a model file in the sidebar: a TorchScript file, or a state dict with its architecture.")
        st.stop()
    allowed = st.session_state.setdefault("downloads_allowed", set())
    need = missing_weights(s)
    if need and s.model_key not in allowed:
        st.info(need)
        if not st.button("Download the weights and load the model", key="allow_download"):
            st.stop()
        allowed.add(s.model_key)
    upload = s.model_source == "upload"
    ref = s.model_path if upload else s.model_name
    cluster = ray_cluster(s)
    try:
        with st.spinner(f"Loading {s.model_name}..."):
            ws = _workspace(s.model_key, ref, s.arch, s.quantizer, s.bits, s.keep_first_last, s.device,
                            s.model_name if upload else None, s.trust_code, s.engine, s.cluster, cluster, s.ranges,
                            s.acts_key, s.calib_key)
        if s.act_bits is not None:
            with st.spinner("Calibrating the activation ranges..."):
                acts = ws.recipe.acts  # once per Workspace; a bad calibration set is said here, in one line
            for note in calibration_notes(acts):
                st.warning(note)
    except UntrustedCodeError as exc:
        st.error(f"Cannot use this model: {exc}; {TRUST_ADVICE}.")
        st.stop()
    except USER_ERRORS as exc:
        st.error(f"Cannot use this model: {one_line(exc)}")
        st.stop()
    for message in ws.evaluator.notices:  # e.g. the engine fell back to torch for a model ONNX cannot express
        st.info(message)
    return ws


def require_table(ws: Workspace):
    try:
        with progress("QE table") as cb:
            return ws.table(cb)
    except USER_ERRORS as exc:
        st.error(f"Cannot compute the QE table: {one_line(exc)}")
        st.stop()


@st.cache_resource(max_entries=8, show_spinner=False)
def family_sizes(workspace_key: tuple, _ws: Workspace) -> tuple:
    """Average bits and MB of every distinct plan (for the breakpoint strip), computed once."""
    fam = _ws.family()
    sizes = [_ws.size(b) for b in fam.bits]
    return [s.avg_bits for s in sizes], [s.plan_mb for s in sizes]
