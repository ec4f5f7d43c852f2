#!/usr/bin/env bash
# Fetch the headers of Debian's LAMMPS source package into .deps/lammps-src/src/ (git-ignored).
#
# Debian's liblammps-dev ships an incomplete header set (no neigh_request.h, no version.h, no
# bundled fmt/), so pair_umas compiles against the headers of the *same* source release instead
# (see pair_umas/README.md). Only */src/*.h and */src/fmt/* are extracted; nothing is committed.
# Needs a deb-src entry for the suite of the installed lammps (tools/install-deps.sh writes one).
# No root needed. Idempotent: does nothing when .deps/lammps-src/src/version.h exists.
#
#   tools/fetch-lammps-source.sh --build-tree
# instead extracts what LAMMPS' own CMake build of a serial core library needs (src/*.cpp,
# src/*.h, src/fmt/, src/STUBS/ (the MPI stubs), src/PLUGIN/, cmake/) into .deps/lammps-build-src/
# (used by tools/build-lammps-serial.sh). Idempotent likewise (cmake/CMakeLists.txt present).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DEPS="$ROOT/.deps"
MODE=headers
if [ "${1:-}" = "--build-tree" ]; then
    MODE=build
    DEST="$DEPS/lammps-build-src"
    DONE="$DEST/cmake/CMakeLists.txt"
else
    DEST="$DEPS/lammps-src"
    DONE="$DEST/src/version.h"
fi

if [ -f "$DONE" ]; then
    echo "fetch-lammps-source: $DEST already present"
    exit 0
fi

mkdir -p "$DEPS/apt-source"
cd "$DEPS/apt-source"
# Source of the installed binary version when lammps is installed, else the candidate version.
VER="$(dpkg-query -W -f='${source:Version}' lammps 2>/dev/null || true)"
SPEC="lammps${VER:+=$VER}"
if ! ls lammps_*.orig.tar.* >/dev/null 2>&1; then
    echo "fetch-lammps-source: apt-get source --download-only $SPEC"
    # apt warns about the unsandboxed download when run as root; that is harmless.
    apt-get source --download-only -qq "$SPEC" 2>&1 | grep -v '^W: Download is performed unsandboxed' || true
fi
ORIG="$(ls lammps_*.orig.tar.* 2>/dev/null | head -n1 || true)"
if [ -z "$ORIG" ]; then
    echo "fetch-lammps-source: could not download the lammps source package." >&2
    echo "  Is a deb-src entry configured (tools/install-deps.sh writes one) and apt-get update run?" >&2
    exit 1
fi

TMP="$DEST.tmp"
rm -rf "$TMP"
mkdir -p "$TMP"
if [ "$MODE" = build ]; then
    # core sources and headers (no package directories but the MPI stubs and PLUGIN), CMake
    tar -xf "$ORIG" -C "$TMP" --strip-components=1 --wildcards --no-wildcards-match-slash \
        '*/src/*.h' '*/src/*.cpp' '*/src/fmt/*' '*/src/STUBS/*' '*/src/PLUGIN/*'
    tar -xf "$ORIG" -C "$TMP" --strip-components=1 --wildcards '*/cmake/*'
    rm -rf "$TMP/tools" "$TMP/lib" "$TMP/examples" # other cmake/ folders the pattern matched
    if [ ! -f "$TMP/cmake/CMakeLists.txt" ] || [ ! -f "$TMP/src/STUBS/mpi.cpp" ]; then
        echo "fetch-lammps-source: $ORIG lacks cmake/CMakeLists.txt or src/STUBS/mpi.cpp" >&2
        exit 1
    fi
else
    tar -xf "$ORIG" -C "$TMP" --strip-components=1 --wildcards --no-wildcards-match-slash \
        '*/src/*.h' '*/src/fmt/*'
fi
if [ ! -f "$TMP/src/version.h" ]; then
    echo "fetch-lammps-source: $ORIG has no src/version.h" >&2
    exit 1
fi
rm -rf "$DEST"
mv "$TMP" "$DEST"
echo "fetch-lammps-source: $(grep -h '^#define LAMMPS_VERSION' "$DEST/src/version.h") -> $DEST/src"
