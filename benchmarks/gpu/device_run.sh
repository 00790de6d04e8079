#!/usr/bin/env bash
# Run a benchmark grid on a lent GPU machine (see benchmarks/gpu/README.md): the machine has
# PyTorch but not this package, and no copy of CIFAR-10, so the tree travels with
# .gpu/cifar10.tar.xz (the shared JPEG zip re-packed as a solid xz tar, 19 MB). Results,
# the log and the cells' small files (no weights) go to $OUT.
#   [ONLY='GLOB GLOB'] bash benchmarks/gpu/device_run.sh CONFIG [SECONDS]
# With ONLY, one bench run per glob (e.g. one per attack, so that an attack's cells finish
# before the next model trains), all inside SECONDS. BENCH_OUT (default /tmp/ub_bench) is the
# grid's folder: give the committed one (e.g. benchmarks/gpu_short) to go on from its stored
# rows, since the tree travels with it.
set -u
CFG=${1:?config}
LIMIT=${2:-480}
PY=${PYTHON:-python3}
BENCH=${BENCH_OUT:-/tmp/ub_bench}
OUT=${OUT:?set OUT to the folder that comes back}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export UNBACKDOOR_ZOO=/tmp/ub_zoo UNBACKDOOR_CACHE=/tmp/ub_cache
if [ -z "${UNBACKDOOR_CIFAR10:-}" ]; then
  [ -f .gpu/cifar10.tar.xz ] || { echo "no .gpu/cifar10.tar.xz: run benchmarks/gpu/pack_cifar10.sh here first and carry .gpu" >&2; exit 1; }
  mkdir -p /tmp/ub_cifar && tar xJf .gpu/cifar10.tar.xz -C /tmp/ub_cifar || exit 1
  export UNBACKDOOR_CIFAR10=/tmp/ub_cifar
fi
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
  "$PY" -c "import torch, sys; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available())"
} > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"
deadline=$(($(date +%s) + LIMIT))
set -f  # the globs are cell keys, not file names
for glob in ${ONLY:-'*'}; do
  left=$((deadline - $(date +%s)))
  [ "$left" -gt 20 ] || { echo "deadline: $glob not started" | tee -a "$OUT/bench.log"; continue; }
  timeout --signal=INT "$left" "$PY" -m unbackdoor bench "$CFG" --out "$BENCH" --only "$glob" 2>&1 | tee -a "$OUT/bench.log"
done
set +f
cp "$BENCH/results.jsonl" "$BENCH/grid.json" "$OUT/" 2>/dev/null
tar czf "$OUT/cells.tgz" -C "$BENCH" --exclude='*.safetensors' --exclude='*.pt' . 2>/dev/null
ls -la "$OUT"
