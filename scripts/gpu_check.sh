#!/usr/bin/env bash
# One short GPU check (budget: under 8 minutes on one GPU): print the device, then benchmark
# glubench at GPT-2-small size (d_model 768, 12 layers, 12 heads, ctx 1024, GPT-2 vocab) for
# relu, gelu and swiglu with bf16 autocast + torch.compile, against the plain loop and the
# Hugging Face peers, and write bench.json / bench.md to OUT_DIR.
#
#   scripts/gpu_check.sh OUT_DIR            # e.g. scripts/gpu_check.sh gpu-results
#   REPEATS=1 STEPS=10 scripts/gpu_check.sh OUT_DIR   # shorter
#
# Needs a CUDA torch build, lightning and (for the peers) transformers:
#   pip install -e ".[bench]"   (with your CUDA torch already installed, so pip keeps it)
set -euo pipefail

OUT_DIR="${1:?usage: scripts/gpu_check.sh OUT_DIR}"
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python}"
mkdir -p "$OUT_DIR"

"$PY" - <<'EOF'
import sys
import torch
if not torch.cuda.is_available():
    sys.exit("gpu_check: torch.cuda.is_available() is False (torch %s); nothing to check" % torch.__version__)
p = torch.cuda.get_device_properties(0)
print(f"gpu_check: {torch.cuda.get_device_name(0)}, {p.total_memory / 2**30:.0f} GiB, "
      f"capability {p.major}.{p.minor}, torch {torch.__version__}, CUDA {torch.version.cuda}")
try:
    import transformers
    print(f"gpu_check: transformers {transformers.__version__}")
except ImportError:
    print("gpu_check: transformers not installed: the Hugging Face peers will be skipped")
EOF
nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total,utilization.gpu --format=csv || true

# Each run compiles once per contender (about 30-60 s each for a 124M model), so keep the
# plan small: 3 variants x (lightning, plain) + 2 peers = 8 compiled runs per repeat.
# B=16 x T=1024 = 16384 tokens per step; vocab 50304 (GPT-2's 50257 padded to a multiple of 64).
start=$(date +%s)
timeout "${TIMEOUT_S:-450}" "$PY" -m glubench.cli.bench \
  --device cuda --bf16 --compile \
  --ffn relu gelu swiglu --contenders lightning plain hf \
  --d-model 768 --n-layers 12 --n-heads 12 --seq-len 1024 --vocab-size 50304 \
  --batch-size "${BATCH:-16}" --warmup "${WARMUP:-5}" --steps "${STEPS:-20}" --repeats "${REPEATS:-2}" \
  --out "$OUT_DIR" 2>&1 | grep -v -E "Warning|warn\(|^\s*$|GPU available|TPU available|litlogger|LOCAL_RANK" \
  || { echo "gpu_check: benchmark failed or timed out (partial results, if any, are in $OUT_DIR)"; exit 1; }
echo "gpu_check: done in $(( $(date +%s) - start )) s; results in $OUT_DIR/bench.json and $OUT_DIR/bench.md"
