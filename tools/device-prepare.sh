#!/usr/bin/env bash
# Prepares a GPU test + benchmark run on the device machine (tools/device-run.sh runs it there).
# The device image has CUDA and CMake but no OpenBLAS, cJSON or GoogleTest, and fetches nothing:
# so the GPU binaries are built HERE (nvcc, sm_90) and travel with their few non-system shared
# libraries and the optional `umas` checkpoint, compressed, in the git-ignored .devbin/.
#   ./tools/device-prepare.sh    then run: ./tools/device-run.sh with carry [".devbin"]
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build-cuda -DCMAKE_BUILD_TYPE=Release -DUMAS_WITH_LAMMPS=OFF \
      -DCMAKE_CUDA_ARCHITECTURES=90 > /dev/null
cmake --build build-cuda -j2 --target test_cuda umas-bench umas-eval
rm -rf .devbin && mkdir -p .devbin/stage
cp build-cuda/tests/test_cuda build-cuda/umas-bench build-cuda/umas-eval .devbin/stage/
for lib in openblas.so.0 cjson.so.1 gfortran.so.5 quadmath.so.0; do
    cp -L "$(ldconfig -p | awk -v l="lib$lib" '$1 == l {print $NF; exit}')" .devbin/stage/
done
tar -C .devbin/stage -cJf .devbin/binaries.tar.xz . && rm -rf .devbin/stage
if [ -f models/umas.pt ]; then xz -T2 -6 -c models/umas.pt > .devbin/umas.pt.xz; fi
du -sh .devbin
