#!/usr/bin/env bash
# AddressSanitizer + UndefinedBehaviorSanitizer build of the core and its CPU tests
# (build-sanitize/; LAMMPS left out there: Open MPI itself trips LeakSanitizer), then the
# LeakSanitizer check of pair_style umas in LAMMPS over 1000 MD steps (tools/leak-check.sh:
# its own build in build-asan-lammps/, Open MPI's own leaks suppressed).
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build-sanitize -DUMAS_SANITIZE=ON -DUMAS_WITH_CUDA=OFF -DUMAS_WITH_LAMMPS=OFF \
      -DCMAKE_BUILD_TYPE=Debug \
      -DUMAS_BIG_CHECKPOINT=none -DUMAS_BIG_CHECKPOINT_121=none
cmake --build build-sanitize -j2
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    ctest --test-dir build-sanitize --output-on-failure -j2
./tools/leak-check.sh
