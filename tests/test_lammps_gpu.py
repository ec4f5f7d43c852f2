#!/usr/bin/env python3
"""`pair_style umas ... device cuda` inside LAMMPS on a GPU: reference parity in float32, GPU vs
CPU trajectories, NVE energy drift, and out of GPU memory.

    UMAS_LMP=build-cuda/lmp_umas UMAS_TEST_MODELS=/tmp/umas/models python3 tests/test_lammps_gpu.py
    (or: python3 -m pytest -s tests/test_lammps_gpu.py; tools/device-run.sh runs it with unittest)

Environment:
  UMAS_LMP          the launcher (a serial lmp_umas built with CUDA: tools/device-prepare.sh)
  UMAS_TEST_MODELS  folder with tiny.safetensors (required) and umas.safetensors (optional:
                    UMA-S-shaped model; its reference cases and the out-of-memory test)
  UMAS_TEST_DATA    tests/data (default: the data folder next to this file)
  UMAS_TEST_DEVICE  cuda (default) or cpu: cpu runs the same checks with `device cpu` (to check
                    the test logic on a machine without a GPU; the GPU-vs-CPU comparison then
                    compares CPU with CPU, and the out-of-GPU-memory test skips)
  UMAS_TEST_NVE_STEPS  steps of the NVE drift runs (default 300; fewer for a slow CPU)
Everything skips with a message when there is no launcher or model, and in cuda mode when
nvidia-smi is absent, the launcher has no CUDA backend, or umas sees no CUDA device.
Single rank only (no MPI on the GPU machine). Reuses the helpers of tests/test_lammps.py
(inputs, rotations into LAMMPS' frame, thermo and dump parsing); measured numbers are printed
on lines starting with "[ measured ]".

Bounds (those of test_cuda for the float32 GPU backend against fairchem's float64 truth):
energy within max(1e-4 eV, 1e-5 eV x atoms), forces within 1e-4 eV/A (max-abs), stress within
1e-6 eV/A^3, where LAMMPS' pressure P_ab (bar) = -stress_ab x nktv2p (1.6021765e6 bar per
eV/A^3).
"""
import math
import os
import re
import shutil
import struct
import json
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import test_lammps as base  # noqa: E402  (helpers only; its test classes are not imported)

measured = base.measured
DEVICE = os.environ.get("UMAS_TEST_DEVICE", "cuda")
LMP = os.environ.get("UMAS_LMP", "")
MODELS = os.environ.get("UMAS_TEST_MODELS", "")
DATA = os.environ.get("UMAS_TEST_DATA", os.path.join(HERE, "data"))
SKIP = None  # reason to skip everything, found by setUpModule


class Args:
    lmp = mpirun = model = data = ""


def model_path(name):
    return os.path.join(MODELS, name + ".safetensors")


def setUpModule():
    global SKIP
    base.ARGS = Args()
    base.ARGS.lmp = os.path.abspath(LMP) if LMP else ""
    base.ARGS.model = os.path.abspath(model_path("tiny")) if MODELS else ""
    base.ARGS.data = os.path.abspath(DATA)
    base.TMP = tempfile.TemporaryDirectory(prefix="umas-lammps-gpu-")
    if DEVICE not in ("cuda", "cpu"):
        raise RuntimeError("UMAS_TEST_DEVICE must be cuda or cpu, not %r" % DEVICE)
    if not LMP or not os.access(base.ARGS.lmp, os.X_OK):
        SKIP = "no launcher: set UMAS_LMP to lmp_umas (given: %r)" % LMP
    elif not MODELS or not os.path.exists(base.ARGS.model):
        SKIP = "no model: set UMAS_TEST_MODELS to a folder with tiny.safetensors (given: %r)" % (
            MODELS)
    elif DEVICE == "cuda" and shutil.which("nvidia-smi") is None:
        SKIP = "no GPU: nvidia-smi not found"
    elif DEVICE == "cuda":
        # umas itself says whether it sees a CUDA device: a 32-atom `run 0` with device cuda
        directory, _ = base.cu_files("p p p")
        run = base.lammps(base.cu_script(extra_style="device cuda") + "run 0\n",
                          directory=directory, timeout=300)
        if run.returncode != 0:
            if "no CUDA device is visible" in run.output:
                SKIP = "no GPU: umas sees no CUDA device"
            elif "not available on device 'cuda'" in run.output:
                SKIP = "the launcher was built without the CUDA backend"
            # any other failure is left to the tests to report
    if SKIP:
        print("test_lammps_gpu: skipping: " + SKIP, flush=True)


def tearDownModule():
    if base.TMP is not None:
        base.TMP.cleanup()


def variant(backend=None, precision=None):
    """The pair_style keywords " backend B precision P" for those given ("" for none)."""
    return (" backend %s" % backend if backend else "") + (
        " precision %s" % precision if precision else "")


def with_device(script, device=None, backend=None, precision=None):
    """Adds `device D` (and `backend B`, `precision P` when given) to every `pair_style umas`
    line."""
    extra = " device %s" % (device or DEVICE) + variant(backend, precision)
    return re.sub(r"^(pair_style\s+umas\s.*?)\s*$", r"\1" + extra, script, flags=re.M)


class GpuTest(unittest.TestCase):
    def setUp(self):
        if SKIP:
            self.skipTest(SKIP)

    def run_ok(self, script, directory=None, timeout=600):
        run = base.lammps(script, directory=directory, timeout=timeout)
        self.assertFalse(run.crashed(), run.output[-3000:])
        self.assertEqual(run.returncode, 0, run.output[-3000:])
        return run


# ------------------------------------------------------------------------------------------
class ReferenceParity(GpuTest):
    CASES = ["a_cu_fcc_108", "b_triclinic_perovskite_60", "c_molecule_q1_s2", "e_si_primitive_2"]
    UMAS_CASES = CASES + ["f_cu_fcc_2000"]

    def check_cases(self, model, cases, backend=None, precision=None):
        old = base.ARGS.model
        base.ARGS.model = os.path.abspath(model_path(model))
        try:
            for name in cases:
                with self.subTest(case="%s/%s" % (model, name)):
                    self.check_case(model + "/" + name, backend, precision)
        finally:
            base.ARGS.model = old

    def check_case(self, name, backend=None, precision=None):
        case = base.load_case(name)
        directory, script, rotation = base.case_input(case)
        run = self.run_ok(with_device(script, None, backend, precision) + base.MEASURE,
                          directory=directory)
        got = base.measure(run)
        natoms = len(case["numbers"])
        self.assertEqual(len(got["atoms"]), natoms)
        energy_error = abs(got["pe"] - case["energy"])
        energy_bound = max(1e-4, 1e-5 * natoms)
        reference_forces = case["forces"]
        if rotation is not None:
            reference_forces = [base.matvec(rotation, f) for f in reference_forces]
        force_error = base.max_abs_diff(base.forces_of(got["atoms"]), reference_forces)
        sum_error = abs(got["sum_pe"] - got["pe"])
        text = ("%s device %s%s: %.2f s, |dE| %.2e eV (bound %.0e), max |dF| %.2e eV/A, "
                "|sum pe/atom - pe| %.2e eV" % (name, DEVICE, variant(backend, precision),
                                                run.seconds, energy_error, energy_bound,
                                                force_error, sum_error))
        stress_error = 0.0
        if "stress" in case:
            s = base.rotate_tensor(rotation, case["stress"])
            expected = [s[i][j] for i, j in ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))]
            # LAMMPS metal pressure (bar) -> fairchem's stress (eV/A^3, positive is tensile)
            stress = [-got[k] / base.NKTV2P for k in ("pxx", "pyy", "pzz", "pxy", "pxz", "pyz")]
            stress_error = max(abs(a - b) for a, b in zip(stress, expected))
            text += ", max |dstress| %.2e eV/A^3 (max |stress| %.2e)" % (
                stress_error, max(abs(e) for e in expected))
        measured(text)
        self.assertLessEqual(energy_error, energy_bound)
        self.assertLessEqual(force_error, 1e-4)
        self.assertLessEqual(stress_error, 1e-6)
        self.assertLessEqual(sum_error, 1e-6 * max(1.0, abs(got["pe"])))

    def test_tiny(self):
        """Tiny model (32 channels, 2 blocks), `run 0` on Cu FCC 108, the triclinic
        perovskite (60), the charged doublet molecule (omol, open box) and the 2-atom Si cell
        (smaller than the cutoff): energy, forces and pressure against fairchem's float64
        references within the float32 bounds; per-atom energies sum to pe."""
        self.check_cases("tiny", self.CASES)

    def test_umas(self):
        """The same cases plus Cu FCC 2000 with the UMA-S-shaped model (128 channels, 4 blocks,
        lmax 2), when umas.safetensors was converted."""
        if not os.path.exists(model_path("umas")):
            self.skipTest("umas.safetensors not in UMAS_TEST_MODELS (optional)")
        self.check_cases("umas", self.UMAS_CASES)

    def test_tiny121(self):
        """The UMA-S 1.2.1 architecture with tiny dims (charge-balanced channels 0-2 after every
        block, 16 Gaussians, 7 datasets) on the same cases, among them the cation (charge 1),
        with the general backend in fp32 and umas_fast_gpu in fp32, 3xtf32 and ozaki: the
        same float32 bounds."""
        variants = [(None, None)]
        if DEVICE == "cuda":
            variants += [("umas_fast_gpu", None), ("umas_fast_gpu", "3xtf32"),
                         ("umas_fast_gpu", "ozaki")]
        for backend, precision in variants:
            self.check_cases("tiny121", self.CASES, backend, precision)

    def test_umas121(self):
        """UMA-S 1.2.1's architecture and dims (umas121: 128 channels, 4 blocks, 32 Gaussians,
        charge-balanced channels) on the same cases plus Cu FCC 2000, general fp32 and
        umas_fast_gpu ozaki, when umas121.safetensors was converted."""
        if not os.path.exists(model_path("umas121")):
            self.skipTest("umas121.safetensors not in UMAS_TEST_MODELS (optional)")
        self.check_cases("umas121", self.UMAS_CASES)
        if DEVICE == "cuda":
            self.check_cases("umas121", self.UMAS_CASES, "umas_fast_gpu", "ozaki")

    def test_umas_fast_gpu_3xtf32(self):
        """`backend umas_fast_gpu precision 3xtf32` (split-precision tensor-core products, our
        own kernel on Hopper GPUs) on the same cases, both models: the same float32 bounds."""
        if DEVICE != "cuda":
            self.skipTest("precision 3xtf32 exists on device cuda only")
        self.check_cases("tiny", self.CASES, "umas_fast_gpu", "3xtf32")
        if os.path.exists(model_path("umas")):
            self.check_cases("umas", self.UMAS_CASES, "umas_fast_gpu", "3xtf32")

    def test_umas_fast_gpu_ozaki(self):
        """`backend umas_fast_gpu precision ozaki` (fp32-accurate products from int8 slices on
        the tensor cores of Hopper GPUs) on the same cases, both models: the same float32
        bounds."""
        if DEVICE != "cuda":
            self.skipTest("precision ozaki exists on device cuda only")
        self.check_cases("tiny", self.CASES, "umas_fast_gpu", "ozaki")
        if os.path.exists(model_path("umas")):
            self.check_cases("umas", self.UMAS_CASES, "umas_fast_gpu", "ozaki")


# ------------------------------------------------------------------------------------------
def cu_fcc_script(device, steps, thermo=10, dump=None, backend=None, precision=None):
    """examples/cu_fcc/in.cu_fcc (108 Cu atoms, 300 K, NVE, 1 fs) with the tiny model, the
    given device, %.17g thermo output and optionally a final dump of positions and forces."""
    with open(os.path.join(HERE, "..", "examples", "cu_fcc", "in.cu_fcc")) as f:
        text = f.read()
    text = re.sub(r"^variable\s+model\s.*$", "variable model index %s" % base.ARGS.model, text,
                  flags=re.M)
    text = re.sub(r"^variable\s+steps\s.*$", "variable steps index %d" % steps, text, flags=re.M)
    text = re.sub(r"^thermo_style\s.*$", "thermo_style custom step temp pe ke etotal press",
                  text, flags=re.M)
    text = re.sub(r"^thermo_modify\s.*$", "thermo_modify format float %.17g", text, flags=re.M)
    text = re.sub(r"^thermo\s.*$", "thermo %d" % thermo, text, flags=re.M)
    text = with_device(text, device, backend, precision)
    if dump:
        text = text.replace("run ", "dump d all custom %d %s id x y z fx fy fz\n"
                            "dump_modify d sort id format float %%.17g\nrun " % (steps, dump), 1)
    assert "device %s" % device in text and "run" in text
    return text


class GpuVersusCpu(GpuTest):
    STEPS = 20

    def test_trajectory(self):
        """examples/cu_fcc (108 Cu atoms from 300 K, 1 fs) for 20 NVE steps with device cuda and
        with device cpu in the same binary: positions after 20 steps agree within 1e-5 A,
        forces at step 0 and 20 within 1e-4 eV/A, energies within 2e-6 relative (float32
        arithmetic: the tiny model's energy carries about 1.4e-6 relative round-off)."""
        runs = {}
        for device in (DEVICE, "cpu"):
            directory = tempfile.mkdtemp(prefix="case-", dir=base.TMP.name)
            runs[device] = self.run_ok(cu_fcc_script(device, self.STEPS, thermo=self.STEPS,
                                                     dump="md.dump"), directory=directory)
        gpu, cpu = runs[DEVICE], runs["cpu"]
        snap_gpu, snap_cpu = gpu.dump("md.dump", last=False), cpu.dump("md.dump", last=False)
        self.assertEqual(len(snap_gpu), 2)
        self.assertEqual(len(snap_cpu), 2)
        natoms = len(snap_cpu[-1])
        self.assertEqual(natoms, 108)
        position = max(abs(a[k] - b[k]) for a, b in zip(snap_gpu[-1], snap_cpu[-1])
                       for k in "xyz")
        moved = max(abs(a[k] - b[k]) for a, b in zip(snap_cpu[0], snap_cpu[-1]) for k in "xyz")
        force0 = base.max_abs_diff(base.forces_of(snap_gpu[0]), base.forces_of(snap_cpu[0]))
        force = base.max_abs_diff(base.forces_of(snap_gpu[-1]), base.forces_of(snap_cpu[-1]))
        table_gpu, table_cpu = gpu.thermo()[-1], cpu.thermo()[-1]
        energy = max(abs(a[2] - b[2]) for a, b in zip(table_gpu, table_cpu))
        scale = max(abs(b[2]) for b in table_cpu)
        measured("cu_fcc 20 steps, device %s vs cpu: max |dx| %.2e A (atoms moved up to %.3f "
                 "A), max |dF| %.2e eV/A at step 0, %.2e at step 20, max |dpe| %.2e eV; %.2f s "
                 "vs %.2f s" % (DEVICE, position, moved, force0, force, energy, gpu.seconds,
                                cpu.seconds))
        self.assertGreater(moved, 1e-3)
        self.assertLessEqual(position, 1e-5)
        self.assertLessEqual(force0, 1e-4)
        self.assertLessEqual(force, 1e-4)
        self.assertLessEqual(energy, 2e-6 * scale)


class EnergyDrift(GpuTest):
    STEPS = int(os.environ.get("UMAS_TEST_NVE_STEPS", "200"))
    NOISE = 2e-6  # relative float32 round-off of an energy (see GpuVersusCpu)

    @staticmethod
    def drift(table, natoms, timestep_fs=1.0):
        """|E_end - E_0|/N, max |E - E_0|/N (eV/atom) and the least-squares slope of E/N
        (eV/atom/ps) of thermo rows (step temp pe ke etotal press)."""
        steps = [row[0] for row in table]
        energies = [row[4] for row in table]
        end = abs(energies[-1] - energies[0]) / natoms
        deviation = max(abs(e - energies[0]) for e in energies) / natoms
        mean_t = sum(steps) / len(steps)
        mean_e = sum(energies) / len(energies)
        slope = (sum((t - mean_t) * (e - mean_e) for t, e in zip(steps, energies)) /
                 sum((t - mean_t) ** 2 for t in steps)) / natoms * 1000.0 / timestep_fs
        return end, deviation, slope

    def test_nve_drift(self):
        """examples/cu_fcc for 200 NVE steps (1 fs, 108 atoms from 300 K) with device cuda and
        with device cpu: total energy every 10 steps. The drift (least-squares slope of E/N)
        on the GPU is within 2x the CPU's, or below what float32 round-off of E/N (2e-6
        relative) can fake over the run (2 x noise / duration); its fluctuation max |E - E_0|/N
        within 3x the CPU's or that round-off. (The 10^5-step GPU run in
        examples/long_nve measures the drift itself.)"""
        self.check_drift(None)

    def test_nve_drift_umas_fast_gpu(self):
        """The same with `backend umas_fast_gpu` on the GPU (kept activations, CUDA graph of
        the step replayed between list rebuilds) against the CPU's general backend."""
        self.check_drift("umas_fast_gpu")

    def test_nve_drift_umas_fast_gpu_3xtf32(self):
        """The same with `backend umas_fast_gpu precision 3xtf32` (split-precision tensor-core
        products): the strict mode must conserve energy like fp32."""
        if DEVICE != "cuda":
            self.skipTest("precision 3xtf32 exists on device cuda only")
        self.check_drift("umas_fast_gpu", "3xtf32")

    def test_nve_drift_umas_fast_gpu_ozaki(self):
        """The same with `backend umas_fast_gpu precision ozaki` (int8-sliced products): the
        strict mode must conserve energy like fp32."""
        if DEVICE != "cuda":
            self.skipTest("precision ozaki exists on device cuda only")
        self.check_drift("umas_fast_gpu", "ozaki")

    cpu_run = None  # the CPU reference run, shared by both tests (minutes on the device)

    def check_drift(self, backend, precision=None):
        results = {}
        for device in (DEVICE, "cpu"):
            if device == "cpu" and EnergyDrift.cpu_run is not None:
                run = EnergyDrift.cpu_run
            else:
                directory = tempfile.mkdtemp(prefix="case-", dir=base.TMP.name)
                gpu = device != "cpu"
                script = cu_fcc_script(device, self.STEPS, backend=backend if gpu else None,
                                       precision=precision if gpu else None)
                run = self.run_ok(script, directory=directory)
                if device == "cpu":
                    EnergyDrift.cpu_run = run
            table = run.thermo()[-1]
            self.assertEqual(len(table), self.STEPS // 10 + 1)
            self.assertTrue(all(math.isfinite(x) for row in table for x in row))
            temperatures = [row[1] for row in table]
            results[device] = self.drift(table, 108)
            energy_per_atom = abs(table[0][4]) / 108
            label = device + (variant(backend, precision) if device != "cpu" else "")
            measured("NVE cu_fcc %d steps device %s: %.1f s (%.4f s/step), |E_end - E_0|/N "
                     "%.2e eV/atom, max |E - E_0|/N %.2e eV/atom, slope %.2e eV/atom/ps, T "
                     "%.0f..%.0f K" % (self.STEPS, label, run.seconds, run.seconds / self.STEPS,
                                       *results[device], min(temperatures), max(temperatures)))
        gpu, cpu = results[DEVICE], results["cpu"]
        measured("NVE drift device %s%s / cpu: slope %.2f, max %.2f" % (
            DEVICE, variant(backend, precision), abs(gpu[2]) / max(abs(cpu[2]), 1e-300),
            gpu[1] / max(cpu[1], 1e-300)))
        duration_ps = self.STEPS * 1e-3
        slope_floor = 2 * self.NOISE * energy_per_atom / duration_ps
        self.assertLessEqual(abs(gpu[2]), max(2 * abs(cpu[2]), slope_floor))
        self.assertLessEqual(gpu[1], max(3 * cpu[1], self.NOISE * energy_per_atom))


class ChargedMoleculeDrift(GpuTest):
    STEPS = int(os.environ.get("UMAS_TEST_NVE_STEPS", "200")) * 2
    TIMESTEP_FS = float(os.environ.get("UMAS_TEST_MOLECULE_FS", "0.25"))

    def test_nve_drift_charged_molecule(self):
        """The cation doublet (isopropanol, omol, charge 1, spin 2, open box) with the
        charge-balanced tiny121 model: 400 NVE steps of 0.25 fs from 300 K with device cuda
        (umas_fast_gpu in fp32 and ozaki; the CUDA graph of the step holds the balancing) and
        with device cpu. As EnergyDrift: the GPU's drift slope within 2x the CPU's or below
        what float32 round-off of E/N can fake over the run, its fluctuation within 3x."""
        cpu = None
        for device, precision in (("cpu", None), (DEVICE, None), (DEVICE, "ozaki")):
            if precision and DEVICE != "cuda":
                continue
            directory, script, case = base.molecule_files(case_name="tiny121/c_molecule_q1_s2")
            script += ("velocity all create 300 4928459 loop geom\n"
                       "fix 1 all nve\ntimestep %g\n"
                       "thermo_style custom step temp pe ke etotal press\n"
                       "thermo_modify format float %%.17g\nthermo 10\nrun %d\n" %
                       (self.TIMESTEP_FS * 1e-3, self.STEPS))
            gpu = device != "cpu"
            run = self.run_ok(with_device(script, device, "umas_fast_gpu" if gpu else None,
                                          precision), directory=directory)
            self.assertIn("balanced l=0 channels: 3 to the charge", run.output)
            table = run.thermo()[-1]
            self.assertEqual(len(table), self.STEPS // 10 + 1)
            natoms = len(case["numbers"])
            result = EnergyDrift.drift(table, natoms, self.TIMESTEP_FS)
            energy_per_atom = abs(table[0][4]) / natoms
            label = device + (variant("umas_fast_gpu", precision) if gpu else "")
            measured("NVE charged molecule %d steps of %g fs, device %s: %.1f s, |E_end - E_0|/N "
                     "%.2e eV/atom, max |E - E_0|/N %.2e eV/atom, slope %.2e eV/atom/ps" %
                     (self.STEPS, self.TIMESTEP_FS, label, run.seconds, *result))
            if not gpu:
                cpu = result
                continue
            duration_ps = self.STEPS * self.TIMESTEP_FS * 1e-3
            slope_floor = 2 * EnergyDrift.NOISE * energy_per_atom / duration_ps
            measured("NVE charged molecule device %s / cpu: slope %.2f, max %.2f" % (
                label, abs(result[2]) / max(abs(cpu[2]), 1e-300), result[1] / max(cpu[1],
                                                                                   1e-300)))
            self.assertLessEqual(abs(result[2]), max(2 * abs(cpu[2]), slope_floor))
            self.assertLessEqual(result[1], max(3 * cpu[1], EnergyDrift.NOISE * energy_per_atom))


# ------------------------------------------------------------------------------------------
def model_dims(path):
    """(C, H, blocks) from the umas metadata of a safetensors model file."""
    with open(path, "rb") as f:
        size = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(size))
    backbone = json.loads(header["__metadata__"]["umas"])["backbone"]
    return backbone["sphere_channels"], backbone["hidden_channels"], backbone["num_layers"]


def gpu_memory_bytes():
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,"
                          "nounits", "-i", os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]],
                         capture_output=True, text=True, timeout=60)
    return float(out.stdout.split()[0]) * 1048576.0


class OutOfGpuMemory(GpuTest):
    LATTICE = 5.0  # A: simple cubic, 6 neighbours within the 6 A cutoff

    def test_out_of_gpu_memory(self):
        """A system too large for the GPU stops LAMMPS with an ERROR line carrying umas'
        "out of GPU memory: ... MB for ... (N atoms, E edges)" and a non-zero exit status, no
        signal, within 150 s. The CUDA backend's memory is dominated by per-atom buffers
        (cuda/backend_cuda.cu reserve_all: (2 blocks + 7) x 9 C + 6 H + 18 H floats per atom,
        81 KB for UMA-S, 6 edges x ~350 B), so a sparse system is the cheapest way to ask for
        too much: Cu on a simple cubic lattice of 5 A (6 neighbours each, so LAMMPS and the
        graph building stay cheap; a dense system would cost the CPU thousands of candidate
        edges per atom before fairchem's max_neighbors rule cuts them to 300), sized to need
        ~1.3x the GPU's memory (UMA-S on an H200: 132^3 = 2.3 M atoms, 13.8 M edges; the
        same input with device cpu, memory capped, stops after ~20 s on a 2-core machine)."""
        if DEVICE != "cuda":
            self.skipTest("device %s: the out-of-GPU-memory test needs device cuda" % DEVICE)
        if not os.path.exists(model_path("umas")):
            self.skipTest("umas.safetensors not in UMAS_TEST_MODELS (with the tiny model the "
                          "GPU would need ~4 M atoms)")
        C, H, blocks = model_dims(model_path("umas"))
        per_atom = 4.0 * ((2 * blocks + 7) * 9 * C + 6 * H + 18 * H) + 6 * 350.0
        memory = gpu_memory_bytes()
        side = int(math.ceil((1.3 * memory / per_atom) ** (1.0 / 3.0)))
        natoms = side ** 3
        script = """units metal
atom_style atomic
boundary p p p
lattice sc %g
region box block 0 %d 0 %d 0 %d
create_box 1 box
create_atoms 1 box
mass 1 63.546
pair_style umas %s task omat device cuda
pair_coeff * * Cu
run 0
""" % (self.LATTICE, side, side, side, os.path.abspath(model_path("umas")))
        try:
            run = base.lammps(script, timeout=150)
        except subprocess.TimeoutExpired:
            self.fail("%d atoms: LAMMPS did not stop within 150 s" % natoms)
        errors = [line for line in run.output.splitlines() if "ERROR" in line]
        measured("out of GPU memory: %d atoms (%d^3, need ~%.0f GB of %.0f GB), exit %d after "
                 "%.1f s: %s" % (natoms, side, natoms * per_atom / 1e9, memory / 1e9,
                                 run.returncode, run.seconds,
                                 errors[0] if errors else run.output[-500:]))
        self.assertFalse(run.crashed(), run.output[-3000:])
        self.assertNotEqual(run.returncode, 0, run.output[-3000:])
        self.assertTrue(errors, run.output[-3000:])
        match = re.search(r"out of GPU memory: [0-9.]+ MB for .+ \((\d+) atoms, (\d+) edges\)",
                          "\n".join(errors))
        self.assertIsNotNone(match, "\n".join(errors))
        # the graph of the owned atoms (ghost atoms too, should a route count them)
        self.assertGreaterEqual(int(match.group(1)), natoms)
        self.assertLessEqual(int(match.group(1)), 1.5 * natoms)
        self.assertGreaterEqual(int(match.group(2)), 6 * natoms)


if __name__ == "__main__":
    unittest.main(verbosity=2)
