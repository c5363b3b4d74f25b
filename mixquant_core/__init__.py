"""MixQuant Studio core: the stages of the data's path, each a folder that imports only earlier ones.

models/, data/ -> quant/ -> plans/ -> evaluation/ -> recon/ -> export/ -> workspace, evaluations -> studies/.
Knows nothing of any UI or plotting; the CLI (``mixquant_cli``), the figures (``mixquant_viz``),
the Streamlit app and the tests all call it.
"""
from .lazy import lazy_exports

# The public API, by the module that exports it. Imported on first use (PEP 562, ``__getattr__``
# below): importing one light module such as ``mixquant_core.errors`` runs this file, and must not
# import torch and every stage with it (``mixquant --help`` would take seconds).
_EXPORTS = {
    ".data": ("EvalTensors", "ImageList", "default_eval_dir", "load_tensors", "open_image_folder", "open_imagenette"),
    ".errors": ("DatasetError", "InvalidWeightsError", "MixQuantError", "ModelUnavailableError", "PlanError"),
    # the module, not the package: ``evaluation.evaluate`` is also that submodule's name
    ".evaluation.evaluate": ("Metrics", "evaluate"),
    ".models": ("DEFAULT_MODEL", "KINDS", "PAPER_MODELS", "LayerInfo", "LoadedModel", "build_model", "find_layers",
                "float32_rest", "list_models", "load_model", "resolve_device"),
    ".plans": ("Plan", "PlanFamily", "SizeSummary", "applied", "breakpoints", "default_qem_grid", "float32_bytes",
               "make_plan", "plan_size", "quantize_model_", "search", "search_many"),
    ".quant": ("DEFAULT_BITS", "QUANTIZERS", "QETable", "dequantize", "fake_quantize", "qe_table", "quantize"),
    ".workspace": ("Workspace",),
    ".evaluations": ("PLAN_ROW_COLUMNS", "Evaluations", "PlanRow"),
}
__all__ = [name for names in _EXPORTS.values() for name in names]
__version__ = "0.1.0"


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
