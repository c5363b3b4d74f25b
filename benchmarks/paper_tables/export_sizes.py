"""Export file size vs size accounting for EfficientNet-Lite0 (round-to-nearest codes), and a
bit-exact round-trip check of every file written.

  python benchmarks/paper_tables/export_sizes.py --out OUT/export_sizes.jsonl
"""
from __future__ import annotations

import argparse
import copy
import json
import tempfile
from pathlib import Path

import torch

from mixquant_core.export.packed import load_quantized_, rtn_layers, save_quantized, size_report
from mixquant_core.models.registry import load_model
from mixquant_core.plans.plan import quantize_model_
from mixquant_core.workspace import Workspace


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", default="efficientnet_lite0")
    args = ap.parse_args()
    torch.set_num_threads(1)
    loaded = load_model(args.model)
    with open(args.out, "a") as fh, tempfile.TemporaryDirectory() as tmp:
        for quantizer in ("asymmetric", "per-channel", "symmetric"):
            ws = Workspace(loaded, quantizer, device="cpu")
            plans = [(f"uniform {b}", ws.plan_from_bits(ws.uniform(b))) for b in (8, 4, 2)]
            plans += [(f"MixQuant QEM {q:g}", ws.plan(q)) for q in (20, 500)]
            for label, plan in plans:
                path = Path(tmp) / "m.safetensors"
                save_quantized(path, loaded.model, plan, rtn_layers(loaded.model, plan))
                rep = size_report(path, loaded.model)
                fresh = load_model(args.model).model
                load_quantized_(fresh, path)
                expected = quantize_model_(copy.deepcopy(loaded.model), plan).state_dict()
                exact = all(torch.equal(fresh.state_dict()[k], v) for k, v in expected.items())
                fh.write(json.dumps({"model": loaded.name, "plan": f"{label} ({quantizer})", "scheme": quantizer,
                                     "avg_bits": plan.size["avg_bits"], "file_bytes": rep["bytes"],
                                     "accounted_bytes": rep["accounted_bytes"], "bit_exact": exact}) + "\n")
                fh.flush()


if __name__ == "__main__":
    main()
