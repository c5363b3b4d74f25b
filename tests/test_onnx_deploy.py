"""Deployable ONNX files (issue #20): weight codes bit-packed and unpacked by standard ops that
ONNX Runtime folds when it builds the session (weight-only files: no DequantizeLinear left, file
size = the size accounting plus the graph), activation quantization as Q/DQ pairs that both engines
evaluate alike and that ONNX Runtime fuses into integer kernels in an export, and bad activation
ranges refused in one line."""
from __future__ import annotations

import copy
import itertools
import json

import numpy as np
import onnx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper
from torch import nn

from mixquant_cli.main import main
from mixquant_core.evaluation.engines.onnxruntime_engine import OnnxRuntimeEngine, new_session
from mixquant_core.export.onnx import OnnxFileError, onnx_bytes, onnx_size_report, read_onnx
from mixquant_core.export.onnx_pack import packed_layer, shared_constants
from mixquant_core.models.preprocess import Preprocess
from mixquant_core.plans.plan import applied
from mixquant_core.quant.codes import QuantizedLayer
from mixquant_core.quant.activations import ActQuant
from mixquant_core.quant.recipe import Recipe
from recon_support import MIXED_BITS, images, minmax_acts, ort_op_counts, ort_optimized_graph, tiny_chain, workspace

PRE = Preprocess(resize=32, crop=24)


def _optimized_ops(data: bytes, tmp_path) -> set:
    return set(ort_op_counts(data, tmp_path))


# --- bit packing ---------------------------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(nbits=st.integers(2, 8), shape=st.lists(st.integers(1, 7), min_size=1, max_size=4),
       per_channel=st.booleans(), symmetric=st.booleans(), seed=st.integers(0, 2**16))
def test_onnx_runtime_unpacks_every_bit_width_bit_exactly(nbits, shape, per_channel, symmetric, seed):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 2**nbits, shape, generator=g).to(torch.uint8)
    groups = [shape[0]] + [1] * (len(shape) - 1) if per_channel else []
    scale = torch.rand(groups, generator=g) + 1e-3
    zp = torch.full(groups, float(2 ** (nbits - 1))) if symmetric else torch.randint(0, 2**nbits, groups, generator=g).float()
    q = QuantizedLayer(codes, scale, zp, nbits, "symmetric" if symmetric else "asymmetric")
    inits, nodes = packed_layer("w", q, symmetric)
    graph = helper.make_graph(nodes + [helper.make_node("Identity", ["w"], ["out"])], "unpack", [],
                              [helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, shape)],
                              initializer=shared_constants() + inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 25)])
    onnx.checker.check_model(proto)
    (got,) = new_session(proto.SerializeToString(), 1).run(None, {})
    assert torch.equal(torch.from_numpy(got), q.weight())  # (codes - zero_point) * scale, in float32
    assert inits[0].dims == [-(-codes.numel() * nbits // 8), 1]


@pytest.mark.parametrize("bits", [[8] * 5, [7] * 5, [6] * 5, [5] * 5, [4] * 5, [3] * 5, [2] * 5, MIXED_BITS])
def test_weight_only_file_is_the_accounting_plus_graph_and_folds_to_float(bits, tmp_path, one_thread):
    model = tiny_chain()
    plan = workspace(model).plan_from_bits(bits)
    data = onnx_bytes(model, plan, PRE)
    report = onnx_size_report(data, model, plan, "asymmetric")
    assert report["container_padding_bytes"] == 0 and report["integer_kernel_layers"] == 0
    assert 0 < report["bytes"] - report["accounted_bytes"] < 7_000  # nodes, shapes, metadata: no padding (6.2 kB)
    ops = _optimized_ops(data, tmp_path)
    assert not ops & {"DequantizeLinear", "BitShift", "BitwiseAnd", "MatMul", "Cast"}  # all folded at build
    x = images(4)
    with torch.no_grad(), applied(model, plan.bits, "asymmetric"):
        expected = model(x).numpy()
    np.testing.assert_allclose(read_onnx(data, model).session().run(None, {"input": x.numpy()})[0], expected,
                               atol=1e-5, rtol=1e-5)


# --- activations -----------------------------------------------------------------------------------
def _wa(model, bits=(8, 8, 8, 8, 8), quantizer="asymmetric", layers=None):
    ws = workspace(model, quantizer)
    plan = ws.plan_from_bits(list(bits))
    acts = minmax_acts(model, layers or list(plan.bits), images(16, seed=5))
    if layers:  # the other planned layers keep float inputs: pinned, as a plan records them
        acts = ActQuant(acts.bits, acts.method, acts.ranges, {"keep_float": [n for n in plan.bits if n not in layers]})
    return plan, Recipe(quantizer, acts=acts)


@pytest.mark.parametrize("quantizer", ["asymmetric", "symmetric", "per-channel", "per-channel-symmetric"])
def test_both_engines_quantize_activations_alike(quantizer, one_thread):
    from mixquant_core.data.image_sets import EvalTensors
    from mixquant_core.evaluation.engines.torch_engine import TorchEngine

    model = tiny_chain()
    plan, recipe = _wa(model, MIXED_BITS, quantizer)
    data = EvalTensors(images(40, seed=3), torch.arange(40) % 10)
    session = OnnxRuntimeEngine(threads=1).session_for(model, data, plan.bits, recipe)
    with torch.no_grad(), applied(model, plan.bits, recipe):
        expected = model(data.images).numpy()
    with torch.no_grad(), applied(model, plan.bits, quantizer):
        weight_only = model(data.images).numpy()
    got = session.run(None, {"input": data.images.numpy()})[0]
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)
    assert np.abs(weight_only - expected).max() > 1e-4  # the activations really were quantized (10x the tolerance)
    t = TorchEngine("cpu").evaluate(model, data, plan.bits, recipe)
    o = OnnxRuntimeEngine(threads=1).evaluate(model, data, plan.bits, recipe)
    assert (t.top1, t.top5) == (o.top1, o.top5) and abs(t.loss - o.loss) < 1e-5


@pytest.mark.parametrize("quantizer", ["asymmetric", "symmetric", "per-channel", "per-channel-symmetric"])
def test_w_a_export_runs_integer_kernels_and_reads_back(quantizer, tmp_path, one_thread):
    model = tiny_chain()
    plan, recipe = _wa(model, (8, 6, 8, 4, 8), quantizer)
    data = onnx_bytes(model, plan, PRE, recipe=recipe)
    f = read_onnx(data, model)
    assert f.acts.to_dict() == recipe.acts.to_dict()
    report = onnx_size_report(data, model, plan, quantizer)
    params = {l.name: l.params for l in workspace(model).layers}
    # 0.0, 1.0, 1.2 feed the next quantized input (through BatchNorm, folded, and ReLU): integer
    # kernels, codes in bytes; 2.0 (pooled next) and 3 (the logits) stay packed float behind their Q/DQ
    assert report["integer_kernel_layers"] == 3
    assert report["container_padding_bytes"] == 2 * params["1.0"] // 8  # the 6-bit layer in bytes
    ops = _optimized_ops(data, tmp_path)
    assert ops & {"QLinearConv", "QLinearMatMul", "MatMulInteger", "MatMulIntegerToFloat", "ConvInteger"}, ops
    x = images(8, seed=9)
    with torch.no_grad(), applied(model, plan.bits, recipe):
        expected = model(x).numpy()
    got = f.session().run(None, {"input": x.numpy()})[0]
    # integer kernels requantize their outputs: within a few activation steps of the fake-quantized model
    assert np.abs(got - expected).max() < 0.05 * np.abs(expected).max()


def _qlinearconv_weight_zero_points(data: bytes, tmp_path) -> list:
    """The weight zero-points of each QLinearConv ONNX Runtime built from ``data``."""
    graph = ort_optimized_graph(data, tmp_path)
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    return [inits[n.input[5]] for n in graph.node if n.op_type == "QLinearConv"]


@pytest.mark.parametrize("quantizer, uniform", [("per-channel-symmetric", True), ("per-channel", False)])
def test_per_channel_symmetric_export_gives_integer_convs_one_weight_zero_point(quantizer, uniform, tmp_path):
    """ONNX Runtime runs a QLinearConv whose per-channel weight zero-points differ in its slow
    reference kernel (measured: Lite0 1.6 against 33 images/s): the symmetric per-channel scheme
    has one zero-point for all channels (0 in int8, or 128 in uint8 where int8 could saturate),
    as quantize_static's files do; the affine one cannot."""
    model = tiny_chain()
    plan, recipe = _wa(model, (8, 8, 8, 8, 8), quantizer)
    zero_points = _qlinearconv_weight_zero_points(onnx_bytes(model, plan, PRE, recipe=recipe), tmp_path)
    assert len(zero_points) == 3 and all(z.size > 1 for z in zero_points)  # one per output channel
    one_value = [len(np.unique(z)) == 1 and int(z.flat[0]) in (0, 128) for z in zero_points]
    assert all(one_value) == uniform and any(one_value) == uniform, zero_points


@pytest.mark.parametrize("codes, free", [([[127, 1, 0]], True), ([[127, 2, -1]], False), ([[64, -64, 64]], True),
                                         ([[-65, 64, 3]], False), ([[5, 5], [100, -29]], False), ([[5, 5], [100, -28]], True)])
def test_saturation_free_is_the_two_largest_codes_of_each_channel(codes, free):
    from mixquant_core.export.onnx import saturation_free

    assert saturation_free(torch.tensor(codes, dtype=torch.int16)) == free


@given(bits=st.integers(2, 7), seed=st.integers(0, 2**16))
@settings(max_examples=20, deadline=None)
def test_codes_of_seven_bits_or_fewer_never_saturate(bits, seed):
    from mixquant_core.export.onnx import saturation_free

    g = torch.Generator().manual_seed(seed)
    assert saturation_free(torch.randint(-(2 ** (bits - 1)), 2 ** (bits - 1), (6, 3, 3, 3), generator=g, dtype=torch.int16))


def test_full_range_int8_weights_are_exported_so_that_no_kernel_saturates(tmp_path):
    """A conv whose 8-bit symmetric codes reach +-127 in every channel, on activations at the top
    of their grid: where int8 codes could saturate a u8 x s8 kernel (255 * (127 + 127) > 32767),
    the export stores them as uint8 around 128, and the file computes the plan's numbers."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 1),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    with torch.no_grad():
        model[2].weight.copy_(torch.sign(torch.randn_like(model[2].weight)))  # every |w| at the channel's max
    ws = workspace(model, "per-channel-symmetric")
    plan = ws.plan_from_bits(ws.uniform(8))
    x = images(8, seed=3).abs() * 4
    recipe = Recipe("per-channel-symmetric", acts=minmax_acts(model, list(plan.bits), x))
    data = onnx_bytes(model, plan, PRE, recipe=recipe)
    proto = onnx.load_model_from_string(data)
    codes = next(numpy_helper.to_array(i) for i in proto.graph.initializer if i.name == "2.weight_codes")
    assert codes.dtype == np.uint8 and 255 in codes and 1 in codes  # +-127 around 128
    with torch.no_grad(), applied(model, plan.bits, recipe):
        expected = model(x).numpy()
    got = read_onnx(data, model).session().run(None, {"input": x.numpy()})[0]
    # measured on an AVX2 CPU: 1e-7 of the largest logit; the same codes in int8 there: 3e-3
    assert np.abs(got - expected).max() < 1e-3 * np.abs(expected).max()


def test_w_a_export_of_a_layer_subset_keeps_the_rest_packed():
    model = tiny_chain()
    plan, recipe = _wa(model, MIXED_BITS, layers=["1.2", "2.0"])
    data = onnx_bytes(model, plan, PRE, recipe=recipe)
    report = onnx_size_report(data, model, plan, "asymmetric")
    assert report["integer_kernel_layers"] == 1 and read_onnx(data, model).acts.ranges.keys() == {"1.2", "2.0"}


def padded_chain(seed: int = 0, width: int = 8) -> nn.Sequential:
    """Lite0's block shape: a 1x1 conv whose ReLU6 output is zero-padded (its "same" padding traces
    as a Pad) before a strided depthwise conv, then a 1x1 conv that is pooled next."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, width, 1), nn.BatchNorm2d(width), nn.ReLU6()),
        nn.ZeroPad2d((0, 1, 0, 1)),
        nn.Sequential(nn.Conv2d(width, width, 3, stride=2, groups=width), nn.BatchNorm2d(width), nn.ReLU6()),
        nn.Sequential(nn.Conv2d(width, 2 * width, 1), nn.BatchNorm2d(2 * width), nn.ReLU6()),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, 10))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _pair_after_pads(data: bytes) -> bytes:
    """The file with every activation pair moved back behind the Pad it stands before (Pad -> Q ->
    DQ -> Conv: the placement of files written before the pairs moved)."""
    proto = onnx.load_model_from_string(data)
    graph = proto.graph
    producers = {o: n for n in graph.node for o in n.output}
    moved = {}  # Pad -> its pair, which now follows it
    for pad in [n for n in graph.node if n.op_type == "Pad" and producers[n.input[0]].op_type == "DequantizeLinear"]:
        dq = producers[pad.input[0]]
        q = producers[dq.input[0]]
        conv = next(n for n in graph.node if pad.output[0] in list(n.input))
        pad.input[0], q.input[0], conv.input[0] = q.input[0], pad.output[0], dq.output[0]
        moved[pad.output[0]] = [q, dq]  # nodes by their output: exports name no nodes
    pairs = {n.output[0] for nodes in moved.values() for n in nodes}
    order = [m for n in graph.node if n.output[0] not in pairs for m in [n] + moved.get(n.output[0], [])]
    del graph.node[:]
    graph.node.extend(order)
    return proto.SerializeToString()


def _reference_run(data: bytes, x: torch.Tensor) -> np.ndarray:
    """What the file's graph computes, op by op (no ORT fusion: integer kernels requantize)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]


@pytest.mark.parametrize("quantizer", ["asymmetric", "symmetric"])
def test_a_pad_between_layers_keeps_the_conv_before_it_an_integer_kernel(quantizer, tmp_path, one_thread):
    model = padded_chain()
    plan, recipe = _wa(model, (8, 8, 8, 8), quantizer)
    data = onnx_bytes(model, plan, PRE, recipe=recipe)
    graph = onnx.load_model_from_string(data).graph
    producers = {o: n for n in graph.node for o in n.output}
    pad = next(n for n in graph.node if n.op_type == "Pad")
    dq = producers[pad.input[0]]
    assert dq.op_type == "DequantizeLinear" and dq.input[1] == "2.0.input_scale"  # the depthwise conv's pair, before its Pad
    # 0.0 (through ReLU6 and the Pad) and 2.0 feed a quantized input: integer kernels, the Pad folded
    # into the depthwise QLinearConv; 3.0 (pooled next) and 6 (the logits) stay float behind their Q/DQ
    assert onnx_size_report(data, model, plan, quantizer)["integer_kernel_layers"] == 2
    ops = ort_op_counts(data, tmp_path)
    assert ops["QLinearConv"] == 2 and "Pad" not in ops, ops
    x = images(8, seed=9)
    with torch.no_grad(), applied(model, plan.bits, recipe):
        expected = model(x).numpy()
    got = read_onnx(data, model).session().run(None, {"input": x.numpy()})[0]
    assert np.abs(got - expected).max() < 0.05 * np.abs(expected).max()  # a few activation steps, as above
    # the same numbers as the pair behind the Pad, which such a file still reads back with
    old = _pair_after_pads(data)
    assert read_onnx(old, model).acts.to_dict() == recipe.acts.to_dict()
    np.testing.assert_array_equal(_reference_run(data, x), _reference_run(old, x))


def test_both_engines_quantize_alike_across_a_pad(one_thread):
    from mixquant_core.data.image_sets import EvalTensors

    model = padded_chain()
    plan, recipe = _wa(model, (8, 4, 6, 8))
    data = EvalTensors(images(40, seed=3), torch.arange(40) % 10)
    session = OnnxRuntimeEngine(threads=1).session_for(model, data, plan.bits, recipe)
    with torch.no_grad(), applied(model, plan.bits, recipe):
        expected = model(data.images).numpy()
    np.testing.assert_allclose(session.run(None, {"input": data.images.numpy()})[0], expected, atol=1e-5, rtol=1e-5)


def _bypass_pair(proto) -> None:  # the depthwise conv reads float inputs; its pair feeds nothing
    pad = next(n for n in proto.graph.node if n.op_type == "Pad")
    pad.input[0] = next(n for n in proto.graph.node if n.op_type == "QuantizeLinear" and n.input[1] == "2.0.input_scale").input[0]


def _pad_with_ones(proto) -> None:  # a pad of 1.0 does not commute with the quantizer
    pad = next(n for n in proto.graph.node if n.op_type == "Pad")
    value = next(n for n in proto.graph.node if pad.input[2] in list(n.output))
    value.attribute[0].t.CopyFrom(numpy_helper.from_array(np.array(1.0, np.float32)))


@pytest.mark.parametrize("edit", [_bypass_pair, _pad_with_ones])
def test_an_activation_pair_off_its_layers_input_is_refused_in_one_line(edit, tmp_path, capsys):
    model = padded_chain()
    plan, recipe = _wa(model, (8, 8, 8, 8))
    proto = onnx.load_model_from_string(onnx_bytes(model, plan, PRE, recipe=recipe))
    edit(proto)
    path = tmp_path / "edited.onnx"
    path.write_bytes(proto.SerializeToString())
    with pytest.raises(OnnxFileError, match="layer '2.0' is not on the input"):
        read_onnx(path)
    assert main(["load", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mixquant: error:") and "\n" not in err, err


# --- compact graphs (export/onnx_compact.py) -----------------------------------------------------------
def _torch_named(monkeypatch, model, plan, recipe=None) -> bytes:
    """The file as exports before the compaction pass wrote it: torch's node and value names, the
    unpacking's hashed names, one Constant node per use."""
    import mixquant_core.export.onnx as export_onnx

    with monkeypatch.context() as patch:
        patch.setattr(export_onnx, "compact_graph", lambda graph, keep=(): None)
        return onnx_bytes(model, plan, PRE, recipe=recipe)


def test_short_names_are_distinct_and_shortest_first():
    from mixquant_core.export.onnx_compact import counter_name, short_names

    names = [counter_name(k) for k in range(36 + 36**2 + 1)]
    assert len(set(names)) == len(names) and names[35:37] == ["z", "00"] and [len(n) for n in names[-2:]] == [2, 3]
    assert list(itertools.islice(short_names({"1", "3"}), 3)) == ["0", "2", "4"]


def _constants(graph) -> list:
    return [n.attribute[0].t.SerializeToString() for n in graph.node if n.op_type == "Constant"]


@pytest.mark.parametrize("w_a", [False, True])
def test_exports_name_no_node_and_give_intermediate_values_short_names(w_a, monkeypatch):
    model = padded_chain()
    plan, recipe = _wa(model, (8, 4, 8, 6))
    graph = onnx.load_model_from_string(onnx_bytes(model, plan, PRE, recipe=recipe if w_a else None)).graph
    kept = {i.name for i in graph.initializer} | {f"{n}.weight" for n in plan.bits} | {graph.output[0].name}
    values = {o for n in graph.node for o in n.output}
    assert kept & values >= {f"{n}.weight" for n in plan.bits}  # readers find each layer's weight by its name
    assert not any(n.HasField("name") for n in graph.node)
    assert max(len(v) for v in values - kept) <= 2  # fewer than 36 + 36**2 intermediate values
    old = onnx.load_model_from_string(_torch_named(monkeypatch, model, plan, recipe if w_a else None)).graph
    assert len(set(_constants(old))) < len(_constants(old))  # torch repeats Constant values ..
    assert sorted(_constants(graph)) == sorted(set(_constants(old)))  # .. each is one node now


@pytest.mark.parametrize("w_a", [False, True])
def test_files_with_torch_names_still_load_and_compute_the_same(w_a, monkeypatch, one_thread):
    model = padded_chain()
    plan, recipe = _wa(model, (8, 4, 8, 6))
    recipe = recipe if w_a else None
    old, new = _torch_named(monkeypatch, model, plan, recipe), onnx_bytes(model, plan, PRE, recipe=recipe)
    assert any(n.name.startswith("/") for n in onnx.load_model_from_string(old).graph.node)  # torch's names
    f_old, f_new = read_onnx(old, model), read_onnx(new, model)
    assert f_old.facts == f_new.facts and f_old.plan == f_new.plan
    assert (f_old.acts and f_old.acts.to_dict()) == (f_new.acts and f_new.acts.to_dict()) and bool(f_new.acts) == w_a
    x = images(4, seed=2)
    np.testing.assert_array_equal(_reference_run(old, x), _reference_run(new, x))
    assert len(new) < len(old) - 2_000


def _unpacking(graph) -> list:
    """Positions of the first packed layer's 11 unpacking nodes (the export writes them in order)."""
    k = next(k for k, n in enumerate(graph.node) if n.op_type == "BitwiseAnd")
    return list(range(k, k + 11))


def _with_node(graph, at: int, node) -> None:
    nodes = list(graph.node)
    nodes.insert(at, node)
    del graph.node[:]
    graph.node.extend(nodes)


def _op_spliced_in(graph) -> None:  # a Neg between the codes and their bit values: other weights
    matmul = graph.node[_unpacking(graph)[6]]
    _with_node(graph, _unpacking(graph)[6], helper.make_node("Neg", [matmul.input[0]], ["negated"]))
    matmul.input[0] = "negated"


def _partial_result_read(graph) -> None:  # the unpacking's bits read by another node too
    bits = graph.node[_unpacking(graph)[1]].output[0]
    _with_node(graph, _unpacking(graph)[2], helper.make_node("Identity", [bits], ["seen"]))


def _attribute_edited(graph) -> None:  # a valid attribute that the written unpacking does not have
    graph.node[_unpacking(graph)[2]].attribute.append(helper.make_attribute("allowzero", 1))


def _shared_constant_edited(graph) -> None:  # every layer's bits taken from other masks
    masks = next(i for i in graph.initializer if i.name == "mixquant_unpack_masks")
    masks.CopyFrom(numpy_helper.from_array(np.array([1, 2, 4, 8, 16, 32, 64, 64], np.uint8), masks.name))


def _zero_point_swapped(graph) -> None:  # the Cast reads the scale's initializer instead
    cast, mul = (graph.node[k] for k in _unpacking(graph)[8::2])
    cast.input[0] = mul.input[1]


@pytest.mark.parametrize("edit", [_op_spliced_in, _partial_result_read, _attribute_edited, _zero_point_swapped,
                                  _shared_constant_edited])
@pytest.mark.parametrize("torch_named", [False, True])
def test_an_edited_unpacking_is_refused_whatever_its_names(edit, torch_named, monkeypatch):
    model = tiny_chain()
    plan = workspace(model).plan_from_bits(MIXED_BITS)
    data = _torch_named(monkeypatch, model, plan) if torch_named else onnx_bytes(model, plan, PRE)
    read_onnx(data, model)
    proto = onnx.load_model_from_string(data)
    edit(proto.graph)
    onnx.checker.check_model(proto)  # a valid graph: only the unpacking check can refuse it
    words = "'mixquant_unpack_masks' is edited" if edit is _shared_constant_edited else \
        "'0.0.weight' is not unpacked as MixQuant writes it"
    with pytest.raises(OnnxFileError, match=words):
        read_onnx(proto.SerializeToString(), model)


def _legacy_unpacking(data: bytes) -> bytes:
    """The file as exports before 2026-12-07 wrote it: bits by BitShift(RIGHT) and BitwiseAnd(1)."""
    from mixquant_core.export.onnx_pack import SHARED_MASKS, SHARED_ONE, SHARED_SHIFTS, legacy_shared_constants

    proto = onnx.load_model_from_string(data)
    graph = proto.graph
    for k, node in enumerate(graph.node):
        if node.op_type == "BitwiseAnd" and node.input[1] == SHARED_MASKS:
            graph.node[k].CopyFrom(helper.make_node("BitShift", [node.input[0], SHARED_SHIFTS], list(node.output), direction="RIGHT"))
            after = graph.node[k + 1]
            graph.node[k + 1].CopyFrom(helper.make_node("BitwiseAnd", [after.input[0], SHARED_ONE], list(after.output)))
    kept = [i for i in graph.initializer if i.name not in (SHARED_MASKS, SHARED_SHIFTS)]
    del graph.initializer[:]
    graph.initializer.extend(kept + legacy_shared_constants()[:1])
    return proto.SerializeToString()


def test_files_with_the_legacy_bit_shifts_still_read_and_compute_the_same():
    model = tiny_chain()
    plan = workspace(model).plan_from_bits(MIXED_BITS)
    data = onnx_bytes(model, plan, PRE)
    legacy = _legacy_unpacking(data)
    assert "BitShift" in {n.op_type for n in onnx.load_model_from_string(legacy).graph.node}
    assert read_onnx(legacy, model).plan == read_onnx(data, model).plan
    x = images(4, seed=2)
    np.testing.assert_array_equal(_reference_run(legacy, x), _reference_run(data, x))


@pytest.mark.parametrize("quantizer", ["asymmetric", "symmetric", "per-channel", "per-channel-symmetric"])
@pytest.mark.parametrize("bits", [[8] * 5, [2] * 5, MIXED_BITS])
def test_openvino_computes_a_weight_only_file_as_onnx_runtime_does(quantizer, bits):
    """Every layer, the classifier's Gemm included: OpenVINO computed BitShift-unpacked Gemm
    weights in float and rounded its integer Divide (Lite0 53 % against 80 %); its CPU plugin
    must give ONNX Runtime's logits."""
    ov = pytest.importorskip("openvino")
    model = tiny_chain()
    data = onnx_bytes(model, workspace(model, quantizer).plan_from_bits(list(bits)), PRE)
    x = images(4, seed=1).numpy()
    compiled = ov.Core().compile_model(ov.Core().read_model(data, b""), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    want = new_session(data).run(None, {"input": x})[0]
    np.testing.assert_allclose(compiled(x)[0], want, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_lite0_weight_only_file_is_the_accounting_plus_95_kb_and_w8a8_fuses_every_conv_and_add(lite0, tmp_path):
    from mixquant_core.data.image_sets import EvalTensors
    from mixquant_core.quant.act_calibration import calibrate
    from mixquant_core.workspace import Workspace

    ws = Workspace(lite0, "symmetric", device="cpu", engine="torch")
    plan = ws.plan_from_bits(ws.uniform(4))
    report = onnx_size_report(onnx_bytes(lite0.model, plan, lite0.preprocess), lite0.model, plan, "symmetric")
    assert report["container_padding_bytes"] == 0 and 0 < report["bytes"] - report["accounted_bytes"] < 95_000
    plan = ws.plan_from_bits(ws.uniform(8))
    inputs_only = Recipe("symmetric", acts=minmax_acts(lite0.model, list(plan.bits), images(8, 224, seed=0)))
    ops = ort_op_counts(onnx_bytes(lite0.model, plan, lite0.preprocess, recipe=inputs_only), tmp_path)
    assert ops["QLinearConv"] == 34 and ops["Conv"] == 15 and ops["QLinearAdd"] == 0, ops  # the layers' inputs alone
    calib = EvalTensors(images(8, 224, seed=0), torch.zeros(8, dtype=torch.long))
    recipe = Recipe("symmetric", acts=calibrate(lite0.model, list(plan.bits), calib))  # with output points (default)
    assert len(recipe.acts.outputs) == 20  # 9 residual block inputs, 9 project convs into their Add, the head, the pool
    data = onnx_bytes(lite0.model, plan, lite0.preprocess, recipe=recipe)
    f = read_onnx(data, lite0.model)
    assert f.acts.ranges.keys() == plan.bits.keys() and f.acts.outputs == recipe.acts.outputs
    ops = ort_op_counts(data, tmp_path)
    assert ops["QLinearConv"] == 49 and ops["Conv"] == 0 and ops["QLinearAdd"] == 9 and ops["QLinearGlobalAveragePool"] == 1, ops


# --- bad activation ranges -------------------------------------------------------------------------
def _edited_init(data: bytes, name: str, value, dtype) -> bytes:
    proto = onnx.load_model_from_string(data)
    for k, init in enumerate(proto.graph.initializer):
        if init.name == name:
            proto.graph.initializer[k].CopyFrom(numpy_helper.from_array(np.array(value, dtype=dtype), name))
    return proto.SerializeToString()


@pytest.fixture(scope="module")
def wa_file():
    model = tiny_chain()
    plan, recipe = _wa(model)
    return onnx_bytes(model, plan, PRE, recipe=recipe)


@pytest.mark.parametrize("edit, words", [
    (("1.2.input_scale", float("nan"), np.float32), "scale nan"),
    (("1.2.input_scale", 0.0, np.float32), "scale 0.0"),
    (("1.2.input_scale", -0.5, np.float32), "scale -0.5"),
    (("1.2.input_scale", 0.5, np.float32), "its range gives"),
    (("1.2.input_zero_point", 300, np.int32), "(op_type:QuantizeLinear)"),  # refused by ONNX shape inference already
    (("1.2.input_zero_point", 77, np.uint8), "its range gives"),
])
def test_activation_quantizers_that_do_not_fit_are_refused_in_one_line(wa_file, edit, words, tmp_path, capsys):
    path = tmp_path / "edited.onnx"
    path.write_bytes(_edited_init(wa_file, *edit))
    with pytest.raises(OnnxFileError, match="activation|QuantizeLinear"):
        read_onnx(path)
    assert main(["load", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mixquant: error:") and "\n" not in err and words in err, err


@pytest.mark.parametrize("ranges, words", [
    ({"1.2": [float("nan"), 1.0]}, "invalid plan"), ({"1.2": [2.0, 1.0]}, "invalid plan"),
    ({"9.9": [0.0, 1.0]}, "invalid plan"), ({}, "no calibrated input range"), ({"1.2": [0.0, 1e6]}, "its range gives"),
])
def test_activation_ranges_that_do_not_fit_the_graph_are_refused_in_one_line(wa_file, ranges, words, tmp_path, capsys):
    proto = onnx.load_model_from_string(wa_file)
    meta = {p.key: p.value for p in proto.metadata_props}
    plan = json.loads(meta["mixquant_plan"])
    acts = plan["recipe"]["acts"]
    acts["ranges"] = {**{k: v for k, v in acts["ranges"].items() if ranges}, **ranges}
    helper.set_model_props(proto, {**meta, "mixquant_plan": json.dumps(plan)})
    path = tmp_path / "edited.onnx"
    path.write_bytes(proto.SerializeToString())
    assert main(["load", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mixquant: error:") and "\n" not in err and words in err, err


# --- Lite0 on real images ----------------------------------------------------------------------------
# With quantized inputs, torch's and ORT's float32 convolutions (~1e-6 apart) put a value that lies
# on a rounding boundary of the next layer's input grid on either side: one activation step, and
# through Lite0's 50 quantized inputs logits 0.17 apart at most on 16 images (median 0.019; the
# same with every ORT graph optimisation off). The 19 output points (models/act_points.py) add
# boundaries: W8A8 on 24 images, 0.20 -> 0.22 at most, median 0.019 -> 0.023, the same with ORT's
# QDQ fusions off (session.disable_quant_qdq), so float rounding, not an integer kernel; on 300
# images the losses of a mixed plan then differed by 2.04e-3. A flipped image is allowed where its
# deciding logits are within ACT_FLIP_MARGIN; weight-only plans keep test_engines.py's 1e-4.
ACT_FLIP_MARGIN = 0.5
ACT_LOSS_TOLERANCE = 3e-3
@pytest.mark.data
@pytest.mark.slow
def test_lite0_w8a8_and_mixed_plans_same_counts_with_both_engines(lite0, val_dir, data_root):
    from mixquant_core.data.image_sets import open_image_folder
    from mixquant_core.data.load import load_tensors
    from mixquant_core.evaluation.engines.torch_engine import TorchEngine
    from mixquant_core.quant.act_calibration import calibrate
    from mixquant_core.workspace import Workspace
    from test_engines import _deciding_gaps

    data = load_tensors(open_image_folder(val_dir).subset(300), lite0.preprocess)
    calib = load_tensors(open_image_folder(data_root / "imagenet-calib-1000").subset(16), lite0.preprocess)
    ws = Workspace(lite0, device="cpu", engine="torch")
    acts = calibrate(lite0.model, [l.name for l in ws.layers], calib)  # min/max, with output points (the default)
    assert len(acts.outputs) == 20
    recipe = Recipe(ws.quantizer, acts=acts)
    mixed = [ws.budget_bits("qe", avg_bits=a) for a in (7, 6)]  # least summed QE at 7 and 6 average bits
    for bits in [ws.uniform(8)] + mixed:
        named = {l.name: int(b) for l, b in zip(ws.layers, bits)}
        t = TorchEngine("cpu").evaluate(lite0.model, data, named, recipe)
        o = OnnxRuntimeEngine().evaluate(lite0.model, data, named, recipe)
        assert abs(t.loss - o.loss) <= ACT_LOSS_TOLERANCE
        flipped1, flipped5 = np.flatnonzero(t.hit1 != o.hit1), np.flatnonzero(t.hit5 != o.hit5)
        assert len(flipped1) + len(flipped5) <= 3  # 1 % of the images at most
        if len(flipped1) or len(flipped5):  # the flip rule of test_engines.py, at ACT_FLIP_MARGIN
            idx = np.union1d(flipped1, flipped5)
            gap1, gap5 = _deciding_gaps(lite0.model, data.to_inputs(data.images[idx]), named, recipe)
            assert all(gap1[np.searchsorted(idx, i)] <= ACT_FLIP_MARGIN for i in flipped1)
            assert all(gap5[np.searchsorted(idx, i)] <= ACT_FLIP_MARGIN for i in flipped5)
        else:
            assert (t.top1, t.top5) == (o.top1, o.top5)
