#!/usr/bin/env bash
# One call of the device tool does the whole GPU job and brings the raw results back:
#   install (offline), the GPU-only tests, the rest of the suite on CUDA, the lab's default
#   sweep. Usage (device tool): bash scripts/gpu_run.sh [extra lab args]; results in $OUT.
# Budget inside the tool's 10-minute command limit: 120 s + 150 s of tests, 300 s of lab
# (each phase is cut at its limit and the next still runs; logs say where it stopped).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/lstm_triton_gpu}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-deps --no-build-isolation -e . >"$out/install.log" 2>&1
{ nvidia-smi; python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', \
triton.__version__, torch.cuda.get_device_name())"; } >"$out/env.txt" 2>&1
cat "$out/env.txt"
run() {  # seconds, log name, command...
  local seconds=$1 log=$2; shift 2
  timeout "$seconds" "$@" 2>&1 | tee "$out/$log" | tail -25
}
run "${GPU_TEST_SECONDS:-120}" gpu-tests.log python3 -m pytest tests/test_gpu.py \
  tests/test_persistent.py -q -p no:cacheprovider --maxfail=25 --durations=10
run "${TEST_SECONDS:-150}" tests.log python3 -m pytest tests/ -q -p no:cacheprovider \
  --maxfail=25 --ignore tests/test_gpu.py --ignore tests/test_persistent.py --durations=10
run "${LAB_SECONDS:-300}" lab.log python3 -m pytest bench/ --benchmark-only -p no:cacheprovider "$@"
tar czf "$out/reports.tgz" reports/ 2>/dev/null
ls -la "$out"
