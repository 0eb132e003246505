#!/usr/bin/env bash
# The installed-package path (README "Install"): build the wheel, install it in a fresh venv outside the repo, run the
# demo's main job (TIGER SFT -> GFlowGR-TB, with the nested collaborative SASRec and RQ-VAE runs) from an empty folder
# with the `recbole-gflowgr` command, on a tiny unregistered LETTER-format dataset so that it stays cheap.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
$PYTHON -m pip install -q build
$PYTHON -m build -q --wheel -o "$work/dist" . >/dev/null
$PYTHON -m venv --system-site-packages "$work/venv"  # torch / recbole / transformers come from the system
"$work/venv/bin/pip" install -q --no-deps --force-reinstall "$work"/dist/*.whl
mkdir "$work/run" && cd "$work/run"
"$work/venv/bin/python" - <<'PY'
import json, os, random
random.seed(0)
os.makedirs("src")
json.dump({str(u): [str(i) for i in random.sample(range(30), 7)] for u in range(60)}, open("src/mine.inter.json", "w"))
json.dump({str(i): {"title": f"item {i}", "categories": f"cat {i % 3}"} for i in range(30)}, open("src/mine.item.json", "w"))
PY
installed=$("$work/venv/bin/python" -c "import recbole_gflowgr, os; print(os.path.dirname(recbole_gflowgr.__file__))")
case "$installed" in "$work"/venv/*) ;; *) echo "wheel check: recbole_gflowgr imported from $installed"; exit 1;; esac
OMP_NUM_THREADS=1 "$work/venv/bin/recbole-gflowgr" --model=TIGER --dataset=mine --source_path=src \
    --config_files="properties/gflowgr.yaml properties/small.yaml properties/demo.yaml" --show_progress=False \
    --d_model=16 --d_kv=8 --num_heads=2 --d_ff=32 --num_encoder_layers=1 --num_decoder_layers=1 --beam_size=10 \
    "--collaborative_args={'epochs': 1}" \
    "--tokenizer_args={'num_emb_list': [4, 4], 'sk_epsilons': [0.0, 0.0], 'e_dim': 8, 'layers': [16], 'epochs': 2, 'kmeans_iters': 5, 'batch_size': 16}" \
    > out.txt 2>&1 || { tail -20 out.txt; exit 1; }
for d in dataset saved results log; do [ -d "$d" ] || { echo "wheel check: no $d/ in the working folder"; exit 1; }; done
grep -q '"finetune": "gflowgr-tb"' results/mine.jsonl || { echo "wheel check: no GFlowGR-TB row"; exit 1; }
echo "wheel check: $(tail -1 out.txt)"
