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
    """One row per plan: round-to-nearest and reconstruction side by side (the last record of each wins)."""
    rows = _rows(out / "table1.jsonl")
    by_plan = {}
    for r in rows:
        kind = "recon" if "iters" in r else "rtn"
        by_plan.setdefault(r["plan"], {})[kind] = r
    order = {"float32": 0}

    def key(label):
        any_row = next(iter(by_plan[label].values()))
        return (order.get(label, 1), -round(any_row["avg_bits"]), not label.startswith("uniform"), label)

    def metrics(r):
        return ["-"] * 3 if r is None else [f"{r['top1']:.2f}", f"{r['top5']:.2f}", f"{r['loss']:.3f}"]

    body = []
    for label in sorted(by_plan, key=key):
        rtn, rec = by_plan[label].get("rtn"), by_plan[label].get("recon")
        first = rtn or rec
        same = (rec or {}).get("same_plan_as")
        name = label + (f" (= {same})" if same else "")
        secs = "-" if rec is None else ("same run" if same else f"{rec['recon_seconds']:.0f}")
        body.append([name, first.get("bit_set", "32"), f"{first['avg_bits']:.2f}", f"{first['size_mb']:.2f}",
                     *metrics(rtn), *metrics(rec), secs])
    recs = [r for r in rows if "iters" in r]
    how = ""
    if recs:
        r = recs[-1]
        how = (f"\n\nReconstruction: AdaRound + BRECQ blocks, MSE-clipped affine per channel, {r['iters']} iterations "
               f"per block, batch {r['batch_size']}, lr {r['lr']}, {r['calib_images']} calibration images, {r['device']}, seed 0. "
               "Round-to-nearest: min/max affine per channel.")
    return _md(["weights", "bit-widths", "avg bits", "size MB", "nearest top-1 %", "nearest top-5 %", "nearest loss",
                "reconstructed top-1 %", "reconstructed top-5 %", "reconstructed loss", "reconstruction s"], body) + how


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
