"""Loss-aware weight ranges (issue #22): for each row of a layer's grid (an output channel, or the
whole tensor) and a bit-width, the clipping ratio of ``CLIP_RATIOS`` whose quantization error the
*loss* feels least, instead of the one of least weight MSE.

Two scores of a candidate grid (w_hat = the weights quantized on it):

* ``output`` (the Workspace's): the layer's output error on calibration inputs,
  sum_x ||(W - W_hat) x||^2 = sum_r e_r H e_r^T with H = sum x x^T the Gram matrix of the layer's
  (im2col'd) inputs, per group for grouped convs (plans/ranges.py ``layer_hessians``); a matrix
  product per candidate. On Lite0 it gave 80.69 % top-1 where the Fisher score gave 78.69 %
  (4.0 average bits, {8, 4, 2}, docs/RESULTS.md);
* ``fisher``: sum F * (w - w_hat)**2, F the per-weight Fisher diagonal (plans/fisher.py), the
  same error the Fisher allocation sums; one weighted pass of the MSE search's kernel
  (``clip_search.row_sq_errors``), as fast as the MSE search, but the diagonal ignores how the
  errors of a row's weights add up in the output.

Ratio 1 (min/max) is a candidate and the largest ratio wins ties, so the chosen grid's score is
never above min/max's (and, for the Fisher score, which tries every ratio, never above the MSE
range's). A row whose weights the score cannot see (Fisher all
zero or not finite there, e.g. an all-zero channel or a layer the calibration loss does not reach)
keeps the **MSE** choice (the unweighted score), so it is never worse than ``*-mse`` in weight MSE.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .clip_search import row_sq_errors
from .quantizers import CLIP_RATIOS, as_rows, check_bits, code_bounds, is_per_channel, is_symmetric, range_params

METHODS = ("fisher", "output")


def candidate_grids(rows: torch.Tensor, nbits: int, symmetric: bool):
    """Scale and zero-point [R, K] of every clipping ratio of ``CLIP_RATIOS`` for each row."""
    lo0, hi0 = torch.aminmax(rows, dim=1)
    ratios = CLIP_RATIOS.to(rows.device)[None, :]
    return range_params(lo0[:, None] * ratios, hi0[:, None] * ratios, nbits, symmetric)


def pick(scores: torch.Tensor, fallback: torch.Tensor, blind: torch.Tensor) -> torch.Tensor:
    """Index [R] of the least score per row (the first, largest ratio among equals); ``blind`` rows
    take the least ``fallback`` score instead."""
    scores = torch.where(blind[:, None], fallback, scores)
    return scores.min(dim=1).indices


def fisher_ratios(w: torch.Tensor, fisher: torch.Tensor, nbits: int, scheme: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """(clipping ratio per grid row [R] float32, its Fisher-weighted error [R] float64) of ``w``
    at ``nbits`` on ``scheme``'s grid, minimising sum F * (w - q(w))**2 per row."""
    check_bits(nbits)
    per_channel, symmetric = is_per_channel(scheme), is_symmetric(scheme)
    rows = as_rows(w.detach().float(), per_channel)
    f = as_rows(fisher.detach().to(torch.float64), per_channel)
    finite = torch.isfinite(f).all(dim=1)
    f = torch.where(torch.isfinite(f), f, torch.zeros_like(f)).clamp_min(0.0)
    blind = ~finite | (f.sum(dim=1) <= 0)
    scale, zp = candidate_grids(rows, nbits, symmetric)
    bounds = code_bounds(nbits, symmetric)
    weighted = row_sq_errors(rows, scale, zp, *bounds, weights=f).to(rows.device)
    plain = row_sq_errors(rows, scale, zp, *bounds).to(rows.device) if blind.any() else weighted
    k = pick(weighted, plain, blind)
    return CLIP_RATIOS.to(rows.device)[k], weighted.gather(1, k[:, None])[:, 0]


COARSE_STEP = 4  # the output-error search scores every 4th ratio, then the 3 on each side of a row's best


def output_scores(w: torch.Tensor, gram: torch.Tensor, nbits: int, scheme: str,
                  ratios: Optional[torch.Tensor] = None) -> torch.Tensor:
    """[C, K] float64: the output error sum_x ||(w_c - q(w_c)) x||^2 of each output channel c for
    each candidate clipping ratio (all of ``CLIP_RATIOS`` unless ``ratios``: [K], or [R, K] one
    set per grid row), ``gram`` [G, M, M] the input Gram matrix of each of the layer's G groups
    (C rows of M weights, C / G per group)."""
    per_channel, symmetric = is_per_channel(scheme), is_symmetric(scheme)
    w = w.detach().float()
    chans = w.reshape(w.shape[0], -1)
    rows = as_rows(w, per_channel)
    ratios = CLIP_RATIOS if ratios is None else ratios
    per_row = ratios.expand(len(rows), -1) if ratios.dim() == 1 else ratios
    lo0, hi0 = torch.aminmax(rows, dim=1)
    groups = gram.shape[0]
    gram = gram.to(torch.float64)
    qmin, qmax = code_bounds(nbits, symmetric)
    out = torch.empty(chans.shape[0], per_row.shape[1], dtype=torch.float64)
    for k in range(per_row.shape[1]):
        r = per_row[:, k].float()
        scale, zp = range_params(lo0 * r, hi0 * r, nbits, symmetric)
        s, z = (scale[:, None], zp[:, None])
        w_hat = (torch.clamp(torch.round(rows / s) + z, qmin, qmax) - z) * s
        err = (w_hat - rows).reshape(chans.shape).double().reshape(groups, -1, chans.shape[1])  # [G, C/G, M]
        out[:, k] = (torch.bmm(err, gram) * err).sum(-1).reshape(-1)
    return out


def _row_scores(w: torch.Tensor, gram: torch.Tensor, nbits: int, scheme: str, ratios: torch.Tensor) -> torch.Tensor:
    """``output_scores`` per grid row: summed over the channels of a per-tensor grid."""
    scores = output_scores(w, gram, nbits, scheme, ratios)
    if not is_per_channel(scheme) or w.dim() < 2:
        scores = scores.sum(dim=0, keepdim=True)
    return scores


def output_ratios(w: torch.Tensor, gram: torch.Tensor, nbits: int, scheme: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """Like ``fisher_ratios`` with the output error (``output_scores``) as the score, searched
    coarse to fine (every ``COARSE_STEP``-th ratio, then the neighbours of each row's best: about
    a third of the matrix products of scoring all 80); per-tensor grids sum it over the channels.
    Ratio 1 is a coarse candidate, so the choice is never worse than min/max in this error. An
    all-zero Gram (inputs always zero) keeps the MSE choice."""
    check_bits(nbits)
    per_channel, symmetric = is_per_channel(scheme), is_symmetric(scheme)
    n = len(CLIP_RATIOS)
    coarse = torch.unique(torch.cat([torch.arange(0, n, COARSE_STEP), torch.tensor([n - 1])]))
    scores = _row_scores(w, gram, nbits, scheme, CLIP_RATIOS[coarse])
    best = coarse[torch.nan_to_num(scores, nan=float("inf")).min(dim=1).indices]  # [R] index into CLIP_RATIOS
    reach = COARSE_STEP - 1
    fine = (best[:, None] + torch.arange(-reach, reach + 1)[None, :]).clamp(0, n - 1)  # [R, 2 * reach + 1], ascending
    scores = _row_scores(w, gram, nbits, scheme, CLIP_RATIOS[fine])
    blind = ~torch.isfinite(scores).all(dim=1) | (scores.max(dim=1).values <= 0)
    k = torch.nan_to_num(scores, nan=float("inf")).min(dim=1).indices  # the first (largest ratio) of equals
    chosen = fine.gather(1, k[:, None])[:, 0]
    if blind.any():
        rows = as_rows(w.detach().float(), per_channel)
        scale, zp = candidate_grids(rows, nbits, symmetric)
        plain = row_sq_errors(rows, scale, zp, *code_bounds(nbits, symmetric))
        chosen = torch.where(blind, plain.min(dim=1).indices, chosen)
    return CLIP_RATIOS[chosen], torch.where(blind, torch.zeros_like(scores[:, 0]), scores.gather(1, k[:, None])[:, 0])
