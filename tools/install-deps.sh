#!/usr/bin/env bash
# One-time set-up: the Debian packages umas builds against (run as root or with sudo).
set -euo pipefail
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends \
    cmake make gcc g++ pkg-config python3 libgtest-dev libopenblas-dev libcjson-dev
