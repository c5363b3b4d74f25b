"""Output points (models/act_points.py): the tensors besides the layers' inputs that a W8A8 model
quantizes so that a runtime runs residual Adds and the convs before them as integer kernels. Found
on the traced graph, quantized alike by both engines, exported as one Q/DQ pair per tensor that
ONNX Runtime fuses, read back and checked against the plan."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper
from torch import nn

from mixquant_cli.main import main
from mixquant_core.data.image_sets import EvalTensors
from mixquant_core.errors import PlanError
from mixquant_core.evaluation.engines.onnxruntime_engine import OnnxRuntimeEngine
from mixquant_core.evaluation.engines.torch_engine import TorchEngine
from mixquant_core.export.onnx import OnnxFileError, onnx_bytes, read_onnx
from mixquant_core.models.act_points import fusion_points, repeated_modules
from mixquant_core.models.layers import find_layers, state_key
from mixquant_core.models.onnx_graph import float_graph
from mixquant_core.models.preprocess import Preprocess
from mixquant_core.plans.plan import Plan, applied
from mixquant_core.quant.act_calibration import calibrate
from mixquant_core.quant.recipe import Recipe
from recon_support import images, ort_op_counts, workspace

PRE = Preprocess(resize=32, crop=24)


class Block(nn.Module):
    """conv-BN-ReLU6, conv-BN, plus the block's input (a residual Add)."""

    def __init__(self, c: int):
        super().__init__()
        self.conv1, self.bn1, self.act = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU6()
        self.conv2, self.bn2 = nn.Conv2d(c, c, 1), nn.BatchNorm2d(c)

    def forward(self, x):
        return self.bn2(self.conv2(self.act(self.bn1(self.conv1(x))))) + x


class Residual(nn.Module):
    """Stem conv-BN-ReLU6-MaxPool, two residual blocks, a head conv-BN-ReLU6 whose ReLU6 is the
    stem's module called again (as Lite0's), global pooling, a classifier."""

    def __init__(self, c: int = 8, head: bool = True):
        super().__init__()
        self.stem, self.bn, self.relu, self.pool = nn.Conv2d(3, c, 3, stride=2, padding=1), nn.BatchNorm2d(c), nn.ReLU6(), nn.MaxPool2d(2)
        self.blocks = nn.Sequential(Block(c), Block(c))
        if head:
            self.head, self.head_bn = nn.Conv2d(c, 2 * c, 1), nn.BatchNorm2d(2 * c)
        self.gap, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(2 * c if head else c, 10)

    def forward(self, x):
        x = self.blocks(self.pool(self.relu(self.bn(self.stem(x)))))
        if hasattr(self, "head"):
            x = self.relu(self.head_bn(self.head(x)))
        return self.fc(torch.flatten(self.gap(x), 1))


def residual(seed: int = 0, head: bool = True) -> Residual:
    """With ``head=False`` the last block's Add goes straight into the pool, as in a ResNet."""
    torch.manual_seed(seed)
    model = Residual(head=head)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.6)
    return model.eval()


@pytest.fixture(scope="module")
def model():
    return residual()


@pytest.fixture(scope="module")
def calib():
    return EvalTensors(images(16, seed=2), torch.arange(16) % 10)


@pytest.fixture(scope="module")
def acts(model, calib):
    return calibrate(model, [layer.name for layer in find_layers(model)], calib)


EXPECTED = {
    "bn": ("stem", False, (0.0, 6.0)),  # stem -> MaxPool; its ReLU6 runs twice: the point goes before it
    "pool": ("blocks.0.conv1", True, None),  # read by block 0's conv1 and its Add
    "blocks.0.bn2": ("blocks.0.conv2", False, None),  # into the Add
    "blocks.0": ("blocks.1.conv1", True, None),  # the Add's output, read by block 1's conv1 and its Add
    "blocks.1.bn2": ("blocks.1.conv2", False, None),
    "head_bn": ("head", False, (0.0, 6.0)),  # head -> global pooling, through the twice-run ReLU6
    "gap": ("fc", True, None),  # the pool's output, flattened into the classifier: on the classifier's grid
}


def test_points_of_a_residual_model(model):
    graph = float_graph(model, (3, 24, 24)).graph
    modules = {n for n, _ in model.named_modules() if n}
    assert repeated_modules(graph, modules) == {"relu"}
    weights = {layer.name: state_key(model, layer.name) for layer in find_layers(model)}
    assert fusion_points(graph, modules, weights) == EXPECTED


def test_a_last_blocks_add_into_the_pool_is_a_point_and_runs_on_codes(calib, tmp_path):
    """No conv's point covers the pool's input when a residual Add feeds it (ResNet's last block):
    that tensor gets its own calibrated point, claimed by the classifier, so the Add and the pool
    both run as integer kernels, and the file reads back with it."""
    model = residual(head=False)
    graph = float_graph(model, (3, 24, 24)).graph
    modules = {n for n, _ in model.named_modules() if n}
    weights = {layer.name: state_key(model, layer.name) for layer in find_layers(model)}
    expected = {k: v for k, v in EXPECTED.items() if k not in ("head_bn", "bn")}
    expected["relu"] = ("stem", False, None)  # called once here: the stem's point goes after it
    expected["blocks.1"] = ("fc", False, None)  # block 1's Add, the pool's input
    assert fusion_points(graph, modules, weights) == expected
    acts = calibrate(model, list(weights), calib)
    assert set(acts.outputs) == set(expected) and acts.outputs["blocks.1"][0] == "fc"
    ws = workspace(model, "symmetric")
    plan = ws.plan_from_bits(ws.uniform(8))
    recipe = Recipe("symmetric", acts=acts)
    data = onnx_bytes(model, plan, PRE, recipe=recipe)
    assert read_onnx(data, model).acts.to_dict() == acts.to_dict()
    ops = ort_op_counts(data, tmp_path)
    assert ops["QLinearAdd"] == 2 and ops["QLinearGlobalAveragePool"] == 1 and ops["Conv"] == 0, ops
    x = images(8, seed=9)
    with torch.no_grad(), applied(model, plan.bits, recipe):
        expected_logits = model(x).numpy()
    with torch.no_grad(), applied(model, plan.bits, Recipe("symmetric", acts=type(acts)(acts.bits, acts.method, acts.ranges,
                                                                                     outputs={k: v for k, v in acts.outputs.items() if k != "blocks.1"}))):
        without_point = model(x).numpy()
    assert np.abs(expected_logits - without_point).max() > 1e-4  # the torch engine quantizes the new point too
    got = read_onnx(data, model).session().run(None, {"input": x.numpy()})[0]
    assert np.abs(got - expected_logits).max() < 0.05 * np.abs(expected_logits).max()


def test_calibration_ranges_of_the_points(model, calib, acts):
    assert set(acts.outputs) == set(EXPECTED)
    seen, handles = {}, []
    for name in ("bn", "blocks.0.bn2", "head_bn"):  # the produced points
        def hook(_m, _a, out, name=name):
            bounds = EXPECTED[name][2]
            out = out if bounds is None else out.clamp(*bounds)
            lo, hi = seen.get(name, (float("inf"), float("-inf")))
            seen[name] = (min(lo, float(out.min())), max(hi, float(out.max())))
        handles.append(dict(model.named_modules())[name].register_forward_hook(hook))
    with torch.no_grad():
        model(calib.images)
    for h in handles:
        h.remove()
    for name, (lo, hi) in seen.items():  # min/max of what the activation after it leaves
        assert acts.outputs[name] == (EXPECTED[name][0], pytest.approx(lo, abs=1e-6), pytest.approx(hi, abs=1e-6))
    assert acts.outputs["head_bn"][2] <= 6.0 and acts.outputs["bn"][1] == 0.0
    for module, (layer, lo, hi) in acts.outputs.items():  # shared points: the layer's own input range
        if EXPECTED[module][1]:
            assert (lo, hi) == acts.ranges[layer]
    assert calibrate(model, list(acts.ranges), calib, outputs=False).outputs == {}


def test_both_engines_quantize_the_points_alike(model, acts):
    ws = workspace(model)
    bits = ws.named(ws.uniform(8))
    data = EvalTensors(images(40, seed=3), torch.arange(40) % 10)
    recipe = Recipe("asymmetric", acts=acts)
    session = OnnxRuntimeEngine(threads=1).session_for(model, data, bits, recipe)
    with torch.no_grad(), applied(model, bits, recipe):
        expected = model(data.images).numpy()
    inputs_only = Recipe("asymmetric", acts=type(acts)(acts.bits, acts.method, acts.ranges, acts.calibration))
    with torch.no_grad(), applied(model, bits, inputs_only):
        without = model(data.images).numpy()
    got = session.run(None, {"input": data.images.numpy()})[0]
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)
    assert np.abs(without - expected).max() > 1e-4  # the points really quantize something (10x the tolerance)
    t = TorchEngine("cpu").evaluate(model, data, bits, recipe)
    o = OnnxRuntimeEngine(threads=1).evaluate(model, data, bits, recipe)
    assert (t.top1, t.top5) == (o.top1, o.top5) and abs(t.loss - o.loss) < 1e-5


@pytest.fixture(scope="module")
def exported(model, acts):
    ws = workspace(model, "symmetric")
    plan = ws.plan_from_bits(ws.uniform(8))
    return plan, onnx_bytes(model, plan, PRE, recipe=Recipe("symmetric", acts=acts))


def test_export_runs_every_conv_and_add_as_integer_kernels(model, acts, exported, tmp_path):
    plan, data = exported
    f = read_onnx(data, model)
    assert f.acts.to_dict() == acts.to_dict()
    ops = ort_op_counts(data, tmp_path)
    assert ops["QLinearConv"] == 6 and ops["QLinearAdd"] == 2 and ops["Conv"] == 0, ops
    # the head's ReLU6 cannot change its point's codes: dropped, so the pool runs on codes too
    assert ops["QLinearGlobalAveragePool"] == 1 and ops["Clip"] == 0, ops
    without = onnx_bytes(model, plan, PRE, recipe=Recipe("symmetric", acts=type(acts)(acts.bits, acts.method, acts.ranges)))
    assert ort_op_counts(without, tmp_path)["QLinearAdd"] == 0  # the layers' inputs alone fuse no Add
    x = images(8, seed=9)
    with torch.no_grad(), applied(model, plan.bits, Recipe("symmetric", acts=acts)):
        expected = model(x).numpy()
    got = f.session().run(None, {"input": x.numpy()})[0]
    # integer kernels requantize their outputs: within a few activation steps of the fake-quantized model
    assert np.abs(got - expected).max() < 0.05 * np.abs(expected).max()


def _with_plan(data: bytes, edit) -> bytes:
    proto = onnx.load_model_from_string(data)
    meta = {p.key: p.value for p in proto.metadata_props}
    plan = json.loads(meta["mixquant_plan"])
    edit(plan["recipe"]["acts"])
    helper.set_model_props(proto, {**meta, "mixquant_plan": json.dumps(plan)})
    return proto.SerializeToString()


def _with_scale(data: bytes, name: str, value: float) -> bytes:
    proto = onnx.load_model_from_string(data)
    for k, init in enumerate(proto.graph.initializer):
        if init.name == name:
            proto.graph.initializer[k].CopyFrom(numpy_helper.from_array(np.array(value, dtype=np.float32), name))
    return proto.SerializeToString()


def _drop_point(acts: dict) -> None:
    del acts["outputs"]["blocks.0.bn2"]


def _unknown_module(acts: dict) -> None:
    acts["outputs"]["no.such.module"] = acts["outputs"]["blocks.0.bn2"]


def _moved_pair(data: bytes) -> bytes:
    """The pair of blocks.0.bn2 put on the Add's output instead (the plan unchanged)."""
    proto = onnx.load_model_from_string(data)
    g = proto.graph
    q = next(n for n in g.node if n.op_type == "QuantizeLinear" and n.input[1] == "blocks.0.bn2.output_scale")
    dq = next(n for n in g.node if n.op_type == "DequantizeLinear" and n.input[0] == q.output[0])
    for n in g.node:  # the Add reads the float tensor again
        n.input[:] = [q.input[0] if i == dq.output[0] else i for i in n.input]
    add = next(n for n in g.node if n.op_type == "Add" and q.input[0] in n.input)
    out = add.output[0]
    for n in g.node:
        if n is not q:
            n.input[:] = [dq.output[0] if i == out else i for i in n.input]
    q.input[0] = out
    nodes = [n for n in g.node if n is not q and n is not dq]
    k = nodes.index(add) + 1
    del g.node[:]
    g.node.extend(nodes[:k] + [q, dq] + nodes[k:])
    return proto.SerializeToString()


@pytest.mark.parametrize("edit, words", [
    (lambda d: _with_scale(d, "blocks.0.bn2.output_scale", 0.5), "its range gives"),
    (lambda d: _with_scale(d, "blocks.0.bn2.output_scale", float("nan")), "scale nan"),
    (lambda d: _with_plan(d, _drop_point), "quantized in its graph only"),
    (lambda d: _with_plan(d, _unknown_module), "'no.such.module' is quantized in its plan only"),
])
def test_edited_output_points_are_refused_in_one_line(model, exported, edit, words, tmp_path, capsys):
    _, data = exported
    path = tmp_path / "edited.onnx"
    path.write_bytes(edit(data))
    with pytest.raises((OnnxFileError, PlanError), match=words):
        read_onnx(path.read_bytes(), model)
    assert main(["load", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mixquant: error:") and "\n" not in err and words in err, err


def test_a_moved_point_computes_other_numbers_than_its_plan_and_is_refused(model, exported):
    _, data = exported
    moved = _moved_pair(data)
    onnx.checker.check_model(onnx.load_model_from_string(moved))  # still a valid model
    with pytest.raises(OnnxFileError, match="output of 'blocks.0.bn2' is not quantized where its plan puts it"):
        read_onnx(moved, model)


def test_plan_round_trips_its_points_and_checks_them(model, acts):
    ws = workspace(model)
    plan = ws.plan_from_bits(ws.uniform(6))
    plan = Plan.from_json(json.dumps({**json.loads(plan.to_json()), "recipe": {"acts": acts.to_dict()}}))
    assert plan.recipe.acts.outputs == acts.outputs
    plan.check_against(model)
    data = json.loads(plan.to_json())
    stray = json.loads(plan.to_json())
    stray["recipe"]["acts"]["outputs"]["no.such.module"] = stray["recipe"]["acts"]["outputs"].pop("pool")
    with pytest.raises(PlanError, match="output point 'no.such.module' is not a module of this model"):
        Plan.from_json(json.dumps(stray)).check_against(model)
    data["recipe"]["acts"]["outputs"]["pool"][1] = float("nan")
    with pytest.raises(PlanError, match="outputs/pool"):
        Plan.from_json(json.dumps(data).replace("NaN", "1e999"))
    data["recipe"]["acts"]["outputs"]["pool"] = ["not.a.layer", 0.0, 1.0]
    with pytest.raises(PlanError, match="has no quantized input"):
        Plan.from_json(json.dumps(data))


def test_no_point_on_a_tensor_a_float_input_layer_reads(model, calib):
    names = [layer.name for layer in find_layers(model)]
    acts = calibrate(model, names, calib, keep_float=["blocks.0.conv1"])
    assert "blocks.0.conv1" not in acts.ranges
    assert set(acts.outputs) == set(EXPECTED) - {"pool"}  # block 0's input stays float for its conv1
    ws = workspace(model)
    bits = ws.named(ws.uniform(8))
    x = images(4, seed=5)
    seen = {}
    handle = dict(model.named_modules())["blocks.0.conv1"].register_forward_pre_hook(
        lambda _m, args: seen.setdefault("x", args[0].clone()))
    try:
        with torch.no_grad(), applied(model, bits, Recipe("asymmetric", acts=acts)):
            model(x)
    finally:
        handle.remove()
    with torch.no_grad():
        float_input = model.pool(model.relu(model.bn(model.stem(x))))
    # the stem's output point quantizes before the pool: the pooled values lie on that grid, unrounded again
    scale, zp = acts.output_qparams("bn")
    assert torch.allclose(seen["x"] / scale, torch.round(seen["x"] / scale), atol=1e-3)
    assert not torch.equal(seen["x"], float_input)


@pytest.mark.parametrize("clip_max, dropped", [(6.0, True), (5.9, False)])
def test_an_activation_is_dropped_only_where_it_cannot_change_the_grid(clip_max, dropped):
    from mixquant_core.export.onnx_fuse import drop_idle_activations
    from mixquant_core.quant.activations import act_qparams

    scale, zp = act_qparams(0.0, 6.0)  # the grid reaches 255 * scale = 6.0 in float32
    f = lambda name, v, dtype=np.float32: numpy_helper.from_array(np.array(v, dtype=dtype), name)  # noqa: E731
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]), helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"]),
         helper.make_node("Clip", ["d", "lo", "hi"], ["c"]), helper.make_node("GlobalAveragePool", ["c"], ["y"])],
        "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2, 3, 3])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 2, 1, 1])],
        [f("s", scale), f("z", zp, np.uint8), f("lo", 0.0), f("hi", clip_max)])
    assert drop_idle_activations(graph) == int(dropped)
    assert [n.op_type for n in graph.node].count("Clip") == (0 if dropped else 1)
    assert graph.node[-1].input[0] == ("d" if dropped else "c")
