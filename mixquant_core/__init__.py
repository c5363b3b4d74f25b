"""MixQuant Studio core: the stages of the data's path, each a folder that imports only earlier ones.

models/, data/ -> quant/ -> plans/ -> evaluation/ -> recon/ -> export/ -> workspace, evaluations -> studies/.
Knows nothing of any UI or plotting; the CLI (``mixquant_cli``), the figures (``mixquant_viz``),
the Streamlit app and the tests all call it.
"""
from .data import EvalTensors, ImageList, default_eval_dir, load_tensors, open_image_folder, open_imagenette
from .errors import DatasetError, InvalidWeightsError, MixQuantError, ModelUnavailableError, PlanError
from .evaluation import Metrics, evaluate
from .models import (DEFAULT_MODEL, KINDS, PAPER_MODELS, LayerInfo, LoadedModel, build_model, find_layers, list_models,
                     load_model, resolve_device)
from .plans import (Plan, PlanFamily, SizeSummary, applied, breakpoints, default_qem_grid, float32_bytes, make_plan,
                    plan_size, quantize_model_, search, search_many)
from .quant import DEFAULT_BITS, QUANTIZERS, QETable, dequantize, fake_quantize, qe_table, quantize
from .workspace import Workspace
from .evaluations import PLAN_ROW_COLUMNS, Evaluations, PlanRow

__version__ = "0.1.0"
