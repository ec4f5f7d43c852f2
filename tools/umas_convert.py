#!/usr/bin/env python3
"""umas-convert: turn a fairchem UMA inference checkpoint (.pt) into a umas model file.

    umas-convert IN.pt OUT.safetensors     convert
    umas-convert --info FILE.safetensors   print the metadata of a converted file

Input: a `torch.save`d `MLIPInferenceCheckpoint` (a zip holding `<prefix>/data.pkl`, a
pickle, and one raw little-endian file per tensor storage, `<prefix>/data/<key>`).
Output: one safetensors file as described in docs/model-format.md: every tensor of the
checkpoint's `ema_state_dict` (minus `n_averaged` and `backbone.Jd_*`, names without the
leading `module.`), plus a JSON metadata document under `__metadata__["umas"]` with the
backbone hyper-parameters, dataset mapping, output head and per-task normalisation.

Security stance: a checkpoint is untrusted input. A pickle can name any importable Python
callable and call it, so it is never loaded with the stock unpickler and nothing in it is
imported or executed. The unpickler below resolves only an explicit whitelist of globals,
each mapped to an inert stand-in defined in this file (dtype markers, a tensor record, a
plain object that just receives its state, plain builtins). Any other global makes the
conversion fail with an "unsafe pickle global" error before it can be called.

Python 3.9+ standard library only (no torch, no numpy), so it runs anywhere.
"""

import argparse
import collections
import io
import json
import lzma
import math
import os
import pickle
import pickletools
import reprlib
import struct
import sys
import zipfile
import zlib

FORMAT_VERSION = 1


SHORT = reprlib.Repr()          # bounded repr for messages about untrusted data
SHORT.maxlevel, SHORT.maxstring, SHORT.maxother = 3, 60, 60


# what reading a (hostile) zip archive can raise besides BadZipFile
ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, OSError, ValueError,
              RuntimeError, NotImplementedError, UnicodeDecodeError)


class ConvertError(Exception):
    """An expected failure: reported as one clean line, no traceback."""


# ---------------------------------------------------------------------------------------
# Inert stand-ins for the whitelisted pickle globals
# ---------------------------------------------------------------------------------------

class NoState:
    """Our own records refuse a pickle BUILD (it could overwrite their fields)."""

    def __setstate__(self, state):
        raise ConvertError("data.pkl tries to set the state of a %s" % type(self).__name__)


class StorageType(NoState):
    """Dtype marker standing in for torch.<X>Storage."""

    def __init__(self, torch_name, code, itemsize):
        self.torch_name, self.code, self.itemsize = torch_name, code, itemsize


# torch storage class -> (safetensors dtype code, item size in bytes)
STORAGE_TYPES = {name: StorageType(name, code, size) for name, code, size in [
    ("FloatStorage", "F32", 4), ("DoubleStorage", "F64", 8), ("HalfStorage", "F16", 2),
    ("BFloat16Storage", "BF16", 2), ("LongStorage", "I64", 8), ("IntStorage", "I32", 4),
    ("ShortStorage", "I16", 2), ("CharStorage", "I8", 1), ("ByteStorage", "U8", 1),
    ("BoolStorage", "BOOL", 1)]}


class Storage(NoState):
    """One `<prefix>/data/<key>` entry; bytes are read once, when a tensor is written (tensors
    sharing the storage reuse them). Owned by one unpickler: no state across conversions."""

    def __init__(self, archive, entry, stype, numel):
        self.archive, self.entry, self.stype, self.numel = archive, entry, stype, numel
        self.data = None

    def read(self):
        if self.data is None:
            try:
                data = self.archive.read(self.entry)
            except ZIP_ERRORS as e:
                raise ConvertError("storage %s cannot be read (%s: %s)"
                                   % (self.entry, type(e).__name__, SHORT.repr(str(e)))) from None
            if len(data) < self.numel * self.stype.itemsize:
                raise ConvertError("storage %s is shorter than its %d elements"
                                   % (self.entry, self.numel))
            self.data = data
        return self.data


class Tensor(NoState):
    """Result of _rebuild_tensor_v2: a strided view of a storage."""

    def __init__(self, storage, offset, shape, stride):
        self.storage, self.offset, self.shape, self.stride = storage, offset, shape, stride

    @property
    def dtype(self):
        return self.storage.stype.code

    def numel(self):
        return math.prod(self.shape)

    def check_bounds(self, name):
        """The view must lie inside its storage (checked before anything is read)."""
        if self.offset < 0 or any(s < 0 for s in self.shape) or any(s < 0 for s in self.stride):
            raise ConvertError("tensor %s has a negative offset, size or stride" % name)
        if self.numel() == 0:
            return
        if self.numel() > self.storage.numel:       # broadcast/overlapping views: never weights
            raise ConvertError("tensor %s has more elements (%d) than its storage (%d)"
                               % (name, self.numel(), self.storage.numel))
        last = self.offset + sum((n - 1) * s for n, s in zip(self.shape, self.stride))
        if last >= self.storage.numel:
            raise ConvertError("tensor %s (offset %d, shape %s, stride %s) reaches past the end of "
                               "its storage of %d elements" % (name, self.offset, list(self.shape),
                                                              list(self.stride), self.storage.numel))

    def c_bytes(self):
        """The elements in C (row-major) order, as raw little-endian bytes."""
        isz = self.storage.stype.itemsize
        data = self.storage.read()
        n = self.numel()
        # Contiguous (ignoring dims of size 1, whose stride is arbitrary): one slice.
        expect, contiguous = 1, True
        for size, st in reversed(list(zip(self.shape, self.stride))):
            if size != 1 and st != expect:
                contiguous = False
                break
            expect *= size
        if contiguous or n == 0:
            return data[self.offset * isz:(self.offset + n) * isz]
        # General strides: walk the index space, copying whole rows when the last dim is dense.
        out = bytearray()
        shape, stride = self.shape, self.stride
        inner, inner_st = shape[-1], stride[-1]
        index = [0] * (len(shape) - 1)
        while True:
            base = self.offset + sum(i * s for i, s in zip(index, stride))
            if inner_st == 1:
                out += data[base * isz:(base + inner) * isz]
            else:
                for j in range(inner):
                    p = (base + j * inner_st) * isz
                    out += data[p:p + isz]
            d = len(index) - 1          # odometer increment over the leading dims
            while d >= 0:
                index[d] += 1
                if index[d] < shape[d]:
                    break
                index[d] = 0
                d -= 1
            if d < 0:
                return bytes(out)

    def values(self):
        """Python floats (used for small config tensors such as element references)."""
        fmt = {"F32": "f", "F64": "d", "F16": "e"}.get(self.dtype)
        if fmt is None:
            raise ConvertError("expected a float tensor, got %s" % self.dtype)
        self.check_bounds("in the config")
        return list(struct.unpack("<%d%s" % (self.numel(), fmt), self.c_bytes()))


class Rebuilder:
    """A whitelisted callable. A pickle may BUILD (set state on) any object it can name; these
    refuse, so a checkpoint cannot modify the converter's own functions."""

    def __init__(self, function):
        self.function = function

    def __call__(self, *args):
        return self.function(*args)

    def __setstate__(self, state):
        raise ConvertError("checkpoint refused: data.pkl tries to modify a whitelisted function")


def rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                      backward_hooks=None, metadata=None):
    if not isinstance(storage, Storage):
        raise ConvertError("_rebuild_tensor_v2 called without a storage")
    if (not isinstance(size, tuple) or not isinstance(stride, tuple) or len(size) != len(stride)
            or not all(isinstance(v, int) and not isinstance(v, bool)
                       for v in (storage_offset,) + size + stride)):
        raise ConvertError("_rebuild_tensor_v2 with malformed offset/size/stride")
    return Tensor(storage, storage_offset, size, stride)


def rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


class Inert:
    """A pickled object we only keep the data of: NEWOBJ/REDUCE args and BUILD state."""

    args, state = (), None

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        self.state = state


class Checkpoint(Inert):
    """fairchem MLIPInferenceCheckpoint."""


class OmegaDict(Inert):
    """omegaconf DictConfig."""


class OmegaList(Inert):
    """omegaconf ListConfig."""


class OmegaNode(Inert):
    """omegaconf *Node (AnyNode, StringNode, ...): holds one value in `_val`."""


class OmegaMeta(Inert):
    """omegaconf ContainerMetadata / Metadata, typing.Any: ignored."""


def make_defaultdict(*args):
    return {}


OMEGA_NODES = ("AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode", "EnumNode",
               "BytesNode", "PathNode")

WHITELIST = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("collections", "defaultdict"): make_defaultdict,
    ("torch._utils", "_rebuild_tensor_v2"): Rebuilder(rebuild_tensor_v2),
    ("torch._utils", "_rebuild_parameter"): Rebuilder(rebuild_parameter),
    ("fairchem.core.units.mlip_unit.api.inference", "MLIPInferenceCheckpoint"): Checkpoint,
    ("omegaconf.dictconfig", "DictConfig"): OmegaDict,
    ("omegaconf.listconfig", "ListConfig"): OmegaList,
    ("omegaconf.base", "ContainerMetadata"): OmegaMeta,
    ("omegaconf.base", "Metadata"): OmegaMeta,
    ("typing", "Any"): OmegaMeta,
}
WHITELIST.update({("torch", n): t for n, t in STORAGE_TYPES.items()})
WHITELIST.update({("omegaconf.nodes", n): OmegaNode for n in OMEGA_NODES})
for _mod in ("builtins", "__builtin__"):
    WHITELIST.update({(_mod, n): t for n, t in [("dict", dict), ("list", list), ("tuple", tuple),
                      ("set", set), ("int", int), ("long", int), ("float", float), ("str", str),
                      ("bool", bool)]})


class SafeUnpickler(pickle.Unpickler):
    def __init__(self, data, archive, prefix):
        super().__init__(io.BytesIO(data))
        self.archive, self.prefix, self.storages = archive, prefix, {}

    def find_class(self, module, name):
        obj = WHITELIST.get((module, name))
        if obj is None:
            raise ConvertError("checkpoint refused: it contains an unknown/unsafe pickle global "
                               "%s.%s (only torch tensors, plain containers and the fairchem "
                               "checkpoint class are allowed; nothing was executed)" % (module, name))
        return obj

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], StorageType) and isinstance(pid[2], str)
                and isinstance(pid[4], int) and pid[4] >= 0):
            raise ConvertError("unsupported persistent id in data.pkl: %s" % SHORT.repr(pid))
        _, stype, key, _location, numel = pid
        if key not in self.storages:
            entry = "%sdata/%s" % (self.prefix, key)
            try:
                size = self.archive.getinfo(entry).file_size
            except KeyError:
                raise ConvertError("storage entry %s is missing from the archive" % entry) from None
            if size < numel * stype.itemsize:
                raise ConvertError("storage %s holds %d bytes, fewer than %d %s elements"
                                   % (entry, size, numel, stype.torch_name))
            self.storages[key] = Storage(self.archive, entry, stype, numel)
        return self.storages[key]


# ---------------------------------------------------------------------------------------
# Reading the checkpoint
# ---------------------------------------------------------------------------------------

MAX_CONFIG_NODES = 1_000_000


def plain(obj, depth=0, budget=None):
    """Inert omegaconf objects -> plain dict/list/values (tensors kept as Tensor). A shared
    sub-object is copied each time it is reached, so the node budget stops pickles built as
    exponentially expanding DAGs."""
    budget = budget if budget is not None else [MAX_CONFIG_NODES]
    budget[0] -= 1
    if budget[0] < 0:
        raise ConvertError("config too large (more than %d values; a pickle bomb?)"
                           % MAX_CONFIG_NODES)
    if depth > 200:
        raise ConvertError("config nesting too deep (cyclic?)")
    if isinstance(obj, OmegaDict) or isinstance(obj, OmegaList) or isinstance(obj, OmegaNode):
        state = obj.state if isinstance(obj.state, dict) else {}
        key = "_val" if isinstance(obj, OmegaNode) else "_content"
        return plain(state.get(key), depth + 1, budget)
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            key = plain(k, depth + 1, budget)
            if not isinstance(key, (str, int, float, bool, type(None))):
                raise ConvertError("config has a key that is not a plain value (%s)"
                                   % type(key).__name__)
            out[key] = plain(v, depth + 1, budget)
        return out
    if isinstance(obj, (list, tuple)):
        return [plain(v, depth + 1, budget) for v in obj]
    if isinstance(obj, Inert) and not isinstance(obj, Checkpoint):
        return None
    return obj


def check_memo(data):
    """The C unpickler allocates its memo up to the largest PUT index: refuse indices that no
    pickle of this size can need (a few bytes could otherwise ask for gigabytes)."""
    try:
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name in ("PUT", "BINPUT", "LONG_BINPUT") and int(arg) > len(data):
                raise ConvertError("data.pkl: memo index %d out of range (corrupt or hostile "
                                   "pickle)" % int(arg))
    except (ValueError, OverflowError, MemoryError) as e:
        raise ConvertError("data.pkl is not a valid pickle (%s)" % SHORT.repr(str(e))) from None


def load_checkpoint(path):
    """Return (state fields dict, archive) of a torch zip checkpoint."""
    try:
        archive = zipfile.ZipFile(path)
        names = archive.namelist()
    except FileNotFoundError:
        raise ConvertError("%s: no such file" % path) from None
    except ZIP_ERRORS as e:
        raise ConvertError("%s is not a readable torch zip checkpoint (%s); truncated, or saved "
                           "with the legacy torch.save format?" % (path, e)) from None
    pkls = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
    if len(pkls) != 1:
        raise ConvertError("%s: expected exactly one */data.pkl entry, found %d" % (path, len(pkls)))
    prefix = pkls[0][:-len("data.pkl")]
    try:
        if prefix + "byteorder" in names:
            order = archive.read(prefix + "byteorder").decode("ascii", "replace").strip()
            if order != "little":
                raise ConvertError("%s: byteorder is %r; only little-endian checkpoints are "
                                   "supported" % (path, order))
        data = archive.read(pkls[0])
        check_memo(data)
        obj = SafeUnpickler(data, archive, prefix).load()
    except ConvertError:
        raise
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError, TypeError,
            AttributeError, IndexError, KeyError, struct.error, RecursionError, OSError,
            OverflowError, NotImplementedError) as e:
        raise ConvertError("%s: cannot read data.pkl (%s: %s)" % (path, type(e).__name__, e)) from None
    if isinstance(obj, Checkpoint):
        fields = obj.state if isinstance(obj.state, dict) else {}
    elif isinstance(obj, dict):
        fields = obj
    else:
        raise ConvertError("%s: data.pkl does not hold an MLIPInferenceCheckpoint" % path)
    for key in ("model_config", "tasks_config", "ema_state_dict"):
        if fields.get(key) is None:
            raise ConvertError("%s: checkpoint has no %s" % (path, key))
    return fields, archive


def collect_tensors(ema):
    """ema_state_dict -> sorted list of (name, Tensor) as stored in the output."""
    if not isinstance(ema, dict):
        raise ConvertError("ema_state_dict is not a dict")
    out = {}
    for key, t in ema.items():
        if key == "n_averaged":
            continue
        if not isinstance(key, str) or not isinstance(t, Tensor):
            raise ConvertError("ema_state_dict entry %r is not a tensor" % (key,))
        name = key
        while name.startswith("module."):
            name = name[len("module."):]
        if name.startswith("backbone.Jd_"):
            continue
        if name in out:
            raise ConvertError("two ema_state_dict entries map to the name %s" % name)
        if t.dtype not in ("F32", "F64", "F16", "BF16"):
            raise ConvertError("tensor %s has integer/bool dtype %s (%s); only floating-point "
                               "weights are supported" % (name, t.dtype, t.storage.stype.torch_name))
        t.check_bounds(name)
        out[name] = t
    if not out:
        raise ConvertError("ema_state_dict holds no tensors")
    return sorted(out.items())


def out_dtype(t):
    return "F64" if t.dtype == "F64" else "F32"


def out_bytes(t):
    """Tensor bytes as written: F16/BF16 widened to F32."""
    data = t.c_bytes()
    if t.dtype == "F16":
        n = len(data) // 2
        return struct.pack("<%df" % n, *struct.unpack("<%de" % n, data))
    if t.dtype == "BF16":              # bf16 is the upper half of an f32 (little-endian)
        wide = bytearray(2 * len(data))
        wide[2::4], wide[3::4] = data[0::2], data[1::2]
        return bytes(wide)
    return data


# ---------------------------------------------------------------------------------------
# Metadata
# ---------------------------------------------------------------------------------------

# backbone key -> (type, fairchem default or REQUIRED), in the order written
REQUIRED = object()
BACKBONE_KEYS = [
    ("sphere_channels", int, 128), ("hidden_channels", int, 128), ("edge_channels", int, 128),
    ("lmax", int, 2), ("mmax", int, 2), ("num_layers", int, 2), ("num_distance_basis", int, 512),
    ("cutoff", float, 5.0), ("max_num_elements", int, 100), ("max_neighbors", int, 300),
    ("num_experts", int, 8), ("norm_type", str, "rms_norm_sh"), ("act_type", str, "gate"),
    ("ff_type", str, "grid"), ("chg_spin_emb_type", str, "pos_emb"),
    ("distance_function", str, "gaussian"), ("use_composition_embedding", bool, False),
    ("use_dataset_embedding", bool, True), ("moe_expert_coefficient_norm", str, "softmax"),
    ("charge_balanced_channels", list, []), ("spin_balanced_channels", list, []),
    ("direct_forces", bool, True),
]


def backbone_meta(bb):
    out = {}
    for key, typ, default in BACKBONE_KEYS:
        v = bb.get(key)
        if v is None:
            v = default
        if typ is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        ok = isinstance(v, typ) and (typ is bool or not isinstance(v, bool))
        if typ is list:
            ok = ok and all(isinstance(c, int) and not isinstance(c, bool) for c in v)
        if typ is float:
            ok = ok and math.isfinite(v)
        if not ok:
            raise ConvertError("model_config.backbone.%s = %r is not a valid %s"
                               % (key, v, typ.__name__))
        out[key] = list(v) if typ is list else v
    return out


def scalar(v, what):
    """A normaliser value: number, 1-element tensor/list, or {'_target_':..., '_args_': [x]}."""
    if isinstance(v, Tensor) and v.numel() == 1:
        v = v.values()[0]
    elif isinstance(v, dict) and "_args_" in v:
        return scalar(v["_args_"], what)
    elif isinstance(v, list) and len(v) == 1:
        return scalar(v[0], what)
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
        return float(v)
    raise ConvertError("%s: cannot read a number from %r" % (what, v))


def normalizer(task):
    norm = task.get("normalizer")
    what = "task %s normalizer" % task.get("name")
    if norm is None:
        raise ConvertError("%s is missing" % what)
    if not isinstance(norm, dict):
        raise ConvertError("%s is not a dict" % what)
    rmsd = norm.get("rmsd", norm.get("std", 1.0))   # fairchem Normalizer(mean=0.0, rmsd=1.0)
    return {"mean": scalar(norm.get("mean", 0.0), what + " mean"),
            "rmsd": scalar(rmsd, what + " rmsd")}


def element_refs(v, what):
    """The float64 table from an ElementReferences config, a tensor or a plain list."""
    for _ in range(10):
        if isinstance(v, dict) and "element_references" in v:
            v = v["element_references"]
        elif isinstance(v, dict) and "_args_" in v:
            v = v["_args_"]
        elif isinstance(v, list) and len(v) == 1 and not isinstance(v[0], (int, float)):
            v = v[0]
        else:
            break
    if isinstance(v, Tensor):
        v = v.values()
    if (not isinstance(v, list) or not v or not all(isinstance(x, (int, float)) and not
                                                     isinstance(x, bool) and math.isfinite(x) for x in v)):
        raise ConvertError("%s: element_references is not a list of finite numbers" % what)
    return [float(x) for x in v]


def tasks_meta(tasks_config, mapping, n_elements):
    if not isinstance(tasks_config, list) or not all(isinstance(t, dict) for t in tasks_config):
        raise ConvertError("tasks_config is not a list of task dicts")

    def find(prop, dataset, key):
        for name in (dataset, key):
            hits = [t for t in tasks_config if t.get("property") == prop
                    and isinstance(t.get("datasets"), list) and name in t["datasets"]]
            if len(hits) > 1:
                raise ConvertError("dataset %s has %d %s tasks (%s); expected one" % (
                    name, len(hits), prop, ", ".join(str(t.get("name")) for t in hits)))
            if hits:
                return hits[0]
        return None

    out = {}
    for key, dataset in mapping.items():
        energy = find("energy", dataset, key)
        if energy is None:
            raise ConvertError("task %s (dataset %s) has no energy task in tasks_config"
                               % (key, dataset))
        entry = {"dataset": dataset, "energy": normalizer(energy)}
        for prop in ("forces", "stress"):
            task = find(prop, dataset, key)
            # a missing task is fairchem's untrained derivative: it uses the energy normaliser
            norm = normalizer(task) if task is not None else dict(entry["energy"])
            if norm["rmsd"] != entry["energy"]["rmsd"] or norm["mean"] != 0.0:
                raise ConvertError(
                    "task %s: %s normalizer (mean %r, rmsd %r%s) must have mean 0 and the energy "
                    "rmsd %r, otherwise forces/stress are not derivatives of the energy"
                    % (key, prop, norm["mean"], norm["rmsd"], "" if task is not None else
                       "; no %s task, so the energy normalizer" % prop, entry["energy"]["rmsd"]))
            entry[prop] = norm
        refs = energy.get("element_references")
        entry["element_references"] = ([0.0] * n_elements if refs is None else
                                       element_refs(refs, "task %s" % energy.get("name")))
        out[key] = entry
    return out


def build_metadata(fields, tensors, source_name):
    cfg = plain(fields["model_config"])
    if not isinstance(cfg, dict) or not isinstance(cfg.get("backbone"), dict):
        raise ConvertError("model_config has no backbone section")
    bb = cfg["backbone"]

    model_id = cfg.get("model_id")
    if model_id is None:
        if bb.get("model_version") == 1.1:
            model_id = "UMA-1.1"          # fairchem compat.py rule
        else:
            raise ConvertError("checkpoint has no model_id and backbone.model_version is %r, not "
                               "1.1: UMA 1.0 checkpoints are not supported" % bb.get("model_version"))
    if not isinstance(model_id, str):
        raise ConvertError("model_config.model_id %r is not a string" % (model_id,))

    mapping = bb.get("dataset_mapping")
    if mapping is None and isinstance(bb.get("dataset_list"), list):
        mapping = {d: d for d in bb["dataset_list"]}
    if (not isinstance(mapping, dict) or not mapping
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in mapping.items())):
        raise ConvertError("model_config.backbone has no usable dataset_mapping or dataset_list")

    heads = cfg.get("heads")
    if not isinstance(heads, dict) or len(heads) != 1:
        raise ConvertError("model_config.heads must hold exactly one head, found %r"
                           % (list(heads) if isinstance(heads, dict) else heads))
    head_name, head = next(iter(heads.items()))
    if not isinstance(head, dict) or not isinstance(head.get("module"), str):
        raise ConvertError("head %s has no module string" % head_name)

    backbone = backbone_meta(bb)
    meta = {
        "format": "umas-model",
        "format_version": FORMAT_VERSION,
        "model_id": model_id,
        "converted_from": source_name,
        "backbone": backbone,
        "dataset_mapping": dict(mapping),
        "head": {"name": head_name, "module": head["module"].rsplit(".", 1)[-1],
                 "experts": sorted(set(mapping.values()))},
        "tasks": tasks_meta(plain(fields["tasks_config"]), mapping, backbone["max_num_elements"]),
        "supports_single_atoms": bool(cfg.get("supports_single_atoms", False)),
    }

    # Self-checks: expert counts of the MoLE weights match the config.
    k, kh = backbone["num_experts"], len(meta["head"]["experts"])
    head_prefix = "output_heads.%s." % head_name
    for name, t in tensors:
        if name.startswith("backbone.") and name.endswith(".weights"):
            if len(t.shape) != 3 or t.shape[0] != k:
                raise ConvertError("MoLE tensor %s has shape %s; expected [num_experts=%d, out, in]"
                                   % (name, list(t.shape), k))
        if name.startswith(head_prefix) and name.endswith(".weights"):
            if len(t.shape) != 3 or t.shape[0] != kh:
                raise ConvertError("head tensor %s has shape %s; expected %d dataset experts"
                                   % (name, list(t.shape), kh))
    return meta


# ---------------------------------------------------------------------------------------
# Writing safetensors
# ---------------------------------------------------------------------------------------

def write_safetensors(path, tensors, meta):
    header = {"__metadata__": {"umas": json.dumps(meta, allow_nan=False)}}
    pos = 0
    for name, t in tensors:
        size = t.numel() * (8 if out_dtype(t) == "F64" else 4)
        header[name] = {"dtype": out_dtype(t), "shape": list(t.shape), "data_offsets": [pos, pos + size]}
        pos += size
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-(8 + len(blob)) % 8)       # data section starts 8-byte aligned
    tmp = "%s.tmp%d" % (path, os.getpid())
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(blob)))
            f.write(blob)
            for name, t in tensors:
                data = out_bytes(t)
                if len(data) != header[name]["data_offsets"][1] - header[name]["data_offsets"][0]:
                    raise ConvertError("internal error: size mismatch writing %s" % name)
                f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return 8 + len(blob) + pos


def read_info(path):
    """Metadata of a converted file (for --info)."""
    try:
        with open(path, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            if n > 100 * 1024 * 1024:
                raise ConvertError("%s: implausible safetensors header length %d" % (path, n))
            header = json.loads(f.read(n))
        meta = json.loads(header["__metadata__"]["umas"])
    except ConvertError:
        raise
    except (OSError, struct.error, ValueError, KeyError, TypeError) as e:
        raise ConvertError("%s is not a umas model file (%s)" % (path, e)) from None
    meta["tensors"] = len(header) - 1
    return meta


def convert(inp, outp):
    fields, archive = load_checkpoint(inp)
    with archive:
        tensors = collect_tensors(fields["ema_state_dict"])
        meta = build_metadata(fields, tensors, os.path.basename(inp))
        try:
            size = write_safetensors(outp, tensors, meta)
        except OSError as e:
            raise ConvertError("cannot write %s: %s" % (outp, e.strerror or e)) from None
        except (zipfile.BadZipFile, EOFError) as e:
            raise ConvertError("%s: cannot read tensor data (%s)" % (inp, e)) from None
    print("umas-convert: wrote %s: %d tensors, %d bytes, model_id %s, tasks %s"
          % (outp, len(tensors), size, meta["model_id"], ",".join(meta["tasks"])))


def main(argv=None):
    ap = argparse.ArgumentParser(prog="umas-convert", description="Convert a fairchem UMA "
                                 "checkpoint (.pt) into a umas safetensors model file.")
    ap.add_argument("input", nargs="?", help="fairchem checkpoint (.pt)")
    ap.add_argument("output", nargs="?", help="model file to write (.safetensors)")
    ap.add_argument("--info", metavar="FILE", help="print the metadata of a converted file")
    args = ap.parse_args(argv)
    try:
        if args.info:
            if args.input or args.output:
                ap.error("--info takes no other arguments")
            print(json.dumps(read_info(args.info), indent=2))
        elif args.input and args.output:
            convert(args.input, args.output)
        else:
            ap.error("need IN.pt OUT.safetensors (or --info FILE)")
    except ConvertError as e:
        print("umas-convert: error: %s" % e, file=sys.stderr)
        return 1
    except MemoryError:
        print("umas-convert: error: out of memory", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as e:          # a malformed file we did not foresee: still no traceback
        if os.environ.get("UMAS_CONVERT_DEBUG"):
            raise
        print("umas-convert: error: unexpected failure (%s: %s); set UMAS_CONVERT_DEBUG=1 for a "
              "traceback" % (type(e).__name__, e), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
