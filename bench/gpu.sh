#!/usr/bin/env bash
# One prepared GPU run, under 10 minutes: images/s of the scoring network for fp32, bf16,
# bf16 + channels_last and bf16 + channels_last + torch.compile at 299x299 and 237x1820, and the
# share of time the GPU waits for beholder's JPEG loader (bench/gpu.py). On the GPU machine:
#   bash bench/gpu.sh --json gpu.json     (the table goes into bench/RESULTS.md; gpu.json feeds
#                                          bench/scale.py --gpu-json ... --project-only)
# Needs the project's packages (pip install -e .); nothing is downloaded (random weights).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
if ! "$PY" -c "import torch, torchvision, timm, pytorch_lightning, torchmetrics, boto3" 2>/dev/null; then
  echo "bench/gpu.sh: $PY lacks the project's packages; run pip install -e . first" >&2
  exit 2
fi
if ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  echo "bench/gpu.sh: no CUDA GPU visible to $PY (bench/gpu.py --device cpu makes a dry run)" >&2
  exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
PYTHONUNBUFFERED=1 exec timeout 590 "$PY" bench/gpu.py "$@"
