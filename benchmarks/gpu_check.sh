#!/usr/bin/env bash
# One prepared GPU check, within 8 minutes: a subset of the sweep on CUDA (PyTorch fp32/fp16 with the DDIM loop
# replayed as a CUDA graph, ONNX Runtime's CUDA provider and TensorRT where installed; the others are listed as
# skipped with the reason) and the sd15-size latency at batch 1. Results go to OUT (default runs/gpu_check). Both
# model folders the sweep uses (fp32 MODEL and fp16 MODEL_FP16, exported from RUN when missing) get TensorRT engines.
#
#   bash benchmarks/gpu_check.sh [OUT]        # uses runs/tiny + models/tiny from `make demo` when present
set -uo pipefail
OUT=${1:-runs/gpu_check}
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
RUN=${RUN:-runs/tiny}
MODEL=${MODEL:-models/tiny}
MODEL_FP16=${MODEL_FP16:-$MODEL-fp16}
DATA=${DATA:-data/synthetic}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"

if [ ! -f "$MODEL/manifest.json" ]; then  # no demo model here: a quick one (about 1 minute on a GPU)
    [ -f "$DATA/synthetic.json" ] || $PY -m training.synthetic "$DATA" --train 8 --test-good 4 --test-defect 2
    $PY -m training.train --preset tiny --data "$DATA" --out "$RUN" --minutes 0.5 --device cuda
    $PY -m export --run "$RUN" --out "$MODEL" --no-verify
fi
if [ ! -f "$MODEL_FP16/manifest.json" ]; then  # the sweep's FP16 export: the fp32 folder's plan and batch limit
    $PY -c "import sys; from pathlib import Path; from benchmarks.sweep import export_fp16; \
from runtime.manifest import Manifest; export_fp16(sys.argv[1], Path(sys.argv[2]), Manifest.load(sys.argv[3]))" \
        "$RUN" "$MODEL_FP16" "$MODEL"
fi
if $PY -c "import tensorrt" 2>/dev/null; then
    for folder in "$MODEL" "$MODEL_FP16"; do
        timeout 120 $PY -m export.tensorrt --model "$folder" || echo "TensorRT engine build failed for $folder"
    done
fi

timeout 300 $PY -m benchmarks.sweep --model "$MODEL" --model-fp16 "$MODEL_FP16" --data "$DATA" --run "$RUN" \
    --out "$OUT/sweep" \
    --backends torch,onnxruntime,tensorrt --precisions fp32,fp16 --start-t 999,301 --steps 10,2 --batch-sizes 1,8 \
    --limit 6 --warmup 2 --device cuda:0 --cuda-graph \
    || echo "sweep stopped (exit $?)"

timeout 150 $PY -m benchmarks.sd15_latency --device cuda --precision fp16 --cuda-graph --repeats 3 \
    | tee "$OUT/sd15_latency.md" || echo "sd15 latency stopped (exit $?)"
echo "results in $OUT"
