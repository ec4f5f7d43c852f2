#!/usr/bin/env bash
# Prepares a GPU test + benchmark run on the device machine (tools/device-run.sh runs it there).
# The device image has CUDA and CMake but no OpenBLAS, cJSON or GoogleTest, and fetches nothing:
# so the GPU binaries are built HERE (nvcc, sm_90) and travel with their few non-system shared
# libraries and the optional `umas` checkpoint, compressed, in the git-ignored .devbin/.
# The device has no LAMMPS and no MPI either: its `lmp_umas` (CUDA on) is linked to the static
# serial LAMMPS of tools/build-lammps-serial.sh (MPI stubs; built once into .deps/, ~10-20 min).
#   ./tools/device-prepare.sh    then run: ./tools/device-run.sh with carry
#   [".devbin/binaries.tar.xz", ".devbin/umas121.pt.xz"] (or umas.pt.xz: one of the two fits)
# UMAS_DEVICE_LAMMPS=0 leaves LAMMPS out (no serial LAMMPS build, no lmp_umas: the device run
# then skips its LAMMPS tests).
set -euo pipefail
cd "$(dirname "$0")/.."
targets="test_cuda test_balance test_halo test_neighbors umas-bench umas-eval"
lammps=(-DUMAS_WITH_LAMMPS=OFF)
if [ "${UMAS_DEVICE_LAMMPS:-1}" = 1 ]; then
    ./tools/build-lammps-serial.sh "$PWD/.deps/lammps-serial"
    lammps=(-DUMAS_WITH_LAMMPS=ON "-DUMAS_LAMMPS_SERIAL=$PWD/.deps/lammps-serial")
    targets="$targets lmp_umas"
fi
cmake -S . -B build-cuda -DCMAKE_BUILD_TYPE=Release "${lammps[@]}" -DCMAKE_CUDA_ARCHITECTURES=90 > /dev/null
known_targets="$(cmake --build build-cuda --target help)"
for optional in test_kernels umas-gemm-check; do # GPU-only programs, when this tree has them
    if grep -q "\.\.\. $optional\$" <<< "$known_targets"; then
        targets="$targets $optional"
    fi
done
cmake --build build-cuda -j"${UMAS_BUILD_JOBS:-2}" --target $targets
rm -rf .devbin && mkdir -p .devbin/stage
for target in $targets; do
    cp "$(find build-cuda -type f -name "$target" -perm -u+x | head -n 1)" .devbin/stage/
done
if [ -f .devbin/stage/lmp_umas ]; then
    strip .devbin/stage/lmp_umas
    # the launcher must need no MPI and no liblammps; its non-system libraries are carried below
    # (libcublas/libcublasLt come from the device's CUDA)
    if ldd build-cuda/lmp_umas | grep -E 'libmpi|liblammps|not found' | grep -v libcublas; then
        echo "device-prepare: lmp_umas needs a library the device lacks (above)" >&2
        exit 1
    fi
fi
for lib in openblas.so.0 cjson.so.1 gfortran.so.5 quadmath.so.0; do
    cp -L "$(ldconfig -p | awk -v l="lib$lib" '$1 == l {print $NF; exit}')" .devbin/stage/
done
tar -C .devbin/stage -cf - . | xz -T2 -9 > .devbin/binaries.tar.xz && rm -rf .devbin/stage
# the optional big checkpoints, each ~41 MB compressed (random weights): carry one per call, the
# tree that travels holds 64 MiB
for big in umas umas121; do
    if [ -f models/$big.pt ]; then xz -T2 -6 -c models/$big.pt > .devbin/$big.pt.xz; fi
done
du -sh .devbin/*
