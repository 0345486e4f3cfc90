#!/usr/bin/env bash
# The GPU check (issue 11, item 7), one script for wherever a CUDA device is available:
#   1. the CUDA-marked tests (every preset on CUDA against the CPU, the CLI, evaluation of a CUDA result);
#   2. the brain benchmark with morphreg on CUDA, then on the CPU of the same machine, side by side.
# Usage (repository root, project installed):  bash benchmarks/gpu_check.sh [OUT_DIR]
# About 5 minutes; figures go to OUT_DIR (default gpu_check_out/) and belong in benchmarks/RESULTS.md.
set -euo pipefail
out=${1:-gpu_check_out}
mkdir -p "$out"
python - <<'PY'
import sys, torch
if not torch.cuda.is_available():
    sys.exit(f"no CUDA device (torch {torch.__version__}, built for CUDA {torch.version.cuda})")
print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}")
PY
python -m pytest -q -p no:cacheprovider -m cuda tests/test_cuda.py 2>&1 | tee "$out/cuda_tests.txt"
threads=${THREADS:-2}
for device in cuda cpu; do
  python benchmarks/brain.py --tools morphreg --device "$device" --threads "$threads" \
    --json "$out/brain_$device.json" 2>&1 | tee "$out/brain_$device.md"
done
python - "$out" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = {d: json.loads((out / f"brain_{d}.json").read_text()) for d in ("cuda", "cpu")}
print("| direction | CPU s | CUDA s | speed-up | Dice CPU | Dice CUDA |\n|---|---|---|---|---|---|")
for cpu, gpu in zip(rows["cpu"], rows["cuda"]):
    print(f"| {cpu['direction']} | {cpu['seconds']:.1f} | {gpu['seconds']:.1f} | {cpu['seconds'] / gpu['seconds']:.1f}x "
          f"| {cpu['dice']:.3f} | {gpu['dice']:.3f} |")
PY
