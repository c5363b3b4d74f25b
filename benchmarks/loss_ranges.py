"""Loss-aware ranges (issue #22): the two scores of a clipping ratio, Fisher-weighted error vs the
layer's output error on calibration inputs, at the same bit-widths: their cost and the top-1 they give.

    python benchmarks/loss_ranges.py --calib-images 64 --avg-bits 4 --bits 8,4,2 --out /tmp/loss_ranges.json

Steps (each timed): Fisher diagonal on the calibration images; the Fisher-weighted range search
(every layer x candidate bit-width); the layers' input Gram matrices (im2col); the output-error
range search. The bit-widths are the Fisher-budgeted plan of the loss-aware (Fisher) Workspace;
both recipes are evaluated with them on --data (default $MIXQUANT_DATA/imagenet-val-1300).
"""
from __future__ import annotations

import argparse
import json
import time

from mixquant_core.data.image_sets import default_calib_dir, default_eval_dir, open_calibration_folder, open_image_folder
from mixquant_core.data.load import load_tensors
from mixquant_core.evaluations import Evaluations
from mixquant_core.evaluation.store import open_store
from mixquant_core.models.layers import layer_weights
from mixquant_core.models.registry import load_model
from mixquant_core.plans.ranges import layer_grams, search_ranges
from mixquant_core.quant.recipe import Recipe, WeightRanges
from mixquant_core.workspace import Workspace


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--quantizer", default="per-channel")
    p.add_argument("--bits", default="8,4,2")
    p.add_argument("--avg-bits", type=float, default=4.0)
    p.add_argument("--calib", default=default_calib_dir())
    p.add_argument("--calib-images", type=int, default=64)
    p.add_argument("--data", default=default_eval_dir())
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--store", default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--baselines", action="store_true", help="also evaluate min/max and MSE ranges at the same bit-widths")
    args = p.parse_args()
    loaded = load_model(args.model)
    calib = load_tensors(open_calibration_folder(args.calib, args.calib_images), loaded.preprocess)
    bits = [int(b) for b in args.bits.split(",")]
    ws = Workspace(loaded, args.quantizer, bits, device="cpu", engine="onnxruntime", ranges="loss", calib=calib)
    times = {}
    t = time.perf_counter()
    diagonal = ws.fisher_diagonal(calib)
    times["fisher_diagonal_s"] = time.perf_counter() - t
    t = time.perf_counter()
    fisher_recipe = ws.recipe  # reuses the diagonal: the Fisher-weighted search alone
    times["fisher_search_s"] = time.perf_counter() - t
    plan_bits = ws.budget_bits("fisher", avg_bits=args.avg_bits, calib=calib)
    named = ws.named(plan_bits)
    with ws.evaluator.private_model() as model:
        t = time.perf_counter()
        grams = layer_grams(model, ws.layers, calib)
        times["output_grams_s"] = time.perf_counter() - t
        t = time.perf_counter()
        weights = layer_weights(model, ws.layers)
        ratios = {}
        for layer, w, g, f in zip(ws.layers, weights, grams, diagonal):
            method, score = ("output", g) if g is not None else ("fisher", f)
            ratios.update(search_ranges([w], [layer.name], [score], [named[layer.name]], args.quantizer, method))
        times["output_search_planned_s"] = time.perf_counter() - t
    output_recipe = Recipe(args.quantizer, WeightRanges("output", ratios, {"score": "output", "images": len(calib)}))
    data = load_tensors(open_image_folder(args.data).subset(args.limit), loaded.preprocess)
    ev = Evaluations(ws, store=open_store(args.store, True) if args.store else None)
    rows = {}
    recipes = [("fisher", fisher_recipe), ("output", output_recipe)]
    if args.baselines:
        recipes += [(args.quantizer, args.quantizer), (args.quantizer + "-mse", args.quantizer + "-mse")]
    for name, recipe in recipes:
        t = time.perf_counter()
        m = ws.evaluator.evaluate(named, recipe, data, ev.store, False, None, ev.tally)
        rows[name] = {**m.summary(), "eval_s": time.perf_counter() - t}
        print(name, json.dumps(rows[name]), flush=True)
    differ = sum(1 for k, r in ratios.items() if r != fisher_recipe.weight_ranges.ratios[k])
    times["fisher_search_pairs"] = len(ws.layers) * len(ws.bits)
    times["output_search_pairs"] = len(ws.layers)
    out = {"times": times, "rows": rows, "avg_bits": ws.size(plan_bits).avg_bits, "layers_with_other_ratios": differ,
           "calib_images": len(calib), "images": len(data)}
    report(out, args.out)


def report(out: dict, path) -> None:
    """Print the result as JSON, and write it to ``path`` when given."""
    print(json.dumps(out, indent=2))
    if path:
        with open(path, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
