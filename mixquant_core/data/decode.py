"""One image file -> uint8 pixels [3, H, W], resized and cropped; None when the file cannot be used.

JPEG and PNG (RGB or greyscale) go through torchvision's decoders (libjpeg-turbo / libpng, the
same libraries PIL wraps) and the resize runs on the uint8 tensor: measured on this 2-core machine,
2.0-2.4x PIL's decode + resize (benchmarks/bench_memory.py prints both). Every other format and
mode (CMYK, palette, 16-bit, BMP, TIFF, ...) is decoded by PIL, whose conversions they need.
torchvision 0.29 marks its decoders deprecated in favour of TorchCodec (a new dependency with its
own native libraries); until they go, they are used with that warning silenced, and when a
torchvision without them is installed, PIL decodes everything.

Files are untrusted: a path that is not a regular file (a fifo or a device would block or never
end) is never opened, the header is read first so a decompression bomb (PIL's pixel limit) or an
oversized file is refused before any pixel is decoded, and a corrupt body is skipped, not raised.
"""
from __future__ import annotations

import os
import stat
import warnings
from typing import Callable, Optional

import torch
from PIL import Image, UnidentifiedImageError

MAX_FILE_BYTES = 128 * 2**20  # ImageNet's largest validation JPEG is ~15 MB; past this, not an image to score
_TORCHVISION_DECODES = {("JPEG", "RGB"), ("JPEG", "L"), ("PNG", "RGB"), ("PNG", "L")}
_UNUSABLE = (OSError, UnidentifiedImageError, ValueError, SyntaxError, RuntimeError, Image.DecompressionBombError,
             MemoryError)


def _openable(path: str) -> bool:
    """A regular file (never a fifo or a device) of at most MAX_FILE_BYTES; raises OSError when absent."""
    st = os.stat(path)
    return stat.S_ISREG(st.st_mode) and st.st_size <= MAX_FILE_BYTES


def probe(path: str) -> bool:
    """True when ``path`` is a regular file of acceptable size whose header PIL reads as an image
    within its pixel limit: what can be known without decoding."""
    try:
        if not _openable(path):
            return False
        with Image.open(path):
            return True
    except _UNUSABLE:
        return False


def _torchvision_decoder():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            from torchvision.io import ImageReadMode, decode_image
    except ImportError:  # a torchvision that dropped them: PIL for every file
        return None
    return lambda raw: decode_image(raw, mode=ImageReadMode.RGB)


_DECODE = _torchvision_decoder()


def decode_pixels(path: str, pixel_transform: Callable[[torch.Tensor], torch.Tensor]) -> Optional[torch.Tensor]:
    """uint8 [3, H, W] pixels of ``path`` after ``pixel_transform`` (resize + crop), or None."""
    from torchvision.transforms.functional import pil_to_tensor

    try:
        if not _openable(path):
            return None
        with Image.open(path) as img:  # the header only, until asked for pixels
            if _DECODE is not None and (img.format, img.mode) in _TORCHVISION_DECODES:
                with open(path, "rb") as f:
                    raw = torch.frombuffer(bytearray(f.read()), dtype=torch.uint8)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)
                    pixels = _DECODE(raw)
            else:
                pixels = pil_to_tensor(img.convert("RGB"))
        return pixel_transform(pixels).contiguous()
    except _UNUSABLE:
        return None


def decode_float(path: str, transform: Callable) -> Optional[torch.Tensor]:
    """A float image through a PIL ``transform`` (the path for hand-made transforms), or None when the
    file cannot be used: not a regular file or too large (never opened), corrupt, or a bomb."""
    try:
        if not _openable(path):
            return None
        with Image.open(path) as img:
            return transform(img.convert("RGB"))
    except _UNUSABLE:
        return None
