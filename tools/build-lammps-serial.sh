#!/usr/bin/env bash
# Builds a SERIAL static LAMMPS core library (no MPI: LAMMPS' own MPI stubs, no OpenMP, no
# optional packages but PLUGIN) from Debian's LAMMPS source package, with LAMMPS' own CMake.
#
# Why: Debian's liblammps is linked to OpenMPI, so a launcher built against it cannot run on a
# machine without MPI (the GPU device). A launcher linked to this static library needs no MPI
# and no liblammps: `cmake -DUMAS_LAMMPS_SERIAL=<build dir>` (pair_umas/CMakeLists.txt).
#
#   tools/build-lammps-serial.sh [build dir]      default: .deps/lammps-serial (git-ignored)
#
# The sources come from tools/fetch-lammps-source.sh --build-tree (.deps/lammps-build-src/,
# extracted from the orig tarball of `apt-get source lammps`; nothing is committed). Release,
# -O2, KISS FFT, no JPEG/PNG/FFMPEG/gzip. Idempotent: skipped when liblammps.a is present and
# the sources did not change. JOBS (default 2) sets the build parallelism. Takes ~10-20 minutes
# on 2 cores.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SRC="$ROOT/.deps/lammps-build-src"
BUILD="${1:-$ROOT/.deps/lammps-serial}"
JOBS="${JOBS:-2}"

"$ROOT/tools/fetch-lammps-source.sh" --build-tree

if [ -f "$BUILD/liblammps.a" ] && [ -f "$BUILD/liblammps_mpi_stubs.a" ] \
   && [ -f "$BUILD/umas-serial.stamp" ] \
   && [ "$BUILD/umas-serial.stamp" -nt "$SRC/src/version.h" ]; then
    echo "build-lammps-serial: $BUILD/liblammps.a already built"
    exit 0
fi

mkdir -p "$BUILD"
cmake -S "$SRC/cmake" -B "$BUILD" -G "Unix Makefiles" \
      -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_FLAGS_RELEASE="-O2 -DNDEBUG" \
      -DBUILD_MPI=no -DBUILD_OMP=no -DBUILD_SHARED_LIBS=no -DBUILD_EXE=no -DBUILD_TOOLS=no \
      -DBUILD_DOC=no -DBUILD_LAMMPS_SHELL=no -DENABLE_TESTING=no \
      -DLAMMPS_SIZES=smallbig -DLAMMPS_EXCEPTIONS=no -DPKG_PLUGIN=yes \
      -DFFT=KISS -DWITH_JPEG=no -DWITH_PNG=no -DWITH_FFMPEG=no -DWITH_GZIP=no \
      -DCMAKE_POSITION_INDEPENDENT_CODE=yes > "$BUILD/umas-configure.log"
cmake --build "$BUILD" -j "$JOBS" --target lammps
test -f "$BUILD/liblammps.a" && test -f "$BUILD/liblammps_mpi_stubs.a"
touch "$BUILD/umas-serial.stamp"
echo "build-lammps-serial: $BUILD/liblammps.a ($(du -h "$BUILD/liblammps.a" | cut -f1))" \
     "and liblammps_mpi_stubs.a; use: cmake -DUMAS_LAMMPS_SERIAL=$BUILD"
