"""Weight reconstruction: AdaRound's learned rounding, fitted block by block as in BRECQ.

Weights only (activations stay float32), each layer at the bit-width its plan gives it.

* Base quantizer (the grid of quant/codes.py's ``unsigned_grid``): any of ``quant.quantizers``; by
  default ``per-channel-mse``, affine per output channel with the clipping range chosen per
  channel by MSE over 80 shrink ratios (BRECQ's ``mse`` init, ratio 1.00 .. 0.21, with the
  squared error where BRECQ uses |w - q(w)|^2.4). Unlike BRECQ the range always contains 0, so
  the zero-point is a code. The grid is exactly the one round-to-nearest with that quantizer
  uses, so a reconstruction differs from the plan's round-to-nearest only in the rounding.
* Rounding (adaround.py): AdaRound. Each weight is ``floor(w/s) + h(V)`` with ``h`` the rectified sigmoid
  ``clip(sigmoid(V) * 1.2 - 0.1, 0, 1)``; V starts where h(V) equals the fractional part (the
  soft weights start equal to the float ones). Loss = block output MSE (summed over channels,
  averaged over batch and positions) + 0.01 * sum(1 - |2h - 1|^beta), the rounding term off for
  the first 20 % of iterations and beta annealed 20 -> 2 after; Adam, lr 1e-2 by default (BRECQ
  uses 1e-3 over 20,000 steps; CPU budgets of a few hundred steps need larger ones). At the end
  h is made hard (V >= 0 rounds up), so every weight is exactly ``(code - zero_point) * scale``
  with an integer code in 0 .. 2^b - 1 (symmetric schemes: offset by the zero-point 2^(b-1)).
* Blocks (blocks.py): BRECQ's residual blocks, stem/head/classifier alone; a vision transformer's
  encoder layers (its block loss sums over the token features, the last dimension). Every layer
  of models/layers.py is reconstructed alike, an attention module's packed q/k/v
  ``in_proj_weight`` included: it is parametrized on that module and AdaRound learns its rounding
  within its encoder block, on round-to-nearest's grid (per-channel: one range per row of 3E).
  A block's input comes from the already-reconstructed quantized model before it, its target
  from the float32 model (BRECQ's ``asym`` mode). Unlike BRECQ, BatchNorm is not folded into the convolutions: the plan
  and the size accounting are over the conv weights, BatchNorm stays float32.

The model passed in is not modified: the work is done on a copy, and the result (integer codes,
scales, zero-points per layer) is applied with ``apply_quantized``.
"""
from __future__ import annotations

import copy
import dataclasses
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional

import torch
from torch import nn
from torch.nn.utils import parametrize

from .adaround import AdaRoundWeight
from .results import BlockReport, ReconResult, block_loss, forward_all as _forward_all
from .blocks import Stage, model_stages
from ..errors import MixQuantError
from ..models.devices import resolve_device
from ..models.layers import WeightRef, weight_ref
from ..quant.recipe import Recipe
from ..quant.codes import QuantizedLayer
from ..quant.quantizers import QUANTIZERS, base_scheme, check_bits, check_finite

Progress = Optional[Callable[[int, int, str], None]]
# Base quantizers, the default first: MSE-clipped per channel (BRECQ's choice), then the others.
SCHEMES = ("per-channel-mse",) + tuple(q for q in QUANTIZERS if q != "per-channel-mse")


@dataclass
class ReconConfig:
    iters: int = 500  # per block; BRECQ uses 20,000 on a GPU
    batch_size: int = 32
    lr: float = 1e-2  # BRECQ: 1e-3 over 20,000 steps; a few hundred steps need larger ones
    round_weight: float = 0.01
    beta_start: float = 20.0
    beta_end: float = 2.0
    warmup: float = 0.2
    scheme: str = SCHEMES[0]
    seed: int = 0
    device: str = "cpu"
    eval_samples: int = 256  # calibration samples used to report each block's error before/after
    method: str = "brecq"  # one of METHODS
    damp: float = 0.01  # GPTQ: dampening, a fraction of mean(diag H) (the paper's 1 %)
    act_order: bool = True  # GPTQ: columns in descending diag(H) order (Lite0: better than natural, docs/RESULTS.md)
    gptq_inputs: str = "stage"  # GPTQ: which inputs each layer is solved on (recon/gptq.py GPTQ_INPUTS)
    gptq_grid: str = "best"  # GPTQ: "plan": the plan's grid; "best": per channel, the best of it and min/max, MSE


# brecq: AdaRound fitted block by block; gptq: GPTQ (recon/gptq.py), no fitting; gptq+brecq:
# BRECQ's AdaRound started from GPTQ's rounding.
METHODS = ("brecq", "gptq", "gptq+brecq")
METHOD_LABELS = {"brecq": "adaround+brecq-blocks", "gptq": "gptq", "gptq+brecq": "gptq+adaround+brecq-blocks"}


def _beta(step: int, cfg: ReconConfig) -> Optional[float]:
    """None during warm-up (no rounding term), then beta decaying linearly start -> end."""
    start = int(cfg.warmup * cfg.iters)
    if step < start:
        return None
    rel = (step - start) / max(1, cfg.iters - start)
    return cfg.beta_end + (cfg.beta_start - cfg.beta_end) * max(0.0, 1.0 - rel)


def _set_mode(params: List[AdaRoundWeight], mode: str) -> None:
    for p in params:
        p.mode = mode


def _check_inputs(model: nn.Module, bits: Dict[str, int], calib: torch.Tensor, cfg: ReconConfig) -> None:
    if cfg.method not in METHODS:
        raise MixQuantError(f"reconstruction method must be one of {', '.join(METHODS)}, got '{cfg.method}'")
    from .gptq import GPTQ_GRIDS, GPTQ_INPUTS

    if cfg.gptq_inputs not in GPTQ_INPUTS:
        raise MixQuantError(f"GPTQ inputs must be one of {', '.join(GPTQ_INPUTS)}, got '{cfg.gptq_inputs}'")
    if cfg.gptq_grid not in GPTQ_GRIDS:
        raise MixQuantError(f"GPTQ grid must be one of {', '.join(GPTQ_GRIDS)}, got '{cfg.gptq_grid}'")
    if not 0 < cfg.damp <= 1:
        raise MixQuantError(f"GPTQ dampening must be above 0 and at most 1, got {cfg.damp}")
    if cfg.scheme not in SCHEMES:
        raise MixQuantError(f"reconstruction scheme must be one of {', '.join(SCHEMES)}, got '{cfg.scheme}'")
    if cfg.iters < 1 or cfg.batch_size < 1:
        raise MixQuantError(f"iterations and batch size must be at least 1 (got {cfg.iters}, {cfg.batch_size})")
    if calib.dim() != 4 or len(calib) == 0:
        raise MixQuantError("reconstruction needs at least one calibration image")
    for name, b in bits.items():
        ref = _plan_layer(model, name)
        check_bits(int(b))
        check_finite(ref.tensor.detach(), name)


def _plan_layer(model: nn.Module, name: str) -> WeightRef:
    try:
        return weight_ref(model, name)
    except MixQuantError:
        raise MixQuantError(f"layer '{name[:200]}' of the plan is not in this model") from None


def reconstruct(model: nn.Module, bits: Dict[str, int], calib: torch.Tensor, cfg: ReconConfig = ReconConfig(),
                progress: Progress = None, weight_ranges=None) -> ReconResult:
    """Learned-rounding codes for every layer in ``bits`` (name -> bit-width); ``model`` is untouched.

    ``calib`` holds preprocessed calibration images [N,3,H,W]. Deterministic for a given seed,
    device and thread count.
    """
    _check_inputs(model, bits, calib, cfg)
    device = resolve_device(cfg.device)
    t_start = time.perf_counter()
    work = copy.deepcopy(model).to(device).eval()
    for p in work.parameters():
        p.requires_grad_(False)
    starts: Optional[Dict[str, torch.Tensor]] = None
    notes: List[str] = []
    if cfg.method != "brecq":
        from .gptq import run_gptq

        starts = {} if cfg.method == "gptq+brecq" else None
        gptq_model = copy.deepcopy(work) if starts is not None else work
        share = 1.0 if starts is None else 0.1  # of the progress bar (BRECQ's fitting takes the rest)
        tick = (lambda d, t, w: progress(int(1000 * share * d / max(t, 1)), 1000, w)) if progress else None
        grid = cfg.scheme if weight_ranges is None else Recipe(cfg.scheme, weight_ranges)  # the same grid as BRECQ's
        if starts is not None:  # AdaRound learns on the plan's grid, so GPTQ's start must be on that grid too
            cfg = dataclasses.replace(cfg, gptq_grid="plan")
        first = run_gptq(gptq_model, bits, calib.to(device), cfg, grid, tick, starts)
        if starts is None:
            first.seconds = time.perf_counter() - t_start
            return first
        del gptq_model
        notes = [f"GPTQ start of {line}" for line in first.notes]
        progress = (lambda d, t, w, p=progress: p(100 + int(900 * d / max(t, 1)), 1000, w)) if progress else None
    stages = model_stages(work)
    covered = {n for s in stages for n in s.layers}
    missing = [n for n in bits if n not in covered]
    if missing:
        raise MixQuantError(f"layer '{missing[0]}' is outside the blocks reconstruction knows for this model")
    refs = {n: weight_ref(work, n) for n in bits}
    gen = torch.Generator().manual_seed(cfg.seed)  # the only randomness: which samples each step sees
    chunk = max(cfg.batch_size, 64)
    x_fp = calib.to(device)
    x_q = x_fp
    total = cfg.iters * sum(1 for s in stages if any(n in bits for n in s.layers))
    done, result = 0, ReconResult({}, config=cfg, notes=notes)
    for stage in stages:
        target = _forward_all(stage.run, x_fp, chunk)
        names = [n for n in stage.layers if n in bits]
        if names:
            t0 = time.perf_counter()
            params = []
            for n in names:
                # an attention module's in_proj_weight is parametrized on that module like any weight
                start = None if starts is None else starts[n]
                ratios = None if weight_ranges is None else weight_ranges.ratios_for(n, int(bits[n]))
                p = AdaRoundWeight(refs[n].tensor, int(bits[n]), cfg.scheme, ratios, start).to(device)
                parametrize.register_parametrization(refs[n].owner, refs[n].attr, p, unsafe=True)
                params.append(p)
            report = _fit_block(stage, params, x_q, target, cfg, gen, chunk,
                                lambda i, what: progress and progress(done + i, total, what))
            done += cfg.iters
            report.seconds = time.perf_counter() - t0
            report.layers = names
            result.blocks.append(report)
            _set_mode(params, "hard")
            x_q_next = _forward_all(stage.run, x_q, chunk)
            for n, p in zip(names, params):
                result.layers[n] = p.result()
                parametrize.remove_parametrizations(refs[n].owner, refs[n].attr, leave_parametrized=False)
                with torch.no_grad():
                    refs[n].tensor.copy_(result.layers[n].weight())
        else:
            x_q_next = _forward_all(stage.run, x_q, chunk)
        x_fp, x_q = target, x_q_next
    if progress:
        progress(total, total, "done")
    result.seconds = time.perf_counter() - t_start
    return result


def _fit_block(stage: Stage, params: List[AdaRoundWeight], x_q: torch.Tensor, target: torch.Tensor,
               cfg: ReconConfig, gen: torch.Generator, chunk: int, tick) -> BlockReport:
    n_eval = min(len(x_q), cfg.eval_samples)

    def eval_mse(mode: str) -> float:
        _set_mode(params, mode)
        with torch.no_grad():
            errs = [block_loss(stage.run(x_q[i:i + chunk]), target[i:i + chunk], stage.channel_dim) * len(x_q[i:i + chunk])
                    for i in range(0, n_eval, chunk)]
        return float(sum(errs) / n_eval)

    before = eval_mse("nearest")
    _set_mode(params, "soft")
    opt = torch.optim.Adam([p.alpha for p in params], lr=cfg.lr)
    for step in range(cfg.iters):
        idx = torch.randint(len(x_q), (min(cfg.batch_size, len(x_q)),), generator=gen).to(x_q.device)
        with torch.enable_grad():
            rec = block_loss(stage.run(x_q[idx]), target[idx], stage.channel_dim)
            beta = _beta(step, cfg)
            loss = rec if beta is None else rec + cfg.round_weight * sum(p.round_loss(beta) for p in params)
            opt.zero_grad(set_to_none=True)
            loss.backward()
        opt.step()
        if step % 10 == 0 or step == cfg.iters - 1:
            tick(step + 1, f"{stage.name} rec {float(rec.detach()):.3g}")
    for p in params:
        p._h = None
    after = eval_mse("hard")
    return BlockReport(stage.name, [], before, after, 0.0)


# --- applying a result --------------------------------------------------------------------------
def _result_weights(model: nn.Module, layers: Dict[str, QuantizedLayer]) -> Dict[str, torch.Tensor]:
    """Each quantized layer's weight in ``model``, checked to exist and to have the codes' shape."""
    weights = {}
    for name, q in layers.items():
        try:
            w = weights[name] = weight_ref(model, name).tensor
        except MixQuantError:
            raise MixQuantError(f"quantized layer '{name[:200]}' is not in this model") from None
        if tuple(w.shape) != tuple(q.codes.shape):
            raise MixQuantError(f"quantized layer '{name}' has shape {tuple(q.codes.shape)}, the model's is {tuple(w.shape)}")
    return weights


def check_result_fits(model: nn.Module, layers: Dict[str, QuantizedLayer]) -> None:
    """A MixQuantError unless every quantized layer is in ``model`` with its codes' shape."""
    _result_weights(model, layers)


def apply_quantized_(model: nn.Module, layers: Dict[str, QuantizedLayer]) -> nn.Module:
    """Write each layer's dequantized codes into the model, in place."""
    weights = _result_weights(model, layers)
    with torch.no_grad():
        for name, q in layers.items():
            w = weights[name]
            w.copy_(q.weight().to(w.device, w.dtype))
    return model


@contextmanager
def quantized_applied(model: nn.Module, layers: Dict[str, QuantizedLayer]) -> Iterator[nn.Module]:
    """Like plan.applied: the quantized weights for the duration of the block, then the originals."""
    weights = _result_weights(model, layers)
    saved = {name: weights[name].detach().clone() for name in layers}
    try:
        apply_quantized_(model, layers)
        yield model
    finally:
        with torch.no_grad():
            for name, original in saved.items():
                weights[name].copy_(original)


def reconstruct_plan(model: nn.Module, plan, calib: torch.Tensor, cfg: ReconConfig = ReconConfig(),
                     progress: Progress = None) -> ReconResult:
    """``reconstruct`` for a Plan (checked against the model first); codes in plan order. A plan
    whose recipe holds calibrated (loss-aware) weight ranges on the same grid as ``cfg.scheme``
    (per channel or per tensor, same symmetry) learns its rounding on those ranges."""
    plan.check_against(model)
    recipe = plan.recipe
    ranges = getattr(recipe, "weight_ranges", None)
    if ranges is not None and base_scheme(recipe.quantizer) != base_scheme(cfg.scheme):
        ranges = None  # another grid: its ratios do not apply
    result = reconstruct(model, plan.bits, calib, cfg, progress, ranges)
    result.calib_images = len(calib)
    result.layers = {name: result.layers[name] for name in plan.layers}
    return result


def recon_metadata(result: ReconResult, calib_images: int) -> Dict[str, str]:
    """Export-file metadata describing how the codes were learned."""
    import json
    from dataclasses import asdict

    method = result.config.method if result.config else "brecq"
    info = {"method": METHOD_LABELS[method], "calib_images": calib_images, "seconds": round(result.seconds, 1),
            "config": asdict(result.config) if result.config else None,
            "blocks": [[b.name, round(b.mse_nearest, 6), round(b.mse_learned, 6)] for b in result.blocks]}
    return {"reconstruction": json.dumps(info, separators=(",", ":"))}


# --- one-call entry points for the app's background job -----------------------------------------
def reconstruct_from_folder(loaded, plan, calib_dir: str, calib_images: int = 1024, cfg: ReconConfig = ReconConfig(),
                            progress: Progress = None) -> ReconResult:
    """Decode ``calib_images`` images spread over ``calib_dir`` and reconstruct ``plan`` on them.

    Progress runs 0..1000 over the whole job (decoding is the first 5 %), ``what`` says the stage.
    """
    from ..data.load import load_tensors
    from ..data.image_sets import open_calibration_folder

    plan.check_against(loaded.model)  # a wrong plan fails before the slow work
    images = open_calibration_folder(calib_dir, calib_images)
    decode = (lambda d, t, w: progress(int(50 * d / max(t, 1)), 1000, "decoding calibration images")) if progress else None
    calib = load_tensors(images, loaded.preprocess, decode)
    fit = (lambda d, t, w: progress(50 + int(950 * d / max(t, 1)), 1000, w)) if progress else None
    result = reconstruct_plan(loaded.model, plan, calib.inputs(), cfg, fit)
    result.calib_images = len(calib)
    return result


def evaluate_quantized(model: nn.Module, layers: Dict[str, QuantizedLayer], data, device: str = "cpu",
                       progress: Progress = None):
    """Metrics of ``model`` with ``layers``' quantized weights (restored afterwards)."""
    from ..evaluation.evaluate import evaluate

    dev = resolve_device(device)
    model.to(dev)
    with quantized_applied(model, layers):
        return evaluate(model, data, dev, progress=progress)
