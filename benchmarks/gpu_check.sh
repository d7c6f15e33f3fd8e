#!/usr/bin/env bash
# One bounded GPU session (device tool): artifact throughput + CPU/CUDA parity, training
# throughput per norm and mode, and a compiled bf16 training smoke through the CLI.
# Usage on the GPU machine, from the repository root: bash benchmarks/gpu_check.sh [OUTDIR]
# (TRAIN_ARGS="--norms batch,group --modes bf16-cl-compiled" narrows the training plan)
set -u
out=${1:-${OUT:-/tmp/gpu_check}}; mkdir -p "$out"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__)" | tee -a "$out/gpu.txt"
timeout 150 python3 benchmarks/artifacts.py --device cuda --batch 256 2>&1 | tee "$out/artifacts.json"
timeout 330 python3 benchmarks/train.py --device cuda --budget-s ${TRAIN_BUDGET_S:-240} ${TRAIN_ARGS:-} 2>&1 | tee "$out/train.jsonl"
d=$(mktemp -d)
timeout 150 bash -c "python3 -m mrrobust.cli synth $d/raw --volumes 16 --slices 8 --crop 64 >/dev/null &&
  python3 -m mrrobust.cli prepare --fastmri $d/raw/knee --annotations $d/raw/annotations --out $d/store --crop 64 --no-progress >/dev/null &&
  python3 -m mrrobust.cli train --data $d/store --out $d/run --norm group --width 16 --groups 8 --max-epochs 2 \
    --precision bf16-mixed --compile --accelerator gpu --augment noise:2,motion --batch-size 32 --workers 2 --quiet &&
  cat $d/run/metrics.csv" 2>&1 | tail -20 | tee "$out/train_smoke.txt"
