#!/usr/bin/env bash
# One bounded GPU session (device tool) for the evaluation path: grid throughput at the
# study's size, then `mrrobust benchmark` end to end on the GPU (train -> evaluate ->
# report) and the same evaluation on the CPU, compared cell by cell.
# Usage on the GPU machine, from the repository root: bash benchmarks/gpu_evaluate.sh [OUTDIR]
set -u
out=${1:-${OUT:-/tmp/gpu_evaluate}}; mkdir -p "$out"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch, lightning, matplotlib, sklearn, scipy; print('torch', torch.__version__, 'lightning', lightning.__version__, 'matplotlib', matplotlib.__version__)" 2>&1 | tee -a "$out/gpu.txt"
timeout 150 python3 benchmarks/evaluate.py --device cuda --size 320 --width 64 --volumes 8 --slices 16 --batch-size 64 2>&1 | grep -v "^RUN " | tee "$out/evaluate.json"
d=$(mktemp -d)
timeout 240 bash -c "python3 -m mrrobust.cli synth $d/raw --volumes 48 --slices 8 --crop 64 >/dev/null &&
  python3 -m mrrobust.cli prepare --fastmri $d/raw/knee --annotations $d/raw/annotations --out $d/store --crop 64 --no-progress >/dev/null &&
  python3 -m mrrobust.cli benchmark --data $d/store --out $d/bench --width 16 --groups 8 --lr 1e-3 --max-epochs 3 --patience 3 \
    --severities 1,3,5 --bootstrap 200 --accelerator gpu --device cuda --workers 2 --quiet &&
  python3 -m mrrobust.cli evaluate $d/bench/runs/batch-seed0 $d/bench/runs/group-seed0 $d/bench/runs/layer-seed0 --data $d/store \
    --out $d/cpu --severities 1,3,5 --bootstrap 200 --device cpu --quiet &&
  cp $d/bench/report/report.md $out/report.md && cp $d/bench/results/results.csv $out/results_cuda.csv && cp $d/cpu/results.csv $out/results_cpu.csv &&
  python3 benchmarks/compare_results.py $d/bench/results $d/cpu" 2>&1 | tail -40 | tee "$out/benchmark_cli.txt"
