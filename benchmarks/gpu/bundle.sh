#!/bin/bash
# Packs into .carry/ (in .gitignore) what a grid needs on the `device` GPU machine, where ../shared is not:
# each dataset's converted atomic files, manifest and semantic-ID folders (not the text embeddings: runs read the
# IDs) and its cached collaborative SASRec; with SFT=1 also its cached SFT checkpoints (saved/sft/: fine-tuning
# cells then start from the SFT runs already in results/ instead of training and recording new ones).
# Run here, from the repo root, after ../shared/tools/device-wheels.sh (and, for a dataset not converted yet,
# python benchmarks/gpu/beauty_seed42.py --prepare: conversion, RQ-VAE IDs, collaborative SASRec of amazon-beauty):
#   bash benchmarks/gpu/bundle.sh amazon-beauty [yelp ...]
#   SFT=1 bash benchmarks/gpu/bundle.sh industrial-scientific    # the CPU grids' remaining fine-tuning cells
# then call the device with carry [".whl", ".carry"], timeout_s 600 and benchmarks/gpu/chunk.sh or
# benchmarks/gpu/beauty_seed42.sh; merge here with benchmarks/gpu/merge.py (docs/experiments.md, "On your own GPU machine").
set -eu
[ $# -ge 1 ] || { echo "usage: bash benchmarks/gpu/bundle.sh <dataset> [<dataset> ...]" >&2; exit 2; }
rm -rf .carry
mkdir -p .carry/dataset .carry/saved/collaborative .carry/saved/sft
for name in "$@"; do
  src=dataset/$name
  if [ ! -f "$src/manifest.json" ]; then
    echo "error: $src/manifest.json missing: convert it first (any run with --dataset=$name)" >&2; exit 2
  fi
  mkdir -p ".carry/$src/tokenizer"
  cp "$src/$name.inter" "$src/$name.item" "$src/manifest.json" ".carry/$src/"
  for ids in "$src"/tokenizer/*/; do [ -d "$ids" ] && cp -r "$ids" ".carry/$src/tokenizer/"; done
  found=0
  for f in saved/collaborative/"$name"-SASRec-*.pth saved/collaborative/"$name"-SASRec-*.json; do
    [ -f "$f" ] && cp "$f" .carry/saved/collaborative/ && found=1
  done
  [ $found = 1 ] || echo "note: no cached collaborative SASRec of $name: the grid will train it on the GPU"
  if [ "${SFT:-0}" = 1 ]; then
    for f in saved/sft/"$name"-*.pth; do [ -f "$f" ] && cp "$f" .carry/saved/sft/; done
  fi
done
kib=$(du -sk .carry $( [ -d .whl ] && echo .whl ) | awk '{s += $1} END {print s}')
# what travels besides: the tracked and untracked-not-ignored files of the working tree
tree=$(git ls-files -z --cached --others --exclude-standard | du -ck --files0-from=- 2>/dev/null | tail -n 1 | cut -f1)
du -sh .carry $( [ -d .whl ] && echo .whl )
echo "with the working tree: $((kib + tree)) KiB of the 65536 KiB (64 MiB) that one device call can carry"
if [ $((kib + tree)) -gt 64512 ]; then
  echo "error: .carry + .whl + the working tree = $((kib + tree)) KiB: over what one device call can carry (64 MiB, 1 MiB kept free); bundle fewer datasets" >&2
  exit 2
fi
