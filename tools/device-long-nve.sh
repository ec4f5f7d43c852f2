#!/usr/bin/env bash
# On the device (after tools/device-prepare.sh here, carry [".devbin"]): the 10^5-step NVE run
# of examples/long_nve/in.cu_gpu on the GPU with the serial launcher; log and drift under $OUT.
set -uo pipefail
source tools/device-env.sh
python3 tools/umas_convert.py tests/data/checkpoints/tiny.pt /tmp/umas/models/tiny.safetensors
cd examples/long_nve
timeout "${UMAS_LONG_SECONDS:-560}" /tmp/umas/bin/lmp_umas -in in.cu_gpu \
    -var model /tmp/umas/models/tiny.safetensors -var steps "${UMAS_LONG_STEPS:-100000}" \
    -log "$OUT/log.cu_gpu" -screen none
echo "lmp exit $?"
grep -E "Loop time|umas timing|Performance" "$OUT/log.cu_gpu"
python3 drift.py "$OUT/log.cu_gpu" | tee "$OUT/drift.txt"
