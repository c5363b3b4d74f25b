"""A Workspace is one model with its quantizer: its layers, QE table, plans and sizes, and the
Evaluator that measures its plans (evaluation/evaluator.py).

Its settings are fixed when it is made (the app shares one Workspace between browser sessions):
assigning a public attribute afterwards raises. Whatever may differ between callers (results
store, early stop, progress) is an argument of the evaluation calls, made through
``mixquant_core.evaluations.Evaluations``. Caches of values that are the same for every caller
(the QE table, plan families, the Fisher table) live here.
"""
from __future__ import annotations

import math
import threading
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from .data.image_sets import EvalTensors
from .errors import MixQuantError
from .evaluation.cluster import RayCluster
from .evaluation.evaluator import Evaluator
from .models.devices import resolve_device
from .models.layers import LayerInfo, find_layers, pinned_mask
from .models.registry import LoadedModel
from .plans.plan import Plan, make_plan
from .quant.act_calibration import DEFAULT_ACT_METHOD, act_layers, calibrate, check_act_settings
from .quant.recipe import Quantizer, Recipe
from .quant.qe import BASE_BITS, DEFAULT_BITS, QETable, normalize_bits, qe_table
from .plans.search import PlanFamily, breakpoints, check_qem, search_many
from .plans.size import SizeSummary, float32_bytes, plan_size

Progress = Optional[Callable[[int, int, str], None]]
# Budgeted allocation costs: plain QE, Fisher-weighted error of round-to-nearest, of GPTQ's weights.
COSTS = ("qe", "fisher", "fisher-gptq")
RANGES = ("weights", "loss")  # the weights' own ranges, or loss-aware ones chosen on ``calib`` (issue #22)


class Workspace:
    def __init__(self, loaded: LoadedModel, quantizer: str = "asymmetric", bits: Sequence[int] = DEFAULT_BITS,
                 keep_first_last: bool = False, exclude: Sequence[str] = (), device: str = "auto",
                 engine: str = "auto", notify: Optional[Callable[[str], None]] = None,
                 cluster: Optional[RayCluster] = None, ranges: str = "weights", act_bits: Optional[int] = None,
                 act_range: Optional[str] = None, calib: Optional[EvalTensors] = None,
                 act_keep_float: Sequence[str] = (), act_outputs: bool = True):
        self.loaded = loaded
        self.quantizer = quantizer  # the weight scheme's name
        # What calibration adds to the scheme (quant/recipe.py): "weights" keeps the scheme's own
        # ranges, "loss" chooses each layer's clipping by a loss-aware error (issue #22); act_bits
        # quantizes the layers' inputs with ranges by act_range (issue #20). Both need ``calib``.
        if ranges not in RANGES:
            raise MixQuantError(f"unknown weight ranges '{ranges}'; choose weights or loss")
        self.ranges = ranges
        self.act_bits = act_bits
        self.act_range = act_range
        self.act_keep_float = tuple(act_keep_float)  # layers whose input stays float (pinned in the plan)
        self.act_outputs = bool(act_outputs)  # also the output points of models/act_points.py
        self.calib = calib
        self.bits = normalize_bits(bits)
        self.keep_first_last = bool(keep_first_last)
        self.device = resolve_device(device)
        self.layers: List[LayerInfo] = find_layers(loaded.model, exclude)
        if not self.layers:
            raise MixQuantError("no quantizable layer left (every Conv/Linear layer was excluded or the model has none)")
        self.pinned = pinned_mask(self.layers, keep_first_last)
        if act_bits is not None:  # bad activation settings fail now, before any slow work
            check_act_settings(act_bits, act_range or DEFAULT_ACT_METHOD)
            act_layers(loaded.model, [layer.name for layer in self.layers], self.act_keep_float)
        self.float_bytes = float32_bytes(loaded.model)
        # Evaluation only (auto: ONNX Runtime on CPU, torch on CUDA); QE, Fisher and reconstruction stay torch.
        self.evaluator = Evaluator(loaded, self.device, engine, cluster, notify)
        self._table: Optional[QETable] = None
        self._family: Optional[PlanFamily] = None
        self._fisher = None  # (calibration set, FisherTable); holding the set keeps its id unique
        self._gptq_costs = None  # (FisherTable, [L, B] fisher-gptq costs)
        self._fisher_diag = None  # (calibration set, [per-layer Fisher diagonal])
        self._allocations: Dict[tuple, object] = {}  # (cost, unit) -> allocation family
        self._recipe: Optional[Quantizer] = None
        self._recipe_lock = threading.Lock()
        self._table_lock = threading.Lock()  # the QE table is computed once, without waiting on evaluations
        self._frozen = True

    def __setattr__(self, name: str, value) -> None:
        # A shared Workspace must not carry one caller's choice into another's results: its settings
        # are fixed once made. Private caches (leading underscore) are filled in later.
        if not name.startswith("_") and self.__dict__.get("_frozen"):
            raise AttributeError(f"Workspace.{name} is fixed when the Workspace is made; pass per-call choices "
                                 "(store, early stop, progress) to the evaluation calls instead")
        object.__setattr__(self, name, value)

    @property
    def recipe(self) -> Quantizer:
        """What evaluation and export quantize with: the scheme name, or a Recipe once calibration
        adds loss-aware weight ranges or activation quantization (computed once, on ``calib``)."""
        if self.ranges == "weights" and self.act_bits is None:
            return self.quantizer
        with self._recipe_lock:
            if self._recipe is None:
                self._recipe = self._calibrated_recipe()
            return self._recipe

    def _calibrated_recipe(self) -> Recipe:
        if self.calib is None:
            raise MixQuantError("loss-aware ranges and activation quantization need calibration images (--calib)")
        return Recipe(self.quantizer, self._weight_ranges() if self.ranges == "loss" else None,
                      self._act_quant() if self.act_bits is not None else None)

    def calibrate(self, progress: Progress = None) -> Quantizer:
        """``recipe``, with a progress bar while its calibration runs (the first time only)."""
        self._calib_progress = progress
        try:
            return self.recipe
        finally:
            self._calib_progress = None

    def _weight_ranges(self):
        """Loss-aware ranges (issue #22): for every layer and candidate bit-width, the clipping ratio
        per grid row of least output error on ``calib`` (plans/ranges.py)."""
        from .plans.ranges import output_weight_ranges

        progress = getattr(self, "_calib_progress", None)
        with self.evaluator.private_model() as model:
            return output_weight_ranges(model, self.layers, self.calib, self.bits, self.quantizer, progress)

    def _weight_grid(self, progress: Progress = None) -> Quantizer:
        """What the weights are rounded on: with loss-aware ranges the recipe (calibrated once), else
        the scheme (activation ranges do not change a weight's grid)."""
        return self.calibrate(progress) if self.ranges == "loss" else self.quantizer

    def _act_quant(self):
        """Every quantized layer's input range, calibrated once on ``calib`` (float model)."""
        with self.evaluator.private_model() as model:
            return calibrate(model, [layer.name for layer in self.layers], self.calib, self.act_bits,
                             self.act_range or DEFAULT_ACT_METHOD, keep_float=self.act_keep_float, device=self.device,
                             outputs=self.act_outputs)

    def named(self, bits: Optional[Sequence[int]]) -> Optional[Dict[str, int]]:
        """Per-layer ``bits`` (model order) as layer name -> bits; None (float32) stays None."""
        return None if bits is None else {layer.name: int(b) for layer, b in zip(self.layers, bits)}

    # --- QE table and search ---------------------------------------------------------------
    def table(self, progress: Progress = None) -> QETable:
        """The QE table, on the grids the layers really get: with loss-aware ranges, the recipe's."""
        grid = self._weight_grid(progress)
        with self._table_lock:
            if self._table is None:
                self._table = qe_table(self.loaded.model, grid, self.bits, self.layers,
                                       device=self.device, progress=progress)
        return self._table

    def family(self) -> PlanFamily:
        if self._family is None:
            self._family = breakpoints(self.table(), self.pinned)
        return self._family

    def bits_for(self, qems: Sequence[float]) -> np.ndarray:
        return search_many(self.table(), qems, self.pinned)

    def uniform(self, b: int) -> np.ndarray:
        return np.full(len(self.layers), int(b), dtype=np.int64)

    def size(self, bits: Sequence[int]) -> SizeSummary:
        return plan_size(self.float_bytes, self.layers, bits, self.quantizer)

    def plan(self, qem: float) -> Plan:
        qem = check_qem(qem)
        return make_plan(self.loaded.identity, self.table(), self.bits_for([qem])[0], qem, self.float_bytes, recipe=self.recipe)

    def plan_from_bits(self, bits: Sequence[int], qem: Optional[float] = None, extra: Optional[dict] = None) -> Plan:
        return make_plan(self.loaded.identity, self.table(), bits, qem, self.float_bytes, extra, self.recipe)

    def quant_mse(self, bits: Sequence[int]) -> float:
        table = self.table()
        cols = [table.bits.index(int(b)) for b in bits]
        qe = table.qe[np.arange(len(bits)), cols]
        return float(np.dot(qe, table.params) / table.params.sum())

    def qem_for_budget(self, max_mb: Optional[float] = None, avg_bits: Optional[float] = None) -> float:
        """Smallest QEM (the most bits) whose plan fits the budget: size <= max_mb or average
        bits <= avg_bits. Size falls monotonically as QEM grows, so the first fit is the best one."""
        if (max_mb is None) == (avg_bits is None):
            raise MixQuantError("give exactly one budget: a size in MB or an average bit-width")
        fam = self.family()
        for qem, bits in zip(fam.qems, fam.bits):
            s = self.size(bits)
            if (max_mb is not None and s.plan_mb <= max_mb) or (avg_bits is not None and s.avg_bits <= avg_bits + 1e-9):
                return float(qem)
        smallest = self.size(fam.bits[-1])
        raise MixQuantError(f"no QEM plan fits that budget: the smallest is {smallest.plan_mb:.2f} MB at "
                            f"{smallest.avg_bits:.2f} average bits")

    def sweep_plans(self, qems: Sequence[float]) -> tuple:
        """(QEMs checked, their bits [Q, L], every plan a sweep evaluates: float32, int8, the QEMs')."""
        qems = [check_qem(q) for q in qems]
        all_bits = self.bits_for(qems) if qems else np.zeros((0, len(self.layers)), dtype=np.int64)
        return qems, all_bits, [None, tuple(self.uniform(BASE_BITS))] + [tuple(b) for b in all_bits]

    # --- budgeted allocation (sensitivity.py + allocate.py) ----------------------------------
    def fisher_diagonal(self, calib: EvalTensors, progress: Progress = None):
        """Per layer, the Fisher diagonal on ``calib``, cached for the last calibration set (the
        allocation's Fisher cost and the loss-aware ranges share it)."""
        from .plans.fisher import fisher_diagonal

        with self.evaluator.private_model() as model:  # gradients and requires_grad flags: the private copy
            held = self._fisher_diag
            if held is None or held[0] is not calib:
                self._fisher_diag = (calib, fisher_diagonal(model, self.layers, calib, self.device, progress))
            return self._fisher_diag[1]

    def fisher(self, calib: EvalTensors, progress: Progress = None):
        """Fisher-weighted error table on calibration images, cached per calibration set; with
        loss-aware ranges, each layer's bit-widths are scored on the grid the recipe gives them."""
        from .plans.fisher import fisher_table

        held = self._fisher
        if held is None or held[0] is not calib:
            grid = self._weight_grid(progress)
            diagonal = self.fisher_diagonal(calib, progress)
            with self.evaluator.private_model() as model:
                table = fisher_table(model, self.layers, calib, grid, self.bits, self.device, progress, diagonal)
            self._fisher = (calib, table)
            self._allocations.clear()
        return self._fisher[1]

    def allocation_family(self, cost: str = "qe", unit: str = "bytes", calib: Optional[EvalTensors] = None):
        """Every Lagrangian-optimal plan for summed ``cost`` ("qe" or "fisher") under a budget in
        ``unit`` ("bytes" of the model, or "bits" = params x bit-width), cached."""
        from .plans.allocate import allocation_family

        if cost not in COSTS:
            raise MixQuantError(f"unknown allocation cost '{cost}'; choose {', '.join(COSTS)}")
        if cost != "qe" and calib is None:
            raise MixQuantError(f"the {cost} cost needs calibration images (--calib DIR)")
        costs = self.cost_table(cost, calib)  # may refresh the Fisher table (and clear this cache)
        key = (cost, unit)
        cache = self._allocations
        if key not in cache:
            cache[key] = allocation_family(self.bits, self.budget_weights(unit), costs, self.pinned)
        return cache[key]

    def cost_table(self, cost: str, calib: Optional[EvalTensors] = None, progress: Progress = None) -> np.ndarray:
        """[L, B] summed-cost terms: plain QE, the Fisher-weighted error of round-to-nearest, or
        ("fisher-gptq") the Fisher-weighted error of GPTQ's weights (recon/gptq.py)."""
        if cost == "qe":
            return self.table().qe
        table = self.fisher(calib)
        if cost == "fisher":
            return table.cost
        return self.gptq_costs(calib, progress)

    def gptq_costs(self, calib: EvalTensors, progress: Progress = None) -> np.ndarray:
        """The "fisher-gptq" cost table, cached per calibration set like the Fisher table."""
        from .recon.gptq import gptq_cost_table

        table = self.fisher(calib, progress)
        held = self._gptq_costs
        if held is None or held[0] is not table:
            grid = self._weight_grid(progress)  # the grid GPTQ gets
            with self.evaluator.private_model() as model:
                costs = gptq_cost_table(model, [l.name for l in self.layers], calib.inputs(), table.diagonal,
                                        self.bits, grid, progress=progress)
            self._gptq_costs = held = (table, costs)
            self._allocations.pop(("fisher-gptq", "bytes"), None)
            self._allocations.pop(("fisher-gptq", "bits"), None)
        return held[1]

    def budget_weights(self, unit: str) -> np.ndarray:
        """[L, B] what a budget counts: bytes of each quantized layer, or params x bit-width."""
        from .plans.size import quantized_layer_bytes

        if unit == "bytes":
            rows = [[quantized_layer_bytes(l, b, self.quantizer) for b in self.bits] for l in self.layers]
        else:
            rows = [[l.params * b for b in self.bits] for l in self.layers]
        return np.array(rows, dtype=np.float64)

    def budget_bits(self, cost: str = "qe", max_mb: Optional[float] = None, avg_bits: Optional[float] = None,
                    calib: Optional[EvalTensors] = None) -> np.ndarray:
        """Bit-widths of least summed ``cost`` whose size is <= max_mb or average bits <= avg_bits."""
        from .plans.allocate import allocate

        if (max_mb is None) == (avg_bits is None):
            raise MixQuantError("give exactly one budget: a size in MB or an average bit-width")
        for value in (max_mb, avg_bits):
            if value is not None and not (math.isfinite(value) and value > 0):
                raise MixQuantError(f"a budget must be a positive number, got {value!r}")
        unit = "bytes" if max_mb is not None else "bits"
        fam = self.allocation_family(cost, unit, calib)
        total_params = sum(l.params for l in self.layers)
        if max_mb is not None:  # bytes left for the quantized layers once the float32 rest is paid
            budget = max_mb * 1e6 - (self.float_bytes - 4 * total_params)
        else:
            budget = avg_bits * total_params
        if budget < fam.weight[-1] - 1e-9:
            low = self.size(fam.bits[-1])
            raise MixQuantError(f"no plan fits that budget: the smallest is {low.plan_mb:.2f} MB at "
                                f"{low.avg_bits:.2f} average bits")
        return allocate(self.bits, self.budget_weights(unit), self.cost_table(cost, calib), budget, self.pinned,
                        family=fam)
