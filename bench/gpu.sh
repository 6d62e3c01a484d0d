#!/usr/bin/env bash
# Every GPU figure and CUDA check in one place, for a machine with a CUDA GPU and a CUDA build of torch.
#
#   bench/gpu.sh                 # all parts, in order
#   bench/gpu.sh tests dia1      # some parts: tests, dia1, engine, dia2, dense, compiled, quantize
#
# Results go to $RESULTS (default bench/results) as JSON next to the printed tables. Each part runs in a few
# minutes on an H100; run them separately where a command has a time limit.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
RESULTS=${RESULTS:-bench/results}
mkdir -p "$RESULTS"
export PYTHONUNBUFFERED=1
parts=("$@")
# The established figures first, so that a run cut short still has them; then the newer step work.
[ ${#parts[@]} -eq 0 ] && parts=(tests dia1 engine dia2 dense compiled quantize)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
for part in "${parts[@]}"; do
  echo "=== $part"
  case $part in
    tests)  # CUDA graphs against operator-by-operator replay, the API on CUDA (warm-up at load, direct captures),
            # dense rows and the host a step ahead, batched codec decoding
      HF_HUB_OFFLINE=1 $PY -m pytest -q tests/test_step_capture.py tests/test_dense_slots.py tests/test_warmup.py \
        tests/test_batch_decode.py ;;
    dia1)   # decode steps: graphs, eager, transformers, floor (bytes / bandwidth); full 1.6B in bfloat16
      $PY bench/bench_dia1.py --device cuda --configs tiny,full --dtypes bfloat16 --batches 1,4,16,32 \
        --out "$RESULTS/dia1-cuda.json" ;;
    engine) # concurrent requests: batched engine, one at a time, transformers, HTTP server p50/p95
      $PY bench/bench_engine.py --config full --device cuda --dtype bfloat16 --concurrency 1,4,16,32 \
        --out "$RESULTS/engine-cuda.json" ;;
    dia2)   # Dia2-2B frames: graphs and eager, batches
      $PY bench/bench_dia2.py --configs tiny,full --dtypes bfloat16 --device cuda --batches 1,4,16 \
        --out "$RESULTS/dia2-cuda.json" ;;
    dense)  # dense rows against no compaction and the solo floor; one batched codec decode against one per result
      $PY bench/bench_dense.py --config mid --device cuda --dac real --out "$RESULTS/dense-cuda.json" ;;
    compiled) # the same Dia-1.6B table with the step compiled by inductor and captured (the "faster-dia" rows);
            # the eager and transformers rows are unchanged. Each shape compiles once before its timing.
      FASTER_DIA_COMPILE=1 $PY bench/bench_dia1.py --device cuda --configs full --dtypes bfloat16 --batches 1,16 \
        --out "$RESULTS/dia1-cuda-compiled.json" ;;
    quantize) # int8 / int4 / fp8 weights on the GPU: load, generate, and the weight bytes (tests that run on CUDA)
      HF_HUB_OFFLINE=1 $PY -m pytest -q tests/test_quantize.py -k cuda ;;
    *) echo "unknown part: $part (tests, dia1, engine, dia2, dense, compiled, quantize)" >&2; exit 2 ;;
  esac
done
