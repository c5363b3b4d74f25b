#!/bin/sh
# Table 2 style: float32, int8 and MixQuant + round-to-nearest (asymmetric per-tensor, the paper's
# quantizer) for a range of QEMs, on all 1,300 images of imagenet-val-1300. CPU, batch 50.
set -e
OUT=${OUT:-benchmarks/paper_tables/out}
mixquant sweep --model efficientnet_lite0 --data "$MIXQUANT_DATA/imagenet-val-1300" \
  --qems 2,8,30,120,500,2000 --device cpu --no-progress --out "$OUT/table2.csv" --json > "$OUT/table2.json"
