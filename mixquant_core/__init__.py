"""MixQuant Studio core: quantizers, QE table, bit-width search, plans, sizes, models and evaluation.

Knows nothing of any UI; the CLI (``mixquant``), the Streamlit app and the tests all call it.
"""
from .data import EvalTensors, ImageList, default_eval_dir, load_tensors, open_image_folder, open_imagenette
from .errors import DatasetError, InvalidWeightsError, MixQuantError, ModelUnavailableError, PlanError
from .evaluate import Metrics, evaluate, resolve_device
from .layers import KINDS, LayerInfo, find_layers
from .models import DEFAULT_MODEL, PAPER_MODELS, LoadedModel, build_model, list_models, load_model
from .plan import Plan, applied, make_plan, quantize_model_
from .qe import DEFAULT_BITS, QETable, qe_table
from .quantizers import QUANTIZERS, dequantize, fake_quantize, quantize
from .search import PlanFamily, breakpoints, default_qem_grid, search, search_many
from .size import SizeSummary, float32_bytes, plan_size
from .workspace import SWEEP_COLUMNS, SweepRow, Workspace

__version__ = "0.1.0"
