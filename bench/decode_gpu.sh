#!/usr/bin/env bash
# Issue 10's GPU throughput table in one run (H100 or H200), for the device tool:
#   run(command="bash bench/decode_gpu.sh", carry=[".whl"], timeout_s=600)
# The GPU image has torch and transformers but no diffusers: the Python 3.12 wheels listed in
# DEVELOPERS.md ("Benchmarks on a lent GPU") must lie in .whl/ (ignored by git). Every stage writes
# its JSON after each row and runs under its own timeout, so a cut-short run keeps what it measured.
set -uo pipefail
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
pip install --quiet --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/shared:$PWD
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"

# 1) DREAM-OOD settings (512², 50 PNDM steps, CFG 7.5, fp16): plain diffusers, exact and fast in the
#    same run, at batches 8, 32 and the largest that fits (SD v1.4 architecture, random weights).
#    --latent-distance 8: the final latents of fast against exact on SD v1.4's architecture (same seeds).
timeout 330 python bench/decode.py --arch sd14 --workdir /tmp/sd14 --batch-sizes 8 32 max --sizes 512 \
  --latent-distance 8 --out "$OUT/decode_512.json" || echo "512² stage ended with code $?"
# 2) Decode 256², store 256² (against 1)'s decode 512², store 256²): batch 32, same pipeline folder.
timeout 180 python bench/decode.py --model /tmp/sd14/sd14 --batch-sizes 32 --sizes 256 \
  --out "$OUT/decode_256.json" || echo "256² stage ended with code $?"
ls -l "$OUT"
