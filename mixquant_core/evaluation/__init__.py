"""Stage 4, accuracy: running a (fake-quantized) model over an evaluation set into metrics, how sure
they are (statistics), keeping them (store), and spreading them over a Ray cluster (cluster, shards,
cluster_worker; ``ray`` imported only when used). Imports plans/ and the stages below it only."""
from .evaluate import Metrics, evaluate

__all__ = ["Metrics", "evaluate"]
