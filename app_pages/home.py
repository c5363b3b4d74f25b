"""Home: what MixQuant does, the chosen model in numbers, and a sample of the evaluation set."""
from collections import Counter

import pandas as pd
import streamlit as st
from PIL import Image

from mixquant_core.models.layers import KINDS, float32_rest
from studio_ui import eval_sets, sidebar, state, workspaces

SAMPLE_IMAGES = 8

sidebar.render()
st.title("MixQuant Studio")
st.markdown(
    "MixQuant gives every weight layer of an image classifier its own bit-width: the lowest one whose "
    "quantization error stays within **QEM x** the 8-bit error. Pick a model and a quantizer in the sidebar, "
    "then **Explore** the plans, weigh accuracy against size in **Trade-off**, see which layers suffer most in "
    "**Sensitivity**, and **Export** the plan as JSON."
)

ws = workspaces.require_workspace()
s = state.settings()
model = ws.loaded.model
total_params = sum(p.numel() for p in model.parameters())

st.subheader(f"Model: {ws.loaded.name}")
c = st.columns(4)
c[0].metric("Quantizable layers", len(ws.layers))
c[1].metric("Parameters", f"{total_params:,}")
c[2].metric("float32 size", f"{ws.float_bytes / 1e6:.2f} MB")
c[3].metric("Weights MixQuant quantizes", f"{100 * sum(l.params for l in ws.layers) / max(total_params, 1):.1f} %")
st.caption(f"source {ws.loaded.source} | weights fingerprint {ws.loaded.fingerprint} | device {ws.device} | "
           f"preprocessing: resize {ws.loaded.preprocess.resize}, crop {ws.loaded.preprocess.crop}")

counts = Counter(l.kind for l in ws.layers)
params = Counter()
for l in ws.layers:
    params[l.kind] += l.params
st.dataframe(pd.DataFrame([{"kind": k, "layers": counts[k], "parameters": params[k]} for k in KINDS if counts[k]]),
             hide_index=True)

# What no layer covers (norms, biases, embeddings, ...): why the share above is not 100 %.
rest = float32_rest(model, ws.layers)
st.caption(f"Stays float32: {sum(g.params for g in rest):,} parameters")
st.dataframe(pd.DataFrame([{"stays float32": g.reason, "tensors": g.tensors, "parameters": g.params} for g in rest],
                          columns=["stays float32", "tensors", "parameters"]), hide_index=True)

st.subheader("Evaluation set")
images = eval_sets.eval_images(s)
if images is not None:
    used = min(s.limit, len(images)) if s.limit is not None else eval_sets.timed_limit(ws, len(images))
    st.write(f"`{images.root}`: {len(images):,} labelled images"
             + (f"; the app evaluates the first **{used:,}**." if used is not None else "."))
    sample = images.subset(SAMPLE_IMAGES)
    cols = st.columns(min(len(sample), SAMPLE_IMAGES))
    for col, path, label in zip(cols, sample.paths, sample.labels):
        try:
            with Image.open(path) as img:
                thumb = img.convert("RGB")
                thumb.thumbnail((224, 224))
        except (OSError, ValueError, SyntaxError) as exc:
            col.error(f"Cannot read image '{path.rsplit('/', 1)[-1]}': {state.one_line(exc)}")
            continue
        col.image(thumb, caption=f"{label}: {eval_sets.class_name(images, label)}")
