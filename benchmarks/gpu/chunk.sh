#!/bin/bash
# One chunk of a grid on the `device` GPU machine: run THERE, from the repo root, with .whl and .carry carried:
#   bash benchmarks/gpu/chunk.sh <grid yaml> [<--only filter>] [<budget seconds, default 480>]
# e.g. bash benchmarks/gpu/chunk.sh properties/experiments/table1-gpu.yaml amazon-beauty,TIGER 480
# Installs the carried wheels (recbole & co., ../shared/tools/device-wheels.sh), puts the carried caches in place
# (without overwriting what an earlier chunk left on a still-warm machine), runs the grid runner, which starts no
# cell that its estimate says would overrun the budget (a cell cut off continues from its last checkpoint in the
# next chunk if the machine is still warm), and leaves in $OUT: results.tar.gz (results/: rows and logs),
# grid.log and gpu.txt (nvidia-smi before and after). Merge here with: python benchmarks/gpu/merge.py <files_at>
set -u
grid=${1:?usage: chunk.sh <grid yaml> [only] [budget seconds]}
only=${2:-}
budget=${3:-480}
out=${OUT:-/tmp/chunk-out}
mkdir -p "$out"
source benchmarks/gpu/env.sh  # the carried wheels and caches
nvidia-smi > "$out/gpu.txt" 2>&1
start=$(date +%s)
timeout --signal=INT --kill-after=20 "$budget" python3 -m recbole_gflowgr.experiments --grid="$grid" --only="$only" \
  --jobs="${JOBS:-4}" --time_budget=$((budget - 60)) > "$out/grid.log" 2>&1
echo "runner exit $? after $(( $(date +%s) - start )) s" >> "$out/grid.log"
nvidia-smi >> "$out/gpu.txt" 2>&1
tar czf "$out/results.tar.gz" results
tail -n 20 "$out/grid.log"
