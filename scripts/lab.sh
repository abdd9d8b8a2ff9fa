#!/usr/bin/env bash
# The main job: set up, then run the benchmark lab. On a machine without CUDA it is a
# small smoke sweep through the interpreter, written under reports/smoke/ and labelled so.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh lab
exec "${PYTHON:-python3}" -m pytest bench/ --benchmark-only "$@"
