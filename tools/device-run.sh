#!/usr/bin/env bash
# On the device machine (repository root, .devbin/ carried; see tools/device-prepare.sh):
# GPU tests (test_cuda), LAMMPS with `device cuda` (tests/test_lammps_gpu.py with the carried
# serial lmp_umas; single rank, no MPI there) and the benchmark table (umas-bench). Output also
# under $OUT. UMAS_TEST_CUDA=0 / UMAS_GEMM_CHECK=0 / UMAS_LAMMPS_GPU=0 / UMAS_BENCH=0 leave a
# part out; UMAS_CUDA_FILTER is a GoogleTest filter for test_cuda; UMAS_BENCH_VARIANTS /
# UMAS_PROFILE_VARIANTS are lists of backends:precision, each optionally with :VARIABLE=value for
# that run's environment (e.g. umas_fast_gpu:3xtf32:UMAS_CUDA_RECOMPUTE=radial, or
# =kept:3:radial:90192 for any tape); UMAS_PROFILE_ATOMS: the sizes of the kernel breakdown.
# UMAS_LAMMPS_TESTS: test names for tests/test_lammps_gpu.py (e.g. "ReferenceParity
# GpuVersusCpu"); UMAS_LAMMPS_BENCH: precisions for a LAMMPS in.bench run each. UMAS_SASS=1 first
# prints what the tensor-core GEMM kernels' machine code holds (wgmma instructions, local-memory
# spills). UMAS_DEVICE_TESTS: the GoogleTest programs (default test_cuda test_balance
# test_neighbors, plus test_kernels); UMAS_BENCH_MODELS: the models benchmarked (default umas
# umas121, those carried); UMAS_PROFILE_MODEL: the model of the kernel breakdown (default umas).
# UMAS_BENCH_BEFORE: an earlier build's umas-bench (xz, carried) to time against this one,
# alternating, at UMAS_BENCH_BEFORE_ATOMS (default 2000) atoms.
set -uo pipefail
source tools/device-env.sh
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
# convert the reference checkpoints with the stdlib converter
for pt in tests/data/checkpoints/*.pt; do
    python3 tools/umas_convert.py "$pt" "/tmp/umas/models/$(basename "$pt" .pt).safetensors"
done
for big in umas umas121; do # the carried big checkpoints
    if [ -f .devbin/$big.pt.xz ]; then
        xz -dc .devbin/$big.pt.xz > /tmp/umas/$big.pt
        python3 tools/umas_convert.py /tmp/umas/$big.pt /tmp/umas/models/$big.safetensors
    fi
done
export UMAS_TEST_DATA="$PWD/tests/data" UMAS_TEST_MODELS=/tmp/umas/models
if [ "${UMAS_SASS:-0}" = 1 ] && command -v cuobjdump > /dev/null; then
    echo "== machine code of the split-precision GEMM kernels (umas-gemm-check)"
    cuobjdump --dump-sass /tmp/umas/bin/umas-gemm-check > "$OUT/gemm.sass" 2>&1
    awk '/Function :/ {f = $3} /GMMA/ {g[f]++} /LDL|STL/ {l[f]++} /Function :/ {n[f] = 1}
         END {for (f in n) if (f ~ /tc_gemm/) printf "%s: %d GMMA, %d LDL/STL\n", f, g[f], l[f]}' \
        "$OUT/gemm.sass"
fi
if [ "${UMAS_TEST_CUDA:-1}" = 1 ]; then
    tests="${UMAS_DEVICE_TESTS:-test_cuda test_balance test_halo test_neighbors}"
    [ -x /tmp/umas/bin/test_kernels ] && tests="$tests test_kernels"
    for test in $tests; do
        filter=()
        if [ "$test" = test_cuda ] && [ -n "${UMAS_CUDA_FILTER:-}" ]; then
            filter=("--gtest_filter=$UMAS_CUDA_FILTER")
        fi
        if [ "$test" = test_balance ] || [ "$test" = test_halo ]; then # processes as threads: one BLAS thread each
            export OPENBLAS_NUM_THREADS=1
        fi
        timeout "${UMAS_TEST_TIMEOUT:-540}" stdbuf -oL /tmp/umas/bin/$test "${filter[@]}" \
            > "$OUT/$test.log" 2>&1
        echo "$test exit $?" >> "$OUT/$test.log"
        grep -E "measured|FAIL|SKIPPED|Failure|error|exit" "$OUT/$test.log" | grep -v "no CUDA device"
    done
    echo "== test summary"
    for test in $tests; do grep -HE "^\[  (PASSED|FAILED) |exit [0-9]+$" "$OUT/$test.log"; done
fi
if [ "${UMAS_GEMM_CHECK:-1}" = 1 ] && [ -x /tmp/umas/bin/umas-gemm-check ]; then
    echo "== split-precision tensor-core GEMM vs cuBLAS (umas-gemm-check)"
    timeout 300 /tmp/umas/bin/umas-gemm-check 2>&1 | tee "$OUT/gemm-check.txt"
    echo "== gemm check exit ${PIPESTATUS[0]}"
fi
if [ "${UMAS_LAMMPS_GPU:-1}" = 1 ] && [ -x /tmp/umas/bin/lmp_umas ]; then
    # the NVE tests' CPU reference run alone takes about 6 minutes there (1.8 s per step)
    echo "== LAMMPS, pair_style umas device cuda (tests/test_lammps_gpu.py)"
    UMAS_LMP=/tmp/umas/bin/lmp_umas UMAS_TEST_MODELS=/tmp/umas/models \
    UMAS_TEST_DATA="$PWD/tests/data" UMAS_TEST_DEVICE=cuda \
        timeout "${UMAS_LAMMPS_TIMEOUT:-900}" python3 tests/test_lammps_gpu.py -v ${UMAS_LAMMPS_TESTS:-} \
        > "$OUT/test_lammps_gpu.log" 2>&1
    status=$?
    grep -E "measured|skipp|^(FAIL|ERROR)|Error" "$OUT/test_lammps_gpu.log"
    if [ "$status" != 0 ]; then tail -n 60 "$OUT/test_lammps_gpu.log"; fi
    echo "== lammps gpu summary: exit $status;" \
         "$(grep -E '^Ran [0-9]+ tests' "$OUT/test_lammps_gpu.log" | tail -n 1);" \
         "$(grep -E '^(OK|FAILED)' "$OUT/test_lammps_gpu.log" | tail -n 1)"
fi
if [ -n "${UMAS_LAMMPS_BENCH:-}" ] && [ -x /tmp/umas/bin/lmp_umas ]; then
    # LAMMPS speed and its host share: examples/bench/in.bench, 2,048 atoms, umas_fast_gpu
    for precision in $UMAS_LAMMPS_BENCH; do
        echo "== LAMMPS in.bench, 2048 atoms, umas_fast_gpu, precision $precision"
        (cd examples/bench && /tmp/umas/bin/lmp_umas -in in.bench -var n 8 \
            -var steps "${UMAS_LAMMPS_BENCH_STEPS:-150}" -var device cuda \
            -var backend umas_fast_gpu -var precision "$precision" \
            -var model /tmp/umas/models/umas.safetensors -log none) > "$OUT/lammps-$precision.log" 2>&1
        grep -E "Loop time|Performance|umas timing|Pair  |Neigh |Comm |Other|ERROR" "$OUT/lammps-$precision.log"
    done
fi
for model in ${UMAS_BENCH_MODELS:-umas umas121}; do
    if [ "${UMAS_BENCH:-1}" != 1 ] || [ ! -f /tmp/umas/models/$model.safetensors ]; then continue; fi
    # one table per precision: the exact fp32 backends, then umas_fast with tensor cores
    for variant in ${UMAS_BENCH_VARIANTS:-general,umas_fast,umas_fast_gpu:fp32 umas_fast_gpu:3xtf32 umas_fast_gpu:ozaki umas_fast_gpu:tf32}; do
        set -- ${variant//:/ }
        echo "== umas-bench, $model model (UMA-S shape), backends $1, precision $2, on the GPU ${3:-}"
        env ${3:-} /tmp/umas/bin/umas-bench --model /tmp/umas/models/$model.safetensors --device cuda \
            --backend "$1" --precision "$2" --atoms "${UMAS_BENCH_ATOMS:-1000,2000,6000,16000}" \
            --steps "${UMAS_BENCH_STEPS:-5}" --warmup 2 | tee -a "$OUT/bench.txt"
    done
done
if [ -n "${UMAS_BENCH_BEFORE:-}" ] && [ -f "$UMAS_BENCH_BEFORE" ]; then
    # the same benchmark by an earlier build's umas-bench (an xz file, carried), alternating
    # with this build's, on the same machine: the before/after table of a change
    xz -dc "$UMAS_BENCH_BEFORE" > /tmp/umas/bin/umas-bench-before
    chmod +x /tmp/umas/bin/umas-bench-before
    model=${UMAS_BENCH_BEFORE_MODEL:-umas}
    for round in 1 2; do
        for build in before after; do
            bench=/tmp/umas/bin/umas-bench
            [ "$build" = before ] && bench=/tmp/umas/bin/umas-bench-before
            for precision in ${UMAS_BENCH_BEFORE_PRECISIONS:-ozaki fp32 tf32}; do
                echo "== before/after round $round, $build, $model, umas_fast_gpu, $precision"
                $bench --model /tmp/umas/models/$model.safetensors --device cuda \
                    --backend umas_fast_gpu --precision "$precision" \
                    --atoms "${UMAS_BENCH_BEFORE_ATOMS:-2000}" --steps 10 --warmup 3 |
                    tee -a "$OUT/before-after.txt"
            done
        done
    done
fi
profile_model=${UMAS_PROFILE_MODEL:-umas}
if [ "${UMAS_PROFILE:-0}" = 1 ] && [ -f /tmp/umas/models/$profile_model.safetensors ]; then
    # per-kernel time of one MD step (Nsight Compute, one metric: one replay) at each of
    # UMAS_PROFILE_ATOMS (default 2000)
    for atoms in ${UMAS_PROFILE_ATOMS:-2000}; do
        for variant in ${UMAS_PROFILE_VARIANTS:-umas_fast_gpu:fp32}; do
            set -- ${variant/:/ }
            echo "== kernel breakdown, $profile_model model, $atoms atoms, backend $1, precision $2 (one step)"
            ncu --metrics gpu__time_duration.sum --csv /tmp/umas/bin/umas-bench \
                --model /tmp/umas/models/$profile_model.safetensors --device cuda --backend "$1" \
                --precision "$2" --atoms "$atoms" --steps 1 --warmup 0 \
                > "$OUT/profile-$2-$atoms.csv" 2>&1
            python3 bench/kernel_breakdown.py "$OUT/profile-$2-$atoms.csv" |
                tee "$OUT/breakdown-$2-$atoms.txt"
        done
    done
fi

