"""Peak memory and speed of evaluation sets kept as uint8 pixels or streamed from their files (issue #14).

Builds larger evaluation sets from imagenet-val-1300 by symbolic links (1,300 / 5,200 / 13,000
images, and 50,000 for the streaming path; nothing is copied), then runs the real CLI in child
processes and reads each child's own peak RSS from ``os.wait4``:

  * ``mixquant evaluate`` (float32) kept in memory at every size, and streamed (``--cache-mb 0``);
  * a 3-plan ``mixquant sweep`` (float32, int8, one QEM), kept and streamed, on the same set,
    for the decode seconds, evaluation seconds and images/s it reports (--json).

Targets: kept <= 170 KB an image on top of the model (slope of peak RSS over the set size);
streamed flat in the set size (50,000 images within 2 GB); streamed >= 80 % of the kept path's
images/s. Also prints the decoders side by side (PIL vs torchvision on uint8, one thread).

    MIXQUANT_DATA=../shared/data python benchmarks/bench_memory.py            # ~25 min on 2 cores
    MIXQUANT_DATA=../shared/data python benchmarks/bench_memory.py --quick    # 1,300 / 5,200 / 13,000 streamed only
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def build_set(source: Path, n: int, root: Path) -> Path:
    """``n`` images: the source's labelled images repeated under new names, as symbolic links."""
    lines = [l.split() for l in (source / "labels.txt").read_text().splitlines() if l.strip()]
    folder = root / f"set{n}"
    images = folder / "images"
    images.mkdir(parents=True)
    out = []
    for i in range(n):
        name, label = lines[i % len(lines)]
        link = f"r{i // len(lines):03d}_{name}"
        os.symlink(source / "images" / name, images / link)
        out.append(f"{link} {label}")
    (folder / "labels.txt").write_text("\n".join(out) + "\n")
    return folder


def run_cli(args: list) -> dict:
    """Run ``mixquant ARGS``; its stdout, wall seconds and own peak RSS (MB)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "mixquant_cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, text=True)
    out_fd = proc.stdout
    stdout = out_fd.read()
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"mixquant {' '.join(args)} failed:\n{stderr[-2000:]}")
    return {"stdout": stdout, "seconds": time.perf_counter() - t0, "peak_rss_mb": usage.ru_maxrss / 1024}


def decoders(source: Path, n: int = 200) -> dict:
    """Images/s of PIL (resize on the PIL image) and of torchvision (decode + resize on uint8), one thread."""
    import torch
    from PIL import Image
    from torchvision import transforms as T

    from mixquant_core.data.decode import decode_pixels
    from mixquant_core.models.registry import build_model

    torch.set_num_threads(1)
    pre = build_model("efficientnet_lite0").preprocess
    paths = sorted(str(p) for p in (source / "images").iterdir())[:n]
    pil = T.Compose([T.Resize(pre.resize, antialias=True), T.CenterCrop(pre.crop), T.PILToTensor()])
    pixel = pre.pixel_transform()
    out = {}
    for name, fn in (("PIL", lambda p: pil(Image.open(p).convert("RGB"))), ("torchvision", lambda p: decode_pixels(p, pixel))):
        fn(paths[0])
        t = time.perf_counter()
        for p in paths:
            fn(p)
        out[name] = n / (time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.environ.get("MIXQUANT_DATA"), help="folder holding imagenet-val-1300")
    ap.add_argument("--sizes", default="1300,5200,13000", help="kept-path set sizes")
    ap.add_argument("--stream-sizes", default="1300,13000,50000", help="streamed-path set sizes")
    ap.add_argument("--sweep-size", type=int, default=1300, help="set size of the kept vs streamed 3-plan sweep")
    ap.add_argument("--quick", action="store_true", help="kept 1,300 only; streamed 1,300 and 13,000")
    args = ap.parse_args()
    if not args.data:
        raise SystemExit("set MIXQUANT_DATA or pass --data (the folder holding imagenet-val-1300)")
    source = Path(args.data) / "imagenet-val-1300"
    kept_sizes = [1300] if args.quick else [int(s) for s in args.sizes.split(",")]
    stream_sizes = [1300, 13000] if args.quick else [int(s) for s in args.stream_sizes.split(",")]
    common = ["--no-store", "--no-progress", "--json"]

    print(f"decoders, one thread, 200 images: {json.dumps({k: round(v) for k, v in decoders(source).items()})} img/s",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="mixquant-bench-memory-") as tmp:
        sets = {n: build_set(source, n, Path(tmp)) for n in sorted(set(kept_sizes + stream_sizes + [args.sweep_size]))}
        results = {"kept": {}, "streamed": {}}
        for path, sizes, extra in (("kept", kept_sizes, []), ("streamed", stream_sizes, ["--cache-mb", "0"])):
            for n in sizes:
                r = run_cli(["evaluate", "--data", str(sets[n]), *common, *extra])
                results[path][n] = r
                print(f"evaluate {path:8s} {n:6d} images: peak RSS {r['peak_rss_mb']:7.0f} MB, "
                      f"{r['seconds']:6.1f} s wall, {n / r['seconds']:5.0f} img/s end to end", flush=True)
        kn = sorted(results["kept"])
        if len(kn) > 1:
            slope = (results["kept"][kn[-1]]["peak_rss_mb"] - results["kept"][kn[0]]["peak_rss_mb"]) * 1e3 / (kn[-1] - kn[0])
            print(f"kept path: {slope:.0f} KB a image of peak RSS (slope {kn[0]} -> {kn[-1]}; target <= 170)")
        sn = sorted(results["streamed"])
        rss = [results["streamed"][n]["peak_rss_mb"] for n in sn]
        print(f"streamed path: peak RSS {min(rss):.0f}..{max(rss):.0f} MB over {sn[0]}..{sn[-1]} images "
              f"(flat: max/min {max(rss) / min(rss):.3f}; target within 2 GB)")
        sweeps = {}
        for path, extra in (("kept", []), ("streamed", ["--cache-mb", "0"])):
            r = run_cli(["sweep", "--data", str(sets[args.sweep_size]), "--qems", "5", *common, *extra])
            info = json.loads(r["stdout"])
            per_pass = info["images"] * info["evaluated"] / info["evaluate_seconds"]
            end_to_end = info["images"] * info["evaluated"] / (info["decode_seconds"] + info["evaluate_seconds"])
            sweeps[path] = (per_pass, end_to_end)
            print(f"sweep    {path:8s} {info['images']} images x {info['evaluated']} plans: decode "
                  f"{info['decode_seconds']:.1f} s, evaluation {info['evaluate_seconds']:.1f} s "
                  f"({per_pass:.0f} img/s a pass, {end_to_end:.0f} img/s with the decode), peak RSS {r['peak_rss_mb']:.0f} MB",
                  flush=True)
        print(f"streamed / kept images/s: {sweeps['streamed'][0] / sweeps['kept'][0]:.2f} a pass, "
              f"{sweeps['streamed'][1] / sweeps['kept'][1]:.2f} with the kept path's decode counted (target >= 0.80)")


if __name__ == "__main__":
    main()
