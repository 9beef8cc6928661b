#!/bin/bash
# Build a virtual environment with the GPU machine's library versions (issue 17: Python 3.12,
# torch 2.11.0, transformers 5.17.0, numpy 2.5, onnxruntime 1.30), to run the suite against them on
# CPU before a device session. torch 2.11.0's wheel (~530 MB plus its CUDA libraries) runs on CPU.
# The device has no Ray; Ray is installed here all the same, so that the Ray executor's tests run
# against the device's transformers.
# Usage:  tools/device-versions-venv.sh [VENV]   (default: venv-device beside the checkout, outside it,
#   so that it never travels with the working tree to the GPU machine)
#   PYTHON=python3.12 picks the interpreter (default: python3.12 if found, else python3).
# Then:  OMP_NUM_THREADS=1 VENV/bin/python -m pytest -q tests/test_execute.py   (then the rest)
set -euo pipefail
root=$(git rev-parse --show-toplevel)
venv=${1:-$root/../venv-device}
python=${PYTHON:-$(command -v python3.12 || command -v python3)}
"$python" -m venv "$venv"
# pyproject.toml's dependencies and the test extra, with the GPU machine's versions pinned.
"$venv/bin/python" -m pip install --progress-bar off -e "$root[test]" \
  "torch==2.11.0" "transformers==5.17.0" "numpy==2.5.*" "onnxruntime==1.30.*"
"$venv/bin/python" -m pip list 2>/dev/null | grep -i -E '^(torch|transformers|numpy|onnxruntime|ray|tokenizers) '
