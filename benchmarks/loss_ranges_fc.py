"""Loss-aware ranges on one layer, cheaply: Lite0's classifier ``_fc`` (the layer issue #22 is about)
quantized alone, every other layer float32. The backbone runs once over the calibration and the
validation images (the classifier's inputs are kept), so each range choice costs one matrix product:
top-1 of min/max, MSE, Fisher-weighted and output-error ranges at 2..4 bits, with the time each
range search takes.

    python benchmarks/loss_ranges_fc.py --calib-images 64 --out /tmp/fc.json
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from loss_ranges import report  # benchmarks/ is the script's folder
from mixquant_core.data.image_sets import default_calib_dir, default_eval_dir, open_calibration_folder, open_image_folder
from mixquant_core.data.load import load_tensors
from mixquant_core.models.registry import load_model
from mixquant_core.quant.loss_ranges import fisher_ratios, output_ratios
from mixquant_core.quant.quantizers import fake_quantize, fake_quantize_with_ratios


def features(model, layer, data, batch=32):
    got = []
    hook = layer.register_forward_pre_hook(lambda m, a: got.append(a[0].detach().flatten(1)))
    with torch.no_grad():
        for x, _ in data.batches(batch):
            model(x)
    hook.remove()
    return torch.cat(got)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--calib-images", type=int, default=64)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--out")
    args = p.parse_args()
    loaded = load_model("efficientnet_lite0")
    model, fc = loaded.model.eval(), loaded.model._fc
    calib = load_tensors(open_calibration_folder(default_calib_dir(), args.calib_images), loaded.preprocess)
    val = load_tensors(open_image_folder(default_eval_dir()).subset(args.limit), loaded.preprocess)
    t = time.perf_counter()
    xc, xv = features(model, fc, calib), features(model, fc, val)
    backbone_s = time.perf_counter() - t
    w, bias = fc.weight.detach(), fc.bias.detach()
    # Fisher diagonal of the classifier's weights: per image, dL/dW = (softmax - onehot) x^T
    logits = xc @ w.t() + bias
    g = F.softmax(logits, 1) - F.one_hot(calib.labels, logits.shape[1]).float()
    fisher = torch.einsum("no,ni->oi", g.double() ** 2, xc.double() ** 2) / len(xc)
    gram = (xc.double().t() @ xc.double())[None]

    def top1(wq):
        return 100.0 * float(((xv @ wq.t() + bias).argmax(1) == val.labels).float().mean())

    rows = {"float32": top1(w)}
    times = {"backbone_s": backbone_s}
    for b in (2, 3, 4):
        rows[f"min/max {b}"] = top1(fake_quantize(w, b, "per-channel"))
        t = time.perf_counter()
        rows[f"mse {b}"] = top1(fake_quantize(w, b, "per-channel-mse"))
        times[f"mse {b}"] = time.perf_counter() - t
        t = time.perf_counter()
        r, _ = fisher_ratios(w, fisher, b, "per-channel")
        times[f"fisher {b}"] = time.perf_counter() - t
        rows[f"fisher {b}"] = top1(fake_quantize_with_ratios(w, b, "per-channel", r))
        t = time.perf_counter()
        r, _ = output_ratios(w, gram, b, "per-channel")
        times[f"output {b}"] = time.perf_counter() - t
        rows[f"output {b}"] = top1(fake_quantize_with_ratios(w, b, "per-channel", r))
        print(b, {k: v for k, v in rows.items() if k.endswith(str(b))}, flush=True)
    out = {"top1": rows, "seconds": times, "images": len(val), "calib_images": len(calib)}
    report(out, args.out)


if __name__ == "__main__":
    main()
