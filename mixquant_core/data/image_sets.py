"""Evaluation sets: an ImageNet-style folder (ImageFolder layout, or flat + labels.txt) or Imagenette.

Images are decoded once into one uint8 tensor (``EvalTensors``) that every plan of a sweep reuses,
or, past the memory budget, streamed from their files on every pass (``streaming.StreamedImages``);
unreadable images are skipped and counted.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..errors import DatasetError

IMAGE_EXTS = (".jpeg", ".jpg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff")
NO_LABEL = -1  # an image without a label (calibration): losses use the model's own prediction
# A negative label in labels.txt. It is refused where the model's classes are known (check_labels),
# beside labels past them, so the error names the first bad line of the file, whichever kind it is.
NEGATIVE_LABEL = -2
DEFAULT_CALIB_IMAGES = 64
DATA_ENV = "MIXQUANT_DATA"  # the one setting: a folder holding imagenet-val-1300 & co.
# Imagenette's ten WNIDs and their ImageNet-1k class indices (sorted-WNID order).
IMAGENETTE_CLASSES = {
    "n01440764": 0, "n02102040": 217, "n02979186": 482, "n03000684": 491, "n03028079": 497,
    "n03394916": 566, "n03417042": 569, "n03425413": 571, "n03445777": 574, "n03888605": 701,
}
Progress = Optional[Callable[[int, int, str], None]]


@dataclass
class ImageList:
    """Paths and ImageNet class indices, in a fixed order (subsets take the first N)."""

    root: str
    paths: List[str]
    labels: List[int]
    class_names: List[str] = field(default_factory=list)  # index -> readable name, when known
    origins: List[str] = field(default_factory=list)  # where each label came from ("labels.txt line 7"), when known

    def __len__(self) -> int:
        return len(self.paths)

    def fingerprint(self) -> str:
        """Content key of the set: file names (relative to the root), sizes and labels, in order.
        Two folders with the same files give the same key; any renamed, resized, added, removed
        or relabelled image changes it."""
        h = hashlib.sha256()
        for path, label in zip(self.paths, self.labels):
            try:
                size = os.stat(path).st_size
            except OSError:
                size = -1
            h.update(f"{os.path.relpath(path, self.root)}\0{size}\0{label}\n".encode("utf-8", "surrogateescape"))
        return h.hexdigest()[:16]

    def subset(self, limit: Optional[int]) -> "ImageList":
        """The first ``limit`` images (``None``: all); a limit below 1 is an error, never "all"."""
        if limit is None:
            return self
        if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1:
            raise DatasetError(f"the number of images to use must be at least 1, got {limit!r}")
        if limit >= len(self):
            return self
        return ImageList(self.root, self.paths[:limit], self.labels[:limit], self.class_names, self.origins[:limit])

    def pick(self, indices: Sequence[int]) -> "ImageList":
        """The images at ``indices``, in that order (what was kept after decoding, a shard)."""
        if len(indices) == len(self) and all(i == k for k, i in enumerate(indices)):
            return self
        origins = [self.origins[i] for i in indices] if self.origins else []
        return ImageList(self.root, [self.paths[i] for i in indices], [self.labels[i] for i in indices],
                         self.class_names, origins)


def default_data_root() -> Optional[str]:
    return os.environ.get(DATA_ENV) or None


def default_eval_dir() -> Optional[str]:
    """``$MIXQUANT_DATA/imagenet-val-1300`` when that exists, else ``$MIXQUANT_DATA`` itself."""
    root = default_data_root()
    if not root:
        return None
    val = Path(root) / "imagenet-val-1300"
    return str(val if val.is_dir() else root)


def default_calib_dir() -> Optional[str]:
    """``$MIXQUANT_DATA/imagenet-calib-1000`` when that exists (calibration images beside the eval set)."""
    root = default_data_root()
    calib = Path(root) / "imagenet-calib-1000" if root else None
    return str(calib) if calib is not None and calib.is_dir() else None


def _read_class_names(root: Path) -> List[str]:
    for cand in (root / "classes.txt", root.parent / "classes.txt"):
        if cand.is_file():
            names = []
            for line in cand.read_text().splitlines():
                parts = line.split(maxsplit=1)
                names.append(parts[1] if len(parts) > 1 else parts[0] if parts else "")
            return names
    return []


def _from_labels_txt(root: Path, labels_file: Path) -> ImageList:
    image_dir = root / "images" if (root / "images").is_dir() else root
    try:
        text = labels_file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DatasetError(f"{labels_file} is not a text file ('FILENAME LABEL' lines expected)") from None
    except OSError as exc:
        raise DatasetError(f"cannot read {labels_file}: {exc.strerror}") from None
    paths, labels, origins = [], [], []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise DatasetError(f"{labels_file}: line {n} is not 'FILENAME LABEL': {line[:80]!r}")
        negative = int(parts[1]) < 0
        paths.append(str(image_dir / parts[0]))
        labels.append(NEGATIVE_LABEL if negative else int(parts[1]))
        origins.append(f"{labels_file.name} line {n}" + (f": {parts[1][:20]}" if negative else ""))
    return ImageList(str(root), paths, labels, _read_class_names(root), origins)


def _from_image_folder(root: Path, wnid_to_index: Optional[dict] = None) -> ImageList:
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not classes:
        raise DatasetError(f"'{root}' has no labels.txt and no class subfolders: cannot tell the labels")
    if wnid_to_index is None and all(c.startswith("n") and c[1:].isdigit() for c in classes) and len(classes) < 1000:
        # WNID subfolders that are a subset of ImageNet: map through classes.txt when available.
        names_file = root / "classes.txt"
        if names_file.is_file():
            order = [line.split()[0] for line in names_file.read_text().splitlines() if line.strip()]
            wnid_to_index = {w: i for i, w in enumerate(order)}
    index = wnid_to_index or {c: i for i, c in enumerate(classes)}
    paths, labels = [], []
    for c in classes:
        if c not in index:
            raise DatasetError(f"class folder '{c}' in '{root}' is not a known ImageNet class")
        for f in sorted((root / c).iterdir()):
            if f.suffix.lower() in IMAGE_EXTS:
                paths.append(str(f))
                labels.append(index[c])
    return ImageList(str(root), paths, labels, _read_class_names(root))


def check_folder(path, what: str) -> Path:
    """An existing, readable folder, or one line saying which of those it is not."""
    root = Path(path)
    if not root.exists():
        raise DatasetError(f"{what} '{root}' does not exist")
    if not root.is_dir():
        raise DatasetError(f"{what} '{root}' is not a folder")
    if not os.access(root, os.R_OK | os.X_OK):
        raise DatasetError(f"{what} '{root}' is not readable (permission denied)")
    return root


def open_image_folder(path: str | os.PathLike, what: str = "evaluation folder") -> ImageList:
    """A folder with ``labels.txt`` (``FILENAME LABEL``), or ImageFolder-style class subfolders.

    A folder with ``images/`` but no readable labels.txt is refused: its labels are unknown, and
    reading ``images/`` as one class folder would score every image against class 0."""
    if not path:
        raise DatasetError(f"no {what} given (set MIXQUANT_DATA or pass --data DIR)")
    root = check_folder(path, what)
    labels_file = root / "labels.txt"
    if labels_file.exists() and not labels_file.is_file():
        raise DatasetError(f"{labels_file} is not a regular file ('FILENAME LABEL' lines expected)")
    if labels_file.is_file():
        images = _from_labels_txt(root, labels_file)
    elif (root / "images").is_dir():
        raise DatasetError(f"{what} '{root}' has images/ but no labels.txt: its labels are unknown "
                           "(add labels.txt with 'FILENAME LABEL' lines)")
    else:
        images = _from_image_folder(root)
    if not len(images):
        raise DatasetError(f"{what} '{root}' holds no labelled images")
    return images


def open_imagenette(root: str | os.PathLike, split: str = "val", download: bool = True) -> ImageList:
    """torchvision's Imagenette (160 px); downloads when online, clear error when not."""
    from torchvision.datasets import Imagenette

    try:
        ds = Imagenette(str(root), split=split, size="160px", download=download)
    except RuntimeError as exc:  # "Dataset not found" / already-exists messages
        if "not found" in str(exc).lower():
            raise DatasetError(f"Imagenette is not in '{root}' and could not be downloaded; run once online") from None
        ds = Imagenette(str(root), split=split, size="160px", download=False)
    except OSError as exc:
        raise DatasetError(f"cannot download Imagenette ({type(exc).__name__}: no network?); "
                           f"fetch it once online into '{root}'") from None
    paths = [str(p) for p, _ in ds._samples]
    labels = [IMAGENETTE_CLASSES[ds.wnids[c]] for _, c in ds._samples]
    return ImageList(str(root), paths, labels)


def check_labels(labels: torch.Tensor, origins: Sequence[str], num_classes: int, allow_unlabelled: bool = False) -> None:
    """Every label is one of the model's ``num_classes`` classes, or one line naming the first
    that is not (an unlabelled image, unless allowed, or an index past the model's classes)."""
    low = NO_LABEL if allow_unlabelled else 0
    bad = ((labels < low) | (labels >= num_classes)).nonzero()
    if len(bad):
        i = int(bad[0, 0])
        where = f" ({origins[i]})" if i < len(origins) else f" (image {i + 1})"
        label = int(labels[i])
        if label == NEGATIVE_LABEL:
            what = "has a negative label (class indices start at 0)"
        elif label < 0:
            what = "has no label"
        else:
            what = f"has label {label}, outside the model's {num_classes} classes (0..{num_classes - 1})"
        raise DatasetError(f"an image{where} {what}")


@dataclass
class EvalTensors:
    """Images [N, 3, H, W] and labels [N], decoded once, reused by every plan.

    ``images`` are uint8 pixels when decoded from files (``load_tensors``: 150 KB a 224 px image,
    a quarter of float32), turned into the model's float input batch by batch by ``preprocess``
    (its ``normalize``), on the device that runs the model. Sets built by hand may hold the float
    inputs themselves (``preprocess`` None)."""

    images: torch.Tensor
    labels: torch.Tensor
    skipped: List[str] = field(default_factory=list)
    source: str = ""  # content key of what was decoded (``load_tensors``); "" = hash the tensors
    origins: List[str] = field(default_factory=list)  # each kept image's path (and labels.txt line), when known
    preprocess: Optional[object] = None  # a models.Preprocess (duck-typed: this stage imports no model code)
    image_list: Optional[ImageList] = None  # the files the kept images came from, when decoded from files

    def __post_init__(self):
        if self.images.dtype == torch.uint8 and self.preprocess is None:
            raise DatasetError("uint8 images need the preprocessing that normalises them (preprocess=...)")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_shape(self) -> Tuple[int, ...]:
        return tuple(self.images.shape[1:])

    @property
    def nbytes(self) -> int:
        return self.images.numel() * self.images.element_size() + self.labels.numel() * self.labels.element_size()

    @property
    def fingerprint(self) -> str:
        """Content key of these tensors: caches and stored results are keyed by it, never by id()."""
        key = self.__dict__.get("_fingerprint")
        if key is None:
            if self.source:
                key = source_key(self.source, len(self))
            else:  # built by hand (tests, API users): the bytes themselves
                h = hashlib.sha256()
                h.update(self.labels.cpu().numpy().tobytes())
                h.update(str(tuple(self.images.shape)).encode())
                h.update(self.images.detach().cpu().contiguous().numpy().tobytes())
                key = h.hexdigest()[:16]
            self.__dict__["_fingerprint"] = key
        return key

    def check_labels(self, num_classes: int, allow_unlabelled: bool = False) -> None:
        check_labels(self.labels, self.origins, num_classes, allow_unlabelled)

    def to_inputs(self, images: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """A slice of ``images`` (on any device) as the model's float input (in ``out``'s first rows
        when given: see ``Preprocess.normalize``)."""
        return images if images.dtype != torch.uint8 else self.preprocess.normalize(images, out)

    def inputs(self, start: int = 0, stop: Optional[int] = None) -> torch.Tensor:
        """The model's float input for images ``start:stop`` (calibration passes, reconstruction)."""
        return self.to_inputs(self.images[start:stop])

    def pixel_batches(self, batch_size: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """(images as stored, labels) batches: uint8 pixels for ``to_inputs`` (or float inputs as they are)."""
        for i in range(0, len(self), batch_size):
            yield self.images[i:i + batch_size], self.labels[i:i + batch_size]

    def batches(self, batch_size: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        for images, labels in self.pixel_batches(batch_size):
            yield self.to_inputs(images), labels


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. a container's share), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def decode_workers() -> int:
    # The JPEG/PNG decoders and the resize release the GIL, so threads decode in parallel; one per core.
    return min(8, usable_cores())


def describe(images: ImageList, i: int) -> str:
    """Image ``i`` for messages: its file name and, when known, where its label came from."""
    name = os.path.basename(images.paths[i])
    return f"'{name}', {images.origins[i]}" if i < len(images.origins) else f"'{name}'"


def source_key(source: str, n: int) -> str:
    """The fingerprint of ``n`` images decoded from ``source``: one rule for kept and streamed sets."""
    return hashlib.sha256(f"{source}\0{n}".encode()).hexdigest()[:16]


def pixels_source(images: ImageList, preprocess, skipped: int) -> str:
    """The content key of a set decoded to pixels, kept or streamed alike (same numbers, same key)."""
    return f"{images.fingerprint()}|{preprocess!r}|pixels|skipped={skipped}"


def spread_subset(images: ImageList, n: Optional[int]) -> ImageList:
    """``n`` images spread evenly over the list (calibration sets are often sorted by class)."""
    if n is None or n <= 0 or n >= len(images):
        return images
    idx = np.linspace(0, len(images) - 1, n).round().astype(int)
    origins = [images.origins[i] for i in idx] if images.origins else []
    return ImageList(images.root, [images.paths[i] for i in idx], [images.labels[i] for i in idx], images.class_names, origins)


def open_calibration_folder(path: str, n: Optional[int] = DEFAULT_CALIB_IMAGES) -> ImageList:
    """A labelled folder (as for evaluation) or, failing that, a plain folder of images whose
    labels are unknown (the Fisher then uses the model's own predictions)."""
    what = "calibration folder"
    if not path:
        raise DatasetError(f"no {what} given (pass --calib DIR or set MIXQUANT_DATA)")
    root = check_folder(path, what)
    if (root / "labels.txt").exists():  # labels given: they must be right, never silently dropped
        return spread_subset(open_image_folder(path, what), n)
    try:
        images = open_image_folder(path, what)
    except DatasetError as exc:
        files = sorted(f for f in root.iterdir() if f.suffix.lower() in IMAGE_EXTS)
        if not files:
            image_dir = root / "images"
            files = sorted(f for f in image_dir.iterdir() if f.suffix.lower() in IMAGE_EXTS) if image_dir.is_dir() else []
        if not files:
            raise DatasetError(f"calibration folder '{root}' holds no images ({exc})") from None
        images = ImageList(str(root), [str(f) for f in files], [NO_LABEL] * len(files))
    return spread_subset(images, n)
