#!/usr/bin/env bash
# The one prepared GPU check (for a session that is lent a GPU): full-size random-weight networks.
#   networks forward at 512x512x16 fp16 (issue 4), a training step at batch 1, 512x512, 16 frames, bf16 with
#   checkpointing (issue 5), and a 2048x1536 16-frame window at 20 steps (issue 6).
# Each script prints JSON; results go to ${OUT:-gpu_results}/. Per-script time limits keep the whole run short.
set -u
cd "$(dirname "$0")/.."
dest=${OUT:-gpu_results}
mkdir -p "$dest"
py=${PYTHON:-python3}
run() {
  name=$1; limit=$2; shift 2
  echo "== $name (limit ${limit}s)"
  timeout "$limit" "$py" "$@" > "$dest/$name.json" 2> "$dest/$name.log"
  echo "exit $? ; $(tail -c 600 "$dest/$name.json")"
}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$dest/gpu.txt"
run models 150 benchmarks/gpu_models.py --device cuda
run train 200 benchmarks/gpu_train.py --device cuda
run restore 240 benchmarks/gpu_restore.py --device cuda
