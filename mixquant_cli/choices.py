"""The core's names that the parser shows as choices, defaults and help, kept here as plain data:
the core modules that define them import torch, and building the parser (``mixquant --help``)
must not. tests/test_cli_startup.py checks that each one equals its source in the core."""
from __future__ import annotations

DEFAULT_MODEL = "efficientnet_lite0"  # mixquant_core.models.registry.DEFAULT_MODEL

# tuple(mixquant_core.quant.quantizers.QUANTIZERS)
QUANTIZERS = ("asymmetric", "symmetric", "per-channel", "per-channel-symmetric",
              "asymmetric-mse", "symmetric-mse", "per-channel-mse", "per-channel-symmetric-mse")

# mixquant_core.workspace.RANGES: the weights' own ranges (the default), or loss-aware (issue #22)
RANGES = ("weights", "loss")

# mixquant_core.recon.reconstruct.SCHEMES: BRECQ's choice (MSE-clipped per channel) first
RECON_SCHEMES = ("per-channel-mse",) + tuple(q for q in QUANTIZERS if q != "per-channel-mse")
# mixquant_core.workspace.COSTS: what a budgeted allocation minimises
ALLOCATION_COSTS = ("qe", "fisher", "fisher-gptq")
# mixquant_core.export.onnx.INT8_WEIGHTS: how an ONNX W+A export stores 8-bit symmetric codes
INT8_WEIGHTS = ("exact", "signed")
# mixquant_core.recon.reconstruct.METHODS
RECON_METHODS = ("brecq", "gptq", "gptq+brecq")
# mixquant_core.recon.gptq.GPTQ_INPUTS, and ReconConfig.gptq_inputs's default
GPTQ_INPUTS = ("stage", "layer", "float-target")
DEFAULT_GPTQ_INPUTS = "stage"
# mixquant_core.recon.gptq.GPTQ_GRIDS (the first is ReconConfig.gptq_grid's default)
GPTQ_GRIDS = ("best", "plan")

# mixquant_core.studies.target.FAMILIES
TARGET_FAMILIES = {
    "qem": "MixQuant's rule QE(b) <= QEM x QE(8), every distinct plan along the QEM axis",
    "qe": "least summed QE for each size (Lagrangian hull sweep)",
    "fisher": "least summed Fisher-weighted error for each size (needs calibration images)",
}

# tuple(mixquant_core.studies.compare.METHODS) and its DEFAULT_TARGETS (average bits)
COMPARE_METHODS = ("uniform", "mixquant", "budget-qe", "budget-fisher")
COMPARE_TARGETS = (7.0, 6.0, 5.0, 4.5, 4.0, 3.5, 3.0)

# mixquant_core.evaluation.latency.RUNTIMES and PRECISIONS (mixquant bench)
LATENCY_RUNTIMES = ("onnxruntime", "openvino")
LATENCY_PRECISIONS = ("f32", "bf16")

# mixquant_core.quant.activations.ACT_BITS; mixquant_core.quant.act_calibration.ACT_METHODS and DEFAULT_ACT_METHOD
ACT_BITS = (8,)
ACT_METHODS = ("minmax", "percentile", "mse")
DEFAULT_ACT_METHOD = "minmax"
