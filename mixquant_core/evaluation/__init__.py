"""Stage 4, accuracy: running a (fake-quantized) model over an evaluation set into metrics, how sure
they are (statistics), and keeping them (store). Imports plans/ and the stages below it only."""
from .evaluate import Metrics, evaluate, resolve_device

__all__ = ["Metrics", "evaluate", "resolve_device"]
