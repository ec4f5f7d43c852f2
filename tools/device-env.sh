# Sourced by the device-side scripts (tools/device-run.sh, tools/device-long-nve.sh): unpacks the
# binaries carried in .devbin/ into /tmp/umas/bin and finds the device's cuBLAS. Sets OUT.
OUT=${OUT:-/tmp/umas-out}
mkdir -p "$OUT" /tmp/umas/bin /tmp/umas/models
tar -C /tmp/umas/bin -xJf .devbin/binaries.tar.xz
cublas=$(find / -name 'libcublas.so.13' -not -path '*/proc/*' 2>/dev/null | head -n 1)
export LD_LIBRARY_PATH="/tmp/umas/bin:$(dirname "${cublas:-/usr/local/cuda/lib64/x}"):${LD_LIBRARY_PATH:-}"
