#!/bin/bash
# amazon-beauty, paper-size TIGER, seed 42 on the `device` GPU machine in one call: SFT, then sft-continued and
# GFlowGR-TB at once, each within a wall-clock budget, rows packed into $OUT/results.tar.gz (beauty_seed42.py says
# how). Run THERE from the repo root with .whl and .carry carried (docs/experiments.md, "On your own GPU machine"):
#   bash benchmarks/gpu/beauty_seed42.sh            # the run (~9.5 min; call with timeout_s 600)
#   DRY=1 bash benchmarks/gpu/beauty_seed42.sh      # the plan and time estimate only
#   TINY=1 bash benchmarks/gpu/beauty_seed42.sh     # the same mechanics on CPU, synthetic data (minutes, no GPU)
# Leaves in $OUT: results.tar.gz (python benchmarks/gpu/merge.py <files_at> here), run.log, cell-logs.tar.gz,
# cm.log, gpu.txt (nvidia-smi before and after).
set -u
export GPU_T0=${GPU_T0:-$(date +%s)}  # the call's clock starts here: the wheels' install counts
export OUT=${OUT:-/tmp/beauty-gpu-out}
mkdir -p "$OUT"
source benchmarks/gpu/env.sh
[ "${DRY:-0}" = 1 ] || nvidia-smi > "$OUT/gpu.txt" 2>&1
# a safety net under the call's 600 s: INT lets the script pack what it has (its own plan ends at ~570 s)
limit=${LIMIT_S:-590}
[ "${TINY:-0}" = 1 ] && limit=0  # on CPU: no limit
timeout --signal=INT --kill-after=10 "$limit" python3 benchmarks/gpu/beauty_seed42.py "$@" 2>&1 | tee "$OUT/run.log"
rc=${PIPESTATUS[0]}
[ "${DRY:-0}" = 1 ] || nvidia-smi >> "$OUT/gpu.txt" 2>&1
exit "$rc"
