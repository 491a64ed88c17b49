#!/usr/bin/env bash
# The prepared GPU run of issue 12 (point 5), time-boxed to ~9 minutes in all: `bash bench/gpu_run.sh` from the
# repository root on a CUDA machine after `make setup`. Results: bench/results/gpu/ (JSON + markdown tables).
# Not run yet: no GPU was lent to the sessions that wrote it (bench/README.md says so).
set -u
PY=${PY:-.venv/bin/python}
OUT=${OUT:-bench/results/gpu}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
# 1. the benchmark suite on CUDA in fp16 (small grid, to fit the box)
timeout 240 "$PY" -m bench.run_all --device cuda --dtype fp16 --quick --out "$OUT" \
    --only attention,em_kernel,inversion,plot || echo "run_all: exit $?"
# 2. the paper's Table 1 setting on the full-size SD1.5 UNet (random weights): 48 frames, 640x360, 50 steps
timeout 240 "$PY" -m bench.bench_resolution_sweep --device cuda --models full --backends sdpa --sizes 640x360 \
    --frames 48 --steps 50 --modes per_frame,stem,all_frame --limit-s 200 --out "$OUT/table1" \
    || echo "table1: exit $?"
# 3. 120 frames at 512x512, STEM (tiny model; load, encode, invert)
timeout 60 "$PY" -m bench.bench_long_clip --device cuda --out "$OUT" || echo "long_clip: exit $?"
