"""Per-model image preprocessing, as data (so it can be shown, compared and cached on)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Optional, Tuple

import torch
from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The EfficientNet-Lite TF checkpoints were trained on (x - 127) / 128.
TF_MEAN = (0.498, 0.498, 0.498)
TF_STD = (0.502, 0.502, 0.502)


@dataclass(frozen=True)
class Preprocess:
    resize: int
    crop: int
    mean: Tuple[float, float, float] = IMAGENET_MEAN
    std: Tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"

    def transform(self) -> T.Compose:
        mode = T.InterpolationMode(self.interpolation)
        return T.Compose([
            T.Resize(self.resize, interpolation=mode, antialias=True),
            T.CenterCrop(self.crop),
            T.ToTensor(),
            T.Normalize(self.mean, self.std),
        ])

    def pixel_transform(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """Resize and crop on a decoded uint8 [3, H, W] tensor, staying uint8 (150 KB a 224 px image,
        a quarter of float32's): the evaluation sets keep these, and ``normalize`` runs per batch."""
        from torchvision.transforms import v2

        mode = T.InterpolationMode(self.interpolation)
        return v2.Compose([v2.Resize(self.resize, interpolation=mode, antialias=True), v2.CenterCrop(self.crop)])

    def normalize(self, pixels: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """uint8 pixels [..., 3, H, W] -> the model's float32 input, on the pixels' device. The same
        operations as ToTensor + Normalize (divide by 255, subtract the mean, divide by the std), so
        the numbers are those of ``transform()`` on the same pixels, bit for bit. With ``out`` (a
        float32 tensor at least ``len(pixels)`` long), written into its first rows: a pass that
        reuses one buffer allocates nothing per batch (big per-batch temporaries can fragment the
        C heap and raise the peak memory of a long pass)."""
        mean = torch.tensor(self.mean, dtype=torch.float32, device=pixels.device).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=pixels.device).view(3, 1, 1)
        x = pixels.to(torch.float32, copy=True) if out is None else out[:len(pixels)].copy_(pixels)
        return x.div_(255).sub_(mean).div_(std)

    def to_dict(self) -> dict:
        return asdict(self)



def from_torchvision(weights) -> Preprocess:
    t = weights.transforms()
    return Preprocess(
        resize=int(t.resize_size[0]), crop=int(t.crop_size[0]),
        mean=tuple(float(v) for v in t.mean), std=tuple(float(v) for v in t.std),
        interpolation=t.interpolation.value,
    )


def from_timm(model) -> Preprocess:
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    crop = int(cfg["input_size"][-1])
    return Preprocess(
        resize=int(round(crop / cfg.get("crop_pct", 0.875))), crop=crop,
        mean=tuple(float(v) for v in cfg["mean"]), std=tuple(float(v) for v in cfg["std"]),
        interpolation=str(cfg.get("interpolation", "bilinear")) if cfg.get("interpolation") in ("bilinear", "bicubic", "nearest") else "bilinear",
    )
