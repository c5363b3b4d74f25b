"""The sidebar every page shares: model, quantizer, bit-widths, device and evaluation set.

Each page draws it first thing (``render()``). Streamlit ties a widget to the page that drew it
and drops its value when another page is shown, so every sidebar value is kept with
``state.persist`` and an uploaded model file is remembered outside the uploader widget. Defaults go into session_state
before the widgets exist (never both a default and a session value, which Streamlit warns about).

(Drawing it once in app.py would be simpler in a browser, but AppTest re-runs only the page
after the first run, so the sidebar would vanish from every test that touches it.)
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import List

import streamlit as st
import torch

from mixquant_core import DEFAULT_MODEL, default_eval_dir
from mixquant_core.data.image_sets import default_calib_dir
from mixquant_core.quant.act_calibration import ACT_METHODS, DEFAULT_ACT_METHOD
from mixquant_core.quant.quantizers import MAX_BITS, MIN_BITS

from . import state, workspaces
from mixquant_core.evaluation.timing import SUBSET_BUDGET_S

from .settings import (DEFAULT_LIMIT, ENGINE_LABELS, QUANTIZER_LABELS, RANGES_CALIB_IMAGES, RANGES_LABELS,
                       TRADEOFF_STEPS, Settings)

MODEL_FILE_TYPES = ["pt", "pth", "ts", "safetensors", "bin"]
UPLOAD_DIR = Path(tempfile.gettempdir()) / "mixquant-studio-uploads"
NO_ARCH = "(TorchScript: none needed)"
ACTIVATIONS = ("float32", "8-bit")


def _save_upload(uploaded) -> tuple:
    """Write the upload once under a name derived from its content; return (path, digest)."""
    data = uploaded.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    suffix = Path(uploaded.name).suffix.lower() or ".pt"
    UPLOAD_DIR.mkdir(parents=True, exist_ok=True)
    path = UPLOAD_DIR / f"{digest[:20]}{suffix}"
    if not path.is_file():
        tmp = path.with_suffix(path.suffix + ".part")
        tmp.write_bytes(data)
        tmp.replace(path)
    return str(path), digest


def _defaults(names: List[str]) -> None:
    state.persist(
        model_source="Registry", model_name=DEFAULT_MODEL if DEFAULT_MODEL in names else names[0], model_arch=NO_ARCH,
        quantizer="asymmetric", keep_first_last=False, bits=list(range(MAX_BITS, MIN_BITS - 1, -1)),
        device="cuda" if torch.cuda.is_available() else "cpu", data_kind="Image folder", data_dir=default_eval_dir() or "",
        imagenette_dir=os.path.join(os.environ.get("MIXQUANT_DATA") or os.path.expanduser("~/.cache/mixquant"), "imagenette"),
        limit=DEFAULT_LIMIT, engine="auto", trust_code=False, cluster="", ranges="weights",
        activations=ACTIVATIONS[0], act_range=DEFAULT_ACT_METHOD, act_outputs=True, act_calib_dir=default_calib_dir() or "",
        act_calib_images=256,
    )


def render() -> Settings:
    entries = workspaces.registry()
    names = [n for n, _ in entries]
    source_of = dict(entries)
    _defaults(names)
    sb = st.sidebar

    sb.header("Model")
    source = sb.radio("Model source", ["Registry", "Upload a file"], key="model_source", horizontal=True)
    path = digest = arch = None
    trust = False
    if source == "Registry":
        name = sb.selectbox("Model", names, key="model_name", format_func=lambda n: f"{n}  ({source_of.get(n, '?')})",
                            help="Built-in EfficientNet-Lite works offline; torchvision lists the paper's eight models first.")
    else:
        uploaded = sb.file_uploader("Model file (TorchScript or state dict)", type=MODEL_FILE_TYPES, key="model_file")
        arch_choice = sb.selectbox("Architecture of a state dict", [NO_ARCH] + names, key="model_arch",
                                   help="A state dict holds only weights: name the registry architecture they fit.")
        arch = None if arch_choice == NO_ARCH else arch_choice
        trust = sb.checkbox("Trust code in this file", key="trust_code",
                            help="TorchScript files and pickled models are programs: loading one runs its code. "
                                 "Off, only plain weights (state dicts, safetensors) load.")
        if trust:
            sb.warning("A TorchScript or pickled model runs its own code on this server when loaded. Tick this "
                       "only for files you made or fully trust (it is loaded in a time- and memory-limited "
                       "child process first).")
        ss = st.session_state
        if uploaded is not None:
            path, digest = _save_upload(uploaded)
            ss["uploaded_model"] = (uploaded.name, path, digest)
        elif ss.get("uploaded_model") and Path(ss["uploaded_model"][1]).is_file():
            # the uploader is empty after a page switch: keep using the file the user gave
            sb.caption(f"Using the uploaded file **{ss['uploaded_model'][0]}**; upload another to replace it.")
            if sb.button("Forget the uploaded file", key="forget_upload"):
                del ss["uploaded_model"]
        else:
            ss.pop("uploaded_model", None)
        name, path, digest = ss.get("uploaded_model", ("", None, None))

    sb.header("Quantization")
    quantizer = sb.selectbox("Quantizer", list(QUANTIZER_LABELS), key="quantizer", format_func=QUANTIZER_LABELS.get)
    ranges = sb.radio("Weight ranges", list(RANGES_LABELS), key="ranges", format_func=RANGES_LABELS.get,
                      help="Loss-aware: each layer's clipping (per grid row and bit-width) of least output "
                           f"error (the layer's, on {RANGES_CALIB_IMAGES} calibration images from $MIXQUANT_DATA/imagenet-calib-1000 "
                           "(the Fisher cost's)); tables, plans, evaluation and export then use those ranges.")
    keep = sb.checkbox("Keep first and last layer at 8 bits", key="keep_first_last")
    bits = sb.multiselect("Candidate bit-widths", list(range(MAX_BITS, MIN_BITS - 1, -1)), key="bits",
                          help="8 bits is always a candidate: equation (1) compares every bit-width with it.")
    activations = sb.selectbox("Activations", ACTIVATIONS, key="activations",
                               help="8-bit: the input of every quantized layer is quantized per tensor (uint8 grid, "
                                    "as ONNX QuantizeLinear), its range calibrated on calibration images.")
    act_range, calib_dir, calib_images, act_outputs = DEFAULT_ACT_METHOD, "", 256, True
    if activations != ACTIVATIONS[0]:
        with sb.expander("Activation ranges (advanced)"):
            act_range = st.selectbox("Range method", ACT_METHODS, key="act_range",
                                     help=f"min/max, percentile (outliers clipped) or least quantization MSE; "
                                          f"{DEFAULT_ACT_METHOD} measured best on EfficientNet-Lite0 (docs/RESULTS.md)")
            calib_dir = st.text_input("Calibration folder", key="act_calib_dir",
                                      help="Images the ranges are calibrated on; default $MIXQUANT_DATA/imagenet-calib-1000.")
            calib_images = st.number_input("Calibration images", min_value=1, max_value=100_000, step=64,
                                           key="act_calib_images", help="Spread over the calibration folder.")
            act_outputs = st.checkbox("Quantize residual Adds and pooled outputs too", key="act_outputs",
                                      help="Also the tensors a runtime needs quantized to run the whole model as "
                                           "integer kernels (block inputs read by a residual Add, the convs into an "
                                           "Add or a pool): the exported file then runs faster; off: the layers' "
                                           "inputs only.")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if st.session_state["device"] not in devices:
        st.session_state["device"] = "cpu"
    device = sb.selectbox("Device", devices, key="device")
    engine = sb.selectbox("Engine", list(ENGINE_LABELS), key="engine", format_func=ENGINE_LABELS.get,
                          help="What runs the evaluations. ONNX Runtime is several times faster than eager PyTorch "
                               "on a CPU; a model it cannot export is evaluated with torch (you are told).")
    cluster = sb.text_input("Ray cluster (optional)", key="cluster", placeholder="none: evaluate here",
                            help="Evaluate on a running Ray cluster: its address, HOST:PORT (e.g. 127.0.0.1:6379 "
                                 "after 'ray start --head'), ray://HOST:10001 or auto. Its nodes must see the image "
                                 "folder at the same path. No early stop there.")

    sb.header("Evaluation set")
    data_kind = sb.radio("Evaluation set", ["Image folder", "Imagenette"], key="data_kind", horizontal=True)
    if data_kind == "Image folder":
        data_dir = sb.text_input("Image folder", key="data_dir",
                                 help="labels.txt ('FILENAME LABEL', ImageNet indices) or class subfolders; default from MIXQUANT_DATA")
    else:
        data_dir = sb.text_input("Imagenette folder", key="imagenette_dir", help="torchvision's Imagenette (160 px) lives or will be downloaded here")
    limit = sb.number_input("Images to evaluate (subset size)", min_value=1, max_value=100_000, step=50, key="limit",
                            placeholder="sized by time",
                            help="Empty: the largest of the set's first 100 / 500 / all images whose Trade-off "
                                 f"evaluation (float32, int8 and the {TRADEOFF_STEPS}-point QEM grid, every plan in "
                                 f"full) is estimated to take at most about {SUBSET_BUDGET_S:.0f} s, from this model's "
                                 "images per second measured on this machine. Type a number to choose it yourself.")

    settings = Settings(
        model_source="upload" if source != "Registry" else "registry", model_name=name, model_path=path,
        model_digest=digest, arch=arch, quantizer=quantizer, bits=tuple(sorted({8, *map(int, bits)}, reverse=True)),
        keep_first_last=bool(keep), device=device, data_kind="folder" if data_kind == "Image folder" else "imagenette",
        data_dir=(data_dir or "").strip(), limit=None if limit is None else int(limit), engine=engine, trust_code=bool(trust),
        cluster=(cluster or "").strip(), ranges=ranges,
        act_bits=None if activations == ACTIVATIONS[0] else 8, act_range=act_range, act_outputs=bool(act_outputs),
        # one calibration set for both: the activations' folder and count when they are on, else the
        # loss-aware ranges' (the Fisher cost's: $MIXQUANT_DATA/imagenet-calib-1000, 64 images)
        calib_dir=(calib_dir or "").strip() if activations != ACTIVATIONS[0] else (default_calib_dir() or ""),
        calib_images=int(calib_images or 1) if activations != ACTIVATIONS[0] else RANGES_CALIB_IMAGES,
    )
    st.session_state["settings"] = settings
    return settings
