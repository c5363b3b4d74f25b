"""Reconstruction blocks for transformers (issue #21, part 4): BRECQ's block is one encoder layer.
For timm ViT/DeiT/Swin and torchvision ViT/Swin (tiny random-init variants), the chain of blocks
reproduces the model exactly and covers every quantizable layer, and a reconstruction of a few
iterations runs, keeps the plan's bit-widths and lowers no block's error below what it measured."""
from __future__ import annotations

import pytest
import torch

from mixquant_core.errors import MixQuantError
from mixquant_core.models.layers import find_layers
from mixquant_core.quant.quantizers import fake_quantize
from mixquant_core.recon.blocks import model_stages
from mixquant_core.recon.reconstruct import ReconConfig, reconstruct
from recon_support import chain_output

pytestmark = pytest.mark.usefixtures("one_thread")


def _timm(name: str, **kwargs):
    timm = pytest.importorskip("timm")
    return timm.create_model(name, pretrained=False, num_classes=10, **kwargs)


def _tv_vit():
    from torchvision.models.vision_transformer import VisionTransformer

    return VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
                             num_classes=10)


def _tv_swin():
    from torchvision.models.swin_transformer import SwinTransformer

    return SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=[7, 7],
                           num_classes=10)


# name -> (builder, input size)
ARCHITECTURES = {
    "timm-vit": (lambda: _timm("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2), 32),
    "timm-deit": (lambda: _timm("deit_tiny_patch16_224", img_size=32, patch_size=8, depth=2), 32),
    "timm-swin": (lambda: _timm("swin_tiny_patch4_window7_224", img_size=56, window_size=7, depths=(1, 1),
                                num_heads=(1, 2), embed_dim=16), 56),
    "torchvision-vit": (_tv_vit, 32),
    "torchvision-swin": (_tv_swin, 56),
}


def _model(name):
    build, size = ARCHITECTURES[name]
    torch.manual_seed(0)
    return build().eval(), size


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_the_chain_of_blocks_is_the_model_and_covers_every_layer(name):
    model, size = _model(name)
    x = torch.randn(3, 3, size, size)
    stages = model_stages(model)
    with torch.no_grad():
        assert torch.equal(chain_output(stages, x), model(x))
    in_blocks = [n for s in stages for n in s.layers]
    assert sorted(in_blocks) == sorted(layer.name for layer in find_layers(model))  # each layer in one block
    assert len(in_blocks) == len(set(in_blocks))
    # one block per encoder layer, beside the patch embedding and the head
    encoder = [s for s in stages if s.name not in ("patch_embed", "head") and "downsample" not in s.name]
    assert encoder and all(len(s.layers) >= 4 for s in encoder)  # attention q/k/v and out, MLP in and out


@pytest.mark.parametrize("name", ["timm-vit", "torchvision-swin"])
def test_a_short_reconstruction_runs_on_a_transformer(name):
    model, size = _model(name)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bits = {layer.name: 4 for layer in find_layers(model)}
    calib = torch.randn(8, 3, size, size)
    cfg = ReconConfig(iters=3, batch_size=4, scheme="per-channel", eval_samples=8)
    result = reconstruct(model, bits, calib, cfg)
    assert set(result.layers) == set(bits) and all(q.nbits == 4 for q in result.layers.values())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model is untouched
    names = [b.name for b in result.blocks]
    assert names[0] == "patch_embed" and names[-1] == "head" and len(names) == len(model_stages(model))
    # the learned codes lie on the base grid: within one step of round-to-nearest
    weights = dict(model.named_parameters())
    for layer, q in result.layers.items():
        w = weights[f"{layer}.weight"].detach()
        step = (w.abs().amax(dim=tuple(range(1, w.dim())), keepdim=True) * 2 / 15) + 1e-12
        assert ((q.weight() - fake_quantize(w, 4, "per-channel")).abs() <= step * 1.01).all()


def test_an_unsupported_architecture_is_one_line():
    from torch import nn

    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(x)

    with pytest.raises(MixQuantError, match="ViT/DeiT and Swin"):
        model_stages(Odd())
