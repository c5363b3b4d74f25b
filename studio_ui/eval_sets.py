"""The evaluation and calibration images the pages use, decoded once per (set, subset,
preprocessing) into a small LRU shared by the sessions of the server; a lock per set, so sessions
decoding other sets (or none) never wait."""
from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import List, Optional

import streamlit as st

from mixquant_core import EvalTensors, ImageList, Workspace, load_tensors, open_image_folder, open_imagenette
from mixquant_core.evaluation.timing import subset_for_time
from mixquant_core.errors import DatasetError, one_line

from .progress import progress
from .settings import TRADEOFF_STEPS, Settings
from .state import USER_ERRORS, settings

TENSOR_CACHE_SIZE = 4


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
    limit = s.limit if s.limit is not None else timed_limit(ws, len(images))
    if limit is None:
        return None
    images = images.subset(limit)
    key = (s.data_key, len(images), repr(ws.loaded.preprocess))
    data = _decoded(key, "Evaluation set", lambda cb: load_tensors(images, ws.loaded.preprocess, cb))
    if data is None:
        return None
    if data.skipped:
        names = ", ".join(Path(p).name for p in data.skipped[:3]) + (" ..." if len(data.skipped) > 3 else "")
        st.error(f"{len(data.skipped)} image(s) could not be read and were left out: {names}")
    return data


def timed_limit(ws: Workspace, total: int) -> Optional[int]:
    """The subset size that keeps a Trade-off evaluation near SUBSET_BUDGET_S (sidebar left empty),
    from this model's measured speed; says which and why."""
    crop = ws.loaded.preprocess.crop
    try:
        with st.spinner("Measuring this model's evaluation speed (once)..."):
            speed = ws.evaluator.throughput((3, crop, crop))
    except USER_ERRORS as exc:
        st.error(f"Cannot measure the evaluation speed: {one_line(exc)}; type a subset size in the sidebar.")
        return None
    plans = 2 + TRADEOFF_STEPS  # float32, int8 and the grid's plans (at most; a QEM may repeat a plan)
    n = subset_for_time(total, speed, plans)
    st.caption(f"Evaluating the first {n:,} of {total:,} images: a {plans}-plan Trade-off takes at most about "
               f"{speed.seconds(n, plans):.0f} s at the measured {speed.images_per_second:.0f} images/s "
               f"(sized by time; type a number in the sidebar to choose).")
    return n


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


def class_name(images: ImageList, label: int) -> str:
    if 0 <= label < len(images.class_names) and images.class_names[label]:
        return images.class_names[label].split(",")[0]
    return _imagenet_names()[label] if 0 <= label < 1000 else f"class {label}"


@st.cache_resource(show_spinner=False)
def _imagenet_names() -> List[str]:
    # torchvision ships the 1000 ImageNet names with its weight metadata (no download needed)
    import torchvision

    return list(torchvision.models.ResNet18_Weights.DEFAULT.meta["categories"])
