#!/usr/bin/env python3
"""umas-eval, end to end: structure file in, fairchem's energy out (JSON), clean errors.

    python3 tests/test_eval.py --eval build/umas-eval --model build/test-models/tiny.safetensors \
        --data tests/data

Specification:
  * for each extended-XYZ structure in tests/data/structures (made from the reference cases), the
    printed energy equals fairchem's float64 energy to 1e-9 relative, the per-atom energies sum
    to it, the forces equal fairchem's to 1e-9 eV/A and, for periodic cells, the stress (Voigt
    xx yy zz yz xz xy) equals fairchem's to 1e-11 eV/A^3; molecules print no stress;
  * charge and spin options reach the model (the molecule is evaluated as a cation doublet);
  * the UMA-S 1.2.1 architecture (tiny121: charge-balanced channels) on the cation matches
    fairchem-core 2.24's float64 energy and forces the same way, also with `--precision
    default` (the device's default: fp64 on the CPU), which prints exactly what `fp64` prints;
  * bad input exits with status 1 and one 'umas-eval: error:' line on stderr: unknown task,
    missing structure, missing model, unknown element, out-of-range charge.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import unittest

ARGS = None

CASES = [  # structure, task, extra options, reference case
    ("cu_fcc_108.extxyz", "omat", [], "tiny/a_cu_fcc_108"),
    ("perovskite_triclinic_60.extxyz", "omat", [], "tiny/b_triclinic_perovskite_60"),
    ("isopropanol.extxyz", "omol", ["--charge", "1", "--spin", "2"], "tiny/c_molecule_q1_s2"),
    ("isopropanol.extxyz", "omol", [], "tiny/c_molecule_q0_s1"),  # default spin 1 for omol
]


def read_npy(path):
    """Values of a little-endian float64 .npy file, flattened (enough for the reference data)."""
    import ast
    import struct
    with open(path, "rb") as f:
        data = f.read()
    header_len = struct.unpack("<H", data[8:10])[0]
    header = ast.literal_eval(data[10:10 + header_len].decode("latin1"))
    assert header["descr"] == "<f8" and not header["fortran_order"]
    count = 1
    for n in header["shape"]:
        count *= n
    return list(struct.unpack("<%dd" % count, data[10 + header_len:10 + header_len + 8 * count]))


def run(*options):
    return subprocess.run([ARGS.eval, *options], capture_output=True, text=True)


def structure(name):
    return os.path.join(ARGS.data, "structures", name)


class Energies(unittest.TestCase):
    def test_reference_energies(self):
        for name, task, extra, case in CASES:
            with self.subTest(structure=name, task=task, extra=extra):
                out = run("--model", ARGS.model, "--task", task, *extra, structure(name))
                self.assertEqual(out.returncode, 0, out.stderr)
                result = json.loads(out.stdout)
                with open(os.path.join(ARGS.data, case, "meta.json")) as f:
                    reference = json.load(f)["energy_eV"]["f64"]
                self.assertLessEqual(abs(result["energy"] - reference), 1e-9 * abs(reference))
                self.assertAlmostEqual(sum(result["energies"]), result["energy"], delta=1e-8)
                self.assertEqual(len(result["energies"]), result["num_atoms"])
                forces = read_npy(os.path.join(ARGS.data, case, "forces_f64.npy"))
                ours = [f for atom in result["forces"] for f in atom]
                self.assertEqual(len(ours), len(forces))
                self.assertLessEqual(max(abs(a - b) for a, b in zip(ours, forces)), 1e-9)
                if name.startswith("isopropanol"):
                    self.assertNotIn("stress", result)
                else:  # fairchem's 3x3 stress vs our Voigt xx yy zz yz xz xy
                    s = read_npy(os.path.join(ARGS.data, case, "stress_f64.npy"))
                    voigt = [s[0], s[4], s[8], s[5], s[2], s[1]]
                    self.assertLessEqual(max(abs(a - b) for a, b in zip(result["stress"], voigt)),
                                         1e-11)


class BalancedModel(unittest.TestCase):
    def test_cation_with_charge_balanced_channels(self):
        model = os.path.join(os.path.dirname(ARGS.model), "tiny121.safetensors")
        case = os.path.join(ARGS.data, "tiny121", "c_molecule_q1_s2")
        with open(os.path.join(case, "meta.json")) as f:
            reference = json.load(f)["energy_eV"]["f64"]
        forces = read_npy(os.path.join(case, "forces_f64.npy"))
        outputs = {}
        for precision in ("default", "fp64"):
            out = run("--model", model, "--task", "omol", "--charge", "1", "--spin", "2",
                      "--device", "cpu", "--precision", precision, structure("isopropanol.extxyz"))
            self.assertEqual(out.returncode, 0, out.stderr)
            outputs[precision] = out.stdout
            result = json.loads(out.stdout)
            self.assertLessEqual(abs(result["energy"] - reference), 1e-9 * abs(reference))
            ours = [f for atom in result["forces"] for f in atom]
            self.assertLessEqual(max(abs(a - b) for a, b in zip(ours, forces)), 1e-9)
        self.assertEqual(outputs["default"], outputs["fp64"])


class Errors(unittest.TestCase):
    def expect_error(self, out, fragment):
        self.assertEqual(out.returncode, 1)
        self.assertEqual(out.stdout, "")
        self.assertIn("umas-eval: error:", out.stderr)
        self.assertIn(fragment, out.stderr)

    def test_unknown_task(self):
        out = run("--model", ARGS.model, "--task", "omatt", structure("cu_fcc_108.extxyz"))
        self.expect_error(out, "no task 'omatt'")

    def test_missing_files(self):
        self.expect_error(run("--model", ARGS.model, "--task", "omat", "/nonexistent.xyz"),
                          "nonexistent.xyz")
        self.expect_error(run("--model", "/nonexistent.safetensors", "--task", "omat",
                              structure("cu_fcc_108.extxyz")), "cannot open model file")

    def test_unknown_element(self):
        with tempfile.NamedTemporaryFile("w", suffix=".extxyz", delete=False) as f:
            f.write("2\nProperties=species:S:1:pos:R:3\nCu 0 0 0\nXx 0 0 2.5\n")
        try:
            self.expect_error(run("--model", ARGS.model, "--task", "omat", f.name), "Xx")
        finally:
            os.unlink(f.name)

    def test_charge_out_of_range(self):
        out = run("--model", ARGS.model, "--task", "omol", "--charge", "150",
                  structure("isopropanol.extxyz"))
        self.expect_error(out, "charge 150")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--eval", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    ARGS, rest = parser.parse_known_args()
    unittest.main(argv=[sys.argv[0], *rest])
