#!/usr/bin/env python3
"""Mutation fuzzer for tools/umas_convert.py (Python 3 standard library only).

    python3 tests/fuzz/fuzz_converter.py [--runs N] [--seed S] [--timeout T] [--crashes DIR]

Starts from tests/data/checkpoints/tiny.pt (a torch zip: tiny/data.pkl + tiny/data/<N>
storages) and converts mutated copies IN-PROCESS (the converter is imported from its file with
importlib and its main([in, out]) is called), in a forked worker supervised by this process:
a run that does not finish within --timeout seconds, or that kills the worker, is recorded and
the worker is restarted. The worker runs under an address-space limit (--memory-mb) so that
memory bombs fail fast instead of taking the machine down.

Mutations (1 to 4 stacked per run):
  pickle   bit flips, byte set/insert/delete, truncation, chunk duplication, opcode
           substitution, corruption of opcode arguments (lengths, memo indices, ints), GLOBAL
           module/name substitution (whitelisted and dangerous names)
  zip      truncation, corrupt central directory / local headers / end record, duplicated,
           missing, renamed or extra entries, two data.pkl, byteorder "big", compressed entries
  storage  shorter, empty, longer or garbage storage entries

Before the random runs, a fixed catalogue of adversarial checkpoints is converted: pickles
that try os.system / posix.system / subprocess.Popen / builtins.eval / exec / __import__ /
open ... through GLOBAL, STACK_GLOBAL, REDUCE, INST, OBJ, NEWOBJ, NEWOBJ_EX and BUILD, plus
memory and time bombs. Each run is checked against:

  * the outcome: converted (exit 0), or exit 1 with one clean `umas-convert: error: ...` line.
    "unexpected failure (...)" (the converter's catch-all), "out of memory", an exception
    escaping main(), a timeout, or a dead worker are findings.
  * no foreign code: a marker file that every dangerous payload would create must not appear,
    and an audit hook (sys.addaudithook) armed during the conversion records os.system,
    subprocess.Popen, exec, compile, fork/spawn, ctypes, sockets, module imports, and any file
    opened outside the run's scratch directory.

Every finding's input is saved under --crashes (default: a temporary directory, printed) as
<kind>-<n>.pt together with <kind>-<n>.txt (what happened). Exit status 0 when every run passed,
1 otherwise (--allow KINDS: those finding kinds do not count; --strict: the catalogue's known
findings count too). The quick default (300 random runs + the catalogue) takes about 20 s.
"""

import argparse
import contextlib
import importlib.util
import io
import json
import os
import pickletools
import random
import re
import resource
import select
import shutil
import signal
import struct
import sys
import tempfile
import time
import traceback
import warnings
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
DEFAULT_CONVERTER = os.path.join(ROOT, "tools", "umas_convert.py")
DEFAULT_CHECKPOINT = os.path.join(ROOT, "tests", "data", "checkpoints", "tiny.pt")


# ---------------------------------------------------------------------------------------------
# The base checkpoint
# ---------------------------------------------------------------------------------------------

class Base:
    """tiny.pt, entry by entry, plus the opcode layout of its data.pkl."""

    def __init__(self, path):
        with zipfile.ZipFile(path) as z:
            self.entries = [(i.filename, z.read(i.filename)) for i in z.infolist()]
        self.pkl_name = next(n for n, _ in self.entries if n.endswith("data.pkl"))
        self.prefix = self.pkl_name[:-len("data.pkl")]
        self.pkl = dict(self.entries)[self.pkl_name]
        self.ops = [(op, arg, pos) for op, arg, pos in pickletools.genops(self.pkl)]
        self.storages = [n for n, _ in self.entries if n.startswith(self.prefix + "data/")]


def build_zip(entries, compression=zipfile.ZIP_STORED):
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")         # "Duplicate name": on purpose
        with zipfile.ZipFile(buf, "w", compression) as z:
            for name, data in entries:
                z.writestr(name, data)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# Mutators
# ---------------------------------------------------------------------------------------------

INTERESTING_U32 = [0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF,
                   0x80000000, 0xFFFFFFFE, 0xFFFFFFFF]

# GLOBAL replacements: whitelisted ones (type confusion) and dangerous ones (must be refused)
GLOBAL_NAMES = [
    ("collections", "OrderedDict"), ("collections", "defaultdict"), ("builtins", "dict"),
    ("builtins", "list"), ("builtins", "tuple"), ("builtins", "set"), ("builtins", "int"),
    ("builtins", "float"), ("builtins", "str"), ("builtins", "bool"), ("torch", "FloatStorage"),
    ("torch", "DoubleStorage"), ("torch", "HalfStorage"), ("torch", "BFloat16Storage"),
    ("torch", "LongStorage"), ("torch", "BoolStorage"), ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("fairchem.core.units.mlip_unit.api.inference", "MLIPInferenceCheckpoint"),
    ("omegaconf.dictconfig", "DictConfig"), ("omegaconf.listconfig", "ListConfig"),
    ("omegaconf.nodes", "AnyNode"), ("omegaconf.base", "ContainerMetadata"), ("typing", "Any"),
    ("os", "system"), ("posix", "system"), ("subprocess", "Popen"), ("builtins", "eval"),
    ("builtins", "exec"), ("builtins", "getattr"), ("builtins", "__import__"),
    ("builtins", "open"), ("io", "open"), ("torch", "load"), ("numpy.core.multiarray", "_reconstruct"),
]

PICKLE_OPCODES = [op.code.encode("latin-1") for op in pickletools.opcodes]


def mutate_pickle(rng, base, data):
    kind = rng.choice(["flip", "flip", "set", "insert", "delete", "truncate", "dup", "opcode",
                       "opcode", "arg", "arg", "global"])
    b = bytearray(data)
    if not b:
        return bytes(rng.randbytes(rng.randint(1, 16))), "pickle:insert-empty"
    if kind == "flip":
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    elif kind == "set":
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] = rng.randrange(256)
    elif kind == "insert":
        i = rng.randrange(len(b) + 1)
        ins = rng.choice([rng.randbytes(rng.randint(1, 16)), rng.choice(PICKLE_OPCODES)])
        b[i:i] = ins
    elif kind == "delete":
        i = rng.randrange(len(b))
        del b[i:i + rng.randint(1, 64)]
    elif kind == "truncate":
        del b[rng.randrange(len(b)):]
    elif kind == "dup":
        i = rng.randrange(len(b))
        chunk = b[i:i + rng.randint(1, 256)]
        j = rng.randrange(len(b) + 1)
        b[j:j] = chunk
    elif kind in ("opcode", "arg", "global"):
        # positions are those of the base pickle: valid only while data is the base's length
        if len(b) != len(base.pkl):
            return mutate_pickle(rng, base, data)
        if kind == "opcode":
            op, arg, pos = rng.choice(base.ops)
            b[pos:pos + 1] = rng.choice(PICKLE_OPCODES)
        elif kind == "arg":
            cands = [(op, arg, pos) for op, arg, pos in base.ops
                     if op.name in ("BININT", "BININT1", "BININT2", "BINPUT", "LONG_BINPUT",
                                    "BINGET", "LONG_BINGET", "BINUNICODE", "SHORT_BINUNICODE",
                                    "BINBYTES", "FRAME", "LONG1", "LONG4")]
            op, arg, pos = rng.choice(cands)
            width = {"BININT1": 1, "BINPUT": 1, "BINGET": 1, "SHORT_BINUNICODE": 1, "LONG1": 1,
                     "BININT2": 2, "FRAME": 8}.get(op.name, 4)
            v = rng.choice(INTERESTING_U32 + [rng.getrandbits(32)])
            v &= (1 << (8 * width)) - 1
            b[pos + 1:pos + 1 + width] = v.to_bytes(width, "little")
        else:
            cands = [(op, arg, pos) for op, arg, pos in base.ops if op.name == "GLOBAL"]
            op, arg, pos = rng.choice(cands)
            end = b.index(b"\n", b.index(b"\n", pos + 1) + 1) + 1
            mod, name = rng.choice(GLOBAL_NAMES)
            b[pos:end] = b"c" + mod.encode() + b"\n" + name.encode() + b"\n"
    return bytes(b), "pickle:" + kind


def mutate_entries(rng, base, entries):
    """Zip-content mutations (entries rebuilt into a valid zip)."""
    kind = rng.choice(["drop", "dup", "rename", "extra_pkl", "byteorder", "storage_short",
                       "storage_empty", "storage_long", "storage_garbage", "compress"])
    entries = list(entries)
    names = [n for n, _ in entries]
    if kind == "drop":
        del entries[rng.randrange(len(entries))]
    elif kind == "dup":
        i = rng.randrange(len(entries))
        entries.insert(rng.randrange(len(entries) + 1), entries[i])
    elif kind == "rename":
        i = rng.randrange(len(entries))
        n, d = entries[i]
        n = rng.choice([n + "x", n.replace("/", "//"), n.upper(), "../" + n, "/" + n,
                        base.prefix + "data/999", n[:-1], "other/" + n.split("/", 1)[-1]])
        entries[i] = (n, d)
    elif kind == "extra_pkl":
        entries.append((rng.choice(["x/data.pkl", "data.pkl", base.prefix + "sub/data.pkl"]),
                        base.pkl))
    elif kind == "byteorder":
        val = rng.choice([b"big", b"", b"\xff\xfe", b"little\n", b"LITTLE"])
        entries = [(n, val if n.endswith("byteorder") else d) for n, d in entries]
    else:
        idx = [i for i, n in enumerate(names) if n in base.storages]
        i = rng.choice(idx)
        n, d = entries[i]
        if kind == "storage_short":
            d = d[:rng.randrange(len(d) + 1)] if d else d
        elif kind == "storage_empty":
            d = b""
        elif kind == "storage_long":
            d = d + rng.randbytes(rng.randint(1, 64))
        elif kind == "storage_garbage":
            d = bytes([0xFF]) * len(d)        # NaN patterns for f32/f64
        else:
            return entries, "zip:compress"
        entries[i] = (n, d)
    return entries, "zip:" + kind


def mutate_zip_bytes(rng, blob):
    """Byte-level damage to the archive itself."""
    kind = rng.choice(["truncate", "cdir", "cdir", "eocd", "local", "flip_tail"])
    b = bytearray(blob)
    if kind == "truncate":
        del b[rng.randrange(len(b)):]
    elif kind in ("cdir", "eocd", "local"):
        sig = {"cdir": b"PK\x01\x02", "eocd": b"PK\x05\x06", "local": b"PK\x03\x04"}[kind]
        hits = [m.start() for m in re.finditer(re.escape(sig), bytes(b[-200000:] if kind != "local"
                                                                      else b))]
        if not hits:
            return bytes(b), "zipbytes:" + kind
        off = (len(b) - min(len(b), 200000) if kind != "local" else 0) + rng.choice(hits)
        for _ in range(rng.randint(1, 4)):
            i = off + rng.randrange(46 if kind == "cdir" else 22 if kind == "eocd" else 30)
            if i < len(b):
                b[i] = rng.choice([0, 0xFF, rng.randrange(256), b[i] ^ (1 << rng.randrange(8))])
    else:
        for _ in range(rng.randint(1, 8)):
            i = len(b) - 1 - rng.randrange(min(len(b), 8192))
            b[i] ^= 1 << rng.randrange(8)
    return bytes(b), "zipbytes:" + kind


def make_input(rng, base):
    """One mutated checkpoint: (zip bytes, description)."""
    pkl = base.pkl
    entries = list(base.entries)
    steps = []
    compression = zipfile.ZIP_STORED
    n = rng.choice([1, 1, 1, 2, 2, 3, 4])
    zip_damage = False
    for _ in range(n):
        family = rng.random()
        if family < 0.6:
            pkl, what = mutate_pickle(rng, base, pkl)
        elif family < 0.9:
            entries, what = mutate_entries(rng, base, entries)
            if what == "zip:compress":
                compression = rng.choice([zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2,
                                          zipfile.ZIP_LZMA])
        else:
            zip_damage = True
            what = "zipbytes"
        steps.append(what)
    entries = [(nm, pkl if nm == base.pkl_name else d) for nm, d in entries]
    blob = build_zip(entries, compression)
    if zip_damage:
        blob, what = mutate_zip_bytes(rng, blob)
        steps[steps.index("zipbytes")] = what
    return blob, "+".join(steps)


# ---------------------------------------------------------------------------------------------
# A tiny pickle assembler for the adversarial catalogue
# ---------------------------------------------------------------------------------------------

class P:
    def __init__(self, proto=2):
        self.b = bytearray(b"\x80" + bytes([proto])) if proto >= 2 else bytearray()

    def raw(self, x):
        self.b += x
        return self

    def str(self, s):
        e = s.encode()
        self.b += b"X" + struct.pack("<I", len(e)) + e
        return self

    def int(self, v):
        self.b += b"J" + struct.pack("<i", v)
        return self

    def glob(self, mod, name):
        self.b += b"c" + mod.encode() + b"\n" + name.encode() + b"\n"
        return self

    def stack_glob(self, mod, name):
        self.b += b"\x8c" + bytes([len(mod)]) + mod.encode() + b"\x8c" + bytes([len(name)]) + \
            name.encode() + b"\x93"
        return self

    def done(self):
        return bytes(self.b + b".")


class T:
    """A tensor for emit(): storage key, dtype class, numel, offset, shape, stride."""

    def __init__(self, key, shape, storage="FloatStorage", numel=None, offset=0, stride=None):
        self.key, self.shape, self.storage, self.offset = key, tuple(shape), storage, offset
        n = 1
        for d in shape:
            n *= d
        self.numel = n if numel is None else numel
        if stride is None:
            stride, acc = [], 1
            for d in reversed(shape):
                stride.insert(0, acc)
                acc *= d
        self.stride = tuple(stride)


def emit(p, obj):
    """Appends obj (dict/list/tuple/str/int/float/bool/None/T) to the pickle assembler p."""
    if isinstance(obj, dict):
        p.raw(b"}(")
        for k, v in obj.items():
            emit(p, k)
            emit(p, v)
        p.raw(b"u")
    elif isinstance(obj, list):
        p.raw(b"](")
        for v in obj:
            emit(p, v)
        p.raw(b"e")
    elif isinstance(obj, tuple):
        p.raw(b"(")
        for v in obj:
            emit(p, v)
        p.raw(b"t")
    elif isinstance(obj, str):
        p.str(obj)
    elif isinstance(obj, bool):
        p.raw(b"\x88" if obj else b"\x89")
    elif isinstance(obj, int):
        p.int(obj)
    elif isinstance(obj, float):
        p.raw(b"G" + struct.pack(">d", obj))
    elif obj is None:
        p.raw(b"N")
    elif isinstance(obj, T):
        p.glob("torch._utils", "_rebuild_tensor_v2").raw(b"(")
        p.raw(b"(").str("storage").glob("torch", obj.storage).str(obj.key).str("cpu") \
            .int(obj.numel).raw(b"tQ")
        emit(p, obj.offset)
        emit(p, obj.shape)
        emit(p, obj.stride)
        p.raw(b"tR")
    else:
        raise TypeError(obj)
    return p


def minimal_checkpoint(storages, ema, refs=None):
    """A small checkpoint the converter accepts (it checks metadata, not the full schema)."""
    energy = {"name": "omat_energy", "property": "energy", "datasets": ["omat"],
              "normalizer": {"mean": 0.5, "rmsd": 2.0}}
    if refs is not None:
        energy["element_references"] = refs
    fields = {
        "model_config": {"model_id": "UMA-S-1.2.1",
                         "backbone": {"dataset_mapping": {"omat": "omat"}, "num_experts": 1},
                         "heads": {"energyandforcehead": {"module": "x.DatasetSpecificMoEWrapper"}}},
        "tasks_config": [energy] + [
            {"name": "omat_" + prop, "property": prop, "datasets": ["omat"],
             "normalizer": {"mean": 0.0, "rmsd": 2.0}} for prop in ("forces", "stress")],
        "ema_state_dict": ema,
    }
    return checkpoint_with(emit(P(), fields).done(), storages)


def checkpoint_with(pkl, storages=None, prefix="t/"):
    entries = [(prefix + "data.pkl", pkl), (prefix + "byteorder", b"little")]
    for key, data in (storages or {}).items():
        entries.append((prefix + "data/" + key, data))
    return build_zip(entries)


def check_storage_cache(conv_path, workdir):
    """Converts two different checkpoints in one process (as a script importing the converter
    would). Returns (same_process_values, fresh_process_values) of the second one's tensor."""
    a = minimal_checkpoint({"0": struct.pack("<4f", 1, 2, 3, 4)}, {"w": T("0", [4])})
    b = minimal_checkpoint({"0": struct.pack("<4f", 9, 9, 9, 9)}, {"w": T("0", [4])})
    paths = [os.path.join(workdir, n) for n in ("cache_a.pt", "cache_b.pt", "cache.out")]
    for path, blob in zip(paths, (a, b)):
        with open(path, "wb") as f:
            f.write(blob)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            conv = load_converter(conv_path)
            got = []
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                for src in (paths[0], paths[1], None, paths[1]):
                    if src is None:                   # a fresh process: no cached storage
                        conv = load_converter(conv_path)
                        conv.Storage._last = (None, None)
                        continue
                    conv.main([src, paths[2]])
                    with open(paths[2], "rb") as f:
                        blob = f.read()
                    got.append(list(struct.unpack("<4f", blob[-16:])))
            os.write(w, json.dumps(got).encode())
        finally:
            os._exit(0)
    os.close(w)
    text = b""
    while True:
        chunk = os.read(r, 4096)
        if not chunk:
            break
        text += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return json.loads(text.decode()) if text else None


def dangerous_calls(marker):
    """(label, module, name, args as a pickle fragment builder) trying to create `marker`."""
    cmd = "touch '%s'" % marker
    py = "open(%r, 'w').close()" % marker
    return [
        ("os.system", "os", "system", lambda p: p.str(cmd)),
        ("posix.system", "posix", "system", lambda p: p.str(cmd)),
        ("nt.system", "nt", "system", lambda p: p.str(cmd)),
        ("os.popen", "os", "popen", lambda p: p.str(cmd)),
        ("subprocess.Popen", "subprocess", "Popen",
         lambda p: p.raw(b"]").raw(b"(").str("touch").str(marker).raw(b"e")),
        ("subprocess.check_call", "subprocess", "check_call",
         lambda p: p.raw(b"]").raw(b"(").str("touch").str(marker).raw(b"e")),
        ("builtins.eval", "builtins", "eval", lambda p: p.str(py)),
        ("builtins.exec", "builtins", "exec", lambda p: p.str(py)),
        ("__builtin__.eval", "__builtin__", "eval", lambda p: p.str(py)),
        ("builtins.open", "builtins", "open", lambda p: p.str(marker).str("w")),
        ("io.open", "io", "open", lambda p: p.str(marker).str("w")),
        ("builtins.__import__", "builtins", "__import__", lambda p: p.str("antigravity")),
        ("importlib.import_module", "importlib", "import_module", lambda p: p.str("this")),
        ("pickle.loads", "pickle", "loads",
         lambda p: p.raw(b"C" + bytes([len(b"cos\nsystem\n")]) + b"cos\nsystem\n")),
        ("shutil.rmtree", "shutil", "rmtree", lambda p: p.str(os.path.dirname(marker))),
    ]


def catalogue(base, marker):
    """[(label, zip bytes, expected)]: expected is 'refused' (clean error, nothing executed),
    'clean' (any clean outcome) or 'finding-ok' (a known finding; reported, listed)."""
    out = []
    st = {"0": struct.pack("<f", 1.0)}
    for label, mod, name, args in dangerous_calls(marker):
        # GLOBAL + REDUCE
        p = P().glob(mod, name).raw(b"(")
        out.append(("GLOBAL+REDUCE " + label, checkpoint_with(args(p).raw(b"tR").done()), "refused"))
        # STACK_GLOBAL + REDUCE (protocol 4)
        p = P(4).stack_glob(mod, name).raw(b"(")
        out.append(("STACK_GLOBAL+REDUCE " + label,
                    checkpoint_with(args(p).raw(b"tR").done()), "refused"))
        # INST (protocol 0): MARK args INST module name
        p = P(0).raw(b"(")
        args(p)
        p.raw(b"i" + mod.encode() + b"\n" + name.encode() + b"\n")
        out.append(("INST " + label, checkpoint_with(p.done()), "refused"))
        # OBJ: MARK class args OBJ
        p = P(1).raw(b"(").glob(mod, name)
        out.append(("OBJ " + label, checkpoint_with(args(p).raw(b"o").done()), "refused"))
        # NEWOBJ / NEWOBJ_EX
        p = P(2).glob(mod, name).raw(b"(")
        out.append(("NEWOBJ " + label, checkpoint_with(args(p).raw(b"t\x81").done()), "refused"))
        p = P(4).stack_glob(mod, name).raw(b"(")
        out.append(("NEWOBJ_EX " + label,
                    checkpoint_with(args(p).raw(b"t}\x92").done()), "refused"))
        # hidden deep inside the real checkpoint: replaces its first GLOBAL
        first = next(pos for op, arg, pos in base.ops if op.name == "GLOBAL")
        end = base.pkl.index(b"\n", base.pkl.index(b"\n", first + 1) + 1) + 1
        pkl = base.pkl[:first] + b"c" + mod.encode() + b"\n" + name.encode() + b"\n" + \
            base.pkl[end:]
        entries = [(n, pkl if n == base.pkl_name else d) for n, d in base.entries]
        out.append(("in tiny.pt GLOBAL " + label, build_zip(entries), "refused"))
    # a dangerous class used as the storage type of a persistent id
    p = P().raw(b"(").str("storage").glob("os", "system").str("0").str("cpu").int(1) \
        .raw(b"tQ")
    out.append(("BINPERSID with os.system storage type", checkpoint_with(p.done(), st), "refused"))
    # BUILD on whitelisted objects: must not change the converter's own objects
    p = P().glob("torch", "FloatStorage").raw(b"}").str("itemsize").int(1000).raw(b"sb")
    out.append(("BUILD on a storage dtype marker", checkpoint_with(p.done()), "refused"))
    p = P().glob("torch._utils", "_rebuild_tensor_v2").raw(b"N}").str("__defaults__") \
        .raw(b"(").int(7).raw(b"t").raw(b"s\x86b")
    out.append(("BUILD slotstate on a whitelisted function", checkpoint_with(p.done()),
                "finding-ok"))
    p = P().glob("collections", "OrderedDict").raw(b"N}").str("__init__") \
        .glob("builtins", "eval").raw(b"s\x86b")
    out.append(("BUILD OrderedDict.__init__ = eval", checkpoint_with(p.done()), "refused"))
    # extension registry opcodes
    out.append(("EXT1", checkpoint_with(P().raw(b"\x82\x01").done()), "clean"))
    out.append(("EXT4", checkpoint_with(P().raw(b"\x84\xff\xff\xff\x7f").done()), "clean"))
    # deep nesting (no recursion inside the C unpickler; plain() has a depth limit)
    out.append(("100k nested lists", checkpoint_with(P().raw(b"]" * 100000 + b"a" * 99999).done()),
                "clean"))
    # a minimal synthetic checkpoint converts (the fuzzer's own sanity check)
    out.append(("minimal synthetic checkpoint",
                minimal_checkpoint({"0": struct.pack("<4f", 1, 2, 3, 4),
                                    "1": struct.pack("<3d", 0.0, -1.0, -2.0)},
                                   {"module.w": T("0", [2, 2]), "b": T("0", [2], offset=1)},
                                   refs=T("1", [3], storage="DoubleStorage")), "ok"))
    # ---- known findings (see docs/reliability.md) ----
    # memo index bomb: LONG_BINPUT 2^26 makes the C unpickler allocate and zero a 1 GiB memo
    out.append(("memo bomb LONG_BINPUT 2^26",
                checkpoint_with(P().raw(b"N" + b"r" + struct.pack("<I", 1 << 26)).done()),
                "finding-ok"))
    # shared references: a 27-level DAG of tuples (t_i = (t_{i-1}, t_{i-1})), tiny as a pickle,
    # is 2^24 leaves once walked: repr() in the persistent-id error message (each level doubles
    # time and memory: 12 s / 1.6 GB at depth 26, a 400-byte file)
    p = P().raw(b"N")
    for _ in range(24):
        p.raw(b"q\x000h\x00h\x00\x86")
    out.append(("repr bomb in persistent id", checkpoint_with(p.raw(b"Q").done()), "finding-ok"))
    # ... and plain() over the model_config (needs one valid tensor first)
    p = P().raw(b"}(").str("ema_state_dict").raw(b"}(").str("w") \
        .glob("torch._utils", "_rebuild_tensor_v2").raw(b"(") \
        .raw(b"(").str("storage").glob("torch", "FloatStorage").str("0").str("cpu").int(1) \
        .raw(b"tQ").int(0).int(1).raw(b"\x85").int(1).raw(b"\x85").raw(b"tRu") \
        .str("tasks_config").raw(b"]").str("model_config").raw(b"N")
    for _ in range(22):                 # 4 s / 0.4 GB; depth 24: 17 s / 1.6 GB
        p.raw(b"q\x000h\x00h\x00\x86")
    out.append(("plain() bomb in model_config", checkpoint_with(p.raw(b"u").done(), st),
                "finding-ok"))
    return out


# ---------------------------------------------------------------------------------------------
# The worker: converts in-process, reports over a pipe
# ---------------------------------------------------------------------------------------------

DANGEROUS_EVENTS = {"os.system", "subprocess.Popen", "os.exec", "os.posix_spawn", "os.spawn",
                    "os.fork", "os.forkpty", "pty.spawn", "exec", "compile", "ctypes.dlopen",
                    "ctypes.dlsym", "socket.connect", "socket.bind", "socket.__new__",
                    "webbrowser.open", "shutil.rmtree", "os.kill", "os.putenv", "os.unsetenv",
                    "os.chmod", "os.symlink", "os.link", "os.startfile", "code.__new__",
                    "function.__new__", "object.__setattr__", "object.__delattr__"}


class Timeout(BaseException):
    pass


def load_converter(path):
    spec = importlib.util.spec_from_file_location("umas_convert_under_fuzz", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def worker(conv_path, workdir, jobs_fd, results_fd, memory_mb, slow_s, rss_mb):
    """Reads 'index path' lines, answers 'index kind detail' lines (detail: one line)."""
    if memory_mb:
        limit = memory_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    conv = load_converter(conv_path)
    import encodings.cp437  # noqa: F401  zipfile decodes non-UTF-8 names with it, lazily
    state = {"armed": False, "events": [], "scratch": workdir}
    known_modules = set(sys.modules)
    stdlib = os.path.dirname(os.__file__) + os.sep

    def in_stdlib(path):
        return isinstance(path, str) and os.path.abspath(path).startswith(stdlib)

    def hook(event, args):
        if not state["armed"]:
            return
        # a lazily imported standard-library module (reading and running its .pyc) is fine
        if event == "open" and args and in_stdlib(args[0]):
            return
        if event == "exec" and args and in_stdlib(getattr(args[0], "co_filename", None)):
            return
        if event in DANGEROUS_EVENTS or event.startswith("os.exec") or \
                event.startswith("os.spawn"):
            state["events"].append("%s%r" % (event, args[:2]))
        elif event == "import" and args and args[0] not in known_modules and \
                not str(args[0]).startswith("encodings."):
            state["events"].append("import %s" % args[0])
        elif event == "open" and args and isinstance(args[0], str) and \
                not os.path.abspath(args[0]).startswith(state["scratch"]):
            state["events"].append("open %s" % args[0])
        elif event in ("os.remove", "os.rename", "os.replace") and args and \
                not os.path.abspath(str(args[0])).startswith(state["scratch"]):
            state["events"].append("%s %s" % (event, args[0]))

    sys.addaudithook(hook)

    # snapshot of converter objects a pickle could try to modify (BUILD on whitelisted globals)
    def fingerprint():
        parts = []
        for key, obj in sorted(conv.WHITELIST.items(), key=lambda kv: str(kv[0])):
            parts.append((key, getattr(obj, "__defaults__", None),
                          dict(getattr(obj, "__dict__", {})) if callable(obj) and
                          not isinstance(obj, type) else None,
                          vars(obj).copy() if isinstance(obj, conv.StorageType) else None))
        return repr(parts)
    clean_fp = fingerprint()

    def on_alarm(signum, frame):
        raise Timeout()
    signal.signal(signal.SIGALRM, on_alarm)

    jobs = os.fdopen(jobs_fd, "r")
    results = os.fdopen(results_fd, "w", buffering=1)
    for line in jobs:
        index, in_path, timeout = line.split()
        out_path = os.path.join(workdir, "out.safetensors")
        if os.path.exists(out_path):
            os.remove(out_path)
        conv.Storage._last = (None, None)   # class-level read cache: see docs/reliability.md
        err, out = io.StringIO(), io.StringIO()
        state["events"] = []
        kind, detail = None, ""
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.monotonic()
        signal.setitimer(signal.ITIMER_REAL, float(timeout))
        try:
            state["armed"] = True
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
                rc = conv.main([in_path, out_path])
            state["armed"] = False
        except Timeout:
            state["armed"] = False
            kind, detail = "timeout", "in-process timeout (signal)"
        except BaseException as e:        # noqa: B902 - anything escaping main() is a finding
            state["armed"] = False
            kind = "escaped"
            detail = "%s: %s | %s" % (type(e).__name__, e,
                                      traceback.format_exc().strip().splitlines()[-3:])
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        if kind is None:
            text = err.getvalue().strip()
            if rc == 0 and os.path.exists(out_path):
                kind = "ok"
            elif rc == 0:
                kind, detail = "escaped", "exit 0 but no output file"
            elif "unexpected failure" in text:
                kind, detail = "unexpected", text
            elif "out of memory" in text:
                kind, detail = "oom", text
            elif text.startswith("umas-convert: error:") and "\n" not in \
                    text.replace("\nWarning", "").split("umas-convert: error:", 1)[1]:
                kind, detail = "clean", text
            elif "umas-convert: error:" in text:
                kind, detail = "clean", text          # preceded by zipfile warnings
            else:
                kind, detail = "escaped", "rc %r, stderr %r" % (rc, text[-300:])
        seconds = time.monotonic() - t0
        grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
        restart = grown_mb > rss_mb         # fresh worker: ru_maxrss is a high-water mark
        if kind in ("ok", "clean") and grown_mb > rss_mb:
            kind, detail = "memory", "peak memory grew by %.0f MB (%.1f s) | %s" % (
                grown_mb, seconds, detail)
        elif kind in ("ok", "clean") and seconds > slow_s:
            kind, detail = "slow", "%.1f s | %s" % (seconds, detail)
        if state["events"]:
            kind, detail = "unsafe", "audit: %s | %s" % ("; ".join(state["events"][:5]), detail)
        marker = os.path.join(workdir, "PWNED")
        if os.path.exists(marker):
            kind, detail = "unsafe", "marker file created | " + detail
            os.remove(marker)
        fp = fingerprint()
        if fp != clean_fp:
            kind, detail = "polluted", "converter objects changed by the pickle | " + detail
            conv = load_converter(conv_path)          # fresh copy for the next run
            clean_fp = fingerprint()
        results.write("%s %s %d %s\n" % (index, kind, restart,
                                           detail.replace("\n", " \\n ")[:2000]))
        if restart:
            break
    os._exit(0)


class Supervisor:
    def __init__(self, conv_path, workdir, memory_mb, slow_s, rss_mb):
        self.conv_path, self.workdir, self.memory_mb = conv_path, workdir, memory_mb
        self.slow_s, self.rss_mb = slow_s, rss_mb
        self.pid = None

    def start(self):
        jr, jw = os.pipe()
        rr, rw = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(jw)
            os.close(rr)
            try:
                worker(self.conv_path, self.workdir, jr, rw, self.memory_mb, self.slow_s,
                       self.rss_mb)
            finally:
                os._exit(3)
        os.close(jr)
        os.close(rw)
        self.pid, self.jobs, self.results = pid, os.fdopen(jw, "w", buffering=1), rr
        self.buf = b""

    def stop(self):
        if self.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
            with contextlib.suppress(OSError):
                self.jobs.close()
            os.close(self.results)
            self.pid = None

    def run(self, index, path, timeout):
        """(kind, detail) for one input; restarts the worker when it hangs or dies."""
        if self.pid is None:
            self.start()
        try:
            self.jobs.write("%d %s %g\n" % (index, path, timeout))
        except BrokenPipeError:
            self.stop()
            return self.run(index, path, timeout)
        deadline = time.monotonic() + timeout + 5     # the worker's own alarm fires first
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            ready = select.select([self.results], [], [], max(left, 0))[0] if left > 0 else []
            if not ready:
                self.stop()
                return "timeout", "no answer within %g s (uninterruptible: killed)" % (timeout + 5)
            chunk = os.read(self.results, 65536)
            if not chunk:
                _, status = os.waitpid(self.pid, 0)
                self.pid = None
                os.close(self.results)
                sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
                return "died", "worker died (%s)" % ("signal %d" % sig if sig else
                                                     "exit %d" % os.WEXITSTATUS(status))
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        _, kind, restart, detail = line.decode().split(" ", 3)
        if restart == "1":                  # the worker exits after reporting
            self.stop()
        return kind, detail


# ---------------------------------------------------------------------------------------------
# Main loop
# ---------------------------------------------------------------------------------------------

FINDINGS = ("unexpected", "escaped", "timeout", "died", "unsafe", "oom", "polluted", "memory",
            "slow")


def signature(kind, detail):
    """Deduplication key: the finding kind and its message with numbers/paths blanked."""
    d = re.sub(r"/[^ :,)']+", "PATH", detail)
    d = re.sub(r"0x[0-9a-f]+|\d+", "N", d)
    return kind + ": " + d[:160]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=300, help="random mutated inputs (default 300)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds per conversion")
    ap.add_argument("--memory-mb", type=int, default=3072,
                    help="address-space limit of the worker (0: none)")
    ap.add_argument("--slow", type=float, default=2.0,
                    help="a conversion slower than this (seconds) is a finding (default 2)")
    ap.add_argument("--rss-mb", type=int, default=256,
                    help="a conversion whose peak memory grows by more is a finding (default 256)")
    ap.add_argument("--converter", default=DEFAULT_CONVERTER)
    ap.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT)
    ap.add_argument("--crashes", help="directory for finding inputs (default: a temp dir)")
    ap.add_argument("--no-catalogue", action="store_true", help="skip the adversarial catalogue")
    ap.add_argument("--strict", action="store_true",
                    help="known findings of the catalogue also make the exit status 1")
    ap.add_argument("--allow", default="",
                    help="comma-separated finding kinds that do not fail the run, e.g. "
                         "memory,oom,unexpected (while their bugs are open)")
    ap.add_argument("--save-all", action="store_true",
                    help="save every input of a finding, not only the first per signature")
    args = ap.parse_args()

    shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    workdir = os.path.realpath(tempfile.mkdtemp(prefix="umas-fuzz-conv-", dir=shm))
    crashes = args.crashes or tempfile.mkdtemp(prefix="umas-fuzz-conv-findings-")
    os.makedirs(crashes, exist_ok=True)
    base = Base(args.checkpoint)
    marker = os.path.join(workdir, "PWNED")
    sup = Supervisor(os.path.abspath(args.converter), workdir, args.memory_mb, args.slow,
                     args.rss_mb)
    counts, firsts, failures = {}, {}, 0
    allowed = set(k for k in args.allow.split(",") if k)
    kinds_by_family = {}
    t0 = time.monotonic()

    def record(label, blob, kind, detail, expected=None):
        nonlocal failures
        counts[kind] = counts.get(kind, 0) + 1
        bad = kind in FINDINGS
        if expected == "refused" and kind not in ("clean",):
            bad = True
        if expected == "ok" and kind != "ok":
            bad = True
        if not bad:
            return
        sig = signature(kind, detail)
        known = expected == "finding-ok"
        if sig not in firsts or args.save_all:
            n = len(firsts)
            stem = os.path.join(crashes, "%s-%03d" % (kind, n))
            with open(stem + ".pt", "wb") as f:
                f.write(blob)
            with open(stem + ".txt", "w") as f:
                f.write("input: %s\nkind: %s\ndetail: %s\n" % (label, kind, detail))
            firsts.setdefault(sig, (label, stem + ".pt", known))
        if (not known or args.strict) and kind not in allowed:
            failures += 1

    in_path = os.path.join(workdir, "in.pt")
    if not args.no_catalogue:
        cat = catalogue(base, marker)
        for i, (label, blob, expected) in enumerate(cat):
            with open(in_path, "wb") as f:
                f.write(blob)
            kind, detail = sup.run(-1 - i, in_path, min(args.timeout, 5.0))
            flag = ""
            if expected == "refused" and kind != "clean":
                flag = "  <-- NOT REFUSED"
            elif expected == "ok" and kind != "ok":
                flag = "  <-- DID NOT CONVERT"
            elif kind in FINDINGS:
                flag = "  <-- finding%s" % (" (known)" if expected == "finding-ok" else "")
            print("catalogue %-48s %-10s %s%s" % (label, kind, detail[:150], flag))
            record("catalogue: " + label, blob, kind, detail, expected)
        t_cat = time.monotonic() - t0
        print("catalogue: %d inputs in %.1f s" % (len(cat), t_cat))
        got = check_storage_cache(os.path.abspath(args.converter), workdir)
        if not got or len(got) != 3:
            print("storage cache check: could not run (%r)" % (got,))
        else:
            stale = got[1] != got[2]
            print("storage cache check: A then B in one process gives B = %s; B alone = %s%s"
                  % (got[1], got[2], "  <-- finding (known): stale Storage._last" if stale
                     else ""))
            if stale:
                counts["stale-cache"] = counts.get("stale-cache", 0) + 1
                firsts.setdefault("stale-cache: Storage._last reused across conversions",
                                  ("catalogue: storage cache check", "(none: see the check)",
                                   True))
                if args.strict:
                    failures += 1

    t1 = time.monotonic()
    rng_master = random.Random(args.seed)
    for i in range(args.runs):
        rng = random.Random(rng_master.getrandbits(64))
        blob, what = make_input(rng, base)
        with open(in_path, "wb") as f:
            f.write(blob)
        kind, detail = sup.run(i, in_path, args.timeout)
        fam = what.split("+")[0].split(":")[0]
        kinds_by_family.setdefault(fam, {}).setdefault(kind, 0)
        kinds_by_family[fam][kind] += 1
        record("run %d seed %d: %s" % (i, args.seed, what), blob, kind, detail)
        if (i + 1) % 1000 == 0:
            el = time.monotonic() - t1
            print("run %d: %.0f runs/s, %s" % (i + 1, (i + 1) / el, counts), flush=True)
    sup.stop()
    el = time.monotonic() - t1
    shutil.rmtree(workdir, ignore_errors=True)
    print("random: %d runs in %.1f s (%.1f runs/s), seed %d" % (args.runs, el, args.runs / max(el, 1e-9),
                                                                  args.seed))
    print("outcomes: %s" % ", ".join("%s %d" % kv for kv in sorted(counts.items())))
    for fam, ks in sorted(kinds_by_family.items()):
        print("  first mutation %-9s %s" % (fam, ", ".join("%s %d" % kv for kv in sorted(ks.items()))))
    if firsts:
        print("findings (%d distinct), inputs in %s:" % (len(firsts), crashes))
        for sig, (label, path, known) in firsts.items():
            print("  %s%s\n      first: %s -> %s" % ("[known] " if known else "", sig, label,
                                                      os.path.basename(path)))
    else:
        if not args.crashes:
            shutil.rmtree(crashes, ignore_errors=True)
        print("no findings")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
