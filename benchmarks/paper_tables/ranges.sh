#!/usr/bin/env bash
# The range-choice table of docs/RESULTS.md (issue #15), one part at a time, one thread each, most
# important rows first: 4 bits (round-to-nearest, then reconstructed), 3 bits, 4 bits without 2-bit
# candidates, then 5 and 6.
# Usage (from the repository root): MIXQUANT_DATA=../shared/data bash benchmarks/paper_tables/ranges.sh [PYTHON]
set -euo pipefail
PY=${1:-python}
OUT=${RANGES_OUT:-benchmarks/paper_tables/out/ranges}
mkdir -p "$OUT"
run() { local name=$1; shift; OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 PYTHONPATH=$PWD "$PY" benchmarks/paper_tables/ranges.py "$@" --out "$OUT/ranges.jsonl" 2>&1 | tee "$OUT/$name.log"; }
run rtn4 --part rtn --levels 4 --float32
run recon4 --part recon --levels 4
run rtn3 --part rtn --levels 3
run recon3 --part recon --levels 3
run rtn4_bits8to3 --part rtn --levels 4 --quantizers per-channel-mse,per-channel --bits 8,7,6,5,4,3 --only-fisher
run recon4_bits8to3 --part recon --levels 4 --bits 8,7,6,5,4,3
run rtn56 --part rtn --levels 5,6
