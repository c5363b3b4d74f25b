"""Markdown for docs/RESULTS.md from the files table1.py, table2.sh and table3.py wrote.

  python benchmarks/paper_tables/render.py benchmarks/paper_tables/out
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def _rows(path: Path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _md(headers, rows) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def table2(out: Path) -> str:
    path = out / "table2.json"
    if not path.is_file() or not path.read_text().strip():
        return "(table2.json not written yet)"
    data = json.loads(path.read_text())
    rows = [[r["method"], "N/A" if r["qem"] is None else f"{r['qem']:g}", r["bit_set"], f"{r['top1']:.2f}",
             f"{r['top5']:.2f}", f"{r['loss']:.3f}", "N/A" if r["quant_mse"] is None else f"{r['quant_mse']:.3g}",
             f"{r['avg_bits']:.2f}", f"{r['size_mb']:.2f}"] for r in data["rows"]]
    head = ["method", "QEM", "bit-widths", "top-1 %", "top-5 %", "loss", "QE (weighted MSE)", "avg bits", "size MB"]
    return _md(head, rows) + (f"\n\n{data['images']} images, {data['distinct_plans']} distinct plans evaluated, "
                              f"{data['seconds']:.0f} s wall on a shared 2-core CPU.")


def table1(out: Path) -> str:
    rows = _rows(out / "table1.jsonl")
    order = {"float32": 0}
    body = []
    for r in sorted(rows, key=lambda r: (order.get(r["plan"], 1), -r["avg_bits"], r["plan"], r["method"])):
        how = r["method"] if "iters" not in r else (f"{r['method']}; {r['iters']} iters/block, batch {r['batch_size']}, "
                                                    f"lr {r['lr']}, {r['calib_images']} calib images, {r['device']}, "
                                                    f"{r['recon_seconds']:.0f} s")
        body.append([r["plan"], r.get("bit_set", "32"), f"{r['avg_bits']:.2f}", f"{r['size_mb']:.2f}", how,
                     f"{r['top1']:.2f}", f"{r['top5']:.2f}", f"{r['loss']:.3f}"])
    return _md(["weights", "bit-widths", "avg bits", "size MB", "quantization", "top-1 %", "top-5 %", "loss"], body)


def table3(out: Path) -> str:
    rows = _rows(out / "table3.jsonl")
    body = [[r["model"], r["layers"], f"{r['params'] / 1e6:.1f} M", r["weights"],
             f"{r['search_1_cpu']:.2f} / {r['search_1_wall']:.2f}", f"{r['search_quant_1_cpu']:.2f} / {r['search_quant_1_wall']:.2f}",
             f"{r['search_10_cpu']:.2f} / {r['search_10_wall']:.2f}", f"{r['search_quant_10_cpu']:.2f} / {r['search_quant_10_wall']:.2f}"]
            for r in rows]
    return _md(["model", "layers", "weights", "init", "search, 1 QEM (CPU s / wall s)", "search + quant., 1 QEM",
                "search, 10 QEMs", "search + quant., 10 QEMs"], body)


def exports(out: Path) -> str:
    rows = [r for r in _rows(out / "table1.jsonl") if "file_bytes" in r]
    rows += _rows(out / "export_sizes.jsonl")
    body = [[r.get("plan", ""), r.get("scheme", "per-channel"), f"{r['avg_bits']:.2f}", r["file_bytes"], r["accounted_bytes"],
             f"{100 * (r['file_bytes'] - r['accounted_bytes']) / r['accounted_bytes']:+.2f} %",
             {True: "yes", False: "NO"}.get(r.get("bit_exact"), "-")] for r in rows]
    return _md(["plan", "codes", "avg bits", "file bytes", "size accounting bytes", "difference",
                "loads back bit-exact"], body)


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/paper_tables/out")
    for title, fn in (("Table 2", table2), ("Table 1", table1), ("Table 3", table3), ("Export sizes", exports)):
        print(f"### {title}\n\n{fn(out)}\n")
