#!/usr/bin/env bash
# Leak check of pair_style umas inside LAMMPS: builds lmp_umas and umas_core with
# AddressSanitizer + LeakSanitizer (and UBSan, -DUMAS_SANITIZE=ON) in build-asan-lammps/ and runs
# 1000 MD steps of a small periodic Cu/Ni cell with the bundled tiny model:
#
#  * the neighbour list is rebuilt every step (neigh_modify every 1 delay 0 check no);
#  * the composition changes twice (set type, then delete_atoms), so the MoLE experts are
#    re-merged and the context is re-created;
#  * pair_style umas is given again (model and context replaced), `run 0` is run, then another
#    pair style replaces it (the umas style object is destroyed) and a new umas style is made;
#  * at exit LAMMPS deletes everything.
#
# Open MPI and hwloc (Debian's, not instrumented) keep allocations until exit; their reports are
# suppressed by tools/lsan-suppressions.txt, which matches only those libraries' own files.
# Exit status 0: no leak, no ASan/UBSan report, and the thermo output shows all the steps.
#
#   tools/leak-check.sh            # configure (once), build, run: ~2.5 min from scratch on
#                                  # 2 busy cores, the run itself 3-13 s
#   UMAS_LEAK_BUILD=dir tools/leak-check.sh    # another build directory
#
# Proof that umas leaks are not hidden by the suppressions: with a planted leak (a `new char[]`
# per PairUMAS::compute call, a malloc in umas_context_create) in a scratch copy of the tree, this
# script failed with "Direct leak of 4242000 byte(s) in 1000 object(s) ... PairUMAS::compute"
# and "... umas_context_create", while the Open MPI reports stayed suppressed.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
build=${UMAS_LEAK_BUILD:-build-asan-lammps}

if [ ! -f "$build/CMakeCache.txt" ]; then
    cmake -S . -B "$build" -DUMAS_SANITIZE=ON -DUMAS_WITH_CUDA=OFF -DUMAS_WITH_LAMMPS=ON \
          -DUMAS_WITH_TESTS=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo -DUMAS_BIG_CHECKPOINT=none
fi
if ! cmake --build "$build" -j2 --target lmp_umas umas_bundled_model; then
    echo "leak-check: build of lmp_umas failed (LAMMPS not found? see the cmake output)" >&2
    exit 1
fi
build=$(cd "$build" && pwd)
lmp="$build/lmp_umas"
model="$build/models/uma-tiny-random.safetensors"
if [ ! -x "$lmp" ]; then
    echo "leak-check: $lmp was not built (LAMMPS not found? see the cmake output)" >&2
    exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat >"$work/in.leak" <<EOF
# Three Cu atoms in a 7.2 A periodic box (cutoff 6 A: each atom sees a few images), types 1 Cu
# and 2 Ni. 1000 NVE steps in seven runs, the list rebuilt every step.
variable        model index $model
units           metal
atom_style      atomic
boundary        p p p
region          box block 0 7.2 0 7.2 0 7.2
create_box      2 box
create_atoms    1 single 1.0 1.0 1.0
create_atoms    1 single 3.4 1.3 1.2
create_atoms    1 single 1.2 3.3 1.4
mass            1 63.546
mass            2 58.693
pair_style      umas \${model} task omat
pair_coeff      * * Cu Ni
velocity        all create 300.0 4928459 mom yes
fix             nve all nve
timestep        0.001
neigh_modify    every 1 delay 0 check no
thermo_style    custom step pe ke etotal
thermo          100
run             300
# composition Cu3 -> Cu2 Ni: re-merge
set             atom 2 type 2
run             300
# all atoms deleted, two created (Ni Cu): re-merge with fewer atoms
delete_atoms    group all compress no
create_atoms    2 single 1.0 1.0 1.0
create_atoms    1 single 3.4 1.3 1.2
velocity        all create 300.0 1234 mom yes
run             200
# pair_style given again: model and context replaced in the same style object
pair_style      umas \${model} task omat
pair_coeff      * * Cu Ni
run             0
run             100
# another pair style: the umas style is destroyed; then a new one is created
pair_style      zero 6.0
pair_coeff      * *
run             0
pair_style      umas \${model} task omat
pair_coeff      * * Cu Ni
run             100
EOF
# (`clear` would be the natural way to destroy everything, but lmp_umas registers the style
# only once, at start-up, and LAMMPS' clear forgets it: "Unrecognized pair style 'umas'".)

export ASAN_OPTIONS=detect_leaks=1:halt_on_error=1:abort_on_error=0:exitcode=23
export LSAN_OPTIONS=suppressions=$root/tools/lsan-suppressions.txt:print_suppressions=1:fast_unwind_on_malloc=0:report_objects=0
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
start=$(date +%s)
status=0
(cd "$work" && "$lmp" -in in.leak -log none -echo none) >"$work/out.txt" 2>&1 || status=$?
end=$(date +%s)
grep -E 'Loop time|re-merged|umas timing|ERROR|WARNING' "$work/out.txt" || true
if grep -qE 'ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:' "$work/out.txt"; then
    sed -n '/ERROR: \(Address\|Leak\)Sanitizer\|runtime error:/,$p' "$work/out.txt" | head -80
    echo "leak-check: FAILED: sanitizer report (exit $status)" >&2
    exit 1
fi
loops=$(grep -c 'Loop time' "$work/out.txt" || true)
if [ "$status" -ne 0 ] || [ "$loops" -ne 7 ]; then
    tail -40 "$work/out.txt"
    echo "leak-check: FAILED: exit $status, $loops of 7 runs completed" >&2
    exit 1
fi
sed -n '/Suppressions used/,/^=*$/p' "$work/out.txt"
echo "leak-check: OK: 1000 MD steps (list rebuilt every step, 2 re-merges, pair_style" \
     "replaced and re-created), no leak in umas code, $((end - start)) s"
