#!/usr/bin/env bash
# The GPU measurements of one lent machine in one call (the `device` tool), about 6-8 minutes: the Enhancer's
# roofline (counted FLOPs, fp32 / bf16 / compiled, the card's matmul and convolution peaks, bf16's PSNR cost on the
# default run's model), then benchmarks/gpu.py (training images/s in fp32 and bf16, the Enhancer, DDP when there are
# several GPUs). Reports go to $OUT (default benchmarks/results). The machine's python3 has CUDA torch but not
# pydantic: `make gpu-wheels` puts the wheels in .gpu-wheels/ (ignored), which the call carries:
#   run(command="bash benchmarks/gpu_session.sh", carry=[".gpu-wheels", "models/generator", "data/prepared"],
#       timeout_s=560)
set -euo pipefail
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
if ! python3 -c "import pydantic" 2>/dev/null; then
    python3 -m pip install --quiet --no-index --find-links .gpu-wheels pydantic
fi
export PYTHONPATH="$PWD/src:$PWD"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
timeout 300 python3 -m benchmarks.roofline --out "$OUT" --work /tmp/roofline 2>&1 | tee "$OUT/roofline.log"
timeout 240 python3 -m benchmarks.gpu --steps 100 --warmup-steps 20 --budget 200 --out "$OUT" --work /tmp/gpu-work \
    2>&1 | tee "$OUT/gpu.log"
