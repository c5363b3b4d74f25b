"""ONNX files are untrusted (issue #23, classes 1 and 2): their metadata is checked against their
graph, and against the registry model they claim, before anything is printed or run; graphs that
could run without end or allocate what a number in the file says are refused up front; ONNX
Runtime runs the rest in a child process with a time and a memory limit; every refusal is one
line (CLI exit 2). Hostile files are built here with onnx.helper from a genuine export."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from torch import nn

from mixquant_cli.main import main
from mixquant_core.data.image_sets import EvalTensors
from mixquant_core.evaluation.engines.onnxruntime_engine import run_session
from mixquant_core.export.onnx import OnnxFileError, evaluate_onnx, onnx_bytes, read_onnx
from mixquant_core.models.preprocess import Preprocess
from recon_support import MIXED_BITS, tiny_chain, workspace

REPO = Path(__file__).resolve().parents[1]
PRE = Preprocess(resize=32, crop=24)
LIMITS = {"MIXQUANT_LOAD_TIMEOUT_S": "60", "MIXQUANT_LOAD_MEMORY_MB": "4096"}


@pytest.fixture(scope="module")
def genuine():
    model = tiny_chain()
    plan = workspace(model).plan_from_bits(MIXED_BITS)
    return model, plan, onnx_bytes(model, plan, PRE)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """Three labelled 40x36 PNGs (labels inside tiny_chain's 10 classes)."""
    root = tmp_path_factory.mktemp("images")
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    for k in range(3):
        Image.fromarray(rng.integers(0, 255, (36, 40, 3), dtype=np.uint8)).save(root / "images" / f"{k}.png")
    (root / "labels.txt").write_text("".join(f"{k}.png {k}\n" for k in range(3)))
    return root


def _tensors(n: int = 3) -> EvalTensors:
    return EvalTensors(torch.randn(n, 3, 24, 24, generator=torch.Generator().manual_seed(2)), torch.arange(n))


# --- building hostile files ----------------------------------------------------------------------
def _proto(data: bytes):
    return onnx.load_model_from_string(data)


def _meta(proto) -> dict:
    return {p.key: p.value for p in proto.metadata_props}


def _with_meta(data: bytes, **values) -> bytes:
    proto = _proto(data)
    helper.set_model_props(proto, {**_meta(proto), **values})
    return proto.SerializeToString()


def _with_plan(data: bytes, edit) -> bytes:
    plan = json.loads(_meta(_proto(data))["mixquant_plan"])
    edit(plan)
    return _with_meta(data, mixquant_plan=json.dumps(plan))


def _logits_through(data: bytes, nodes, initializers=(), last: str = "out") -> bytes:
    """The genuine graph with ``nodes`` appended after its logits; ``last`` becomes the output."""
    proto = _proto(data)
    graph = proto.graph
    graph.node.extend(nodes)
    graph.initializer.extend(initializers)
    graph.output[0].name = last
    return proto.SerializeToString()


def _scalar(name: str, value, dtype=np.float32):
    return numpy_helper.from_array(np.array(value, dtype=dtype), name)


def _forever_loop(data: bytes) -> bytes:
    """A Loop with no trip count whose condition stays true: ONNX Runtime would never return."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Identity", ["v_in"], ["v_out"])],
        "forever",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, None)])
    loop = helper.make_node("Loop", ["", "always", "logits"], ["out"], name="forever", body=body)
    return _logits_through(data, [loop], [_scalar("always", True, np.bool_)])


def _constant_of_shape(data: bytes, size_from_input: bool) -> bytes:
    """logits + sum(zeros(16e9)): 64 GB of float32, asked for by a constant or by the batch size."""
    count = 16_000_000_000
    if size_from_input:  # count * batch: known only once an image batch arrives
        nodes = [helper.make_node("Shape", ["input"], ["in_shape"], start=0, end=1),
                 helper.make_node("Mul", ["in_shape", "count"], ["size"])]
        inits = [numpy_helper.from_array(np.array([count // 8], np.int64), "count")]
    else:
        nodes, inits = [], [numpy_helper.from_array(np.array([count], np.int64), "size")]
    nodes += [helper.make_node("ConstantOfShape", ["size"], ["zeros"], name="zeros_64gb"),
              helper.make_node("ReduceSum", ["zeros"], ["total"], keepdims=1),
              helper.make_node("Add", ["logits", "total"], ["out"])]
    return _logits_through(data, nodes, inits)


def _slow(data: bytes, side: int, chain: int) -> bytes:
    """logits + 0 * mean(x @ W @ W ...): [batch, 3, side, side] activations multiplied ``chain``
    times by a side x side matrix; few bytes in the file, side^3 * 6 * chain FLOP per image. Its
    names are longer than the export's own short ones ("0".."zz", export/onnx_compact.py)."""
    nodes = [helper.make_node("ConstantOfShape", ["w_shape"], ["slow_w"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1e-3])),
             helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
             helper.make_node("Mul", ["pooled", "slow_w"], ["slow_x0"])]
    for k in range(chain):
        nodes.append(helper.make_node("MatMul", [f"slow_x{k}", "slow_w"], [f"slow_x{k + 1}"]))
    nodes += [helper.make_node("ReduceMean", [f"slow_x{chain}"], ["slow_m"], keepdims=0),
              helper.make_node("Mul", ["slow_m", "zero"], ["slow_m0"]),
              helper.make_node("Add", ["logits", "slow_m0"], ["out"])]
    return _logits_through(data, nodes, [numpy_helper.from_array(np.array([side, side], np.int64), "w_shape"),
                                         _scalar("zero", 0.0)])


def _refused(rc: int, err: str, *words: str) -> None:
    assert rc == 2, err
    assert err.startswith("mixquant: error:") and err.count("\n") <= 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, err


def _load(capsys, tmp_path, data: bytes, *args: str):
    path = tmp_path / "model.onnx"
    path.write_bytes(data)
    rc = main(["load", str(path), "--no-progress", *args])
    out, err = capsys.readouterr()
    return rc, out, err.strip()


def _load_in_child(tmp_path, data: bytes, *args: str, timeout: float = 120):
    """`mixquant load` as its own process: a hang or a crash here cannot take the tests along."""
    path = tmp_path / "model.onnx"
    path.write_bytes(data)
    env = dict(os.environ, **LIMITS, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "mixquant_cli", "load", str(path), "--no-progress", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)


# --- class 1: the metadata is checked against the graph ------------------------------------------
def test_a_genuine_export_loads_and_evaluates_as_before(genuine, tmp_path, capsys, image_folder):
    model, plan, data = genuine
    f = read_onnx(data)
    assert f.model_name is None and f.model_label == "unverified model name 'tiny_chain'"  # a file model
    assert f.summary()["layers"] == 5 and f.avg_bits == pytest.approx(plan.size["avg_bits"], rel=1e-9)
    tensors = _tensors()
    in_process = run_session(f.session(), tensors, 2)
    assert evaluate_onnx(f, tensors, batch_size=2).to_dict() == in_process.to_dict()  # the child's numbers
    rc, out, err = _load(capsys, tmp_path, data, "--data", str(image_folder), "--json")
    assert rc == 0, err
    shown = json.loads(out)
    assert (shown["model"], shown["model_verified"], shown["layers"], shown["images"]) == ("tiny_chain", False, 5, 3)
    assert shown["avg_bits"] == pytest.approx(plan.size["avg_bits"], rel=1e-9)


@pytest.mark.parametrize("name", ["efficientnet_lite0", "timm/tf_mobilenetv3_small_100"])
def test_a_registry_architecture_export_is_verified_as_that_model(name):
    """Both size their Pads with shape arithmetic (timm's from the shape of the layer before):
    evaluated up front, so the genuine files pass the bounds."""
    from mixquant_core.models.registry import build_model, timm_available
    from mixquant_core.workspace import Workspace

    if name.startswith("timm/") and not timm_available():
        pytest.skip("timm is not installed")
    loaded = build_model(name, pretrained=False)
    ws = Workspace(loaded, "asymmetric", bits=[8], device="cpu")
    f = read_onnx(onnx_bytes(loaded.model, ws.plan_from_bits(ws.uniform(8)), loaded.preprocess))
    assert f.model_name == f.model_label == name and f.summary()["model_verified"]


def test_a_small_graph_claiming_to_be_lite0_is_refused(genuine, tmp_path, capsys):
    def claim_lite0(plan):
        plan["model"] = {"source": "builtin", "name": "efficientnet_lite0", "fingerprint": "dc9dc1ddede5e75b"}

    data = _with_plan(genuine[2], claim_lite0)
    with pytest.raises(OnnxFileError, match="does not fit efficientnet_lite0: .*layer '0.0' is not in this model"):
        read_onnx(data)
    rc, out, err = _load(capsys, tmp_path, data)
    _refused(rc, err, "efficientnet_lite0")
    assert out == ""


class LiteNamed(nn.Module):
    """Lite0's layer names with other shapes."""

    def __init__(self):
        super().__init__()
        self._conv_stem = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
        self._fc = nn.Linear(8, 10)

    def forward(self, x):
        return self._fc(self._conv_stem(x).mean((2, 3)))


def test_lite0_layer_names_with_other_shapes_are_refused():
    model = LiteNamed().eval()
    data = onnx_bytes(model, workspace(model).plan_from_bits([8, 8]), PRE)

    def claim_lite0(plan):
        plan["model"] = {"source": "builtin", "name": "efficientnet_lite0", "fingerprint": "dc9dc1ddede5e75b"}
        for entry in plan["layers"].values():
            del entry["params"]  # optional in a plan: the names alone now fit Lite0

    with pytest.raises(OnnxFileError, match="'_conv_stem.weight' has shape \\[8, 3, 3, 3\\] there, \\[32, 3, 3, 3\\] in "
                                            "efficientnet_lite0"):
        read_onnx(_with_plan(data, claim_lite0))


def test_an_edited_layer_count_is_refused(genuine, tmp_path, capsys):
    def fifty_layers(plan):
        for k in range(45):
            plan["layers"][f"fake.{k}"] = {"bits": 4, "kind": "1x1_conv", "params": 100}

    rc, out, err = _load(capsys, tmp_path, _with_plan(genuine[2], fifty_layers))
    _refused(rc, err, "'fake.0'", "no codes in the graph", "50 layers in the plan, 5 in the graph")

    rc, out, err = _load(capsys, tmp_path, _with_plan(genuine[2], lambda plan: plan["layers"].pop("3")))
    _refused(rc, err, "codes for layer '3'", "plan does not list")


def test_a_scheme_holding_html_is_refused_without_echoing_it(genuine, tmp_path, capsys):
    html = "<img src=x onerror=alert(1)>"
    rc, out, err = _load(capsys, tmp_path, _with_meta(genuine[2], mixquant_scheme=html))
    _refused(rc, err, "unknown quantization scheme", "\\x3cimg src=x onerror=alert(1)\\x3e")
    assert "<" not in err and out == ""
    # A known scheme that the codes were not stored with: affine zero-points, not 2^(b-1).
    rc, out, err = _load(capsys, tmp_path, _with_meta(genuine[2], mixquant_scheme="symmetric"))
    _refused(rc, err, "zero-point off its", "symmetric grid")


@pytest.mark.parametrize("key, value, shown", [("avg_bits", 1.0, "plan says avg_bits 1"),
                                                ("plan_mb", 0.001, "plan says plan_mb 0.001"),
                                                ("quantized_params", 7, "plan says quantized_params 7"),
                                                ("float32_mb", 1e-6, "plan says float32_mb 1e-06")])
def test_an_edited_plan_size_is_refused(genuine, tmp_path, capsys, key, value, shown):
    rc, out, err = _load(capsys, tmp_path, _with_plan(genuine[2], lambda plan: plan["size"].update({key: value})))
    _refused(rc, err, shown, "its graph gives")


def test_the_printed_sizes_come_from_the_graph(genuine, tmp_path, capsys):
    """A plan whose size claims are removed still prints the average bits: they are the graph's."""
    _, plan, data = genuine
    rc, out, err = _load(capsys, tmp_path, _with_plan(data, lambda p: p.__setitem__("size", {})), "--json")
    assert rc == 0, err
    shown = json.loads(out)
    assert shown["avg_bits"] == pytest.approx(plan.size["avg_bits"], rel=1e-9)
    assert shown["quantized_params"] == plan.size["quantized_params"] and shown["bytes"] > 0


def test_an_edited_bit_width_is_refused(genuine, tmp_path, capsys):
    # '0.0' is 5 bits, packed at 5 bits a code: 2 bits is another packing
    rc, out, err = _load(capsys, tmp_path, _with_plan(genuine[2], lambda p: p["layers"]["0.0"].update(bits=2)))
    _refused(rc, err, "layer '0.0' is 2 bits in the plan, its codes are 5-bit integers")
    # '3' is 6 bits: the unpacking's constants say so too, and the graph is what is believed
    rc, out, err = _load(capsys, tmp_path, _with_plan(genuine[2], lambda p: p["layers"]["3"].update(bits=5)))
    _refused(rc, err, "layer '3' is 5 bits in the plan, its codes are 6-bit integers")


def test_the_model_name_is_shown_escaped_and_unverified(genuine, tmp_path, capsys):
    name = "efficientnet_lite0\x1b[2J<b>bold</b>" + "x" * 200

    def rename(plan):
        plan["model"]["name"] = name

    data = _with_plan(genuine[2], rename)
    rc, out, err = _load(capsys, tmp_path, data)
    assert rc == 0, err
    assert "unverified model name 'efficientnet_lite0\\x1b\\x5b2J\\x3cb\\x3ebold" in out
    assert "\x1b" not in out and "<b>" not in out and "characters)" in out and len(out) < 400
    rc, out, err = _load(capsys, tmp_path, data, "--model", "resnet18")
    _refused(rc, err, "unverified model name", "not of resnet18")
    assert "\x1b" not in err


# --- class 2: bounded graphs, bounded runs -----------------------------------------------------------
def test_a_loop_that_never_ends_is_refused_up_front(genuine, tmp_path, image_folder):
    with pytest.raises(OnnxFileError, match="operator Loop \\(node 'forever'\\)"):
        read_onnx(_forever_loop(genuine[2]))
    done = _load_in_child(tmp_path, _forever_loop(genuine[2]), "--data", str(image_folder))
    _refused(done.returncode, done.stderr.strip(), "operator Loop")


@pytest.mark.parametrize("op", ["If", "Scan", "Tile", "Range", "Resize", "RandomNormal"])
def test_ops_outside_the_allow_list_are_named(genuine, op):
    node = helper.make_node(op, ["logits"], ["out"], name="hostile")
    with pytest.raises(OnnxFileError, match=f"operator {op} \\(node 'hostile'\\)"):
        read_onnx(_logits_through(genuine[2], [node]))


def test_a_64_gb_constant_of_shape_is_refused(genuine, tmp_path, capsys, image_folder):
    rc, out, err = _load(capsys, tmp_path, _constant_of_shape(genuine[2], size_from_input=False), "--data", str(image_folder))
    _refused(rc, err, "ConstantOfShape node 'zeros_64gb' makes 16000000000 values, more than")
    done = _load_in_child(tmp_path, _constant_of_shape(genuine[2], size_from_input=True), "--data", str(image_folder))
    # sized from the input's batch: worked out per image (batch 1), 2e9 values, refused as well
    _refused(done.returncode, done.stderr.strip(), "ConstantOfShape node 'zeros_64gb' makes 2000000000 values, more than")


def test_a_9000_pixel_crop_is_refused_before_any_image_is_decoded(genuine, tmp_path, capsys, image_folder, monkeypatch):
    import mixquant_core.data.load

    def no_decoding(*args, **kwargs):
        raise AssertionError("images decoded for a file that is refused")

    monkeypatch.setattr(mixquant_core.data.load, "load_tensors", no_decoding)
    huge = json.dumps({**PRE.to_dict(), "resize": 9000, "crop": 9000})
    rc, out, err = _load(capsys, tmp_path, _with_meta(genuine[2], mixquant_preprocess=huge), "--data", str(image_folder))
    _refused(rc, err, "asks for crop 9000", "1 to 1024 pixels")
    other = json.dumps({**PRE.to_dict(), "resize": 40, "crop": 32})  # within bounds, but not the graph's 24
    rc, out, err = _load(capsys, tmp_path, _with_meta(genuine[2], mixquant_preprocess=other), "--data", str(image_folder))
    _refused(rc, err, "takes input [batch, 3, 24, 24]", "[batch, 3, 32, 32]")


@pytest.mark.parametrize("field, value, shown", [("interpolation", "lanczos<x>", "unknown interpolation 'lanczos\\x3cx\\x3e'"),
                                                  ("std", [0.2, 0.0, 0.2], "invalid std"),
                                                  ("resize", 12, "asks for resize 12")])
def test_bad_preprocessing_is_refused(genuine, field, value, shown):
    with pytest.raises(OnnxFileError, match=None) as exc:
        read_onnx(_with_meta(genuine[2], mixquant_preprocess=json.dumps({**PRE.to_dict(), field: value})))
    assert shown in str(exc.value)


def test_a_slow_graph_is_stopped_at_the_time_limit(genuine, monkeypatch):
    monkeypatch.setenv("MIXQUANT_LOAD_TIMEOUT_S", "3")
    f = read_onnx(_slow(genuine[2], side=2048, chain=64))  # 3.3 TFLOP an image: about a minute on 2 fast cores
    start = time.monotonic()
    with pytest.raises(OnnxFileError, match="took longer than 3 s (running a batch|opening it) .*MIXQUANT_LOAD_TIMEOUT_S"):
        evaluate_onnx(f, _tensors(1))
    assert time.monotonic() - start < 30


def test_a_graph_past_the_memory_limit_is_stopped(genuine, monkeypatch):
    monkeypatch.setenv("MIXQUANT_LOAD_MEMORY_MB", "300")
    f = read_onnx(_slow(genuine[2], side=2048, chain=1))  # 3 x 2048^2 floats an image (50 MB), twice: 600 MB a batch
    with pytest.raises(OnnxFileError, match="needed more than 300 MB .*MIXQUANT_LOAD_MEMORY_MB|crashed"):
        evaluate_onnx(f, _tensors(6), batch_size=6)


def test_an_onnx_runtime_error_is_one_line(genuine):
    """A Gather whose index comes from the image's values: out of range once it runs."""
    nodes = [helper.make_node("ReduceMax", ["input"], ["peak"], keepdims=0),
             helper.make_node("Mul", ["peak", "thousand"], ["big"]),
             helper.make_node("Cast", ["big"], ["index"], to=TensorProto.INT64),
             helper.make_node("Gather", ["logits", "index"], ["row"], axis=1),
             helper.make_node("Add", ["logits", "row"], ["out"])]
    f = read_onnx(_logits_through(genuine[2], nodes, [_scalar("thousand", 1e6)]))
    with pytest.raises(OnnxFileError, match="ONNX Runtime cannot run ONNX data: ") as exc:
        evaluate_onnx(f, _tensors(2))
    assert "\n" not in str(exc.value)
