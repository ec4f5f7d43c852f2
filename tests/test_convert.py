#!/usr/bin/env python3
"""Tests of tools/umas_convert.py (the checkpoint converter). Standard library only.

Run from the repository root:

    python3 tests/test_convert.py --converter tools/umas_convert.py --data tests/data

--converter / --data default to $UMAS_CONVERTER / $UMAS_TEST_DATA, else to the paths above
relative to this file. Other arguments go to unittest (e.g. -v, or a test name).

Besides the real tiny checkpoints (tests/data/checkpoints/tiny*.pt) the tests build small
synthetic checkpoints with the same pickle layout torch.save produces: stand-in classes are
registered under the torch / fairchem / omegaconf module names in this process only, so that
the stock pickler writes the same GLOBAL opcodes. That covers omegaconf configs, strided and
half-precision tensors and the refusal paths without needing torch.
"""

import argparse
import collections
import json
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import types
import typing
import unittest
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
CONVERTER = os.environ.get("UMAS_CONVERTER", os.path.join(HERE, "..", "tools", "umas_convert.py"))
DATA = os.environ.get("UMAS_TEST_DATA", os.path.join(HERE, "data"))


def run_converter(*args):
    p = subprocess.run([sys.executable, CONVERTER] + list(args), capture_output=True, text=True,
                       timeout=300)
    return p.returncode, p.stdout, p.stderr


def read_safetensors(path):
    """Parse and validate a safetensors file; returns (header dict, data bytes)."""
    with open(path, "rb") as f:
        blob = f.read()
    n = struct.unpack("<Q", blob[:8])[0]
    assert (8 + n) % 8 == 0, "data section not 8-byte aligned"
    header = json.loads(blob[8:8 + n].decode("utf-8"))
    data = blob[8 + n:]
    pos = 0
    names = sorted(k for k in header if k != "__metadata__")
    for name in names:                  # sorted names, contiguous offsets, file fully covered
        e = header[name]
        start, end = e["data_offsets"]
        assert start == pos, name
        width = {"F32": 4, "F64": 8}[e["dtype"]]
        count = 1
        for d in e["shape"]:
            count *= d
        assert end - start == count * width, name
        pos = end
    assert pos == len(data), "trailing or missing data"
    return header, data


def tensor_bytes(header, data, name):
    start, end = header[name]["data_offsets"]
    return data[start:end]


# ---------------------------------------------------------------------------------------
# Synthetic checkpoints
# ---------------------------------------------------------------------------------------

class FakeStorage:
    def __init__(self, key, cls, raw, itemsize):
        self.key, self.cls, self.raw, self.numel = key, cls, raw, len(raw) // itemsize


class FakeTensor:
    def __init__(self, storage, offset, shape, stride):
        self.args = (storage, offset, tuple(shape), tuple(stride), False, collections.OrderedDict())

    def __reduce_ex__(self, proto):
        return (sys.modules["torch._utils"]._rebuild_tensor_v2, self.args)


class FakeModules:
    """Registers stand-ins under the real module names while pickling."""

    SPEC = {
        "torch": ["FloatStorage", "DoubleStorage", "HalfStorage", "BFloat16Storage", "LongStorage"],
        "fairchem.core.units.mlip_unit.api.inference": ["MLIPInferenceCheckpoint"],
        "omegaconf.dictconfig": ["DictConfig"],
        "omegaconf.listconfig": ["ListConfig"],
        "omegaconf.nodes": ["AnyNode"],
        "omegaconf.base": ["ContainerMetadata", "Metadata"],
    }

    def __enter__(self):
        self.saved = {}
        mods = {}
        names = set(self.SPEC) | {"torch._utils"}
        for full in names:
            parts = full.split(".")
            for i in range(1, len(parts) + 1):
                name = ".".join(parts[:i])
                if name not in mods:
                    self.saved[name] = sys.modules.get(name)
                    mods[name] = sys.modules[name] = types.ModuleType(name)
        for mod, classes in self.SPEC.items():
            for cname in classes:
                cls = type(cname, (), {"__module__": mod, "__qualname__": cname})
                setattr(mods[mod], cname, cls)

        def _rebuild_tensor_v2(*args):
            raise AssertionError("never called")
        _rebuild_tensor_v2.__module__ = "torch._utils"
        _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
        mods["torch._utils"]._rebuild_tensor_v2 = _rebuild_tensor_v2
        self.mods = mods
        return self

    def __exit__(self, *exc):
        for name, old in self.saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old

    def obj(self, module, cname, **fields):
        o = getattr(self.mods[module], cname)()
        o.__dict__.update(fields)
        return o

    def dictconfig(self, content):
        cfg = self.obj("omegaconf.dictconfig", "DictConfig",
                       _metadata=self.obj("omegaconf.base", "ContainerMetadata", ref_type=typing.Any,
                                          flags=collections.defaultdict(dict, {"readonly": False})),
                       _parent=None, _content=None)
        cfg._content = {k: self.wrap(v, cfg) for k, v in content.items()}
        return cfg

    def wrap(self, v, parent):
        if isinstance(v, dict):
            out = self.dictconfig(v)
        elif isinstance(v, list):
            out = self.obj("omegaconf.listconfig", "ListConfig", _parent=None, _content=[])
            out._content = [self.wrap(x, out) for x in v]
        else:
            return self.obj("omegaconf.nodes", "AnyNode", _val=v, _parent=parent,
                            _metadata=self.obj("omegaconf.base", "Metadata", ref_type=typing.Any))
        out._parent = parent            # omegaconf keeps parent links: a cyclic graph
        return out


def f32(vals):
    return struct.pack("<%df" % len(vals), *vals)


def task(name, prop, ds, rmsd, mean=0.0, refs=None, key="rmsd"):
    t = {"_target_": "fairchem.core.units.mlip_unit.mlip_unit.Task", "name": name, "property": prop,
         "datasets": [ds], "normalizer": {"_target_": "Normalizer", "mean": mean, key: rmsd}}
    if refs is not None:
        t["element_references"] = refs
    return t


def build_synthetic(path, variant=""):
    """Write a small synthetic checkpoint (two datasets a/b, 2 experts) to `path`."""
    with FakeModules() as fm:
        torch = fm.mods["torch"]
        storages = []

        def storage(cls, raw, itemsize):
            s = FakeStorage(str(len(storages)), cls, raw, itemsize)
            storages.append(s)
            return s

        mole = storage(torch.FloatStorage, f32(range(24)), 4)
        square = storage(torch.FloatStorage, f32(range(100, 112)), 4)   # 4 x 3, viewed transposed
        bf16 = storage(torch.BFloat16Storage, struct.pack("<3H", 0x3F80, 0xC020, 0x0000), 2)
        half = storage(torch.HalfStorage, struct.pack("<2H", 0x3800, 0x7BFF), 2)
        dbl = storage(torch.DoubleStorage, struct.pack("<2d", 0.1, -1e300), 8)
        refs_a = storage(torch.DoubleStorage, struct.pack("<100d", *[-0.5 * z for z in range(100)]), 8)
        longs = storage(torch.LongStorage, struct.pack("<q", 1000), 8)
        head = storage(torch.FloatStorage, f32([1.5, 2.5]), 4)

        ema = collections.OrderedDict()
        ema["module.backbone.Jd_0"] = FakeTensor(dbl, 0, [1, 1], [1, 1])
        ema["module.backbone.blocks.0.edge_wise.so2_conv_1.fc_m0.weights"] = (
            FakeTensor(mole, 0, [3, 2, 4], [8, 4, 1]) if variant == "bad_experts"   # 3 experts
            else FakeTensor(mole, 0, [2, 3, 4], [12, 4, 1]))
        ema["module.backbone.sphere_embedding.weight"] = FakeTensor(square, 0, [3, 4], [1, 3])
        ema["module.backbone.strided.weight"] = FakeTensor(mole, 1, [2, 3], [12, 2])
        ema["module.backbone.bf.weight"] = FakeTensor(bf16, 0, [3], [1])
        ema["module.backbone.half.weight"] = FakeTensor(half, 0, [2], [1])
        ema["module.backbone.dbl.weight"] = FakeTensor(dbl, 0, [2], [1])
        ema["module.output_heads.h.head.energy_block.4.weights"] = FakeTensor(head, 0, [2, 1, 1], [1, 7, 1])
        if variant == "int_tensor":
            ema["module.backbone.count"] = FakeTensor(longs, 0, [], [])
        if variant == "out_of_bounds":
            ema["module.backbone.oob.weight"] = FakeTensor(square, 2, [4, 3], [3, 1])
        ema["n_averaged"] = FakeTensor(longs, 0, [], [])

        backbone = {"sphere_channels": 8, "hidden_channels": 8, "edge_channels": 8, "lmax": 2,
                    "mmax": 2, "num_layers": 1, "num_distance_basis": 4, "cutoff": 5,
                    "max_num_elements": 100, "max_neighbors": 30, "num_experts": 2,
                    "norm_type": "rms_norm_sh", "act_type": "gate", "ff_type": "spectral",
                    "chg_spin_emb_type": "rand_emb", "distance_function": "gaussian",
                    "use_composition_embedding": True, "direct_forces": False,
                    "dataset_list": ["a", "b"], "model_version": 1.0 if variant == "uma10" else 1.1}
        model_config = {"backbone": backbone,
                        "heads": {"h": {"module": "fairchem.core.models.uma.escn_moe."
                                                  "DatasetSpecificMoEWrapper"}}}
        refs_b = {"_target_": "ElementReferences",
                  "element_references": {"_target_": "torch.DoubleTensor",
                                         "_args_": [[0.25 * z for z in range(100)]]}}
        tasks = [task("a_energy", "energy", "a", 2.0, mean=0.5,
                      refs=FakeTensor(refs_a, 0, [100], [1])),
                 task("a_forces", "forces", "a", 3.0 if variant == "bad_forces" else 2.0),
                 task("b_energy", "energy", "b", {"_target_": "torch.tensor", "_args_": [1.25]},
                      refs=refs_b, key="std"),
                 task("b_forces", "forces", "b", 1.25)]
        if variant != "no_stress_nonzero_mean":
            tasks.append(task("a_stress", "stress", "a", 2.0))
        ckpt = fm.obj("fairchem.core.units.mlip_unit.api.inference", "MLIPInferenceCheckpoint",
                      model_config=fm.dictconfig(model_config), model_state_dict=ema,
                      ema_state_dict=ema, tasks_config=fm.wrap(tasks, None))

        class Pickler(pickle.Pickler):
            def persistent_id(self, obj):
                if isinstance(obj, FakeStorage):
                    return ("storage", obj.cls, obj.key, "cpu", obj.numel)
                return None

        buf = __import__("io").BytesIO()
        Pickler(buf, protocol=2).dump(ckpt)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("syn/data.pkl", buf.getvalue())
        z.writestr("syn/byteorder", "little")
        for s in storages:
            z.writestr("syn/data/" + s.key, s.raw)


def write_pickle_zip(path, pkl):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("evil/data.pkl", pkl)
        z.writestr("evil/byteorder", "little")


class Evil:
    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


# ---------------------------------------------------------------------------------------

class ConverterTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = self.tmp.name

    def tearDown(self):
        self.tmp.cleanup()

    def path(self, name):
        return os.path.join(self.dir, name)

    def convert_ok(self, src):
        out = self.path("out.safetensors")
        rc, so, se = run_converter(src, out)
        self.assertEqual(rc, 0, se)
        self.assertIn("tensors", so)
        header, data = read_safetensors(out)
        return header, data, json.loads(header["__metadata__"]["umas"])

    def convert_fails(self, src, *needles):
        out = self.path("fail.safetensors")
        rc, so, se = run_converter(src, out)
        self.assertEqual(rc, 1, so + se)
        self.assertTrue(se.startswith("umas-convert: error: "), se)
        self.assertNotIn("Traceback", se)
        for n in needles:
            self.assertIn(n, se)
        self.assertFalse(os.path.exists(out))
        self.assertEqual([f for f in os.listdir(self.dir) if ".tmp" in f], [])
        return se

    # --- the real tiny checkpoints -------------------------------------------------------

    def test_tiny(self):
        src = os.path.join(DATA, "checkpoints", "tiny.pt")
        header, data, meta = self.convert_ok(src)
        self.assertEqual(meta["format"], "umas-model")
        self.assertEqual(meta["format_version"], 1)
        self.assertEqual(meta["model_id"], "UMA-S-1.2.1")
        self.assertEqual(meta["converted_from"], "tiny.pt")
        self.assertEqual(list(meta["tasks"]), ["oc20", "omat", "omol"])
        self.assertEqual(meta["head"], {"name": "energyandforcehead",
                                        "module": "DatasetSpecificMoEWrapper",
                                        "experts": ["oc20", "omat", "omol"]})
        self.assertEqual(meta["backbone"]["sphere_channels"], 32)
        self.assertEqual(meta["backbone"]["num_experts"], 4)
        self.assertIs(meta["backbone"]["use_dataset_embedding"], True)
        self.assertIs(meta["supports_single_atoms"], True)
        for name, t in meta["tasks"].items():
            self.assertEqual(t["dataset"], name)
            for prop in ("energy", "forces", "stress"):
                self.assertEqual(t[prop], {"mean": 0.0, "rmsd": 16.0})
            self.assertEqual(len(t["element_references"]), 100)
        self.assertEqual(meta["tasks"]["oc20"]["element_references"][1], -3.3423202090809947)

        names = [k for k in header if k != "__metadata__"]
        self.assertEqual(len(names), 91)
        self.assertFalse([n for n in names if n.startswith("module.") or "Jd_" in n
                          or n == "n_averaged"])
        fc = "backbone.blocks.0.edge_wise.so2_conv_1.fc_m0.weights"
        self.assertEqual(header[fc]["shape"], [4, 160, 192])      # [K, 5H, 6C], C = H = 32
        self.assertEqual(header[fc]["dtype"], "F32")
        # That tensor is storage "25" of the checkpoint (contiguous, offset 0): byte-identical.
        with zipfile.ZipFile(src) as z:
            raw = z.read("tiny/data/25")
        self.assertEqual(len(raw), 4 * 160 * 192 * 4)
        got = tensor_bytes(header, data, fc)
        self.assertEqual(struct.unpack("<8f", got[:32]), struct.unpack("<8f", raw[:32]))
        self.assertEqual(got, raw)
        head = "output_heads.energyandforcehead.head.energy_block.4.weights"
        self.assertEqual(header[head]["shape"], [3, 1, 32])

        rc, so, se = run_converter("--info", self.path("out.safetensors"))
        self.assertEqual(rc, 0, se)
        self.assertEqual(json.loads(so)["model_id"], "UMA-S-1.2.1")

    def test_tiny_v12(self):
        _, _, meta = self.convert_ok(os.path.join(DATA, "checkpoints", "tiny_v12.pt"))
        self.assertEqual(meta["model_id"], "UMA-S-1.2")

    # --- broken and hostile inputs -------------------------------------------------------

    def test_truncated(self):
        with open(os.path.join(DATA, "checkpoints", "tiny.pt"), "rb") as f:
            src = f.read()
        bad = self.path("truncated.pt")
        with open(bad, "wb") as f:
            f.write(src[:len(src) // 2])
        self.convert_fails(bad, "truncated.pt")

    def test_not_a_zip(self):
        bad = self.path("notzip.pt")
        with open(bad, "w") as f:
            f.write("this is not a checkpoint\n" * 10)
        self.convert_fails(bad, "not a readable torch zip")

    def test_missing_file(self):
        self.convert_fails(self.path("nonexistent.pt"), "no such file")

    def test_fuzzer_findings(self):
        """Inputs the converter fuzzer found (tests/fuzz/crashes): each a clean, quick error."""
        crashes = os.path.join(HERE, "fuzz", "crashes")
        for name, message in [
                ("converter-build-sets-function-defaults.pt", "modify a whitelisted function"),
                ("converter-memo-bomb.pt", "memo index"),
                ("converter-overflow-binunicode8.pt", "not a valid pickle"),
                ("converter-plain-bomb-depth24.pt", "config too large"),
                ("converter-repr-bomb-depth24.pt", "unsupported persistent id"),
                ("converter-unknown-compression.pt", "compression method"),
                ("converter-storage-encrypted.pt", "cannot be read"),
                ("converter-storage-unknown-compression.pt", "cannot be read"),
                ("converter-unhashable-config-key.pt", "not a plain value"),
                ("converter-zip-bad-utf8-name.pt", "not a readable torch zip"),
                ("converter-zip-version.pt", "not a readable torch zip")]:
            with self.subTest(name=name):
                self.convert_fails(os.path.join(crashes, name), message)

    def test_malicious_pickles(self):
        marker = self.path("pwned")
        cmd = "touch " + marker
        cases = {
            # hand-written protocol-0 GLOBAL + REDUCE
            "os.system": b"cos\nsystem\n(S'" + cmd.encode() + b"'\ntR.",
            # what pickle.dumps makes of a __reduce__ to os.system (protocol 4: STACK_GLOBAL)
            "system": pickle.dumps(Evil(cmd), protocol=4),
            # a harmless module with a dangerous name
            "__builtin__.getattr": b"c__builtin__\ngetattr\n(c__builtin__\nint\nS'real'\ntR.",
            "builtins.eval": b"cbuiltins\neval\n(S'__import__(\"os\").system(\"" + cmd.encode()
                             + b"\")'\ntR.",
        }
        for needle, pkl in cases.items():
            with self.subTest(needle):
                evil = self.path("evil.pt")
                write_pickle_zip(evil, pkl)
                self.convert_fails(evil, "unsafe pickle global", needle)
                self.assertFalse(os.path.exists(marker), "the pickle was executed")

    # --- synthetic checkpoints -----------------------------------------------------------

    def test_synthetic_omegaconf_and_strides(self):
        src = self.path("syn.pt")
        build_synthetic(src)
        header, data, meta = self.convert_ok(src)
        self.assertEqual(meta["model_id"], "UMA-1.1")                      # compat rule
        self.assertEqual(meta["dataset_mapping"], {"a": "a", "b": "b"})    # from dataset_list
        self.assertEqual(meta["backbone"]["cutoff"], 5.0)
        self.assertEqual(meta["backbone"]["moe_expert_coefficient_norm"], "softmax")
        self.assertEqual(meta["backbone"]["charge_balanced_channels"], [])
        self.assertIs(meta["supports_single_atoms"], False)
        a, b = meta["tasks"]["a"], meta["tasks"]["b"]
        self.assertEqual(a["energy"], {"mean": 0.5, "rmsd": 2.0})
        self.assertEqual(a["forces"], {"mean": 0.0, "rmsd": 2.0})
        self.assertEqual(a["stress"], {"mean": 0.0, "rmsd": 2.0})
        self.assertEqual(b["energy"], {"mean": 0.0, "rmsd": 1.25})         # legacy "std"
        self.assertEqual(a["element_references"], [-0.5 * z for z in range(100)])   # tensor
        self.assertEqual(b["element_references"], [0.25 * z for z in range(100)])   # _args_

        def values(name):
            raw = tensor_bytes(header, data, name)
            fmt = "d" if header[name]["dtype"] == "F64" else "f"
            return list(struct.unpack("<%d%s" % (len(raw) // struct.calcsize(fmt), fmt), raw))

        names = [k for k in header if k != "__metadata__"]
        self.assertEqual(len(names), 7)
        self.assertEqual(values("backbone.blocks.0.edge_wise.so2_conv_1.fc_m0.weights"),
                         [float(i) for i in range(24)])
        # transposed view [3, 4] stride [1, 3] of a 4 x 3 storage
        self.assertEqual(values("backbone.sphere_embedding.weight"),
                         [100.0 + r + 3 * c for r in range(3) for c in range(4)])
        # offset 1, shape [2, 3], stride [12, 2]
        self.assertEqual(values("backbone.strided.weight"), [1.0, 3.0, 5.0, 13.0, 15.0, 17.0])
        self.assertEqual(header["backbone.bf.weight"]["dtype"], "F32")
        self.assertEqual(values("backbone.bf.weight"), [1.0, -2.5, 0.0])
        self.assertEqual(values("backbone.half.weight"), [0.5, 65504.0])
        self.assertEqual(header["backbone.dbl.weight"]["dtype"], "F64")
        self.assertEqual(values("backbone.dbl.weight"), [0.1, -1e300])

    def test_synthetic_stress_defaults_to_energy(self):
        src = self.path("syn.pt")
        build_synthetic(src)
        _, _, meta = self.convert_ok(src)
        # dataset b has no stress task: it gets the energy normalizer (fairchem's untrained stress)
        self.assertEqual(meta["tasks"]["b"]["stress"], {"mean": 0.0, "rmsd": 1.25})

    def test_synthetic_refusals(self):
        cases = {
            "uma10": "UMA 1.0",
            "bad_forces": "forces normalizer",
            "int_tensor": "only floating-point",
            "out_of_bounds": "past the end of its storage",
            "bad_experts": "num_experts=2",
            # no stress task: the energy normalizer, whose mean 0.5 would offset the stress
            "no_stress_nonzero_mean": "stress normalizer",
        }
        for variant, needle in cases.items():
            with self.subTest(variant):
                src = self.path(variant + ".pt")
                build_synthetic(src, variant)
                self.convert_fails(src, needle)


def main():
    global CONVERTER, DATA
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--converter", default=CONVERTER)
    ap.add_argument("--data", default=DATA)
    args, rest = ap.parse_known_args()
    CONVERTER, DATA = os.path.abspath(args.converter), os.path.abspath(args.data)
    unittest.main(argv=[sys.argv[0]] + rest)


if __name__ == "__main__":
    main()
