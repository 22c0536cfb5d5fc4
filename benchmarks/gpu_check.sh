#!/usr/bin/env bash
# GPU check for the in-process engine (issue 4). Needs only torch, transformers,
# tokenizers and safetensors (all on the device machine). Run from the repo root:
#   bash benchmarks/gpu_check.sh            # 1.1B Llama (TinyLlama-shaped), bf16
# Prints one JSON line: engine tokens/s vs transformers generate (sequential and
# batched), decode step time at batch 1 vs the HBM bandwidth bound (3.35 TB/s,
# H100 SXM), with a static KV cache and CUDA-graph replay of the decode step.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]] && .venv/bin/python -c "import torch" 2>/dev/null; then PY=.venv/bin/python; else PY=python3; fi
fi
export EDGE_FLEET_MODEL_CACHE="${EDGE_FLEET_MODEL_CACHE:-${TMPDIR:-/tmp}/edge-fleet-models}"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')" >&2
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv >&2 || true
exec "$PY" -m benchmarks.runtime --scenario gpu --size "${SIZE:-1b}" --requests "${REQUESTS:-32}" \
  --prompt-tokens "${PROMPT_TOKENS:-32}" --max-tokens "${MAX_TOKENS:-128}" --hf-requests "${HF_REQUESTS:-2}" "$@"
