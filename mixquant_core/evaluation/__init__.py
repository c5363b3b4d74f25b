"""Stage 4, accuracy: running a (fake-quantized) model over an evaluation set into metrics, how sure
they are (statistics), keeping them (store), and spreading them over a Ray cluster (cluster, shards,
cluster_worker; ``ray`` imported only when used), and latency (latency, latency_isolated,
latency_runner: an ONNX model timed on ONNX Runtime or OpenVINO). Imports plans/ and the stages below it only."""
from ..lazy import lazy_exports

# Imported on first use (PEP 562): the results store lives in this package and is read without
# torch (``mixquant results``), which ``evaluate`` imports. ``evaluate`` is both a submodule and a
# function here: once the submodule is imported before this name is first looked up, the package
# attribute is the submodule, so import the function from ``mixquant_core`` or ``.evaluate``.
_EXPORTS = {".evaluate": ("Metrics", "evaluate"), ".evaluator": ("Evaluator", "Tally")}
__all__ = [name for names in _EXPORTS.values() for name in names]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
