#!/usr/bin/env bash
# The umas demo (run after building into ./build):
#   1. umas-eval on three structures (energy of a periodic metal, a triclinic crystal, a cation);
#   2. LAMMPS: Cu FCC NVE with pair_style umas (examples/cu_fcc), when lmp_umas was built.
set -euo pipefail
cd "$(dirname "$0")/.."
model=build/models/uma-tiny-random.safetensors
structures=tests/data/structures
echo "Model: $model (random weights, UMA-S architecture at small size; not a trained potential)"
show() { python3 -c 'import json,sys; r=json.load(sys.stdin); print("  %-32s %5d atoms %7d edges  E = %.6f eV  max|F| = %.4f eV/A" % (sys.argv[1], r["num_atoms"], r["num_edges"], r["energy"], max(abs(f) for a in r["forces"] for f in a)))' "$1"; }
./build/umas-eval --model "$model" --task omat "$structures/cu_fcc_108.extxyz" | show "Cu FCC 108, periodic, omat"
./build/umas-eval --model "$model" --task omat "$structures/perovskite_triclinic_60.extxyz" | show "perovskite, triclinic, omat"
./build/umas-eval --model "$model" --task omol --charge 1 --spin 2 "$structures/isopropanol.extxyz" | show "isopropanol cation, omol"
if [ -x build/lmp_umas ]; then
    echo
    echo "LAMMPS: examples/cu_fcc (108 Cu atoms, NVE 1 fs, pair_style umas)"
    (cd examples/cu_fcc && ../../build/lmp_umas -in in.cu_fcc -var steps 20 -log none) |
        sed -n '/^ *Step/,/^Loop/p;/^Performance/p;/umas timing/p'
else
    echo "(build/lmp_umas was not built: LAMMPS development files missing, see pair_umas/README.md)"
fi
