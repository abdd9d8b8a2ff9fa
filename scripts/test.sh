#!/usr/bin/env bash
# The test command: set up, then run the whole suite. Without CUDA the Triton kernels
# run through Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
exec "${PYTHON:-python3}" -m pytest tests/ -q "$@"
