#!/usr/bin/env python3
"""Per-kernel time of one umas step from an Nsight Compute CSV (see bench/README.md):

    ncu --metrics gpu__time_duration.sum --csv umas-bench ... > profile.csv
    python3 bench/kernel_breakdown.py profile.csv

Sums gpu__time_duration over launches of the same kernel (cuBLAS GEMM kernels grouped as one
row per kernel name) and prints calls, total ms and share, largest first."""
import csv
import sys
from collections import defaultdict


def main(path, top=25):
    total = defaultdict(float)
    calls = defaultdict(int)
    with open(path, newline="") as f:
        lines = [line for line in f if line.startswith('"')]  # skip ncu's log lines
    for row in csv.DictReader(lines):
        if row.get("Metric Name") != "gpu__time_duration.sum":
            continue
        name = row["Kernel Name"].replace("<unnamed>::", "").replace("(anonymous namespace)::", "")
        if name.startswith("void "):
            name = name[len("void "):]
        name = name.split("(")[0].split("<")[0].strip()
        value = float(row["Metric Value"].replace(",", ""))
        unit = row.get("Metric Unit", "nsecond")
        scale = {"nsecond": 1e-6, "usecond": 1e-3, "msecond": 1.0, "second": 1e3}.get(unit, 1e-6)
        total[name] += value * scale
        calls[name] += 1
    grand = sum(total.values())
    gemm = sum(t for n, t in total.items() if "gemm" in n.lower() or "sm90" in n or "cutlass" in n
               or n.startswith("Kernel2"))
    print("%-60s %7s %10s %6s" % ("kernel", "calls", "ms", "%"))
    for name, t in sorted(total.items(), key=lambda item: -item[1])[:top]:
        print("%-60s %7d %10.2f %6.1f" % (name[:60], calls[name], t, 100 * t / grand))
    print("%-60s %7d %10.2f %6.1f" % ("all kernels", sum(calls.values()), grand, 100.0))
    print("%-60s %7s %10.2f %6.1f" % ("of which GEMM (cuBLAS, tc_gemm)", "", gemm, 100 * gemm / grand))
    balance = sum(t for n, t in total.items() if n.startswith("balance_"))
    print("%-60s %7s %10.3f %6.2f" % ("of which charge/spin balancing (balance_*)", "", balance,
                                      100 * balance / grand))


if __name__ == "__main__":
    main(sys.argv[1])
