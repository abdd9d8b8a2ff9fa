#!/usr/bin/env bash
# The GPU job, in phases that each fit one device-tool command (10 minutes) and bring the
# raw results back under $OUT.
#
#   bash scripts/gpu_run.sh first  THE FIRST CONTACT: one command of about 8 minutes (below),
#                                  for a session with ~15 minutes of device time in all
#
# A session with 30 minutes of device time can then run the older phases in order:
#
#   bash scripts/gpu_run.sh main   install; GPU-only tests (120 s); the rest of the suite on
#                                  CUDA (140 s); the lab's default sweep (290 s)
#   bash scripts/gpu_run.sh bar    the grid-barrier floor (bench/barrier.py, 40 s); issue 6's
#                                  bar: --sweep bar-lstm,bar-gru for stepwise, persistent and
#                                  cuDNN (~5 min by bench/sweeps.py, cut at 500 s)
#   bash scripts/gpu_run.sh auto   after `python -m bench.calibrate` has written the dispatch
#                                  table from the bar CSV: auto against cuDNN on the bar cases
#   bash scripts/gpu_run.sh sanitize  if device time is left: the specification tests on CUDA
#                                  under compute-sanitizer's memcheck (an out-of-bounds read
#                                  that changes no result, which the interpreter cannot see;
#                                  Firecracker machines only: gVisor's refuses the device)
#
# Each phase's rows go to their own CSV, reports/raw/<date>-<device>-<phase>.csv (--lab-tag).
#
# Extra arguments go to the lab's pytest. Each phase is cut at its limit and the next still
# runs; the logs say where it stopped. Files back (the tool returns at most 8): the raw CSVs,
# and results-<phase>.tgz holding the logs and reports/ as the phase left it.
set -uo pipefail
cd "$(dirname "$0")/.."
phase=${1:-main}
shift || true
out=${OUT:-/tmp/lstm_triton_gpu}
if [ "$phase" = first ]; then
  # The first contact (issue 15), about 8 minutes: environment, compile (warms the cache in
  # parallel), the race, the barrier floor, the decomposition, chosen GPU tests, the rest of
  # the bar sweeps; every row appended to a CSV in $OUT as it is measured, every phase in a
  # child process under its own timeout (bench/first_contact.py). Without CUDA: the same
  # phases through the interpreter at tiny shapes, labelled SMOKE (tests/test_first_contact.py).
  mkdir -p "$out"
  export PYTHONUNBUFFERED=1
  if ! python3 -c "import lstm_triton.kernels" 2>/dev/null; then  # installed already: as is
    python3 -m pip install -q --no-deps --no-build-isolation -e . >>"$out/first-log.txt" 2>&1
  fi
  exec python3 -m bench.first_contact --out "$out" "$@"
fi
logs=$(mktemp -d)/logs-$phase
mkdir -p "$out" "$logs"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-deps --no-build-isolation -e . >"$logs/install.log" 2>&1
{ nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', \
triton.__version__, torch.cuda.get_device_name(), torch.cuda.get_device_capability())"
} >"$logs/env.txt" 2>&1
cat "$logs/env.txt"
run() {  # seconds, log name, command...
  local seconds=$1 log=$2; shift 2
  # SIGINT, not SIGTERM: pytest then still runs sessionfinish, so a cut lab writes the rows
  # it measured (with SIGTERM it wrote none)
  timeout -s INT -k 30 "$seconds" "$@" 2>&1 | tee "$logs/$log" | tail -25
}
lab() {  # seconds, log name, lab arguments...
  local seconds=$1 log=$2; shift 2
  run "$seconds" "$log" python3 -m pytest bench/ --benchmark-only -p no:cacheprovider \
    --lab-tag "$phase" "$@"
}
case "$phase" in
  main)
    run "${GPU_TEST_SECONDS:-120}" gpu-tests.log python3 -m pytest tests/test_gpu.py \
      tests/test_persistent.py -q -p no:cacheprovider --maxfail=25 --durations=10
    run "${TEST_SECONDS:-140}" tests.log python3 -m pytest tests/ -q -p no:cacheprovider \
      --maxfail=25 --ignore tests/test_gpu.py --ignore tests/test_persistent.py --durations=10
    lab "${LAB_SECONDS:-290}" lab.log "$@" ;;
  bar)
    run 40 barrier.log python3 -m bench.barrier
    lab "${LAB_SECONDS:-500}" lab-bar.log --sweep bar-lstm,bar-gru \
      --impl triton-stepwise,triton-persistent,cudnn "$@" ;;
  auto)
    lab "${LAB_SECONDS:-560}" lab-auto.log --sweep bar-lstm,bar-gru --impl triton-auto,cudnn "$@" ;;
  sanitize)
    # memcheck slows every access: a persistent barrier may time out and fall back (warned),
    # which is fine here; what counts is the sanitizer's error summary
    run "${SANITIZE_SECONDS:-500}" sanitize.log compute-sanitizer --tool memcheck \
      --error-exitcode 1 python3 -m pytest tests/test_rnn_numerics.py tests/test_packed.py \
      -q -x -p no:cacheprovider -k "not gradcheck" ;;
  *) echo "unknown phase $phase (first | main | bar | auto | sanitize)"; exit 2 ;;
esac
cp reports/raw/*.csv reports/raw/barrier/*.csv "$out/" 2>/dev/null
tar czf "$out/results-$phase.tgz" reports/ -C "$(dirname "$logs")" "logs-$phase" 2>/dev/null
ls -la "$out"
