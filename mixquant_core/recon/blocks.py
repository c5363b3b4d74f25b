"""A model cut into a chain of blocks, for block-wise reconstruction (BRECQ).

BRECQ reconstructs one residual block at a time: the block's output under quantized weights is
fitted to its float32 output. That needs the model as a plain chain ``x -> stage_1 -> ... -> logits``.
Supported: EfficientNet-Lite (MBConvBlocks under ``_blocks``), torchvision ResNet/ResNeXt
(BasicBlock/Bottleneck), torchvision MobileNetV2 (``features`` children), and ``nn.Sequential``.
The stem, head and classifier are single-layer blocks.

Transformers (BRECQ's block is one encoder layer: attention and MLP with their norms and
residuals): timm VisionTransformer (ViT, DeiT) and SwinTransformer, torchvision
VisionTransformer and SwinTransformer. The patch embedding (with the class token and position
embedding) is the first block, a Swin stage's patch merging its own block, the final norm with
the pooling and the classifier the last.
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
    """The quantizable layers (models.layers.layer_names: whatever counts as a layer) under ``prefixes``."""
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


# Transformer blocks output tokens [N, T, C] (Swin: [N, H, W, C]): channels last.
TOKENS = -1


def _sequential(m: nn.Sequential) -> List[Stage]:
    return [Stage(name, child, _layers_under(m, [name])) for name, child in m.named_children()]


def _timm_vit(m: nn.Module) -> List[Stage]:
    embed = lambda x: m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))  # noqa: E731
    stages = [Stage("patch_embed", embed, _layers_under(m, ["patch_embed"]), TOKENS)]
    stages += [Stage(f"blocks.{i}", block, _layers_under(m, [f"blocks.{i}"]), TOKENS) for i, block in enumerate(m.blocks)]
    stages.append(Stage("head", lambda x: m.forward_head(m.norm(x)), _layers_under(m, ["norm", "fc_norm", "head"])))
    return stages


def _timm_swin(m: nn.Module) -> List[Stage]:
    stages = [Stage("patch_embed", m.patch_embed, _layers_under(m, ["patch_embed"]), TOKENS)]
    for i, stage in enumerate(m.layers):
        if _layers_under(m, [f"layers.{i}.downsample"]):
            stages.append(Stage(f"layers.{i}.downsample", stage.downsample, _layers_under(m, [f"layers.{i}.downsample"]), TOKENS))
        elif not isinstance(stage.downsample, nn.Identity):
            raise MixQuantError(f"Swin stage {i}: a patch merging without weights is not supported for reconstruction")
        stages += [Stage(f"layers.{i}.blocks.{j}", block, _layers_under(m, [f"layers.{i}.blocks.{j}"]), TOKENS)
                   for j, block in enumerate(stage.blocks)]
    stages.append(Stage("head", lambda x: m.forward_head(m.norm(x)), _layers_under(m, ["norm", "head"])))
    return stages


def _torchvision_vit(m: nn.Module) -> List[Stage]:
    def embed(x):
        x = m._process_input(x)
        x = torch.cat([m.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        return m.encoder.dropout(x + m.encoder.pos_embedding)

    stages = [Stage("patch_embed", embed, _layers_under(m, ["conv_proj"]), TOKENS)]
    stages += [Stage(f"encoder.layers.{name}", layer, _layers_under(m, [f"encoder.layers.{name}"]), TOKENS)
               for name, layer in m.encoder.layers.named_children()]
    stages.append(Stage("head", lambda x: m.heads(m.encoder.ln(x)[:, 0]), _layers_under(m, ["heads"])))
    return stages


def _torchvision_swin(m: nn.Module) -> List[Stage]:
    stages = [Stage("patch_embed", m.features[0], _layers_under(m, ["features.0"]), TOKENS)]
    for i, part in enumerate(m.features[1:], start=1):
        if isinstance(part, nn.Sequential):  # a stage of Swin blocks
            stages += [Stage(f"features.{i}.{name}", block, _layers_under(m, [f"features.{i}.{name}"]), TOKENS)
                       for name, block in part.named_children()]
        else:  # patch merging between stages
            stages.append(Stage(f"features.{i} (downsample)", part, _layers_under(m, [f"features.{i}"]), TOKENS))
    head = lambda x: m.head(m.flatten(m.avgpool(m.permute(m.norm(x)))))  # noqa: E731
    stages.append(Stage("head", head, _layers_under(m, ["head"])))
    return stages


def _transformer_stages(model: nn.Module):
    """The chain of a supported transformer, or None."""
    cls, module = type(model).__name__, type(model).__module__
    if module.startswith("timm.") and cls == "VisionTransformer":  # ViT and DeiT (not the distilled class)
        return _timm_vit(model)
    if module.startswith("timm.") and cls == "SwinTransformer":
        return _timm_swin(model)
    if module.startswith("torchvision.") and cls == "VisionTransformer":
        return _torchvision_vit(model)
    if module.startswith("torchvision.") and cls == "SwinTransformer":
        return _torchvision_swin(model)
    return None


def model_stages(model: nn.Module) -> List[Stage]:
    """The model as a chain of blocks, or a MixQuantError naming what is supported."""
    cls = type(model).__name__
    if hasattr(model, "_blocks") and hasattr(model, "_conv_stem"):
        return _lite(model)
    if all(hasattr(model, a) for a in ("conv1", "layer1", "layer4", "fc")):
        return _resnet(model)
    if cls == "MobileNetV2":
        return _mobilenet_v2(model)
    if isinstance(model, nn.Sequential):
        return _sequential(model)
    stages = _transformer_stages(model)
    if stages is not None:
        return stages
    raise MixQuantError(f"reconstruction supports EfficientNet-Lite, torchvision ResNet/ResNeXt, MobileNetV2, "
                        f"ViT/DeiT and Swin (timm, torchvision) and nn.Sequential models; {cls} is not one of them "
                        "(round-to-nearest still works)")
