#!/usr/bin/env bash
# One device run (see benchmarks/README.md): CUDA correctness, then the QE and sweep benchmarks
# (--qe-only: correctness and the QE benchmark).
# Needs the pure-Python wheels the GPU image lacks in .whl/ (jsonschema & deps, efficientnet-lite-pytorch).
set -o pipefail
OUT="${OUT:-/tmp/gpu_out}"; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1
unset MIXQUANT_DATA
nvidia-smi -L
python3 -c "import torch, triton, numpy; print('torch', torch.__version__, 'triton', triton.__version__, 'numpy', numpy.__version__)"
python3 benchmarks/check_cuda.py 2>&1 | tee "$OUT/check_cuda.txt"
python3 benchmarks/bench_qe.py --device cuda --quantizers asymmetric symmetric per-channel --repeats 20 --ref-repeats 2 --check 2>&1 | tee "$OUT/bench_qe_cuda.txt"
[ "${1:-}" = "--qe-only" ] && exit 0
for m in resnet50 efficientnet_lite0; do
  python3 benchmarks/bench_sweep.py --device cuda --model $m --random-weights --random-images --images 2048 --plans 4 --repeats 3 2>&1 | tee "$OUT/bench_sweep_cuda_$m.txt"
done
python3 benchmarks/bench_sweep.py --device cuda --model resnet50 --random-weights --random-images --images 8192 --plans 4 --repeats 2 2>&1 | tee "$OUT/bench_sweep_cuda_resnet50_8192.txt"
