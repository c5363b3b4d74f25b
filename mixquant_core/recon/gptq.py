"""GPTQ rounding (Frantar et al. 2023): each layer's codes chosen column by column so that the
layer's output on calibration inputs changes least, on the FIXED grid of the base quantizer.

Per layer, with X the layer's inputs on the calibration images (a Linear's input rows; a conv's
im2col patches), H = 2 X X^T / n. Columns (input features) are quantized one at a time; the error
of each is spread over the columns not yet quantized through the inverse Hessian, so that later
columns compensate it. As the paper and its reference implementation:

* dampening: lambda = 1 % of the mean of diag(H) added to the diagonal (``damp``), which makes H
  positive definite whatever the calibration set (one image, a rank-deficient X); should the
  Cholesky factorisation still fail, lambda is raised tenfold (up to 4 times), then the layer
  falls back to round-to-nearest (H = I);
* dead inputs (diag(H) == 0: a channel that is zero on every calibration image) get diag 1 and
  their weight columns are set to 0, as the reference implementation does;
* a layer whose Hessian has fewer samples than columns (MIN_SAMPLES_PER_COLUMN) keeps
  round-to-nearest (``solve_layer``);
* the upper Cholesky factor of H^-1, lazy batch updates in blocks of 128 columns;
* column order: "act-order" (descending diag(H)) by default, natural with ``act_order=False``.
  The grid is fixed before GPTQ (see below), so act-order is only a permutation of the columns;
  on Lite0 (3.0 average bits) it gave 78.85 % top-1 (loss 1.229) against 78.31 % (1.262) for
  natural order, and took no longer (docs/RESULTS.md).

The grid (scale and zero-point per output channel or per tensor) is fixed before GPTQ, from the
original weights. With ``gptq_grid="plan"`` it is the base quantizer's, exactly as round-to-nearest
chooses it (min/max, MSE-clipped, or a Recipe's clipping ratios: ``quant.codes.layer_grid``). With
"best" (the default) GPTQ runs on that grid and on the scheme's min/max and MSE-clipped grids, and
each output channel keeps the one with the least output error on the calibration inputs
(``best_grid_layer``): a range choice scored by what GPTQ makes of it, as the loss-aware ranges
score round-to-nearest's. Either way its ``QuantizedLayer`` (codes, scale, zero point) is stored
and exported like any other.

Grouped convolutions have one Hessian per group (a depthwise conv: one k*k x k*k Hessian per
channel), all solved together as a batch [G, C, C]; an attention module's packed
``in_proj_weight`` has one Hessian (self-attention) or one per q/k/v row block when the query,
key and value inputs differ. The Hessians are collected by models/layer_inputs.py.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from ..errors import MixQuantError
from ..models.layer_inputs import LayerInputs, collected, paired_grams
from ..models.layers import WeightRef
from ..quant.codes import QuantizedLayer
from ..quant.codes import grid_layer, layer_grid
from ..quant.recipe import Quantizer

BLOCK = 128  # lazy batch update width (the paper's B)
DAMP = 0.01  # lambda as a fraction of mean(diag H) (the paper's 1 %)
DAMP_RETRIES = 4
# A Hessian estimated from fewer samples than it has columns is rank-deficient: GPTQ then moves the
# rounding error into directions the calibration images never show, and the layer fits those images
# rather than the data (Lite0's classifier: 1280 inputs, one sample per image, 256 images). Such a
# layer keeps round-to-nearest on its plan grid: on Lite0 at 3.0 average bits, over four runs, loss
# 1.249 against 1.282 and top-1 79.08 % against 79.00 %; damping its Hessian 100x harder did worse
# (1.299), and so did GPTQ on its plan grid alone (1.290) (docs/RESULTS.md).
MIN_SAMPLES_PER_COLUMN = 1


def grouped(w: torch.Tensor, groups: int) -> torch.Tensor:
    """A weight as [G, R, C]: G groups (or q/k/v row blocks) of R output rows over C input columns."""
    return w.reshape(groups, w.shape[0] // groups, -1)


# --- the GPTQ solve ---------------------------------------------------------------------------
def inverse_factor(h: torch.Tensor, damp: float = DAMP) -> torch.Tensor:
    """Upper Cholesky factor of (H + lambda I)^-1 for each of the [G, C, C] Hessians (float64);
    lambda = ``damp`` * mean(diag H) per group, raised tenfold while factorising fails, H = I at last."""
    eye = torch.eye(h.shape[-1], dtype=h.dtype)
    mean_diag = torch.diagonal(h, dim1=-2, dim2=-1).mean(-1)[:, None, None]
    for attempt in range(DAMP_RETRIES + 1):
        lam = damp * (10 ** attempt) * mean_diag
        chol, info = torch.linalg.cholesky_ex(h + lam * eye)
        if not bool(info.any()):
            break
    else:  # hopeless numerics: round-to-nearest for those groups
        bad = info != 0
        h = torch.where(bad[:, None, None], eye.expand_as(h), h + lam * eye)
        chol = torch.linalg.cholesky(h)
    low_inv = torch.linalg.solve_triangular(chol, eye.expand_as(chol), upper=False)  # L^-1
    inv = low_inv.transpose(1, 2) @ low_inv  # (L L^T)^-1 (faster here than cholesky_inverse on batches)
    return torch.linalg.cholesky(inv, upper=True)


def gptq_codes(w: torch.Tensor, h: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmax: int,
               damp: float = DAMP, act_order: bool = True, block: int = BLOCK) -> Tuple[torch.Tensor, torch.Tensor]:
    """GPTQ on a fixed grid. ``w`` [G, R, C] weights, ``h`` [G, C, C] Hessians, ``scale`` and
    ``zero_point`` broadcastable to ``w`` (per weight, after the grid's own broadcasting), codes
    0 .. ``qmax``. Returns (codes [G, R, C] float, the updated weights GPTQ rounded: the value each
    weight had when its column was quantized, so that its nearest code is its GPTQ code)."""
    h = h.detach().double().clone()
    # columns first ([G, C, R]): each step reads one contiguous column
    col_major = lambda t: t.float().expand_as(w).transpose(1, 2).contiguous()  # noqa: E731
    w, scale, zero_point = col_major(w.detach()), col_major(scale), col_major(zero_point)
    c = w.shape[1]
    diag = torch.diagonal(h, dim1=-2, dim2=-1)
    dead = diag == 0
    diag[dead] = 1.0  # a view: writes H's diagonal
    w.masked_fill_(dead[:, :, None], 0.0)
    if act_order:
        perm = torch.argsort(torch.diagonal(h, dim1=-2, dim2=-1), dim=-1, descending=True, stable=True)
        take = lambda t: t.gather(1, perm[:, :, None].expand_as(t))  # noqa: E731
        w, scale, zero_point = take(w), take(scale), take(zero_point)
        h = h.gather(1, perm[:, :, None].expand_as(h)).gather(2, perm[:, None, :].expand_as(h))
    u = inverse_factor(h, damp).float()
    codes, start = torch.empty_like(w), torch.empty_like(w)
    for i1 in range(0, c, block):
        i2 = min(i1 + block, c)
        w1 = w[:, i1:i2].clone()
        err1 = torch.empty_like(w1)
        u1 = u[:, i1:i2, i1:i2]
        for i in range(i2 - i1):
            col, s, z = w1[:, i], scale[:, i1 + i], zero_point[:, i1 + i]
            code = torch.clamp(torch.round(col / s) + z, 0, qmax)
            start[:, i1 + i] = col
            codes[:, i1 + i] = code
            e = err1[:, i]
            torch.div(col - (code - z) * s, u1[:, i, i, None], out=e)
            w1[:, i + 1:].addcmul_(u1[:, i, i + 1:, None], e[:, None, :], value=-1.0)
        if i2 < c:
            w[:, i2:] -= torch.bmm(u[:, i1:i2, i2:].transpose(1, 2), err1)
    if act_order:
        inv = torch.argsort(perm, dim=-1)
        back = lambda t: t.gather(1, inv[:, :, None].expand_as(t))  # noqa: E731
        codes, start = back(codes), back(start)
    return codes.transpose(1, 2), start.transpose(1, 2)


def _row_error(codes: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor,
               h: torch.Tensor) -> torch.Tensor:
    """[G, R]: each row's output error on the calibration inputs, d H d^T with d = w - w_hat."""
    d = (w - (codes - zp) * scale).double()
    return (torch.bmm(d, h.double()) * d).sum(-1)


def float_target(w: torch.Tensor, gram: torch.Tensor, cross: torch.Tensor, damp: float = DAMP) -> torch.Tensor:
    """[G, R, C]: the weights that, on the inputs B the layer really gets, best reproduce its float32
    output on the float32 model's inputs A: argmin_V ||W A - V B||^2 + lambda ||V - W||^2
    = W (A B^T + lambda I) (B B^T + lambda I)^-1 (``cross`` = A B^T, ``gram`` = B B^T, both
    [G, C, C]; lambda as GPTQ's dampening, pulling towards W where B says little). GPTQ on
    these weights with H = B B^T minimises ||W A - Q B||^2: the codes also correct the error the
    quantized layers before this one left in its inputs (as GPTAQ, Li et al. 2025)."""
    gram, cross = gram.double(), cross.double()
    eye = torch.eye(gram.shape[-1], dtype=torch.float64)
    diag = torch.diagonal(gram, dim1=-2, dim2=-1)
    lam = damp * diag.mean(-1)[:, None, None]
    live = (lam > 0).flatten()
    out = w.detach().double().clone()
    if bool(live.any()):
        chol, info = torch.linalg.cholesky_ex(gram[live] + lam[live] * eye)
        ok = info == 0
        # ridge towards W itself, not towards 0: argmin ||W A - V B||^2 + lambda ||V - W||^2
        rhs = (w.double()[live] @ (cross[live] + lam[live] * eye)).transpose(1, 2)  # [G', C, R]
        fitted = torch.cholesky_solve(rhs, chol).transpose(1, 2)
        idx = torch.nonzero(live).flatten()[ok]
        out[idx] = fitted[ok]
    if not torch.isfinite(out).all():
        return w.detach().float()
    return out.float()


def gptq_layer(name: str, w: torch.Tensor, hessians: torch.Tensor, bits: int, quantizer: Quantizer,
               damp: float = DAMP, act_order: bool = True, grid=None,
               target: Optional[torch.Tensor] = None) -> Tuple[QuantizedLayer, torch.Tensor]:
    """Layer ``name``'s GPTQ codes on ``quantizer``'s grid for ``bits``, and the updated weights
    (``w``'s shape) those codes are the nearest rounding of (AdaRound's start in gptq+brecq).
    ``grid``: ``layer_grid``'s answer for this layer when the caller has it already (the grid is
    always the one of ``w``); ``target``: the weights GPTQ fits instead of ``w`` ([G, R, C],
    ``float_target``), ``hessians`` then being the Gram matrices of the inputs they are fitted on."""
    w = w.detach().float()
    nearest, scale, zp = grid if grid is not None else layer_grid(quantizer, name, w, bits)
    groups = int(hessians.shape[0])
    full = lambda t: grouped(t.float().expand_as(w), groups)  # noqa: E731
    wg, sg, zg = grouped(w, groups) if target is None else target.float(), full(scale), full(zp)
    codes, start = gptq_codes(wg, hessians, sg, zg, 2 ** int(bits) - 1, damp, act_order)
    # GPTQ is greedy: with heavy clipping (2 bits) a row can end worse than plain rounding. Rows are
    # independent in the objective sum_rows d H d^T, so each keeps the better of the two roundings.
    nearest = grouped(nearest.float(), groups)
    worse = _row_error(codes, wg, sg, zg, hessians) > _row_error(nearest, wg, sg, zg, hessians)
    codes = torch.where(worse[:, :, None], nearest, codes).reshape(w.shape)
    start = torch.where(worse[:, :, None], grouped(w, groups), start)
    if not torch.isfinite(start).all():  # never: H is damped and finite; a last guard before the codes ship
        raise MixQuantError(f"layer '{name}': GPTQ produced non-finite weights")
    return grid_layer((codes, scale, zp), bits, quantizer), start.reshape(w.shape)


def underdetermined(samples: int, hessians: torch.Tensor, per_column: int = MIN_SAMPLES_PER_COLUMN) -> bool:
    """Whether ``samples`` input columns are too few for ``hessians`` [G, C, C]: fewer than
    ``per_column`` (MIN_SAMPLES_PER_COLUMN for GPTQ, FIT_SAMPLES_PER_COLUMN for the float-target fit)
    per column."""
    return samples < per_column * int(hessians.shape[-1])


def solve_layer(name: str, w: torch.Tensor, hessians: torch.Tensor, samples: int, bits: int, quantizer: Quantizer,
                damp: float, act_order: bool, grid, best_grid: bool, target: Optional[torch.Tensor] = None,
                notes: Optional[List[str]] = None) -> Tuple[QuantizedLayer, torch.Tensor]:
    """One layer's codes as every GPTQ path chooses them: round-to-nearest on ``grid`` where its
    ``samples`` input columns are too few for its Hessian (``underdetermined``; a line for the
    user goes to ``notes``), else GPTQ on ``grid`` or, with ``best_grid``, on the best of
    ``best_grid_candidates`` per output channel."""
    w = w.detach().float()
    if underdetermined(samples, hessians):
        if notes is not None:
            notes.append(f"{name}: round-to-nearest, its Hessian has {samples} calibration samples for "
                         f"{int(hessians.shape[-1])} input columns (GPTQ would fit the calibration images)")
        return grid_layer(grid, bits, quantizer), w  # round-to-nearest: its codes are w's nearest rounding
    if best_grid:
        return best_grid_layer(name, w, hessians, bits, quantizer, damp, act_order,
                               best_grid_candidates(quantizer, name, w, bits, grid), target)
    return gptq_layer(name, w, hessians, bits, quantizer, damp, act_order, grid, target)


def best_grid_candidates(quantizer: Quantizer, name: str, w: torch.Tensor, bits: int, plan_grid=None) -> List[tuple]:
    """The grids ``best_grid_layer`` chooses from: the plan's (``layer_grid``'s, or ``plan_grid``
    when the caller has it already) first, then the same scheme's min/max and MSE-clipped grids,
    each once (a grid equal to the plan's is neither searched again nor listed twice)."""
    from ..quant.codes import unsigned_grid
    from ..quant.quantizers import MSE_SUFFIX, base_scheme
    from ..quant.recipe import ratios_of, scheme_of

    scheme = scheme_of(quantizer)
    plain = ratios_of(quantizer, name, bits) is None  # then the plan's grid is its scheme's own
    grids = [plan_grid if plan_grid is not None else layer_grid(quantizer, name, w, bits)]
    for other in (base_scheme(scheme), base_scheme(scheme) + MSE_SUFFIX):
        if plain and other == scheme:
            continue
        g = unsigned_grid(w, int(bits), other, None)
        if not any(torch.equal(g[1], h[1]) and torch.equal(g[2], h[2]) for h in grids):
            grids.append(g)
    return grids


def best_grid_layer(name: str, w: torch.Tensor, hessians: torch.Tensor, bits: int, quantizer: Quantizer,
                    damp: float, act_order: bool, grids: List[tuple],
                    target: Optional[torch.Tensor] = None) -> Tuple[QuantizedLayer, torch.Tensor]:
    """GPTQ on each of ``grids``; every output channel keeps the grid whose GPTQ codes give it the
    least output error on the calibration inputs (a per-tensor grid: the whole layer does). Rows are
    independent in GPTQ's objective, so this is the best of the candidates row by row."""
    w = w.detach().float()
    groups = int(hessians.shape[0])
    goal = grouped(w, groups) if target is None else target.float()
    runs = [gptq_layer(name, w, hessians, bits, quantizer, damp, act_order, g, target) for g in grids]
    if len(runs) == 1:
        return runs[0]
    err = torch.stack([_row_error(grouped(q.weight().float(), groups), goal, torch.ones(()), torch.zeros(()), hessians)
                       .reshape(-1) for q, _ in runs])  # [K, out channels]: d H d^T with d = goal - w_hat
    first = runs[0][0]
    if first.scale.numel() == 1:  # one grid for the whole layer
        return runs[int(err.sum(1).argmin())]
    pick, rows = err.argmin(0), torch.arange(err.shape[1])
    take = lambda ts: torch.stack(ts)[pick, rows]  # noqa: E731  (each channel from its grid's run)
    codes, scale, zp = (take([getattr(q, a) for q, _ in runs]) for a in ("codes", "scale", "zero_point"))
    start = take([st for _, st in runs])
    return QuantizedLayer(codes, scale, zp, first.nbits, first.scheme), start


Progress = Optional[Callable[[int, int, str], None]]


def quantize_with_inputs(refs: Dict[str, WeightRef], bits: Dict[str, int], inputs: Dict[str, LayerInputs],
                         quantizer: Quantizer, damp: float, act_order: bool, grids: Dict[str, tuple],
                         starts: Optional[Dict[str, torch.Tensor]] = None,
                         best_grid: bool = False, notes: Optional[List[str]] = None) -> Dict[str, QuantizedLayer]:
    """The codes ``solve_layer`` chooses for each layer of ``inputs`` from its collected Hessians,
    on ``grids`` (name -> ``layer_grid``), or with ``best_grid`` the best of ``best_grid_candidates``
    per output channel; the model's weights are left as they were (the caller writes them)."""
    out = {}
    for name, coll in inputs.items():
        w, h = refs[name].tensor.detach().cpu(), coll.matrices(name).cpu()
        layer, start = solve_layer(name, w, h, coll.samples, int(bits[name]), quantizer, damp, act_order,
                                   grids[name], best_grid, notes=notes)
        out[name] = layer
        if starts is not None:
            starts[name] = start
    return out


# --- the whole model: stage by stage ----------------------------------------------------------
REPORT_IMAGES = 64  # calibration images each stage's error report (GPTQ vs nearest) is measured on
PAIRED_CHUNK = 8  # images per paired float32 / quantized run ("float-target": two im2cols held at once)
# Which inputs each layer's GPTQ sees, and what it fits (run_gptq):
# stage: a stage's layers from one run of it, the stages before it quantized;
# layer: one layer at a time, the layers before it in its stage quantized too;
# float-target: as "layer", and fitted to the float32 model's output of the layer (float_target).
GPTQ_INPUTS = ("stage", "layer", "float-target")
# float-target fits C weights per row by least squares: only where the calibration inputs hold this
# many columns per weight column (Lite0's classifier, 1280 inputs on 256 images, gets plain GPTQ)
FIT_SAMPLES_PER_COLUMN = 8
# The grid each layer's GPTQ codes are on: the plan's (its quantizer and ranges), or "best": GPTQ on
# the plan's grid and on the scheme's min/max and MSE-clipped grids, each output channel keeping the
# one with the least output error (best_grid_layer; Lite0, docs/RESULTS.md: uniform 4 79.92 % vs 79.38 %,
# 3.0 avg bits ahead in top-1 in 3 of 4 runs, behind in loss)
GPTQ_GRIDS = ("best", "plan")


def _dequantized(grid) -> torch.Tensor:
    codes, scale, zp = grid
    return (codes - zp) * scale


def run_gptq(work: nn.Module, bits: Dict[str, int], calib: torch.Tensor, cfg, quantizer: Quantizer,
             progress: Progress = None, starts: Optional[Dict[str, torch.Tensor]] = None):
    """GPTQ codes for every layer of ``bits``, sequentially: stage by stage over recon/blocks.py's
    chain, each stage's inputs coming from the already-quantized stages before it; the Hessians of
    a stage's layers are collected in one run of the stage (its own layers still float32), then
    its layers are quantized and the stage is run again with the quantized weights (with
    ``cfg.gptq_inputs`` "layer" or "float-target", a stage's layers one at a time instead: GPTQ_INPUTS;
    Lite0 measured no better with either, docs/RESULTS.md). ``work`` (a
    private copy) ends with the quantized weights. A model blocks.py does not chain gets a single
    float32 pass over the calibration images (every layer's inputs from the float model).

    Returns a ``ReconResult`` whose block reports compare each stage's output error (against the
    float32 model, on the first ``REPORT_IMAGES`` images) under round-to-nearest and under GPTQ.
    """
    import time
    from .blocks import model_stages
    from .results import BlockReport, ReconResult, block_loss, forward_all as _forward_all
    from ..models.layers import weight_ref

    if not torch.isfinite(calib).all():
        raise MixQuantError("the calibration images contain NaN/Inf values")
    t_start = time.perf_counter()
    refs = {n: weight_ref(work, n) for n in bits}
    chunk = max(1, cfg.batch_size)
    mode = cfg.gptq_inputs  # checked by reconstruct
    result = ReconResult({}, config=cfg)
    grids: Dict[str, tuple] = {}

    def collect(names: List[str], run, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        for n in names:  # each layer's grid once (an MSE range search is not free)
            grids[n] = layer_grid(quantizer, n, refs[n].tensor.detach().float().cpu(), int(bits[n]))
        inputs = dict(zip(names, collected(work, names, run, (x[i:i + chunk] for i in range(0, len(x), chunk)))))
        return quantize_with_inputs(refs, bits, inputs, quantizer, cfg.damp, cfg.act_order, grids, starts,
                                    cfg.gptq_grid == "best", result.notes)

    def write(layers: Dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for n, w in layers.items():
                refs[n].tensor.copy_(w.to(refs[n].tensor.device, refs[n].tensor.dtype))

    def batches(x: torch.Tensor, size: int):
        return (x[i:i + size] for i in range(0, len(x), size))

    def in_order(names: List[str], run, x_q: torch.Tensor, x_fp: torch.Tensor) -> Dict[str, QuantizedLayer]:
        """The stage's layers one at a time, in order, each on its inputs with the layers before it
        in the stage already quantized ("layer"), and fitted to its float32 output ("float-target")."""
        float_w = {n: refs[n].tensor.detach().clone() for n in names}
        done: Dict[str, QuantizedLayer] = {}
        for n in names:
            w = float_w[n].float().cpu()
            grids[n] = layer_grid(quantizer, n, w, int(bits[n]))
            fit = None
            if mode == "layer":
                coll = collected(work, [n], run, batches(x_q, chunk))[0]
                h, samples = coll.matrices(n).cpu(), coll.samples
            else:
                quant_w = {m: q.weight() for m, q in done.items()}

                def run_float(x, quant_w=quant_w):
                    write({m: float_w[m] for m in quant_w})
                    return run(x)

                def run_quantized(x, quant_w=quant_w):
                    write(quant_w)
                    return run(x)

                size = max(1, min(chunk, PAIRED_CHUNK))
                h, cross, samples = paired_grams(work, n, run_float, run_quantized,
                                                 zip(batches(x_fp, size), batches(x_q, size)))
                h, cross = h.cpu(), cross.cpu()
                write(quant_w)
                if not underdetermined(samples, h, FIT_SAMPLES_PER_COLUMN):  # else the fit would learn the calibration set
                    fit = float_target(grouped(w, int(h.shape[0])), h, cross, cfg.damp)
            layer, start = solve_layer(n, w, h, samples, int(bits[n]), quantizer, cfg.damp, cfg.act_order,
                                       grids[n], cfg.gptq_grid == "best", fit, result.notes)
            done[n] = layer
            if starts is not None:
                starts[n] = start
            write({n: layer.weight()})
        return done

    try:
        stages = model_stages(work)
    except MixQuantError:
        stages = None
    if stages is None:  # one float32 pass for every layer
        if progress:
            progress(0, 1, "GPTQ: one float32 pass")
        result.layers = collect(list(bits), work, calib)
        write({n: q.weight() for n, q in result.layers.items()})
    else:
        covered = {n for s in stages for n in s.layers}
        missing = [n for n in bits if n not in covered]
        if missing:
            raise MixQuantError(f"layer '{missing[0]}' is outside the blocks reconstruction knows for this model")
        n_report = min(REPORT_IMAGES, cfg.eval_samples, len(calib))
        x_q = calib
        x_fp = calib if mode == "float-target" else calib[:n_report]  # the float32 model's stage inputs
        for k, stage in enumerate(stages):
            names = [n for n in stage.layers if n in bits]
            if progress:
                progress(k, len(stages), f"GPTQ {stage.name}")
            target = _forward_all(stage.run, x_fp, chunk)  # the stage's own layers are still float32
            if names:
                t0 = time.perf_counter()
                layers = collect(names, stage.run, x_q) if mode == "stage" else in_order(names, stage.run, x_q, x_fp)
                write({n: _dequantized(grids[n]) for n in names})
                nearest = _forward_all(stage.run, x_q[:n_report], chunk)
                write({n: q.weight() for n, q in layers.items()})
                x_q = _forward_all(stage.run, x_q, chunk)
                result.layers.update(layers)
                result.blocks.append(BlockReport(
                    stage.name, names, float(block_loss(nearest, target[:n_report], stage.channel_dim)),
                    float(block_loss(x_q[:n_report], target[:n_report], stage.channel_dim)), time.perf_counter() - t0))
            else:
                x_q = _forward_all(stage.run, x_q, chunk)
            x_fp = target
    if progress:
        progress(1 if stages is None else len(stages), 1 if stages is None else len(stages), "done")
    result.seconds = time.perf_counter() - t_start
    result.layers = {n: result.layers[n] for n in bits}
    return result


# --- allocation that knows the rounding (issue #22 part 3) ---------------------------------------
def gptq_cost_table(model: nn.Module, names: List[str], calib: torch.Tensor, fisher: List[torch.Tensor],
                    bits, quantizer: Quantizer, batch_size: int = 32, damp: float = DAMP, act_order: bool = True,
                    progress: Progress = None):
    """[L, B] float64: per layer of ``names`` and bit-width of ``bits``, the Fisher-weighted error
    ``sum F * (w - w_gptq(b))**2`` of GPTQ's weights, in the units of the plain Fisher cost
    (plans/fisher.py), so the budgeted allocation ranks bit-widths by what GPTQ will make of them.
    Hessians from ONE float32 pass over ``calib`` (every layer's inputs from the float model, not
    the sequential scheme of ``run_gptq``), then one GPTQ solve per layer and bit-width."""
    import numpy as np

    from ..models.layers import weight_ref

    if not torch.isfinite(calib).all():
        raise MixQuantError("the calibration images contain NaN/Inf values")
    refs = {n: weight_ref(model, n) for n in names}
    batches = (calib[i:i + batch_size] for i in range(0, len(calib), batch_size))
    inputs = dict(zip(names, collected(model, names, model, batches)))
    total = len(names) + 1
    if progress:
        progress(1, total, "GPTQ cost: Hessians")
    cost = np.zeros((len(names), len(bits)), dtype=np.float64)
    for i, (name, f) in enumerate(zip(names, fisher)):
        w = refs[name].tensor.detach().float().cpu()
        h = inputs[name].matrices(name).cpu()
        for j, b in enumerate(bits):
            q, _ = solve_layer(name, w, h, inputs[name].samples, int(b), quantizer, damp, act_order,
                               layer_grid(quantizer, name, w, int(b)), False)
            err = w.double() - q.weight().double()
            cost[i, j] = float(torch.sum(f.cpu().double() * err * err))
        if progress:
            progress(i + 2, total, f"GPTQ cost: {name}")
    return cost
