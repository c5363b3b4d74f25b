"""Sweep throughput: images per second per plan against the bare forward pass, and peak memory.

    python benchmarks/bench_sweep.py                              # efficientnet_lite0, CPU
    python benchmarks/bench_sweep.py --model resnet18 --images 256 --plans 6
    python benchmarks/bench_sweep.py --device cuda --model resnet50 --images 2048 --random-images

Images: the first ``--images`` of ``$MIXQUANT_DATA/imagenet-val-1300`` (decoded once, the time is
printed), or random tensors of the model's input size with ``--random-images`` (throughput does
not depend on pixel values). Weights: the pretrained ones where the registry has them offline,
``--random-weights`` otherwise.

bare forward: ``model(x)`` over the same batches under inference_mode, nothing else.
per plan: ``Workspace.sweep`` wall time / number of distinct plans it evaluated (the float32
and int8 baselines included), i.e. swapping the quantized weights in and out, the forward passes
and the metrics. Both are the best (shortest) of ``--repeats`` runs, interleaved: on a shared
machine noise only ever adds time.

Peak memory (CPU): model bytes + eval tensor bytes + the rise of the process's resident set
(sampled every 2 ms) during the sweep over its level once model, images and QE table were in
place (before any forward pass); (CUDA): torch.cuda.max_memory_allocated during the sweep (the
images are cached on the GPU). Compared with model bytes (parameters + buffers) + eval tensor bytes.
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import threading
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mixquant_core.data.image_sets import EvalTensors, default_eval_dir, open_image_folder  # noqa: E402
from mixquant_core.data.load import load_tensors
from mixquant_core.evaluation.evaluate import _cudnn_autotune, _device_batches, default_batch_size  # noqa: E402
from mixquant_core.models.registry import build_model  # noqa: E402
from mixquant_core.plans.search import default_qem_grid  # noqa: E402
from mixquant_core.evaluations import Evaluations  # noqa: E402
from mixquant_core.workspace import Workspace  # noqa: E402


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Highest resident set size seen while the block runs (a sampling thread)."""

    def __enter__(self):
        self.peak, self._stop = rss_bytes(), threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--device", default="cpu")
    p.add_argument("--images", type=int, default=128)
    p.add_argument("--plans", type=int, default=4, help="QEMs in the sweep (distinct plans evaluated: up to this + 2)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--random-images", action="store_true")
    p.add_argument("--random-weights", action="store_true")
    p.add_argument("--engines", action="store_true",
                   help="CPU: eager PyTorch vs ONNX Runtime, bare and per plan, side by side (bench_engines.py)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)

    loaded = build_model(args.model, pretrained=not args.random_weights)
    model = loaded.model.to(device)
    if args.random_images or not default_eval_dir():
        crop = loaded.preprocess.crop
        data = EvalTensors(torch.randn(args.images, 3, crop, crop), torch.randint(0, 1000, (args.images,)))
        source = "random tensors"
    else:
        images = open_image_folder(default_eval_dir()).subset(args.images)
        t = time.perf_counter()
        data = load_tensors(images, loaded.preprocess)
        dt = time.perf_counter() - t
        source = f"{default_eval_dir()} (decoded once: {dt:.2f} s, {len(data) / dt:.0f} images/s)"
    model_bytes = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    data_bytes = data.nbytes
    batch = default_batch_size(device)
    print(f"# sweep benchmark: {args.model} on {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{torch.get_num_threads()} torch threads'}), "
          f"{len(data)} images from {source}, batch {batch}")

    # the bare forward gets what evaluate() gets: the images already on the device (CUDA: evaluate
    # keeps a copy there), cuDNN autotuning, inference_mode; and nothing else
    xs = [x for x, _ in _device_batches(data, device, batch)]  # views of evaluate()'s own copy

    def bare():
        with torch.inference_mode(), _cudnn_autotune(device):
            for x in xs:
                model(x)
        sync(device)

    if args.engines:
        import bench_engines

        qems = list(default_qem_grid(Workspace(loaded, device="cpu").table(), steps=args.plans))
        result = bench_engines.run(loaded, data, qems, args.repeats)
        bench_engines.print_table(result, args.model)
        return result

    ws = Workspace(loaded, device=args.device, engine="torch")
    table = ws.table()

    qems = list(default_qem_grid(table, steps=args.plans))

    def sweep():
        ws.evaluator.forget()  # fresh cache: every distinct plan evaluated again
        ev = Evaluations(ws)
        rows = ev.sweep(data, qems)
        sync(device)
        return rows, ev.tally.distinct

    gc.collect()
    rss0 = rss_bytes()  # model, images and QE table in place; nothing of the forward pass yet
    bare()  # warm-up (oneDNN / cuDNN choose their kernels)
    t_bare, t_plan = [], []
    peak = bare_peak = 0
    n_plans = 0
    for r in range(args.repeats):
        gc.collect()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        with PeakRSS() as mem:
            t = time.perf_counter()
            bare()
            t_bare.append(time.perf_counter() - t)
        bare_peak = max(bare_peak, torch.cuda.max_memory_allocated(device) if device.type == "cuda"
                        else model_bytes + data_bytes + mem.peak - rss0)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        with PeakRSS() as mem:
            t = time.perf_counter()
            rows, n_plans = sweep()
            elapsed = time.perf_counter() - t
        t_plan.append(elapsed / n_plans)
        peak = max(peak, torch.cuda.max_memory_allocated(device) if device.type == "cuda"
                   else model_bytes + data_bytes + mem.peak - rss0)
    bare_ips = len(data) / min(t_bare)
    plan_ips = len(data) / min(t_plan)
    ref = model_bytes + data_bytes
    print("| model | device | images | batch | distinct plans | bare forward (img/s) | per plan (img/s) | per plan / bare | "
          "model MB | eval tensors MB | peak, bare forward MB | peak, sweep MB | sweep peak / (model + eval) | sweep peak - bare peak MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {args.model} | {device.type} | {len(data)} | {batch} | {n_plans} | {bare_ips:.1f} | {plan_ips:.1f} | "
          f"{plan_ips / bare_ips:.0%} | {model_bytes / 1e6:.1f} | {data_bytes / 1e6:.1f} | {bare_peak / 1e6:.1f} | "
          f"{peak / 1e6:.1f} | {peak / ref:.2f}x | {(peak - bare_peak) / 1e6:.1f} |")
    print("# rows:", ", ".join(f"{r.method}@{r.qem if r.qem is None else round(r.qem, 1)}: top1 {r.top1:.1f}" for r in rows))
    return dict(bare_ips=bare_ips, plan_ips=plan_ips, peak=peak, ref=ref)


if __name__ == "__main__":
    main()
