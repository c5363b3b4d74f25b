"""Stage 4, accuracy: running a (fake-quantized) model over an evaluation set into metrics, how sure
they are (statistics), keeping them (store), and spreading them over a Ray cluster (cluster, shards,
cluster_worker; ``ray`` imported only when used). Imports plans/ and the stages below it only."""
import importlib

# Imported on first use (PEP 562): the results store lives in this package and is read without
# torch (``mixquant results``), which ``evaluate`` imports. ``evaluate`` is both a submodule and a
# function here: once the submodule is imported before this name is first looked up, the package
# attribute is the submodule, so import the function from ``mixquant_core`` or ``.evaluate``.
_EXPORTS = {".evaluate": ("Metrics", "evaluate"), ".evaluator": ("Evaluator", "Tally")}
__all__ = [name for names in _EXPORTS.values() for name in names]


def __getattr__(name: str):
    for module, names in _EXPORTS.items():
        if name in names:
            value = getattr(importlib.import_module(module, __name__), name)
            globals()[name] = value  # later look-ups are plain attribute reads
            return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *__all__})
