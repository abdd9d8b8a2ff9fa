#!/usr/bin/env bash
# One call of the device tool does the whole GPU job and brings the raw results back:
#   install (offline), the test suite on CUDA, the lab's default sweep.
# Usage (device tool): bash scripts/gpu_run.sh          results land in $OUT
# Budget: ~4 min of tests, ~5 min of lab, inside the tool's 10-minute command limit.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/lstm_triton_gpu}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-deps --no-build-isolation -e . >"$out/install.log" 2>&1
{ nvidia-smi; python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', \
triton.__version__, torch.cuda.get_device_name())"; } >"$out/env.txt" 2>&1
cat "$out/env.txt"
timeout "${TEST_SECONDS:-240}" python3 -m pytest tests/ -q -x -p no:cacheprovider \
  --durations=10 2>&1 | tee "$out/tests.log" | tail -25
timeout "${LAB_SECONDS:-300}" python3 -m pytest bench/ --benchmark-only -p no:cacheprovider \
  "$@" 2>&1 | tee "$out/lab.log" | tail -25
tar czf "$out/reports.tgz" reports/ 2>/dev/null
ls -la "$out"
