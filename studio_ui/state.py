"""Cached state the pages share: the Workspace, the evaluation set, the chosen QEM, progress bars.

Caches live in st.cache_resource (per server process, shared by sessions): a Workspace per
(model, quantizer, bits, keep_first_last, device), decoded images per (set, subset, preprocessing).
There is no process-wide lock: evaluations fake-quantize the Workspace's private copy of the model
under that Workspace's own lock, so the shared model never changes and a session drawing its pages
never waits for another session's evaluation. Uploaded model files are loaded in a child process
with a time and memory limit (registry.load_file, isolate=True): a hostile file costs that child.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import streamlit as st

from mixquant_core import EvalTensors, ImageList, Workspace, list_models, load_model, load_tensors, open_image_folder, open_imagenette
from mixquant_core.errors import DatasetError, MixQuantError, UntrustedCodeError, one_line
from mixquant_core.models.registry import torchvision_cache_path

from .settings import DEFAULT_QEM, Settings

USER_ERRORS = (MixQuantError, OSError, RuntimeError, ValueError, MemoryError, RecursionError)
TENSOR_CACHE_SIZE = 4


def settings() -> Settings:
    return st.session_state["settings"]


@contextmanager
def progress(label: str):
    """A progress bar driven by the core's (done, total, what) callbacks; created on the first
    call only, so cached work draws nothing, and removed when the work ends."""
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


# --- model and workspace --------------------------------------------------------------------
def download_needed(s: Settings) -> Optional[str]:
    """What a registry model still has to download, or None when it can load offline."""
    if s.model_source != "registry":
        return None
    source = dict(registry()).get(s.model_name)
    if source == "torchvision":
        import torchvision

        weights = torchvision.models.get_model_weights(s.model_name).DEFAULT
        target = torchvision_cache_path(weights.url)
        if not target.is_file():
            size = weights.meta.get("_file_size")
            size_txt = f" ({size:.0f} MB)" if size else ""
            return (f"{s.model_name} needs its ImageNet weights{size_txt}: {weights.url}. They are not in "
                    f"{target}. Download them here, or place the file there yourself (offline machines).")
    if source == "timm":
        return _timm_download_needed(s.model_name)
    return None


@st.cache_resource(show_spinner=False)
def registry() -> List[tuple]:
    """(name, source) for every model the registry knows: built-in, torchvision (paper's eight first), timm."""
    return [(e.name, e.source) for e in list_models()]


def _timm_download_needed(name: str) -> Optional[str]:
    try:
        import timm
        from huggingface_hub import try_to_load_from_cache

        cfg = timm.models.get_pretrained_cfg(name)
        repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
        if repo and any(isinstance(try_to_load_from_cache(repo, f), str)
                        for f in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")):
            return None
    except Exception:  # any doubt: ask before touching the network
        pass
    return (f"timm model {name} downloads its weights from the Hugging Face Hub on first use "
            "(they land in the Hugging Face cache, HF_HOME).")


@st.cache_resource(max_entries=4, show_spinner=False)
def _workspace(model_key: tuple, model_ref: str, arch: Optional[str], quantizer: str, bits: tuple,
               keep_first_last: bool, device: str, shown_as: Optional[str] = None, trust_code: bool = False, engine: str = "auto",
               cluster_address: str = "", _cluster=None) -> Workspace:
    if shown_as is None:  # a registry name
        loaded = load_model(model_ref, arch=arch)
    else:  # an upload: read in a limited child process, named by the user's own file name
        loaded = load_model(model_ref, arch=arch, trust_code=trust_code, isolate=True, shown_as=shown_as)
    return Workspace(loaded, quantizer, bits, keep_first_last, (), device, engine=engine, cluster=_cluster)


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


TRUST_ADVICE = ("if you trust this file, tick 'Trust code in this file' in the sidebar "
                "(its code then runs on this server)")


def require_workspace() -> Workspace:
    """The Workspace for the sidebar's choice; on any problem, say what it is and stop the page."""
    s = settings()
    if s.model_source == "upload" and not s.model_path:
        st.info("Upload a model file in the sidebar: a TorchScript file, or a state dict with its architecture.")
        st.stop()
    allowed = st.session_state.setdefault("downloads_allowed", set())
    need = download_needed(s)
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
                            s.model_name if upload else None, s.trust_code, s.engine, s.cluster, cluster)
    except UntrustedCodeError as exc:
        st.error(f"Cannot use this model: {exc}; {TRUST_ADVICE}.")
        st.stop()
    except USER_ERRORS as exc:
        st.error(f"Cannot use this model: {one_line(exc)}")
        st.stop()
    for message in ws.notices:  # e.g. the engine fell back to torch for a model ONNX cannot express
        st.info(message)
    if ws.store is None:
        ws.store = results_store()
    return ws


@st.cache_resource(show_spinner=False)
def _results_store(path: str) -> tuple:
    from mixquant_core.evaluation.store import open_store

    try:
        return open_store(path), None
    except MixQuantError as exc:
        return None, one_line(exc)


def results_store():
    """The results store ($MIXQUANT_HOME/results.sqlite), or None after saying why results are not kept."""
    from mixquant_core.evaluation.store import default_store_path

    store, problem = _results_store(str(default_store_path()))
    if problem:
        st.warning(f"Evaluations are not kept between runs: {problem}")
    return store


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


# --- evaluation set -------------------------------------------------------------------------
@st.cache_resource(max_entries=8, show_spinner=False)
def _image_list(data_kind: str, data_dir: str, download: bool) -> ImageList:
    if data_kind == "imagenette":
        return open_imagenette(data_dir, download=download)
    return open_image_folder(data_dir)


def eval_images(s: Optional[Settings] = None) -> Optional[ImageList]:
    """The evaluation ImageList (whole set), or None after showing why it is not usable."""
    s = s or settings()
    if not s.data_dir:
        st.info("No evaluation set: type an image folder in the sidebar (or set MIXQUANT_DATA before starting the app).")
        return None
    try:
        if s.data_kind == "imagenette":
            try:
                return _image_list("imagenette", s.data_dir, False)
            except (DatasetError, RuntimeError, OSError):
                st.info(f"Imagenette (about 95 MB) is not in '{s.data_dir}' yet.")
                if not st.button("Download Imagenette", key="download_imagenette"):
                    return None
                with st.spinner("Downloading Imagenette..."):
                    return _image_list("imagenette", s.data_dir, True)
        return _image_list("folder", s.data_dir, False)
    except USER_ERRORS as exc:
        st.error(f"Evaluation set unusable: {one_line(exc)}")
        return None


@st.cache_resource(show_spinner=False)
def _tensor_store() -> "OrderedDict":
    return OrderedDict()


def eval_tensors(ws: Workspace, s: Optional[Settings] = None) -> Optional[EvalTensors]:
    """The first ``limit`` images, decoded and preprocessed for this model once (progress shown)."""
    s = s or settings()
    images = eval_images(s)
    if images is None:
        return None
    images = images.subset(s.limit)
    key = (s.data_key, len(images), repr(ws.loaded.preprocess))
    data = _decoded(key, "Evaluation set", lambda cb: load_tensors(images, ws.loaded.preprocess, cb))
    if data is None:
        return None
    if data.skipped:
        names = ", ".join(Path(p).name for p in data.skipped[:3]) + (" ..." if len(data.skipped) > 3 else "")
        st.error(f"{len(data.skipped)} image(s) could not be read and were left out: {names}")
    return data


def calib_tensors(ws: Workspace, folder: str, n: int) -> Optional[EvalTensors]:
    """``n`` calibration images (spread over the folder) for the Fisher cost, decoded once."""
    from mixquant_core.data.image_sets import open_calibration_folder

    key = ("calib", folder, n, repr(ws.loaded.preprocess))
    return _decoded(key, "Calibration set",
                    lambda cb: load_tensors(open_calibration_folder(folder, n), ws.loaded.preprocess, cb))


def _decoded(key: tuple, what: str, decode) -> Optional[EvalTensors]:
    """Decoded images from the shared LRU store, decoding (with a progress bar) on a miss;
    None after showing why the set is unusable."""
    store, locks = _tensor_store(), _decode_locks()
    with locks[None]:
        key_lock = locks.setdefault(key, threading.Lock())
    with key_lock:  # one decode per set; sessions decoding other sets (or none) never wait
        with locks[None]:
            data = store.get(key)
        if data is None:
            try:
                with progress(f"Decoding images ({what.lower()})") as cb:
                    data = decode(cb)
            except USER_ERRORS as exc:
                st.error(f"{what} unusable: {one_line(exc)}")
                return None
        with locks[None]:
            store[key] = data
            store.move_to_end(key)
            while len(store) > TENSOR_CACHE_SIZE:
                locks.pop(store.popitem(last=False)[0], None)
    return data


@st.cache_resource(show_spinner=False)
def _decode_locks() -> dict:
    """A lock per decoded set (key), and under None the lock of the store and of this dict."""
    return {None: threading.Lock()}


def data_key(s: Settings, data: EvalTensors) -> tuple:
    return (s.data_key, s.limit, len(data))


def class_name(images: ImageList, label: int) -> str:
    if 0 <= label < len(images.class_names) and images.class_names[label]:
        return images.class_names[label].split(",")[0]
    return _imagenet_names()[label] if 0 <= label < 1000 else f"class {label}"


@st.cache_resource(show_spinner=False)
def _imagenet_names() -> List[str]:
    # torchvision ships the 1000 ImageNet names with its weight metadata (no download needed)
    import torchvision

    return list(torchvision.models.ResNet18_Weights.DEFAULT.meta["categories"])


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
