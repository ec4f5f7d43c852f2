#!/usr/bin/env bash
# The umas demo: evaluate the bundled model on three structures with umas-eval.
# (LAMMPS molecular dynamics with `pair_style umas` joins this demo with the pair style.)
# Run from the repository root after building into ./build.
set -euo pipefail
cd "$(dirname "$0")/.."
model=build/models/uma-tiny-random.safetensors
structures=tests/data/structures
echo "Model: $model (random weights, UMA-S architecture at small size; not a trained potential)"
show() { python3 -c 'import json,sys; r=json.load(sys.stdin); print("  %-32s %5d atoms %7d edges  E = %.6f eV" % (sys.argv[1], r["num_atoms"], r["num_edges"], r["energy"]))' "$1"; }
./build/umas-eval --model "$model" --task omat "$structures/cu_fcc_108.extxyz" | show "Cu FCC 108, periodic, omat"
./build/umas-eval --model "$model" --task omat "$structures/perovskite_triclinic_60.extxyz" | show "perovskite, triclinic, omat"
./build/umas-eval --model "$model" --task omol --charge 1 --spin 2 "$structures/isopropanol.extxyz" | show "isopropanol cation, omol"
