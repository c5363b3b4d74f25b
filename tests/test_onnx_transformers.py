"""Transformers on the ONNX path (issue #21, part 3): their traces freeze shape arithmetic, which is
benign at the traced image size; the probe check (models/trace_check.py) accepts them and still
refuses value-dependent control flow and frozen batch sizes. The ONNX Runtime engine gives torch's
numbers for them and `export --format onnx` writes them; every state tensor stays a named
initializer and BatchNorm stays unfolded."""
from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from mixquant_core.data.image_sets import EvalTensors
from mixquant_core.evaluation.engines.onnxruntime_engine import OnnxRuntimeEngine
from mixquant_core.evaluation.engines.torch_engine import TorchEngine
from mixquant_core.export.onnx import onnx_bytes, read_onnx
from mixquant_core.models.onnx_graph import OnnxExportError, float_graph
from mixquant_core.models.preprocess import Preprocess
from mixquant_core.models.registry import LoadedModel
from mixquant_core.plans.plan import applied, quantize_model_
from mixquant_core.workspace import Workspace

timm = pytest.importorskip("timm")

SIZE = 32
# Tiny random-init variants of the architectures: each traces in about a second.
TINY = {
    "vit": ("vit_tiny_patch16_224", dict(img_size=SIZE, patch_size=8, depth=2)),
    "deit": ("deit_tiny_patch16_224", dict(img_size=SIZE, patch_size=8, depth=2)),
    "swin": ("swin_tiny_patch4_window7_224", dict(img_size=SIZE, window_size=2, depths=(1, 1, 1, 1), embed_dim=24,
                                                  num_heads=(1, 2, 3, 4))),
    "convnext": ("convnext_atto", dict()),
}
# Flips between the engines are allowed only where the deciding logits are within this of each
# other (tests/test_engines.py: the engines differ by ~1e-6, float summation order).
FLIP_MARGIN = 1e-4


def _tiny(arch: str) -> nn.Module:
    name, kwargs = TINY[arch]
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=10, **kwargs).eval()


def _data(n: int = 8) -> EvalTensors:
    g = torch.Generator().manual_seed(1)
    return EvalTensors(torch.randn(n, 3, SIZE, SIZE, generator=g), torch.randint(0, 10, (n,), generator=g))


def _mixed_bits(model: nn.Module) -> dict:
    from mixquant_core.models.layers import find_layers

    return {layer.name: (4, 8, 3, 6)[k % 4] for k, layer in enumerate(find_layers(model))}


def _assert_same_counts_up_to_ties(model, data, bits, got, want):
    np.testing.assert_allclose(got.losses, want.losses, atol=1e-4)
    with torch.inference_mode(), applied(model, bits or {}, "asymmetric"):
        top = model(data.to_inputs(data.images)).topk(6, dim=1).values
    gap1, gap5 = (top[:, 0] - top[:, 1]).numpy(), (top[:, 4] - top[:, 5]).numpy()
    assert all(gap1[i] <= FLIP_MARGIN for i in np.flatnonzero(got.hit1 != want.hit1))
    assert all(gap5[i] <= FLIP_MARGIN for i in np.flatnonzero(got.hit5 != want.hit5))


@pytest.mark.parametrize("arch", list(TINY))
def test_transformer_runs_on_onnxruntime_with_torchs_numbers(arch, one_thread):
    model = _tiny(arch)
    data = _data()
    notices = []
    engine = OnnxRuntimeEngine(notify=notices.append)
    for bits in (None, _mixed_bits(model)):
        got = engine.evaluate(model, data, bits, "asymmetric")
        want = TorchEngine("cpu").evaluate(model, data, bits, "asymmetric")
        _assert_same_counts_up_to_ties(model, data, bits, got, want)
    assert notices == []  # no fallback to torch


@pytest.mark.slow
def test_maxvit_runs_on_onnxruntime(one_thread):
    torch.manual_seed(0)
    model = timm.create_model("maxvit_pico_rw_256", pretrained=False, num_classes=10, img_size=SIZE).eval()
    data = _data(4)
    notices = []
    got = OnnxRuntimeEngine(notify=notices.append).evaluate(model, data)
    _assert_same_counts_up_to_ties(model, data, None, got, TorchEngine("cpu").evaluate(model, data))
    assert notices == []


@pytest.mark.parametrize("arch", ["vit", "swin", "convnext"])
def test_transformer_exports_to_onnx_as_the_fake_quantized_model(arch, one_thread):
    model = _tiny(arch)
    loaded = LoadedModel(model, arch, "file", Preprocess(resize=SIZE, crop=SIZE), fingerprint="test")
    ws = Workspace(loaded, "asymmetric", device="cpu")
    plan = ws.plan_from_bits([(4, 8, 2, 6)[k % 4] for k in range(len(ws.layers))])  # 2 and 4 bits: see new_session
    f = read_onnx(onnx_bytes(model, plan, loaded.preprocess), model)
    x = _data(3).images  # float images are the inputs as they are
    want = quantize_model_(copy.deepcopy(model), plan)(x).detach().numpy()
    # the file's own session: its int4 DequantizeLinear + MatMul run in float32, as torch does
    got = f.session().run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


class ShapeAsserts(nn.Module):
    """What transformers do: assert the input size and compute with sizes as Python numbers."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        torch._assert(x.shape[-1] == SIZE, "wrong input width")  # a traced size as a Python boolean
        half = int(x.shape[-1]) // 2  # ... and as a Python number
        return self.fc(self.conv(x)[:, :, :half, :half].mean(dim=(2, 3)))


def test_frozen_shape_arithmetic_is_accepted(one_thread):
    model = ShapeAsserts().eval()
    data = _data()
    notices = []
    got = OnnxRuntimeEngine(notify=notices.append).evaluate(model, data)
    np.testing.assert_allclose(got.losses, TorchEngine().evaluate(model, data).losses, atol=1e-5)
    assert notices == []


class FrozenBatch(ShapeAsserts):
    """The batch size as a Python number: the trace (batch 1) would reshape every batch to one row."""

    def forward(self, x):
        x = self.conv(x).mean(dim=(2, 3))
        return self.fc(x.reshape(int(x.shape[0]), -1))


class BranchOnInputSign(ShapeAsserts):
    """Control flow on the input's values: the trace would keep the branch the zeros took."""

    def forward(self, x):
        if x.mean() < 0:
            x = x * 3
        return self.fc(self.conv(x).mean(dim=(2, 3)))


@pytest.mark.parametrize("cls", [FrozenBatch, BranchOnInputSign])
def test_frozen_values_are_refused(cls, one_thread):
    with pytest.raises(OnnxExportError, match="cannot be exported to ONNX: its forward depends on tensor values"):
        float_graph(cls().eval(), (3, SIZE, SIZE))


class TwinNorms(nn.Module):
    """Equal state tensors at init (two BatchNorms, two LayerNorms): the exporter would merge them."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4)
        self.ln1, self.ln2 = nn.LayerNorm(4), nn.LayerNorm(4)
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        x = self.bn2(self.conv2(self.bn1(self.conv1(x)))).mean(dim=(2, 3))
        return self.fc(self.ln2(self.ln1(x)))


@pytest.mark.parametrize("make", [TwinNorms, lambda: _tiny("vit")], ids=["twin-norms", "vit"])
def test_every_state_tensor_is_its_own_initializer_and_batchnorm_stays(make):
    model = make().eval()
    proto = float_graph(model, (3, SIZE, SIZE))
    names = {init.name for init in proto.graph.initializer}
    assert {k for k, v in model.state_dict().items() if v.is_floating_point()} <= names
    assert [i.name for i in proto.graph.input] == ["input"]  # initializers are not inputs (ORT folds them)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert sum(n.op_type == "BatchNormalization" for n in proto.graph.node) == n_bn
    onnx.checker.check_model(proto)


def _torchvision_vit() -> nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(image_size=SIZE, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
                             num_classes=10).eval()


@pytest.mark.parametrize("quantizer", ["asymmetric", "per-channel"])
def test_onnx_round_trip_is_bit_exact_for_attention_weights(quantizer, one_thread):
    """Each layer's codes, scale and zero-point in the file dequantize to exactly its fake-quantized
    weight: nn.MultiheadAttention's packed in_proj_weight (stored under its parameter's name) too."""
    from onnx import numpy_helper

    from mixquant_core.export.onnx_pack import read_packed_layers
    from mixquant_core.models.layers import find_layers, layer_weight, state_key
    from mixquant_core.quant.quantizers import fake_quantize

    model = _torchvision_vit()
    layers = find_layers(model)
    assert any(layer.name.endswith("in_proj_weight") for layer in layers)
    loaded = LoadedModel(model, "tv-vit", "file", Preprocess(resize=SIZE, crop=SIZE), fingerprint="test")
    plan = Workspace(loaded, quantizer, device="cpu").plan_from_bits([(4, 8, 2, 6)[k % 4] for k in range(len(layers))])
    graph = onnx.load_from_string(onnx_bytes(model, plan, loaded.preprocess)).graph
    inits = {i.name: i for i in graph.initializer}
    packed = read_packed_layers(graph, "test")
    for name, b in plan.bits.items():
        key = state_key(model, name)
        q = packed[key].codes(inits).astype(np.float32)  # bit-packed codes (export/onnx_pack.py)
        scale = numpy_helper.to_array(inits[key + "_scale"]).copy()
        zp = numpy_helper.to_array(inits[key + "_zero_point"]).astype(np.float32)
        weight = (torch.from_numpy(q) - torch.from_numpy(zp)) * torch.from_numpy(scale)
        assert torch.equal(weight, fake_quantize(layer_weight(model, name).detach(), b, quantizer)), name
