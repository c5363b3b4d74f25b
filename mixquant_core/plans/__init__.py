"""Stage 3, the plan: equation 1 and its breakpoints, Fisher sensitivity and budgeted allocation,
sizes, and the plan file. Imports quant/, models/, data/ and errors only."""
from .plan import Plan, applied, make_plan, quantize_model_
from .search import PlanFamily, breakpoints, default_qem_grid, search, search_many
from .size import SizeSummary, float32_bytes, plan_size

__all__ = ["Plan", "applied", "make_plan", "quantize_model_", "PlanFamily", "breakpoints", "default_qem_grid",
           "search", "search_many", "SizeSummary", "float32_bytes", "plan_size"]
