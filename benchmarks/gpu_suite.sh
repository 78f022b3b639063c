#!/usr/bin/env bash
# The speed benchmarks at accelerator sizes, one command (GPU or TPU host).
#
#   bash benchmarks/gpu_suite.sh OUTDIR [PART]
#
# PART: "step" (train step vs PyTorch on the same device), "rest" (distillation
# overhead, early-exit speed, peak memory, input pipeline) or "all" (default).
# Each script writes its JSON (speed_*.json) and log into OUTDIR; each runs
# under a time limit and a failure does not stop the others (the exit status
# is the number of scripts that failed). The same scripts run on CPU with
# their own defaults; this file only picks sizes that make sense on a GPU:
# the CIFAR ResNet-18 (width 64) at batch 128 and 512.
set -u
out=${1:?usage: gpu_suite.sh OUTDIR [step|rest|all]}
part=${2:-all}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."  # The repository root: python -m benchmarks.NAME.
export PYTHONUNBUFFERED=1
failed=0

run() {  # run NAME SECONDS ARGS...: python -m benchmarks.NAME ARGS, logged.
  local name=$1 limit=$2
  shift 2
  echo "=== $name ($(date -u +%T), limit ${limit}s): $*"
  timeout "$limit" python -m "benchmarks.$name" "$@" 2>&1 \
    | tee "$out/$name.log" \
    | grep -v -e "^WARNING" -e "^I0000" -e "^W0000"
  local rc=${PIPESTATUS[0]}
  [ "$rc" = 0 ] || { echo "=== $name failed: rc=$rc"; failed=$((failed + 1)); }
}

if [ "$part" = step ] || [ "$part" = all ]; then
  run step_time 240 --configs 128:64,512:64 --methods pl,eed --steps 10 \
    --reps 5 --warmup 3 --out "$out/speed_step_time.json"
fi
if [ "$part" = rest ] || [ "$part" = all ]; then
  run early_exit_speed 150 --models resnet18 --n 4096 --batch 256 \
    --out "$out/speed_early_exit.json"
  run overhead 150 --width 64 --batch 128 --methods ce,sdn,pl,eed,mate,erde \
    --steps 10 --reps 5 --out "$out/speed_overhead.json"
  run memory 90 --models resnet18,wrn28_10,resnet50_imagenet --batch 128 \
    --out "$out/speed_memory.json"
  run input_pipeline 60 --num 20000 --batch 512 --steps 100 --no_feed \
    --step_json "$out/speed_step_time.json" \
    --out "$out/speed_input_pipeline.json"
fi
exit "$failed"
