#!/usr/bin/env bash
# The one prepared accelerator run (issue 23): GPU-only tests, the train-MFU sweep, the decode
# roofline benchmark and the sampler benchmark, in at most ~8 minutes on one H100/H200, so a
# short GPU slot can run it twice.
#
#   bash benchmarks/device.sh --fetch     # HERE, once, with the package index reachable:
#                                         # wheels the GPU image lacks -> .whl/ (git-ignored)
#   bash benchmarks/device.sh             # THERE (the GPU machine; nothing reachable from it)
#
# The GPU image already holds jax (CUDA), flax, optax, orbax, safetensors, tokenizers, pytest;
# it lacks grain, array-record, ml-collections and portpicker, which travel as wheels in .whl/
# (the device tool's `carry`). The project runs from source (PYTHONPATH), nothing is built.
# Every step has its own timeout and writes its rows as it goes, to $OUT (the device tool's
# folder that comes back) or else benchmarks/results/device_<date>/, so a run cut short keeps
# what it measured. The first line of card.txt names the card.
set -uo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--fetch" ]]; then
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  mkdir -p .whl
  for spec in grain==0.2.18 array-record==0.8.6 ml-collections==1.1.0 portpicker==1.6.0; do
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "$spec" \
      || python3 -m pip download --no-deps -d .whl "$spec"  # pure-Python wheels
  done
  ls -la .whl
  exit 0
fi

OUT="${OUT:-benchmarks/results/device_$(date +%Y%m%d_%H%M)}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c 'import jax; print(jax.__version__, jax.devices())'; } 2>&1 | tee "$OUT/card.txt"
start=$SECONDS
step() {  # step NAME TIMEOUT_S COMMAND...: run, log to $OUT/NAME.log, note the time taken
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s, $((SECONDS - start))s so far)"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  echo "   exit $? after $((SECONDS - start))s; last line: $(tail -n 1 "$OUT/$name.log" | cut -c1-200)"
}

# 1. GPU-only tests (cuDNN attention against XLA; they skip on a CPU).
step tests 120 python3 -m pytest -q -p no:cacheprovider tests/test_nn.py -k "cudnn or cache"
# 2. Training MFU (base preset sweep: remat policies, bf16/fp32, cuDNN vs XLA) and the
#    samplers of every paradigm; gpu_speed.py writes its JSON itself and keeps to --budget-s.
step gpu_speed 330 python3 benchmarks/gpu_speed.py --budget-s 260 --out "$OUT/gpu_speed.json"
# 3. Decode against the HBM roofline at batch 1, 8 and 64 (base preset, 99M params, bf16).
for b in 1 8 64; do
  step "decode_b$b" 60 python3 benchmarks/decode_overhead.py --config configs/ar_code.py:base \
    --batch "$b" --prompt-len 16 --new-tokens 256 --repeats 3 --set model.dtype=bfloat16 \
    --out "$OUT/decode.jsonl"
done
echo "done in $((SECONDS - start))s; results in $OUT"
