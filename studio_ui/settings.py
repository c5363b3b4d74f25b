"""What the sidebar chose, as one immutable value the pages and the caches key on."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

QUANTIZER_LABELS = {
    "asymmetric": "asymmetric, per tensor (paper default)",
    "symmetric": "symmetric, per tensor",
    "per-channel": "asymmetric, per output channel",
    "per-channel-symmetric": "symmetric, per output channel (fastest integer export)",
    "asymmetric-mse": "asymmetric, per tensor, MSE-clipped range",
    "symmetric-mse": "symmetric, per tensor, MSE-clipped range",
    "per-channel-mse": "asymmetric, per output channel, MSE-clipped range",
    "per-channel-symmetric-mse": "symmetric, per output channel, MSE-clipped range",
}
RANGES_LABELS = {
    "weights": "from the weights",
    "loss": "loss-aware (calibrated)",
}
RANGES_CALIB_IMAGES = 64  # loss-aware ranges: the Fisher calibration images (the Pareto page's default count)
DEFAULT_LIMIT = None  # images: None sizes the subset by time (mixquant_core.evaluation.timing)
TRADEOFF_STEPS = 12  # the Trade-off page's default QEM grid (its plans set the time of a trade-off)
DEFAULT_QEM = 20.0
ENGINE_LABELS = {
    "auto": "auto (ONNX Runtime on CPU, torch on CUDA)",
    "onnxruntime": "ONNX Runtime (CPU)",
    "torch": "PyTorch (eager)",
}


@dataclass(frozen=True)
class Settings:
    model_source: str  # "registry" | "upload"
    model_name: str  # registry name, or the uploaded file's name
    model_path: Optional[str]  # the saved upload; None for registry models
    model_digest: Optional[str]  # sha256 of the upload (the cache key, not the name)
    arch: Optional[str]  # architecture of an uploaded state dict
    quantizer: str
    bits: Tuple[int, ...]
    keep_first_last: bool
    device: str
    data_kind: str  # "folder" | "imagenette"
    data_dir: str
    limit: Optional[int]  # first N images; None: sized by time (subset_for_time)
    engine: str = "auto"  # evaluation engine: auto | torch | onnxruntime
    trust_code: bool = False  # the user ticked "Trust code in this file" for an upload
    cluster: str = ""  # address of a running Ray cluster to evaluate on (HOST:PORT, ray://HOST:PORT, auto); "" = none
    ranges: str = "weights"  # weight ranges: the quantizer's own, or loss-aware on the calibration images (issue #22)
    # Activation quantization (issue #20): None = float32 inputs; else every quantized layer's input at
    # act_bits, its range by act_range.
    act_bits: Optional[int] = None
    act_range: str = "minmax"  # mixquant_core.quant.act_calibration.DEFAULT_ACT_METHOD
    act_outputs: bool = True  # also the output points that let runtimes fuse Adds (models/act_points.py)
    # The calibration images of loss-aware ranges and activation ranges: calib_images spread over calib_dir.
    calib_dir: str = ""
    calib_images: int = 256

    @property
    def model_key(self) -> tuple:
        if self.model_source == "upload":
            return ("file", self.model_digest, self.arch, self.trust_code)
        return ("registry", self.model_name)

    @property
    def workspace_key(self) -> tuple:
        return (self.model_key, self.quantizer, self.bits, self.keep_first_last, self.device, self.engine, self.cluster,
                self.ranges, self.acts_key, self.calib_key)

    @property
    def acts_key(self) -> tuple:
        """What the activation quantization depends on (nothing when the inputs stay float32)."""
        return () if self.act_bits is None else (self.act_bits, self.act_range, self.act_outputs)

    @property
    def calib_key(self) -> tuple:
        """The calibration images, when loss-aware ranges or activation quantization use them."""
        return (self.calib_dir, self.calib_images) if self.ranges == "loss" or self.act_bits is not None else ()

    @property
    def data_key(self) -> tuple:
        return (self.data_kind, self.data_dir)
