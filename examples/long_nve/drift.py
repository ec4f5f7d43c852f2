#!/usr/bin/env python3
"""Energy drift of an NVE run from a LAMMPS log (standard library only).

    python3 drift.py log.long_nve [--atoms N]

Reads the thermo table(s) of the log (a header line starting with "Step" and containing "Time"
and "TotEng", rows until "Loop time" or the end of the file, so a run still in progress can be
read). Prints the number of steps, the simulated time, the drift as the slope of a least-squares
line through TotEng(t) in eV/atom/ps, the end-to-end change, and the fluctuation:
max |TotEng - TotEng(0)| and the standard deviation of TotEng about the fitted line.
"""
import argparse
import math
import re
import sys


def read_thermo(path):
    rows, atoms, columns = [], None, None
    with open(path, errors="replace") as f:
        for line in f:
            words = line.split()
            m = re.search(r"for \d+ steps with (\d+) atoms", line)
            if m:
                atoms = int(m.group(1))
                columns = None
                continue
            if not atoms:
                m = re.match(r"\s*(\d+) atoms\s*$", line)
                if m:
                    atoms = int(m.group(1))
            if words and words[0] == "Step" and "TotEng" in words and "Time" in words:
                columns = {name: i for i, name in enumerate(words)}
                continue
            if columns is None:
                continue
            try:
                values = [float(w) for w in words]
            except ValueError:
                columns = None  # a warning or the end of the table
                continue
            if len(values) != len(columns):
                continue  # a partial last line of a run in progress
            rows.append((values[columns["Step"]], values[columns["Time"]],
                         values[columns["TotEng"]]))
    return rows, atoms


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log")
    parser.add_argument("--atoms", type=int, help="number of atoms (default: from the log)")
    parser.add_argument("--jump", type=float, default=0.05,
                        help="a change of TotEng between two thermo rows larger than this (eV, "
                             "whole system) is counted as a jump (default 0.05)")
    args = parser.parse_args(argv)
    rows, atoms = read_thermo(args.log)
    atoms = args.atoms or atoms
    if len(rows) < 2 or not atoms:
        sys.exit("drift.py: fewer than 2 thermo rows with Step, Time and TotEng, or no atom count "
                 "in %s" % args.log)
    # A second run in the same log repeats its first step: keep the first occurrence.
    seen, data = set(), []
    for step, t, e in rows:
        if step not in seen:
            seen.add(step)
            data.append((step, t, e))
    n = len(data)
    ts = [t for _, t, _ in data]
    es = [e for _, _, e in data]
    tm, em = sum(ts) / n, sum(es) / n
    stt = sum((t - tm) ** 2 for t in ts)
    slope = sum((t - tm) * (e - em) for t, e in zip(ts, es)) / stt
    icept = em - slope * tm
    resid = math.sqrt(sum((e - icept - slope * t) ** 2 for t, e in zip(ts, es)) / n)
    e0 = es[0]
    dev = max(abs(e - e0) for e in es)
    span = ts[-1] - ts[0]
    print("steps                 %d (%d thermo rows, %.6g ps)" % (data[-1][0] - data[0][0], n, span))
    print("atoms                 %d" % atoms)
    print("TotEng start, end     %.10f  %.10f eV" % (e0, es[-1]))
    print("drift (linear fit)    %.3e eV/atom/ps  (%.3e eV/ps total)" % (slope / atoms, slope))
    print("end - start           %.3e eV/atom  (%.3e eV/atom/ps)" %
          ((es[-1] - e0) / atoms, (es[-1] - e0) / atoms / span))
    print("max |TotEng - TotEng0| %.3e eV  (%.3e eV/atom)" % (dev, dev / atoms))
    print("rms about the fit     %.3e eV  (%.3e eV/atom)" % (resid, resid / atoms))
    # Jumps (a few thermo intervals with a large change, e.g. close collisions with a too-long
    # time step) against the smooth part: the drift of the intervals without a jump.
    deltas = [(data[k][0], es[k] - es[k - 1]) for k in range(1, n)]
    jumps = [(step, d) for step, d in deltas if abs(d) > args.jump]
    smooth = sum(d for _, d in deltas if abs(d) <= args.jump)
    print("jumps > %g eV          %d, sum %.3e eV; largest %s" %
          (args.jump, len(jumps), sum(d for _, d in jumps),
           ", ".join("%+.3f eV before step %d" % (d, step)
                     for step, d in sorted(jumps, key=lambda j: -abs(j[1]))[:3]) or "-"))
    print("drift without jumps   %.3e eV/atom/ps" % (smooth / atoms / span))


if __name__ == "__main__":
    main()
