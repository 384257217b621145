#!/usr/bin/env bash
# Issue 10's GPU throughput table in one run (H100 or H200), for the device tool:
#   run(command="bash bench/decode_gpu.sh", carry=[".whl"], timeout_s=570)
# The GPU image has torch and transformers but no diffusers: the Python 3.12 wheels listed in
# DEVELOPERS.md ("Benchmarks on a lent GPU") must lie in .whl/ (ignored by git). One process times, in
# this order, so that a run cut short keeps what matters most (the JSON is rewritten after every path):
#   512² (DREAM-OOD: 50 PNDM steps, CFG 7.5, fp16) at batches 32 and 8: plain diffusers, exact, fast;
#   fast's latent distance to exact on 8 images (SD v1.4 architecture, same seeds);
#   decode 256² (stored 256² as before) at batches 32 and 8;
#   the largest batch that fits, probed up to 128 (the cap keeps the lent GPU's time; throughput is flat
#   above 32), timed at 512² then 256².
# Each new batch or decode size compiles the full step again (53 s on an H200) and the shallow step (10 s);
# with the timed calls, expect about 80 s per row at 512² batch 32 and less for the smaller ones.
set -uo pipefail
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/shared:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
timeout "${DECODE_TIMEOUT:-510}" python3 bench/decode.py --arch sd14 --workdir /tmp/sd14 --sizes 512 256 \
  --batch-sizes 32 8 max --max-probe 128 --latent-distance 8 --out "$OUT/decode_gpu.json" 2>&1 \
  | grep -v -i -E "warn|deprecat" | tee "$OUT/decode_gpu.log"
echo "decode.py ended with code ${PIPESTATUS[0]}"
ls -l "$OUT"
