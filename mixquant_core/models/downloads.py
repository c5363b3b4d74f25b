"""Whether a registry model can load offline, or what it would download first (the app asks
before touching the network). Reads only the local caches of torchvision and the Hugging Face Hub."""
from __future__ import annotations

from typing import Optional

from .registry import list_models, torchvision_cache_path

HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")


def download_needed(name: str, source: Optional[str] = None) -> Optional[str]:
    """What the registry model ``name`` (of ``source``: builtin, torchvision, timm; looked up when
    not given) still has to download, in one sentence, or None when its weights are already here."""
    if source is None:
        source = next((e.source for e in list_models(name) if e.name == name), None)
    if source == "torchvision":
        return _torchvision_download(name)
    if source == "timm":
        return _timm_download(name)
    return None


def _torchvision_download(name: str) -> Optional[str]:
    import torchvision

    weights = torchvision.models.get_model_weights(name).DEFAULT
    target = torchvision_cache_path(weights.url)
    if target.is_file():
        return None
    size = weights.meta.get("_file_size")
    size_txt = f" ({size:.0f} MB)" if size else ""
    return (f"{name} needs its ImageNet weights{size_txt}: {weights.url}. They are not in "
            f"{target}. Download them here, or place the file there yourself (offline machines).")


def _timm_download(name: str) -> Optional[str]:
    try:
        import timm
        from huggingface_hub import try_to_load_from_cache

        cfg = timm.models.get_pretrained_cfg(name)
        repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
        if repo and any(isinstance(try_to_load_from_cache(repo, f), str) for f in HF_WEIGHT_FILES):
            return None
    except Exception:  # any doubt: ask before touching the network
        pass
    return (f"timm model {name} downloads its weights from the Hugging Face Hub on first use "
            "(they land in the Hugging Face cache, HF_HOME).")
