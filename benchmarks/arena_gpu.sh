#!/usr/bin/env bash
# One arena experiment at the gpu budget as one accelerator run of at most 8 minutes:
#   speed   (issue 24, item 8; the default) train the judge, AR, MDLM, BD3 and the two drafters
#           (arena/budgets.py, 'gpu'), then time every sampler row at batch 1 and 64
#           (arena/speed.py SPEED['gpu']);
#   images  (issue 25, item 10) train both tokenizers, DiT, VAR, HART, raster AR, MaskGIT,
#           Transfusion and the AR captioner on the 32x64 prompt glyphs (arena/images.py
#           IMAGES['gpu']; the glyph judge trains first), then measure legibility, FD, reading
#           and images/s at batch 1 and 64.
#
#   bash benchmarks/device.sh --fetch     # HERE, once: the wheels the GPU image lacks -> .whl/
#   bash benchmarks/arena_gpu.sh [speed|images]   # THERE (carry .whl/); results in $OUT/arena_gpu/
#
# The runs live in $OUT/runs and are reused when finished, so a slot that ends first keeps the
# finished models, and a second call (with that folder carried back) resumes instead of
# retraining. Never run yet: the sizes below are estimates for an H100 (see arena/budgets.py).
set -uo pipefail
EXPERIMENT="${1:-speed}"
case "$EXPERIMENT" in speed|images) ;; *) echo "usage: $0 [speed|images]" >&2; exit 2 ;; esac
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results/arena_gpu_$(date +%Y%m%d_%H%M)}"
mkdir -p "$OUT/arena_gpu"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/arena_gpu/card.txt"
timeout 470 python3 -m arena "$EXPERIMENT" --budget gpu --out "$OUT/arena_gpu" --runs "$OUT/runs" \
  --no-progress 2>&1 | tee "$OUT/arena_gpu/log.txt"
echo "exit ${PIPESTATUS[0]}; report: $OUT/arena_gpu/$EXPERIMENT.md"
