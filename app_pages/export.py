"""Export: the current plan as JSON (and the trade-off table as CSV), the quantized model file (round-to-nearest,
or the codes of a reconstruction finished on the Trade-off page); check an uploaded plan."""
import pandas as pd
import streamlit as st

from mixquant_core import Plan, plan_size
from mixquant_viz import figures
from mixquant_core.export.onnx import onnx_bytes, onnx_size_report, probe_onnx, read_onnx
from mixquant_core.export.packed import quantized_model_bytes, read_quantized, size_report
from mixquant_core.studies.latency import bench_plan
from mixquant_core.studies.tradeoff import rows_to_csv
from studio_ui import recon_job, sidebar, state, workspaces
from studio_ui.progress import progress

sidebar.render()
st.title("Export")
ws = workspaces.require_workspace()
s = state.settings()
workspaces.require_table(ws)
qem = state.current_qem()
plan = ws.plan(qem)
plan_json = plan.to_json()
size = plan.size

st.subheader("Current plan")
st.write(f"**{ws.loaded.name}**, {ws.quantizer} quantizer, QEM **{qem:.5g}**: {size['avg_bits']:.2f} average bits, "
         f"{size['plan_mb']:.2f} MB of {size['float32_mb']:.2f} MB ({size['compression']:.2f}x).")
c1, c2 = st.columns(2)
c1.download_button("Download plan (JSON)", plan_json, file_name=f"{ws.loaded.name}-qem{qem:.4g}.json",
                   mime="application/json", on_click="ignore", key="plan_json", type="primary")
last = st.session_state.get("last_sweep")
if last is not None and last[0] == s.workspace_key:
    c2.download_button("Download trade-off table (CSV)", rows_to_csv(last[1]), file_name=f"{ws.loaded.name}-tradeoff.csv",
                       mime="text/csv", on_click="ignore", key="export_csv")
else:
    c2.caption("The trade-off table (CSV) can be downloaded once the Trade-off page has evaluated it for this model.")
with st.expander("Preview plan JSON"):
    st.code(plan_json, language="json")


def offer_file(data: bytes, label: str, file_name: str, key: str, note: str = "", prefix: str = "") -> None:
    """Download button for a quantized-model file, and its size against the size accounting."""
    report = size_report(data, ws.loaded.model)
    st.download_button(label, data, on_click="ignore", file_name=file_name, mime="application/octet-stream", key=key)
    st.caption(f"{prefix}{report['bytes'] / 1e6:.3f} MB on disk; the size accounting says "
               f"{report['accounted_bytes'] / 1e6:.3f} MB ({report['difference_pct']:+.2f} %: the file's header "
               f"and metadata{note}).")


st.subheader("Quantized model (safetensors)")
st.caption("Each quantized layer's integer codes packed at its bit-width with its scale and zero-point, the other "
           "tensors as float32, the plan as metadata. `mixquant_core.export.packed.load_quantized_(model, file)` loads it "
           "back bit-exact to the fake-quantized weights.")
files = st.session_state.setdefault("quantized_files", {})
file_key = (s.workspace_key, plan_json)
if st.button("Build the quantized model file", key="build_export"):
    try:
        with st.spinner("Packing codes..."):
            files[file_key] = quantized_model_bytes(ws.loaded.model, plan)
    except state.USER_ERRORS as exc:
        st.error(f"Export failed: {state.one_line(exc)}")
if file_key in files:
    offer_file(files[file_key], "Download quantized model (.safetensors)", f"{ws.loaded.name}-qem{qem:.4g}.safetensors",
               "model_safetensors")

st.subheader("Quantized model (ONNX)")
st.caption("Each layer's codes bit-packed at its bit-width and unpacked by standard ONNX ops when the runtime "
           "builds its session (weights-only plans run on float32 weights); with quantized activations, Q/DQ pairs "
           "and 8-bit codes behind DequantizeLinear, which ONNX Runtime and OpenVINO run as integer kernels. The plan "
           "is in the metadata: runs without MixQuant. Checked after building: read back and opened by ONNX Runtime.")
signed_int8 = False
if plan.recipe_data and plan.recipe_data.get("acts"):
    signed_int8 = st.checkbox(
        "Signed int8 weights (fastest file)", key="onnx_signed_int8",
        help="Off: 8-bit symmetric codes are stored as uint8 around 128 wherever int8 could saturate the u8 x s8 "
             "kernels of CPUs without VNNI (AVX2), so the file computes this plan's numbers on every CPU. On: int8 "
             "always, as onnxruntime's quantize_static writes them: faster there, but on AVX2-only CPUs some sums "
             "saturate (measured on Lite0 with per-channel symmetric weights: 3.4 points of top-1 lost in ONNX "
             "Runtime, 4.2 in OpenVINO).")
onnx_key = file_key + (signed_int8,)  # the same plan, stored either way
onnx_files = st.session_state.setdefault("onnx_files", {})
if st.button("Build the ONNX model", key="build_onnx"):
    try:
        with progress("ONNX export") as cb:  # reads the shared model, changes nothing
            onnx_data = onnx_bytes(ws.loaded.model, plan, ws.loaded.preprocess, progress=cb,
                                   int8_weights="signed" if signed_int8 else "exact")
            onnx_file = read_onnx(onnx_data, ws.loaded.model)
            onnx_file.session()  # what we hand out must run
        onnx_files.clear()  # one at a time: they are as large as the model
        onnx_files[onnx_key] = (onnx_data, onnx_size_report(onnx_data, ws.loaded.model, plan, onnx_file.scheme))
    except state.USER_ERRORS as exc:
        st.error(f"ONNX export failed: {state.one_line(exc)}")
if onnx_key in onnx_files:
    onnx_data, report = onnx_files[onnx_key]
    st.download_button("Download quantized model (.onnx)", onnx_data, on_click="ignore", key="model_onnx",
                       file_name=f"{ws.loaded.name}-qem{qem:.4g}.onnx", mime="application/octet-stream")
    st.caption(f"Checked: ONNX Runtime opens it. {report['bytes'] / 1e6:.3f} MB on disk; the size accounting says "
               f"{report['accounted_bytes'] / 1e6:.3f} MB ({report['difference_pct']:+.2f} %: "
               f"codes bit-packed at their bit-widths; {report['container_padding_bytes'] / 1e6:.3f} MB are codes of layers "
               "with quantized inputs in the 8-bit container of the integer kernels; the rest the graph and metadata).")
    if report.get("saturable_layers"):
        st.warning(f"{report['saturable_layers']} of {report['integer_kernel_layers']} integer layers hold int8 codes "
                   "that can saturate on CPUs without VNNI (AVX2 only): there the file computes other numbers than "
                   "this plan. Untick 'Signed int8 weights' for a file that is exact on every CPU.")
    state.persist(latency_runs=20, latency_batch=32)
    lc = st.columns(3)
    runs = lc[0].number_input("Timed images (batch 1)", min_value=1, max_value=1000, key="latency_runs")
    batch = lc[1].number_input("Throughput batch", min_value=1, max_value=256, key="latency_batch")
    if lc[2].button("Measure latency against float32", key="onnx_latency"):
        try:
            with st.spinner("Timing the file and the float32 model on ONNX Runtime and OpenVINO (CPU)..."):
                st.session_state["onnx_latency_result"] = (onnx_key, bench_plan(
                    ws.loaded, plan, onnx_data, runtimes=("onnxruntime", "openvino"), runs=int(runs), batch=int(batch)))
        except state.USER_ERRORS as exc:
            st.error(f"Latency measurement failed: {state.one_line(exc)}")
    timed = st.session_state.get("onnx_latency_result")
    if timed and timed[0] == onnx_key:
        for line in timed[1].notices:
            st.info(line)
        st.dataframe(pd.DataFrame(timed[1].table()), hide_index=True, key="onnx_latency_table")
        st.caption("Median ms per image at batch 1 (25-75 % spread) and images/s at the throughput batch, after "
                   "warm-up, on this server's CPU; x float32: speed against the float32 model on the same runtime "
                   "(> 1: faster), measured in the same run.")

done = recon_job.latest_done(st.session_state.get("recon_jobs", []), s.model_key)
if done is None:
    st.caption("A reconstruction (AdaRound + BRECQ, on the Trade-off page) can be downloaded here once it finishes: "
               "learned rounding, same plan and file size.")
else:
    for_plan = ""  # the same plan as the current one needs no label; another plan is named on its buttons
    if done.plan.bits != plan.bits:
        for_plan = f" for {done.label}"
        st.info(f"The finished reconstruction is for another plan ({done.label}, "
                f"{done.plan.size['avg_bits']:.2f} average bits), not the current QEM {qem:.5g}'s. "
                "Its file carries its own plan.")
    recon_files = st.session_state.setdefault("recon_files", {})
    if st.button(f"Build the reconstructed model file{for_plan}", key="build_recon_export"):
        try:
            with st.spinner("Packing codes..."):
                recon_files.clear()  # one reconstructed file at a time: they are as large as the model
                recon_files[done.id] = quantized_model_bytes(ws.loaded.model, done.plan, reconstructed=done.result)
        except state.USER_ERRORS as exc:
            st.error(f"Export of the reconstruction failed: {state.one_line(exc)}")
    if done.id in recon_files:
        qem_part = "" if done.plan.qem is None else f"-qem{done.plan.qem:.4g}"
        offer_file(recon_files[done.id], f"Download reconstructed model{for_plan} (.safetensors)",
                   f"{ws.loaded.name}{qem_part}-adaround.safetensors", "recon_safetensors",
                   note=", with how the rounding was learned", prefix="Reconstructed: ")
        st.caption(f"Iterations per block: {done.result.config.iters}, calibration images: {done.result.calib_images}.")
    if st.button(f"Build the reconstructed ONNX model{for_plan}", key="build_recon_onnx"):
        try:
            with progress("ONNX export") as cb:  # reads the shared model, changes nothing
                recon_onnx = onnx_bytes(ws.loaded.model, done.plan, ws.loaded.preprocess, done.result, cb)
                read_onnx(recon_onnx, ws.loaded.model).session()  # checked: it reads back and runs
            st.session_state["recon_onnx"] = (done.id, recon_onnx)
        except state.USER_ERRORS as exc:
            st.error(f"ONNX export of the reconstruction failed: {state.one_line(exc)}")
    held = st.session_state.get("recon_onnx")
    if held and held[0] == done.id:
        st.download_button(f"Download reconstructed model{for_plan} (.onnx)", held[1], on_click="ignore",
                           file_name=f"{ws.loaded.name}-adaround.onnx", mime="application/octet-stream", key="recon_onnx_dl")
exported_upload = st.file_uploader("Upload a quantized model file to check it against the current model",
                                   type=["safetensors", "onnx"], key="export_upload")
if exported_upload is not None and exported_upload.name.lower().endswith(".onnx"):
    try:
        of = read_onnx(exported_upload.getvalue(), ws.loaded.model)  # every claim checked against its graph
        probe_onnx(of)  # run by ONNX Runtime in a child process with a time and memory limit, never in the server
    except state.USER_ERRORS as exc:
        st.error(f"'{exported_upload.name}' cannot be used: {state.one_line(exc)}")
    else:
        st.success(f"'{exported_upload.name}' is an ONNX export of {ws.loaded.name} that ONNX Runtime runs: "
                   f"{len(of.facts.layers)} quantized layers ({of.scheme}), {of.avg_bits:.2f} average bits.")
elif exported_upload is not None:
    try:
        qf = read_quantized(exported_upload.getvalue(), ws.loaded.model)
    except state.USER_ERRORS as exc:
        st.error(f"'{exported_upload.name}' cannot be used: {state.one_line(exc)}")
    else:
        st.success(f"'{exported_upload.name}' fits {ws.loaded.name}: {len(qf.layers)} quantized layers "
                   f"({qf.scheme}), {qf.plan.size['avg_bits']:.2f} average bits.")

st.subheader("Check a plan file")
uploaded = st.file_uploader("Upload a plan (JSON) to check against the current model", type=["json"], key="plan_upload")
if uploaded is not None:
    try:
        other = Plan.from_json(uploaded.getvalue())
        layers = other.check_against(ws.loaded.model)
    except state.USER_ERRORS as exc:
        st.error(f"'{uploaded.name}' cannot be used: {state.one_line(exc)}")
    else:
        bits = [other.bits[layer.name] for layer in layers]
        st.success(f"'{uploaded.name}' fits {ws.loaded.name}: {len(layers)} layers, QEM "
                   f"{'n/a' if other.qem is None else f'{other.qem:.5g}'}, {other.quantizer} quantizer.")
        if other.model.get("fingerprint") and other.model["fingerprint"] != ws.loaded.fingerprint:
            st.warning(f"The plan was made for weights with fingerprint {other.model['fingerprint']} "
                       f"({other.model.get('name')}); this model's is {ws.loaded.fingerprint}.")
        if len(layers) < len(ws.layers):
            st.warning(f"The plan covers {len(layers)} of this model's {len(ws.layers)} quantizable layers.")
        other_size = plan_size(ws.float_bytes, layers, bits, other.quantizer)
        m = st.columns(3)
        m[0].metric("Plan size", f"{other_size.plan_mb:.2f} MB")
        m[1].metric("Compression", f"{other_size.compression:.2f}x")
        m[2].metric("Average bits", f"{other_size.avg_bits:.2f}")
        st.plotly_chart(figures.plan_bits_bar(layers, bits), key="uploaded_plan_chart")
        st.dataframe(pd.DataFrame([{"layer": l.name, "kind": l.kind, "params": l.params, "bits": b}
                                   for l, b in zip(layers, bits)]), hide_index=True)
