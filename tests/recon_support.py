"""Shared by test_reconstruct.py, test_recon_job.py and test_export.py: a tiny chain model, its
plans, images (the ``one_thread`` fixture is in conftest.py)."""
from __future__ import annotations

import torch
from torch import nn

from mixquant_core.models.registry import LoadedModel
from mixquant_core.models.preprocess import Preprocess
from mixquant_core.workspace import Workspace


def tiny_chain(seed: int = 0, width: int = 8) -> nn.Sequential:
    """A few-thousand-weight CNN as a chain of blocks (nn.Sequential: one block per child)."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU()),
        nn.Sequential(nn.Conv2d(width, width, 3, padding=1, groups=width), nn.ReLU(),
                      nn.Conv2d(width, 2 * width, 1), nn.BatchNorm2d(2 * width), nn.ReLU()),
        nn.Sequential(nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU(),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten()),
        nn.Linear(2 * width, 10),
    )
    with torch.no_grad():  # non-trivial BatchNorm statistics, so the float tensors matter
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def images(n: int = 12, size: int = 24, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def workspace(model: nn.Module, quantizer: str = "asymmetric") -> Workspace:
    loaded = LoadedModel(model, "tiny_chain", "file", Preprocess(resize=32, crop=24), fingerprint="test")
    return Workspace(loaded, quantizer, device="cpu")


MIXED_BITS = [5, 3, 2, 4, 6]  # one per quantizable layer of tiny_chain, in model order


def chain_output(stages, x: torch.Tensor) -> torch.Tensor:
    """What a model's chain of reconstruction blocks (recon.blocks.model_stages) computes from ``x``."""
    with torch.no_grad():
        for stage in stages:
            x = stage.run(x)
    return x


def minmax_acts(model: nn.Module, layers, x: torch.Tensor, bits: int = 8):
    """An ActQuant of 8-bit inputs for ``layers`` (names) from a plain min/max pass over ``x`` (tests
    and benchmarks only: the real calibration is quant/act_calibration.py)."""
    from mixquant_core.quant.activations import ActQuant

    modules, seen, handles = dict(model.named_modules()), {}, []

    def hook_for(name):
        def hook(_module, args):
            lo, hi = float(args[0].min()), float(args[0].max())
            old = seen.get(name, (lo, hi))
            seen[name] = (min(old[0], lo), max(old[1], hi))
        return hook

    try:
        for name in layers:
            handles.append(modules[name].register_forward_pre_hook(hook_for(name)))
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return ActQuant(bits, "minmax", {name: seen[name] for name in layers})


def ort_optimized_graph(data: bytes, tmp_path):
    """The graph ONNX Runtime's CPU provider runs for ``data``, after every optimisation (its QDQ
    fusions into integer kernels), as it writes it out."""
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    return onnx.load(str(tmp_path / "optimized.onnx")).graph


def ort_op_counts(data: bytes, tmp_path):
    """collections.Counter of the op types in ``ort_optimized_graph``'s graph."""
    import collections

    return collections.Counter(n.op_type for n in ort_optimized_graph(data, tmp_path).node)
