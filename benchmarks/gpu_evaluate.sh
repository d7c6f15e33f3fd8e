#!/usr/bin/env bash
# One bounded GPU session (device tool, one call, under 8 minutes) for the evaluation path
# (issue 11's goal: >= 3,000 model passes/s per run over the whole grid at 320x320, width 64,
# three arms incl. AdaBN for batch norm, artifact synthesis < 10% of the time):
#   1. the grid eager (bf16 autocast, channels-last where it pays), stage times per norm;
#   2. the same grid with --compile (compile time is in the untimed warm-up);
#   3. peak GPU memory (torch.cuda.max_memory_allocated) of one evaluate on test splits of
#      growing size at 320x320 and 64x64: the split is streamed, so it should not grow.
# The STOREs of 3 are synthesized on the CPU in the background while 1 and 2 run.
# Usage on the GPU machine, from the repository root: bash benchmarks/gpu_evaluate.sh [OUTDIR]
# (MEMORY_320 / MEMORY_64 override the split sizes; synth costs about 0.3 CPU s per 320x320 slice.)
set -u
out=${1:-${OUT:-/tmp/gpu_evaluate}}; mkdir -p "$out"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
work=$(mktemp -d)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" 2>&1 | tee -a "$out/gpu.txt"
m320=${MEMORY_320:-112,448}; m64=${MEMORY_64:-630,6300}
timeout 280 bash -c "OMP_NUM_THREADS=4 python3 benchmarks/evaluate.py --stores-only --work $work --size 320 --slices 16 --memory $m320 &&
  OMP_NUM_THREADS=4 python3 benchmarks/evaluate.py --stores-only --work $work --size 64 --slices 30 --memory $m64" \
  > "$out/stores.log" 2>&1 &
stores=$!
grid="--device cuda --size 320 --width 64 --volumes 8 --slices 16 --batch-size 128 --bn-modes eval,adapt --work $work"
timeout 120 python3 benchmarks/evaluate.py $grid 2>&1 | tee "$out/evaluate_eager.json"
timeout 200 python3 benchmarks/evaluate.py $grid --compile 2>&1 | tee "$out/evaluate_compiled.json"
wait $stores
timeout 60 python3 benchmarks/evaluate.py --device cuda --skip-grid --work "$work" --size 320 --width 64 --slices 16 \
  --batch-size 128 --memory "$m320" 2>&1 | tee "$out/memory_320.json"
timeout 60 python3 benchmarks/evaluate.py --device cuda --skip-grid --work "$work" --size 64 --width 64 --slices 30 \
  --batch-size 128 --memory "$m64" 2>&1 | tee "$out/memory_64.json"
rm -rf "$work"
