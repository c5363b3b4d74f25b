"""A model cut into a chain of blocks, for block-wise reconstruction (BRECQ).

BRECQ reconstructs one residual block at a time: the block's output under quantized weights is
fitted to its float32 output. That needs the model as a plain chain ``x -> stage_1 -> ... -> logits``.
Supported: EfficientNet-Lite (MBConvBlocks under ``_blocks``), torchvision ResNet/ResNeXt
(BasicBlock/Bottleneck), torchvision MobileNetV2 (``features`` children), torchvision and timm
VisionTransformer (one block per encoder layer: its attention, q/k/v ``in_proj_weight`` included,
and its MLP are fitted together) and ``nn.Sequential``. The stem (patch embedding), head and
classifier are single-layer blocks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List

import torch
from torch import nn

from ..errors import MixQuantError
from ..models.layers import layer_names


@dataclass
class Stage:
    name: str
    run: Callable[[torch.Tensor], torch.Tensor]
    layers: List[str]  # names of the layers inside (models/layers.py: attention parameters included)
    channel_dim: int = 1  # the output's channel dimension: 1 for [N, C, ...], -1 for tokens [N, T, C]


def _layers_under(model: nn.Module, prefixes: List[str]) -> List[str]:
    return [name for name in layer_names(model) if any(name == p or name.startswith(p + ".") for p in prefixes)]


def _lite(m: nn.Module) -> List[Stage]:
    if getattr(m._global_params, "local_pooling", False):
        raise MixQuantError("EfficientNet-Lite with local pooling is not supported for reconstruction")
    stages = [Stage("stem", lambda x: m._swish(m._bn0(m._conv_stem(x))), ["_conv_stem"])]
    for i, block in enumerate(m._blocks):  # eval mode: drop-connect is off, so block(x) is exact
        stages.append(Stage(f"_blocks.{i}", block, _layers_under(m, [f"_blocks.{i}"])))
    stages.append(Stage("head", lambda x: m._swish(m._bn1(m._conv_head(x))), ["_conv_head"]))
    stages.append(Stage("classifier", lambda x: m._fc(m._dropout(m._avg_pooling(x).flatten(1))), ["_fc"]))
    return stages


def _resnet(m: nn.Module) -> List[Stage]:
    stages = [Stage("stem", lambda x: m.maxpool(m.relu(m.bn1(m.conv1(x)))), ["conv1"])]
    for lname in ("layer1", "layer2", "layer3", "layer4"):
        for i, block in enumerate(getattr(m, lname)):
            stages.append(Stage(f"{lname}.{i}", block, _layers_under(m, [f"{lname}.{i}"])))
    stages.append(Stage("classifier", lambda x: m.fc(torch.flatten(m.avgpool(x), 1)), ["fc"]))
    return stages


def _mobilenet_v2(m: nn.Module) -> List[Stage]:
    stages = [Stage(f"features.{i}", block, _layers_under(m, [f"features.{i}"])) for i, block in enumerate(m.features)]
    pool = lambda x: torch.flatten(nn.functional.adaptive_avg_pool2d(x, (1, 1)), 1)  # noqa: E731
    stages.append(Stage("classifier", lambda x: m.classifier(pool(x)), _layers_under(m, ["classifier"])))
    return stages


def _torchvision_vit(m: nn.Module) -> List[Stage]:
    """torchvision VisionTransformer: what its forward does, cut between encoder layers."""
    enc = m.encoder

    def embed(x):
        tokens = m._process_input(x)
        tokens = torch.cat([m.class_token.expand(len(tokens), -1, -1), tokens], dim=1)
        return enc.dropout(tokens + enc.pos_embedding)

    stages = [Stage("embed", embed, ["conv_proj"], channel_dim=-1)]
    for name, block in enc.layers.named_children():
        stages.append(Stage(f"encoder.layers.{name}", block, _layers_under(m, [f"encoder.layers.{name}"]), channel_dim=-1))
    stages.append(Stage("head", lambda x: m.heads(enc.ln(x)[:, 0]), _layers_under(m, ["heads"])))
    return stages


def _timm_vit(m: nn.Module) -> List[Stage]:
    """timm VisionTransformer (not its subclasses, whose embedding or head differ): forward_features
    cut between blocks."""
    embed = lambda x: m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))  # noqa: E731
    stages = [Stage("embed", embed, _layers_under(m, ["patch_embed"]), channel_dim=-1)]
    for i, block in enumerate(m.blocks):
        stages.append(Stage(f"blocks.{i}", block, _layers_under(m, [f"blocks.{i}"]), channel_dim=-1))
    stages.append(Stage("head", lambda x: m.forward_head(m.norm(x)), _layers_under(m, ["head"])))
    return stages


def _sequential(m: nn.Sequential) -> List[Stage]:
    return [Stage(name, child, _layers_under(m, [name])) for name, child in m.named_children()]


def model_stages(model: nn.Module) -> List[Stage]:
    """The model as a chain of blocks, or a MixQuantError naming what is supported."""
    cls = type(model).__name__
    if hasattr(model, "_blocks") and hasattr(model, "_conv_stem"):
        return _lite(model)
    if all(hasattr(model, a) for a in ("conv1", "layer1", "layer4", "fc")):
        return _resnet(model)
    if cls == "MobileNetV2":
        return _mobilenet_v2(model)
    if cls == "VisionTransformer" and type(model).__module__.startswith("torchvision."):
        return _torchvision_vit(model)
    if cls == "VisionTransformer" and type(model).__module__.startswith("timm."):
        return _timm_vit(model)
    if isinstance(model, nn.Sequential):
        return _sequential(model)
    raise MixQuantError(f"reconstruction supports EfficientNet-Lite, torchvision ResNet/ResNeXt, MobileNetV2, "
                        f"torchvision and timm VisionTransformer and nn.Sequential models; {cls} is not one of them (round-to-nearest still works)")
