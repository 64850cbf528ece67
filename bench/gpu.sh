#!/usr/bin/env bash
# The device check, run on a lent GPU host from the repository root with the pinned wheels
# carried in .whl/ (the host image lacks trl and bitsandbytes and has an older transformers):
#   bench/gpu.sh "$OUT"
set -uo pipefail
out=${1:-/tmp/gpu-out}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, peft, trl, bitsandbytes; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'trl', trl.__version__, 'bnb', bitsandbytes.__version__)" || exit 1
python3 bench/gpu_smoke.py "$out/gpu-smoke.json" 2>&1 | tee "$out/gpu-smoke.log" | grep -E '"family"|Error|error:' | cut -c1-400
echo "smoke exit: ${PIPESTATUS[0]}"
