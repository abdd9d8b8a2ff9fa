#!/usr/bin/env bash
# Installs what lstm_triton needs on a fresh machine, and nothing that is already there.
#   scripts/setup.sh test | lab  -> the package + the test and benchmark-lab tools (the same
#                                   set: the tests run one case of the lab end to end)
# An installed torch is never replaced. Without one, torch==2.13.0 is installed: on the
# project's CPU machines that is the CPU build lying on disk (a bare `torch` would pull
# the multi-GB CUDA build). The GPU image has torch and triton already, and no network.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}

if ! "$py" -c "import torch" 2>/dev/null; then
  "$py" -m pip install -q "torch==2.13.0"
fi

missing=()
need() { "$py" -c "import $1" 2>/dev/null || missing+=("$2"); }
need triton "triton>=3.6"
need pytest "pytest>=8"
need hypothesis "hypothesis>=6"
# the test command spreads the suite over the cores (scripts/test.sh)
need xdist "pytest-xdist>=3"
# torch.testing._internal (tests/test_torch_module_db.py runs torch's module_db samples) imports it
need expecttest "expecttest>=0.2"
need tqdm "tqdm>=4"
need pandas "pandas>=2"
need matplotlib "matplotlib>=3.7"
# the lab's too: tests/test_lab_measure.py runs one smoke case of the lab end to end
need pytest_benchmark "pytest-benchmark>=4"
# ONNX export tests (tests/test_deploy.py): the exporter's onnxscript, and onnxruntime to
# run the exported models; none of them touches torch
need onnx "onnx>=1.16"
need onnxscript "onnxscript>=0.3"
need onnxruntime "onnxruntime>=1.18"
if [ ${#missing[@]} -gt 0 ]; then
  "$py" -m pip install -q "${missing[@]}"
fi

# The package itself, editable, without touching dependencies. --no-build-isolation
# works offline (the GPU image); a machine whose setuptools is too old for it builds
# in isolation instead.
if ! "$py" -c "import lstm_triton.kernels" 2>/dev/null; then
  "$py" -m pip install -q --no-deps --no-build-isolation -e . 2>/dev/null \
    || "$py" -m pip install -q --no-deps -e .
fi
