#!/usr/bin/env bash
# One-time set-up: the Debian packages umas builds against (run as root or with sudo), then the
# headers of the packaged LAMMPS release for pair_umas (tools/fetch-lammps-source.sh, into the
# git-ignored .deps/). Idempotent: a re-run only checks, and installs or fetches what is missing.
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

PACKAGES="cmake make gcc g++ pkg-config python3 libgtest-dev libopenblas-dev libcjson-dev
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
