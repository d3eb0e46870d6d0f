#!/usr/bin/env bash
# The GPU run on the GPU test machine, from the repository root with .whl/ carried (make gpu-kit here first):
#   bash benchmarks/gpu_run.sh OUT [more options of python -m benchmarks.gpu_run]
# installs the kit's wheels into /tmp/site (the run's first step) and writes the report files flat into OUT.
set -u
cd "$(dirname "$0")/.."
OUT=${1:?usage: bash benchmarks/gpu_run.sh OUT [options]}
shift
exec "${PY:-python3}" -m benchmarks.gpu_run --out "$OUT" --kit .whl --site /tmp/site --device cuda \
    --deadline-minutes 9 "$@"
