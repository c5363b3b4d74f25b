"""ONNX export of a plan: integer codes in the narrowest type, DequantizeLinear weights equal to
the fake-quantized ones, runs in ONNX Runtime with the torch model's outputs; bad files refused
with one line; on Lite0 + real images `mixquant load model.onnx` = the fake-quantized model."""
from __future__ import annotations

import copy
import json

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, numpy_helper

from mixquant_cli.main import main
from mixquant_core.errors import MixQuantError
from mixquant_core.evaluations import Evaluations
from mixquant_core.export.onnx import (OnnxFileError, build_onnx, container_bits, evaluate_onnx, onnx_bytes,
                                       onnx_size_report, read_onnx)
from mixquant_core.export.onnx_pack import read_packed_layers
from mixquant_core.export.packed import rtn_layers
from mixquant_core.models.onnx_graph import OnnxExportError
from mixquant_core.models.preprocess import Preprocess
from mixquant_core.plans.plan import quantize_model_
from mixquant_core.quant.quantizers import QUANTIZERS, fake_quantize, is_per_channel, is_symmetric
from recon_support import MIXED_BITS, images, tiny_chain, workspace

PRE = Preprocess(resize=32, crop=24)
WANT_TYPE = {  # (container bits, signed) -> ONNX element type
    (2, False): TensorProto.UINT2, (2, True): TensorProto.INT2, (4, False): TensorProto.UINT4,
    (4, True): TensorProto.INT4, (8, False): TensorProto.UINT8, (8, True): TensorProto.INT8,
}


def _export(quantizer="asymmetric", bits=MIXED_BITS, model=None):
    model = model or tiny_chain()
    plan = workspace(model, quantizer).plan_from_bits(bits)
    return model, plan, onnx_bytes(model, plan, PRE)


@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_packed_codes_and_dequantized_weights_are_exact(quantizer, one_thread):
    model, plan, data = _export(quantizer)
    proto = onnx.load_model_from_string(data)
    inits = {i.name: i for i in proto.graph.initializer}
    modules = dict(model.named_modules())
    packed = read_packed_layers(proto.graph, "test")
    for name, b in plan.bits.items():
        base = f"{name}.weight"
        assert base not in inits  # the float weight is gone: only packed codes, scale, zero-point
        n = modules[name].weight.numel()
        assert list(inits[base + "_packed"].dims) == [-(-n * b // 8), 1]  # exactly b bits a weight
        q = packed[base].codes(inits).astype(np.float32)
        scale = numpy_helper.to_array(inits[base + "_scale"]).copy()
        zp = numpy_helper.to_array(inits[base + "_zero_point"]).astype(np.float32)
        assert scale.size == (modules[name].weight.shape[0] if is_per_channel(quantizer) else 1)
        assert q.min() >= 0 and q.max() <= 2**b - 1
        if is_symmetric(quantizer):
            assert zp.shape == () and zp == 2 ** (b - 1)
        weight = (torch.from_numpy(q) - torch.from_numpy(zp)) * torch.from_numpy(scale)
        assert torch.equal(weight, fake_quantize(modules[name].weight.detach(), b, quantizer))
    ops = {n.op_type for n in proto.graph.node}
    assert ops >= {"BitwiseAnd", "Min", "Conv", "BatchNormalization", "Gemm"} and not ops & {"DequantizeLinear", "BitShift"}
    assert proto.opset_import[0].version == 25
    f = read_onnx(data, model)
    assert f.plan.bits == plan.bits and f.scheme == quantizer and f.preprocess == PRE


@pytest.mark.parametrize("quantizer", ["asymmetric", "per-channel"])
def test_onnx_runtime_output_equals_the_fake_quantized_model(quantizer, one_thread):
    model, plan, data = _export(quantizer)
    x = images(6)
    expected = quantize_model_(copy.deepcopy(model), plan)(x).detach().numpy()
    out = read_onnx(data, model).session().run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method, quantizer", [("brecq", "asymmetric"), ("gptq", "per-channel")])
def test_reconstructed_codes_export_the_same_way(one_thread, method, quantizer):
    """BRECQ's codes, and GPTQ's on each channel's best grid (scales that are no longer the plan's)."""
    import onnxruntime as ort

    from mixquant_core.recon.reconstruct import ReconConfig, reconstruct_plan

    model = tiny_chain()
    plan = workspace(model, quantizer).plan_from_bits(MIXED_BITS)
    result = reconstruct_plan(model, plan, images(8), ReconConfig(iters=5, batch_size=4, eval_samples=8, method=method,
                                                                  scheme=quantizer))
    data = onnx_bytes(model, plan, PRE, reconstructed=result)
    proto = onnx.load_model_from_string(data)
    inits = {i.name: i for i in proto.graph.initializer}
    packed = read_packed_layers(proto.graph, "test")
    for name, q in result.layers.items():
        codes = packed[f"{name}.weight"].codes(inits).astype(np.int64)
        np.testing.assert_array_equal(codes, q.codes.numpy().astype(np.int64))
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for name, q in result.layers.items():
            dict(ref.named_modules())[name].weight.copy_(q.weight())
        x = images(4)
        want = ref(x).numpy()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert json.loads({p.key: p.value for p in proto.metadata_props}["mixquant_plan"])["layers"].keys() == plan.bits.keys()


def test_size_report_weight_only_file_has_no_container_padding():
    model, plan, data = _export()
    report = onnx_size_report(data, model, plan, "asymmetric")
    assert report["container_padding_bytes"] == 0 and report["bytes"] == len(data)
    assert report["accounted_bytes"] < len(data) < report["accounted_bytes"] + 7_000  # graph and metadata only (6.2 kB)


# --- bad input --------------------------------------------------------------------------------
def test_truncated_file_is_refused_in_one_line(tmp_path, capsys):
    _, _, data = _export()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(OnnxFileError, match="corrupt or truncated|not a MixQuant ONNX export"):
        read_onnx(path)
    assert main(["load", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mixquant: error:") and "\n" not in err


def test_onnx_of_another_model_is_refused():
    _, _, data = _export(model=tiny_chain(width=8))
    with pytest.raises(OnnxFileError, match="another model"):
        read_onnx(data, tiny_chain(width=12))


def test_plain_onnx_and_external_data_are_refused(tmp_path):
    from mixquant_core.models.onnx_graph import float_graph

    plain = float_graph(tiny_chain(), (3, 24, 24))
    with pytest.raises(OnnxFileError, match="not a MixQuant ONNX export"):
        read_onnx(plain.SerializeToString())
    _, _, data = _export()
    proto = onnx.load_model_from_string(data)
    init = proto.graph.initializer[0]
    init.data_location = TensorProto.EXTERNAL
    init.external_data.add(key="location", value="../../etc/passwd")
    with pytest.raises(OnnxFileError, match="external data"):
        read_onnx(proto.SerializeToString())


def test_a_model_that_cannot_be_exported_fails_in_one_line():
    from test_engines import ValueBranch

    model = ValueBranch().eval()
    loaded_plan = workspace(model).plan_from_bits([4, 8])
    with pytest.raises(OnnxExportError) as exc:
        build_onnx(model, loaded_plan, rtn_layers(model, loaded_plan), PRE)
    assert isinstance(exc.value, MixQuantError) and "\n" not in str(exc.value)


# --- Lite0 on real images ----------------------------------------------------------------------
@pytest.mark.data
@pytest.mark.slow
def test_lite0_onnx_file_has_the_fake_quantized_top1_top5(lite0, val_dir, tmp_path, capsys):
    from mixquant_core.data.image_sets import open_image_folder
    from mixquant_core.data.load import load_tensors
    from mixquant_core.workspace import Workspace

    ws = Workspace(lite0, device="cpu", engine="torch")
    plan = ws.plan_from_bits(ws.budget_bits("qe", avg_bits=5))
    plan_path, out = tmp_path / "plan.json", tmp_path / "lite0.onnx"
    plan.save(plan_path)
    assert main(["export", "--format", "onnx", "--plan", str(plan_path), "--out", str(out), "--no-progress", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["bytes"] == out.stat().st_size and report["container_padding_bytes"] == 0  # bit-packed: no padding
    assert main(["load", str(out), "--data", str(val_dir), "--limit", "100", "--no-progress", "--json"]) == 0
    loaded = json.loads(capsys.readouterr().out)
    data = load_tensors(open_image_folder(val_dir).subset(100), lite0.preprocess)
    fake = Evaluations(ws).evaluate_plan(plan, data)
    assert (loaded["top1"], loaded["top5"], loaded["images"]) == (fake.top1, fake.top5, 100)
    assert abs(loaded["loss"] - fake.loss) <= 1e-4 and loaded["from_store"] == 0
    # loaded again: the results store answers (keyed by the file's content), the same numbers
    assert main(["load", str(out), "--data", str(val_dir), "--limit", "100", "--no-progress", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["from_store"] == 1 and (again["top1"], again["loss"]) == (loaded["top1"], loaded["loss"])
    assert main(["load", str(out), "--model", "resnet18", "--no-progress"]) == 2
    assert "not of resnet18" in capsys.readouterr().err
