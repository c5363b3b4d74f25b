"""Transformers are first-class: every weight matrix is a layer (nn.MultiheadAttention's packed
``in_proj_weight`` and its separate q/k/v weights included), each with a transformer kind, and every
stage (QE, fake-quant, packed export, Fisher, reconstruction) reaches it through one resolver.

Small random-init models: timm ViT/DeiT/Swin at 32 px, ConvNeXt-atto, a small torchvision
VisionTransformer, and hand-made nn.TransformerEncoder-style chains with and without kdim/vdim;
torchvision vit_b_16 for the coverage count only (no forward).
"""
from __future__ import annotations

import copy
import json
from collections import Counter

import numpy as np
import pytest
import torch
from torch import nn

from mixquant_core.data.image_sets import EvalTensors
from mixquant_core.export.packed import export_bytes, load_quantized_, rtn_layers
from mixquant_core.models.layers import CNN_KINDS, KINDS, TRANSFORMER_KINDS, find_layers, float32_rest, weight_ref
from mixquant_core.models.preprocess import Preprocess
from mixquant_core.models.registry import LoadedModel
from mixquant_core.plans.fisher import fisher_table
from mixquant_core.plans.plan import applied
from mixquant_core.quant.qe import qe_table
from mixquant_core.quant.quantizers import fake_quantize
from mixquant_core.recon.blocks import model_stages
from mixquant_core.recon.reconstruct import ReconConfig, reconstruct, reconstruct_plan
from mixquant_core.workspace import Workspace
from recon_support import chain_output

timm = pytest.importorskip("timm")
pytestmark = pytest.mark.usefixtures("one_thread")

IMAGE = 32
MHA_PARAMETERS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")


# --- the models ---------------------------------------------------------------------------------
class PatchTokens(nn.Module):
    """8x8 patches -> tokens [N, T, D], plus a learned position embedding."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, 8, stride=8)
        self.pos_embed = nn.Parameter(torch.randn(1, (IMAGE // 8) ** 2, dim) * 0.02)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2) + self.pos_embed


class MeanTokens(nn.Module):
    def forward(self, x):
        return x.mean(dim=1)


class CrossBlock(nn.Module):
    """Attention whose keys/values come from a narrower memory: kdim = vdim != embed_dim, so
    nn.MultiheadAttention holds separate q_proj_weight, k_proj_weight, v_proj_weight."""

    def __init__(self, dim: int, memory_dim: int):
        super().__init__()
        self.memory = nn.Linear(dim, memory_dim)
        self.attn = nn.MultiheadAttention(dim, 4, kdim=memory_dim, vdim=memory_dim, batch_first=True)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        m = self.memory(x)
        return self.norm(x + self.attn(x, m, m, need_weights=False)[0])


def mha_encoder(dim: int = 32) -> nn.Sequential:
    """A ViT as a chain: patch embedding, two nn.TransformerEncoderLayers (packed in_proj), head."""
    layer = lambda: nn.TransformerEncoderLayer(dim, 4, 2 * dim, dropout=0.0, batch_first=True)  # noqa: E731
    return nn.Sequential(PatchTokens(dim), layer(), layer(), MeanTokens(), nn.LayerNorm(dim), nn.Linear(dim, 10))


def mha_kdim_vdim(dim: int = 32) -> nn.Sequential:
    layer = nn.TransformerEncoderLayer(dim, 4, 2 * dim, dropout=0.0, batch_first=True)
    return nn.Sequential(PatchTokens(dim), CrossBlock(dim, 16), layer, MeanTokens(), nn.Linear(dim, 10))


def torchvision_vit_small() -> nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer

    model = VisionTransformer(image_size=IMAGE, patch_size=16, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
                              num_classes=10)
    nn.init.normal_(model.heads.head.weight, std=0.02)  # torchvision starts it at zero: no gradient would pass
    return model


def _timm(name: str, **kw):
    return lambda: timm.create_model(name, pretrained=False, num_classes=10, **kw)


BUILDERS = {
    "vit_tiny": _timm("vit_tiny_patch16_224", img_size=IMAGE),
    "deit_tiny_distilled": _timm("deit_tiny_distilled_patch16_224", img_size=IMAGE, depth=4),  # 2 heads, 2 tokens
    # swin_tiny's structure at a quarter of its width (28 M -> 1.8 M weights), windows of 2 at 32 px
    "swin_tiny": _timm("swin_tiny_patch4_window7_224", img_size=IMAGE, window_size=2, embed_dim=24,
                       num_heads=(1, 2, 4, 8)),
    "convnext_atto": _timm("convnext_atto"),
    "torchvision_vit_small": torchvision_vit_small,
    "mha_encoder": mha_encoder,
    "mha_kdim_vdim": mha_kdim_vdim,
}
RUNNABLE = list(BUILDERS)
WITH_MHA = ["torchvision_vit_small", "mha_encoder", "mha_kdim_vdim"]


def build(arch: str) -> nn.Module:
    torch.manual_seed(0)
    if arch == "vit_b_16":
        import torchvision

        return torchvision.models.vit_b_16(weights=None).eval()
    return BUILDERS[arch]().eval()


@pytest.fixture(scope="module")
def models():
    """Each architecture built once per module (tests that change a model take a deep copy)."""
    cache = {}
    return lambda arch: cache.setdefault(arch, build(arch))


# --- 1. coverage ---------------------------------------------------------------------------------
def should_be_covered(model: nn.Module) -> dict:
    """State-dict key -> tensor of every weight matrix: the >= 2-D ``weight`` of each Conv/Linear
    module and nn.MultiheadAttention's q/k/v projection parameters. Found here independently of
    models/layers.py. Not counted: biases, norms, position embeddings, class tokens, Swin's relative
    position bias tables, layer scales (1-D or not a projection)."""
    out = {}
    for name, m in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) and m.weight.dim() >= 2:
            out[prefix + "weight"] = m.weight
        if isinstance(m, nn.MultiheadAttention):
            out.update({prefix + a: getattr(m, a) for a in MHA_PARAMETERS if getattr(m, a) is not None})
    return out


@pytest.mark.parametrize("arch", RUNNABLE + ["vit_b_16"])
def test_every_weight_matrix_is_a_layer(arch, models):
    model = models(arch)
    layers = find_layers(model)
    refs = [weight_ref(model, layer.name) for layer in layers]
    expected = should_be_covered(model)
    assert [r.key for r in refs if r.key not in expected] == []
    assert sorted(expected) == sorted(r.key for r in refs)  # 100 % of them, each once
    for layer, ref in zip(layers, refs):  # the resolver hands out the model's own Parameter
        assert ref.tensor is expected[ref.key] and tuple(ref.tensor.shape) == layer.shape
    # what stays float32 is accounted for, and no weight matrix is among it without a reason
    rest = float32_rest(model, layers)
    total = sum(p.numel() for p in model.parameters())
    assert sum(layer.params for layer in layers) + sum(g.params for g in rest) == total
    assert "other" not in [g.reason for g in rest] and "layer left float32 (excluded)" not in [g.reason for g in rest]


def test_vit_b_16_counts_its_packed_qkv_projections(models):
    # before: 38 layers, 75.3 % of the weights (the 12 in_proj_weight, 21.2 M, were not layers)
    model = models("vit_b_16")
    layers = find_layers(model)
    total = sum(p.numel() for p in model.parameters())
    qkv = [layer for layer in layers if layer.name.endswith(".self_attention.in_proj_weight")]
    assert len(layers) == 50 and len(qkv) == 12
    assert qkv[0].name == "encoder.layers.encoder_layer_0.self_attention.in_proj_weight"
    assert qkv[0].shape == (3 * 768, 768) and qkv[0].kind == "attn_qkv"
    assert sum(layer.params for layer in layers) / total > 0.996
    reasons = {g.reason: g for g in float32_rest(model, layers)}
    assert list(reasons) == ["normalization", "bias", "position embedding", "class/distillation token"]
    assert reasons["position embedding"].names == ("encoder.pos_embedding",)
    assert reasons["class/distillation token"].names == ("class_token",)


def test_separate_qkv_weights_are_three_layers(models):
    layers = {layer.name: layer for layer in find_layers(models("mha_kdim_vdim"))}
    assert layers["1.attn.q_proj_weight"].shape == (32, 32)
    assert layers["1.attn.k_proj_weight"].shape == layers["1.attn.v_proj_weight"].shape == (32, 16)
    assert "1.attn.in_proj_weight" not in layers  # None when q, k, v differ
    assert "2.self_attn.in_proj_weight" in layers


def test_excluded_layers_are_reported_float32(models):
    model = models("mha_encoder")
    layers = find_layers(model, exclude=["*.in_proj_weight"])
    rest = {g.reason: g for g in float32_rest(model, layers)}
    assert rest["layer left float32 (excluded)"].names == ("1.self_attn.in_proj_weight", "2.self_attn.in_proj_weight")


def test_an_unknown_name_is_refused(models):
    from mixquant_core.errors import MixQuantError

    model = models("mha_encoder")
    for name in ("1.self_attn.q_proj_weight", "1.self_attn.in_proj_bias", "1.norm1", "nope", "1.self_attn.in_proj_weight.x"):
        with pytest.raises(MixQuantError, match="is not in this model"):
            weight_ref(model, name)


# --- 2. kinds ------------------------------------------------------------------------------------
def test_kinds_order_cnn_then_transformer():
    assert KINDS == CNN_KINDS + TRANSFORMER_KINDS
    assert CNN_KINDS == ("first_conv", "kxk_conv", "1x1_conv", "depthwise", "fc")
    assert TRANSFORMER_KINDS == ("patch_embed", "attn_qkv", "attn_out", "mlp_in", "mlp_out", "head")


BLOCKS_12 = {"patch_embed": 1, "attn_qkv": 12, "attn_out": 12, "mlp_in": 12, "mlp_out": 12}
EXPECTED_KINDS = {
    "vit_tiny": {**BLOCKS_12, "head": 1},
    "deit_tiny_distilled": {"patch_embed": 1, "attn_qkv": 4, "attn_out": 4, "mlp_in": 4, "mlp_out": 4,
                            "head": 2},  # head and head_dist (timm's get_classifier)
    "swin_tiny": {**BLOCKS_12, "fc": 3, "head": 1},  # fc: the patch-merging reductions
    # no attention: its patchify stem stays first_conv; its timm Mlp blocks and classifier are named
    "convnext_atto": {"first_conv": 1, "depthwise": 12, "kxk_conv": 3, "mlp_in": 12, "mlp_out": 12, "head": 1},
    "torchvision_vit_small": {"patch_embed": 1, "attn_qkv": 2, "attn_out": 2, "mlp_in": 2, "mlp_out": 2, "head": 1},
    "mha_encoder": {"patch_embed": 1, "attn_qkv": 2, "attn_out": 2, "mlp_in": 2, "mlp_out": 2, "head": 1},
    "mha_kdim_vdim": {"patch_embed": 1, "fc": 1, "attn_qkv": 4, "attn_out": 2, "mlp_in": 1, "mlp_out": 1, "head": 1},
    "vit_b_16": {**BLOCKS_12, "head": 1},
}


@pytest.mark.parametrize("arch", list(EXPECTED_KINDS))
def test_kinds_from_the_module_structure(arch, models):
    assert dict(Counter(layer.kind for layer in find_layers(models(arch)))) == EXPECTED_KINDS[arch]


def test_kinds_by_name(models):
    kinds = {layer.name: layer.kind for layer in find_layers(models("mha_kdim_vdim"))}
    assert kinds == {
        "0.proj": "patch_embed", "1.memory": "fc",
        "1.attn.q_proj_weight": "attn_qkv", "1.attn.k_proj_weight": "attn_qkv", "1.attn.v_proj_weight": "attn_qkv",
        "1.attn.out_proj": "attn_out",
        "2.self_attn.in_proj_weight": "attn_qkv", "2.self_attn.out_proj": "attn_out",
        "2.linear1": "mlp_in", "2.linear2": "mlp_out", "4": "head",
    }
    vit = {layer.name: layer.kind for layer in find_layers(models("vit_tiny"))}
    assert [vit[n] for n in ("patch_embed.proj", "blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.0.mlp.fc1",
                             "blocks.0.mlp.fc2", "head")] == list(TRANSFORMER_KINDS)


def test_cnn_kinds_unchanged(tiny_model):
    import torchvision

    assert [layer.kind for layer in find_layers(tiny_model)] == ["first_conv", "depthwise", "1x1_conv", "kxk_conv", "fc"]
    kinds = Counter(layer.kind for layer in find_layers(torchvision.models.resnet18(weights=None)))
    assert kinds == {"first_conv": 1, "kxk_conv": 16, "1x1_conv": 3, "fc": 1}


def test_torchscript_attention_is_found_like_eager(models):
    # nn.MultiheadAttention and its out_proj keep their class names in TorchScript
    model = models("mha_encoder")[1]
    assert find_layers(torch.jit.script(model)) == find_layers(model)


# --- 3. the stages on every layer ----------------------------------------------------------------
def _mixed_bits(layers):
    cycle = (8, 5, 3, 2, 6, 4, 7)
    return {layer.name: cycle[i % len(cycle)] for i, layer in enumerate(layers)}


def _expected_key(name: str) -> str:
    """A layer's state-dict key, by the README's rule (not through the resolver)."""
    return name if name.rpartition(".")[2] in MHA_PARAMETERS else f"{name}.weight"


@pytest.mark.parametrize("quantizer", ["asymmetric", "per-channel"])
@pytest.mark.parametrize("arch", RUNNABLE)
def test_qe_table_is_the_direct_per_tensor_mse(arch, quantizer, models):
    model = models(arch)
    bits = (8, 4, 2)
    table = qe_table(model, quantizer, bits)
    assert sorted(_expected_key(layer.name) for layer in table.layers) == sorted(should_be_covered(model))
    state = model.state_dict()
    direct = np.array([[float(torch.mean((state[_expected_key(layer.name)] - fake_quantize(
        state[_expected_key(layer.name)], b, quantizer)) ** 2)) for b in bits] for layer in table.layers])
    np.testing.assert_allclose(table.qe, direct, rtol=1e-4, atol=0)


def _workspace(model: nn.Module, quantizer: str) -> Workspace:
    loaded = LoadedModel(model, "test_transformer", "file", Preprocess(resize=IMAGE, crop=IMAGE), fingerprint="test")
    return Workspace(loaded, quantizer, device="cpu", engine="torch")


@pytest.mark.parametrize("arch", RUNNABLE)
def test_packed_export_round_trip_is_bit_exact(arch, models):
    model = models(arch)
    ws = _workspace(model, "per-channel")  # per output row: each of in_proj's 3E rows has its own range
    bits = _mixed_bits(ws.layers)
    assert sorted(_expected_key(name) for name in bits) == sorted(should_be_covered(model))
    plan = ws.plan_from_bits([bits[layer.name] for layer in ws.layers])
    data = export_bytes(model, plan, rtn_layers(model, plan))
    fresh = copy.deepcopy(model)
    torch.manual_seed(123)
    with torch.no_grad():
        for p in fresh.parameters():
            p.normal_()  # everything must come from the file
    load_quantized_(fresh, data)
    state, loaded = model.state_dict(), fresh.state_dict()
    quantized = {_expected_key(name) for name in bits}
    for name, b in bits.items():
        key = _expected_key(name)
        assert torch.equal(loaded[key], fake_quantize(state[key].float(), b, "per-channel")), key
    for key in state:
        if key not in quantized:
            assert torch.equal(loaded[key], state[key]), key


@pytest.mark.parametrize("arch", RUNNABLE)
def test_fake_quant_restores_the_model_bit_exact(arch, models):
    model = models(arch)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bits = _mixed_bits(find_layers(model))
    assert sorted(_expected_key(name) for name in bits) == sorted(should_be_covered(model))
    with applied(model, bits, "asymmetric"):
        now = model.state_dict()
        for name, b in bits.items():
            key = _expected_key(name)
            assert torch.equal(now[key], fake_quantize(before[key], b, "asymmetric")), key
    after = model.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_fake_quant_changes_what_attention_computes(models):
    # the forward reads the quantized in_proj_weight (it is the model's own parameter, not a copy)
    model = models("mha_encoder")
    x = torch.randn(2, 3, IMAGE, IMAGE)
    with torch.no_grad():
        ref = model(x)
        with applied(model, {"1.self_attn.in_proj_weight": 2}, "asymmetric"):
            assert not torch.allclose(model(x), ref)
        assert torch.equal(model(x), ref)


@pytest.mark.parametrize("arch", WITH_MHA)
def test_fisher_reaches_attention_parameters(arch, models):
    model = models(arch)
    layers = find_layers(model)
    g = torch.Generator().manual_seed(0)
    data = EvalTensors(torch.randn(3, 3, IMAGE, IMAGE, generator=g), torch.randint(0, 10, (3,), generator=g))
    table = fisher_table(model, layers, data, "asymmetric", bits=(8, 2))
    qkv = [i for i, layer in enumerate(layers) if layer.name.rpartition(".")[2] in MHA_PARAMETERS]
    assert qkv and all(table.fisher_sum[i] > 0 and table.cost[i, 1] > table.cost[i, 0] for i in qkv)
    assert all(p.requires_grad for p in model.parameters())  # flags restored


# --- 4. reconstruction ----------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["torchvision_vit_small", "vit_tiny", "mha_encoder", "mha_kdim_vdim"])
def test_block_chain_reproduces_the_transformer(arch, models):
    model = models(arch)
    x = torch.randn(2, 3, IMAGE, IMAGE)
    stages = model_stages(model)
    with torch.no_grad():
        assert torch.allclose(chain_output(stages, x), model(x), atol=1e-5)
    assert [n for s in stages for n in s.layers] == [layer.name for layer in find_layers(model)]


@pytest.mark.parametrize("arch", ["torchvision_vit_small", "mha_kdim_vdim"])
def test_attention_projections_are_reconstructed(arch, models):
    """in_proj_weight (or q/k/v_proj_weight) is reconstructed inside its block like any weight:
    learned codes on the round-to-nearest grid, the model passed in untouched."""
    model = models(arch)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ws = _workspace(model, "per-channel")
    plan = ws.plan_from_bits([4] * len(ws.layers))
    calib = torch.randn(8, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(1))
    cfg = ReconConfig(iters=3, batch_size=4, eval_samples=8, scheme="per-channel")
    result = reconstruct_plan(model, plan, calib, cfg)
    assert list(result.layers) == list(plan.layers)
    state = model.state_dict()
    projections = [n for n in plan.layers if n.rpartition(".")[2] in MHA_PARAMETERS]
    assert len(projections) == {"torchvision_vit_small": 2, "mha_kdim_vdim": 4}[arch]
    for name in projections:
        q = result.layers[name]
        assert q.codes.shape == state[_expected_key(name)].shape and int(q.codes.max()) <= 15
        assert q.scale.numel() == q.codes.shape[0]  # one range per output row
        assert any(name in b.layers for b in result.blocks)
    assert all(torch.equal(state[k], before[k]) for k in before)


def test_reconstruct_refuses_an_unknown_attention_name(models):
    from mixquant_core.errors import MixQuantError

    with pytest.raises(MixQuantError, match="layer '1.self_attn.q_proj_weight' of the plan is not in this model"):
        reconstruct(models("mha_encoder"), {"1.self_attn.q_proj_weight": 4}, torch.randn(2, 3, IMAGE, IMAGE))


# --- 5. what the CLI says ---------------------------------------------------------------------------
def test_cli_qe_reports_what_stays_float32(capsys, monkeypatch, models):
    import mixquant_cli.qe as qe_cli
    from mixquant_cli.main import main

    ws = _workspace(models("mha_encoder"), "asymmetric")
    monkeypatch.setattr(qe_cli, "open_evaluations", lambda args: type("E", (), {"ws": ws})())
    assert main(["qe", "--json", "--no-progress", "--bits", "8,4"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert "1.self_attn.in_proj_weight" in [layer["name"] for layer in out["layers"]]
    groups = {g["reason"]: g for g in out["float32"]["groups"]}
    assert list(groups) == ["normalization", "bias", "position embedding"]
    assert groups["position embedding"]["names"] == ["0.pos_embed"]
    assert out["float32"]["params"] == sum(g["params"] for g in groups.values())
    assert main(["qe", "--no-progress", "--bits", "8,4"]) == 0
    text = capsys.readouterr().out
    assert f"stays float32: {out['float32']['params']:,} parameters" in text and "  position embedding: 512 in 1 tensor(s)" in text
