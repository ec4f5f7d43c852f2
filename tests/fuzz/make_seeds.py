#!/usr/bin/env python3
"""Seed corpus for tests/fuzz/fuzz_model_loader.c (Python 3 standard library only).

    python3 tests/fuzz/make_seeds.py OUT_DIR [--tiny build/test-models/tiny.safetensors]
                                             [--max-bytes N]

Writes small safetensors files into OUT_DIR:

  mini_*        complete, loadable umas models built from scratch with the smallest
                hyperparameters the loader accepts (C = H = Ce = 1, 2 Gaussians, 1 expert,
                1 layer, 2 elements): they reach the MoLE merge and umas_compute in a few KB.
                Variants: F64, single-head wrapper, several tasks sharing a dataset, balanced
                channels, model_id UMA-S-1.2, every tensor sharing one data range, 2 layers.
  tiny_*        from the converted tiny model (when --tiny exists): its full header with the
                tensor data cut short (header-only), and, when it fits --max-bytes, the file.
  hdr_*         hand-made headers: empty file, short files, header length 0 / huge / past the
                end, JSON that is not an object, bad dtype/shape/data_offsets entries, odd
                metadata (wrong format, version, types), a header ending exactly at a page
                boundary inside an unterminated string (the mmap end), ...

Everything is deterministic (fixed random seed), so the corpus can be regenerated at will.
"""

import argparse
import json
import os
import random
import struct
import sys

# ---------------------------------------------------------------------------------------------
# A umas model from scratch (mirrors check_schema in core/model.c)
# ---------------------------------------------------------------------------------------------


def schema(hp, datasets, head_moe):
    """[(name, shape)] of every tensor the loader requires."""
    c, h, ce, k = hp["sphere_channels"], hp["hidden_channels"], hp["edge_channels"], hp["num_experts"]
    z, b = hp["max_num_elements"], hp["num_distance_basis"]
    f = b + 2 * ce
    out = []

    def radial(prefix, n_out):
        out.extend([
            (prefix + ".net.0.weight", [ce, f]), (prefix + ".net.0.bias", [ce]),
            (prefix + ".net.1.weight", [ce]), (prefix + ".net.1.bias", [ce]),
            (prefix + ".net.3.weight", [ce, ce]), (prefix + ".net.3.bias", [ce]),
            (prefix + ".net.4.weight", [ce]), (prefix + ".net.4.bias", [ce]),
            (prefix + ".net.6.weight", [n_out, ce]), (prefix + ".net.6.bias", [n_out])])

    def rms(prefix):
        out.extend([(prefix + ".affine_weight", [3, c]), (prefix + ".affine_bias", [c])])

    out.extend([
        ("backbone.sphere_embedding.weight", [z, c]),
        ("backbone.charge_embedding.rand_emb.weight", [201, c]),
        ("backbone.spin_embedding.rand_emb.weight", [101, c]),
        ("backbone.mix_csd.weight", [c, 3 * c]), ("backbone.mix_csd.bias", [c]),
        ("backbone.source_embedding.weight", [z, ce]),
        ("backbone.target_embedding.weight", [z, ce]),
        ("backbone.composition_embedding.weight", [z, c]),
        ("backbone.routing_mlp.0.weight", [2 * k, 2 * c]), ("backbone.routing_mlp.0.bias", [2 * k]),
        ("backbone.routing_mlp.2.weight", [2 * k, 2 * k]), ("backbone.routing_mlp.2.bias", [2 * k]),
        ("backbone.routing_mlp.4.weight", [k, 2 * k]), ("backbone.routing_mlp.4.bias", [k]),
    ])
    radial("backbone.edge_degree_embedding.rad_func", 3 * c)
    rms("backbone.norm")
    p = "output_heads.energyandforcehead.head.energy_block"
    kh = len(set(datasets))
    if head_moe:
        out.extend([(p + ".0.weights", [kh, h, c]), (p + ".0.bias", [h]),
                    (p + ".2.weights", [kh, h, h]), (p + ".2.bias", [h]),
                    (p + ".4.weights", [kh, 1, h]), (p + ".4.bias", [1])])
    else:
        out.extend([(p + ".0.weight", [h, c]), (p + ".0.bias", [h]),
                    (p + ".2.weight", [h, h]), (p + ".2.bias", [h]),
                    (p + ".4.weight", [1, h]), (p + ".4.bias", [1])])
    for d in sorted(set(datasets)):
        out.append(("backbone.dataset_embedding.dataset_emb_dict.%s.weight" % d, [1, c]))
    for layer in range(hp["num_layers"]):
        q = "backbone.blocks.%d" % layer
        rms(q + ".norm_1")
        rms(q + ".norm_2")
        radial(q + ".edge_wise.so2_conv_1.rad_func", 12 * c)
        e1, e2 = q + ".edge_wise.so2_conv_1", q + ".edge_wise.so2_conv_2"
        out.extend([
            (e1 + ".fc_m0.weights", [k, 5 * h, 6 * c]), (e1 + ".fc_m0.bias", [5 * h]),
            (e1 + ".so2_m_conv.0.fc.weights", [k, 4 * h, 4 * c]),
            (e1 + ".so2_m_conv.1.fc.weights", [k, 2 * h, 2 * c]),
            (e2 + ".fc_m0.weights", [k, 3 * c, 3 * h]), (e2 + ".fc_m0.bias", [3 * c]),
            (e2 + ".so2_m_conv.0.fc.weights", [k, 4 * c, 2 * h]),
            (e2 + ".so2_m_conv.1.fc.weights", [k, 2 * c, h]),
            (q + ".atom_wise.scalar_mlp.0.weight", [2 * h, c]),
            (q + ".atom_wise.scalar_mlp.0.bias", [2 * h]),
            (q + ".atom_wise.so3_linear_1.weight", [3, h, c]),
            (q + ".atom_wise.so3_linear_1.bias", [h]),
            (q + ".atom_wise.so3_linear_2.weight", [3, c, h]),
            (q + ".atom_wise.so3_linear_2.bias", [c])])
    return out


MINI_HP = {
    "sphere_channels": 1, "hidden_channels": 1, "edge_channels": 1, "lmax": 2, "mmax": 2,
    "num_layers": 1, "num_distance_basis": 2, "cutoff": 6.0, "max_num_elements": 2,
    "max_neighbors": 300, "num_experts": 1, "norm_type": "rms_norm_sh", "act_type": "gate",
    "ff_type": "spectral", "chg_spin_emb_type": "rand_emb", "distance_function": "gaussian",
    "use_composition_embedding": True, "use_dataset_embedding": True,
    "moe_expert_coefficient_norm": "softmax", "charge_balanced_channels": [],
    "spin_balanced_channels": [], "direct_forces": False,
}


def metadata(hp, mapping, head_moe, model_id="UMA-S-1.2.1"):
    datasets = sorted(set(mapping.values()))
    tasks = {}
    for key, ds in mapping.items():
        norm = {"mean": 0.0, "rmsd": 1.5}
        tasks[key] = {"dataset": ds, "energy": dict(norm, mean=0.25), "forces": norm,
                      "stress": norm,
                      "element_references": [0.0] + [-1.0 - 0.5 * i
                                                     for i in range(hp["max_num_elements"] - 1)]}
    return {
        "format": "umas-model", "format_version": 1, "model_id": model_id,
        "converted_from": "make_seeds.py", "backbone": hp, "dataset_mapping": mapping,
        "head": {"name": "energyandforcehead",
                 "module": "DatasetSpecificMoEWrapper" if head_moe
                 else "DatasetSpecificSingleHeadWrapper",
                 "experts": datasets},
        "tasks": tasks, "supports_single_atoms": True,
    }


def safetensors(header, data, align=True):
    blob = json.dumps(header, separators=(",", ":")).encode()
    if align:
        blob += b" " * (-(8 + len(blob)) % 8)
    return struct.pack("<Q", len(blob)) + blob + data


def model_file(hp, mapping=None, head_moe=True, dtype="F32", shared=False, model_id="UMA-S-1.2.1",
               rng=None):
    mapping = mapping or {"omat": "omat"}
    rng = rng or random.Random(1)
    tensors = schema(hp, list(mapping.values()), head_moe)
    item, fmt = (8, "d") if dtype == "F64" else (4, "f")
    header = {"__metadata__": {"umas": json.dumps(metadata(hp, mapping, head_moe, model_id))}}
    data = bytearray()
    if shared:   # every tensor starts at byte 0 of one buffer as long as the largest
        biggest = max(_numel(s) for _, s in tensors)
        data += struct.pack("<%d%s" % (biggest, fmt), *[rng.uniform(-0.5, 0.5)
                                                          for _ in range(biggest)])
    for name, shape in tensors:
        n = _numel(shape)
        if shared:
            header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [0, n * item]}
            continue
        begin = len(data)
        data += struct.pack("<%d%s" % (n, fmt), *[rng.uniform(-0.5, 0.5) for _ in range(n)])
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [begin, len(data)]}
    return safetensors(header, bytes(data))


def _numel(shape):
    n = 1
    for s in shape:
        n *= s
    return n


# ---------------------------------------------------------------------------------------------
# Hand-made malformed headers
# ---------------------------------------------------------------------------------------------

def raw(header_text, data=b"", length=None):
    blob = header_text.encode() if isinstance(header_text, str) else header_text
    n = len(blob) if length is None else length
    return struct.pack("<Q", n) + blob + data


def meta_header(meta, tensors=None):
    h = {"__metadata__": {"umas": meta if isinstance(meta, str) else json.dumps(meta)}}
    h.update(tensors or {})
    return json.dumps(h)


def header_seeds():
    s = {}
    s["hdr_empty"] = b""
    s["hdr_7_bytes"] = b"\x10\x00\x00\x00\x00\x00\x00"
    s["hdr_len0"] = raw("")
    s["hdr_len_huge"] = struct.pack("<Q", 2 ** 63 + 5) + b"{}"
    s["hdr_len_past_end"] = raw("{}", length=100)
    s["hdr_len_101MB"] = struct.pack("<Q", 101 * 1024 * 1024) + b"{}"
    s["hdr_not_json"] = raw("{\"a\": ")
    s["hdr_array"] = raw("[1,2,3]")
    s["hdr_string"] = raw("\"umas\"")
    s["hdr_empty_obj"] = raw("{}")
    s["hdr_nul_inside"] = raw(b"{\"a\x00b\":{}}")
    s["hdr_meta_only"] = raw(meta_header("{}"))
    s["hdr_meta_not_string"] = raw('{"__metadata__":{"umas":{"format":"umas-model"}}}')
    s["hdr_meta_not_json"] = raw(meta_header("{not json"))
    s["hdr_meta_format"] = raw(meta_header({"format": "other", "format_version": 1}))
    s["hdr_meta_version2"] = raw(meta_header({"format": "umas-model", "format_version": 2}))
    s["hdr_meta_version_str"] = raw(meta_header({"format": "umas-model", "format_version": "1"}))
    s["hdr_meta_no_id"] = raw(meta_header({"format": "umas-model", "format_version": 1}))
    bb = dict(MINI_HP)
    s["hdr_meta_no_tasks"] = raw(meta_header({"format": "umas-model", "format_version": 1,
                                               "model_id": "x", "backbone": bb}))
    for key, val in [("lmax", 3), ("sphere_channels", 0), ("num_layers", 1e10),
                     ("cutoff", -1), ("max_num_elements", 1001), ("num_experts", 1.5),
                     ("norm_type", "layer_norm"), ("direct_forces", True),
                     ("use_composition_embedding", "yes"), ("charge_balanced_channels", [5]),
                     ("spin_balanced_channels", {"a": 1}), ("charge_balanced_channels", [0, 0, -1])]:
        m = metadata(dict(bb, **{key: val}), {"omat": "omat"}, True)
        s["hdr_bb_%s_%s" % (key, str(val).replace(" ", "").replace("/", "_"))[:60]] = \
            raw(meta_header(m))
    m = metadata(bb, {"omat": "omat"}, True)
    m["dataset_mapping"] = {}
    s["hdr_mapping_empty"] = raw(meta_header(m))
    m = metadata(bb, {"omat": "omat"}, True)
    m["dataset_mapping"] = {"omat": 5}
    s["hdr_mapping_not_string"] = raw(meta_header(m))
    m = metadata(bb, {"omat": "omat"}, True)
    m["tasks"]["omat"]["element_references"] = [0.0]
    s["hdr_refs_short"] = raw(meta_header(m))
    m = metadata(bb, {"omat": "omat"}, True)
    m["tasks"]["omat"]["element_references"] = [0.0, "x"]
    s["hdr_refs_string"] = raw(meta_header(m))
    m = metadata(bb, {"omat": "omat"}, True)
    m["head"]["module"] = "Linear"
    s["hdr_head_module"] = raw(meta_header(m))
    # duplicate keys (cJSON keeps both, the loader sees the first in lookups)
    s["hdr_dup_mapping"] = raw(meta_header(json.dumps(metadata(bb, {"omat": "omat"}, True))
                                           .replace('"dataset_mapping": {"omat": "omat"}',
                                                    '"dataset_mapping": {"omat": "omat", "omat": "oc20"}')))
    # tensor entries
    good = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    for label, entry in [
            ("dtype_f16", dict(good, dtype="F16")), ("dtype_num", dict(good, dtype=4)),
            ("shape_neg", dict(good, shape=[-2])), ("shape_float", dict(good, shape=[1.5])),
            ("shape_huge", dict(good, shape=[1e13])), ("shape_5d", dict(good, shape=[1, 1, 1, 1, 2])),
            ("shape_str", dict(good, shape=["2"])), ("shape_overflow",
                                                      dict(good, shape=[4294967296, 1073741824],
                                                           data_offsets=[0, 0])),
            ("off_reversed", dict(good, data_offsets=[8, 0])),
            ("off_neg", dict(good, data_offsets=[-8, 0])),
            ("off_past_end", dict(good, data_offsets=[0, 4096])),
            ("off_float", dict(good, data_offsets=[0.5, 8.5])),
            ("off_huge", dict(good, data_offsets=[1e300, 1e300])),
            ("off_three", dict(good, data_offsets=[0, 8, 16])),
            ("off_missing", {"dtype": "F32", "shape": [2]}),
            ("entry_not_obj", [1, 2])]:
        s["hdr_tensor_" + label] = raw(json.dumps({"t": entry}), data=b"\x00" * 16)
    # headers that end exactly at the end of a 4096-byte file in the middle of a JSON value: a
    # JSON parser that reads one byte past the header length leaves the file mapping there
    # (SIGSEGV when the next page is unmapped; tests/fuzz/crashes/README.md, cJSON < 1.7.18)
    for label, tail in [("trailing_comma", b'{"a":1,'), ("colon", b'{"a":'), ("key", b'{"a"'),
                        ("open", b"{"), ("string", b'{"a":"x'), ("escape", b'{"a":"\\u12'),
                        ("backslash", b'{"a":"\\'), ("array", b'{"a":[1'),
                        ("array_comma", b'{"a":[1,'), ("number", b'{"a":-1.5e'),
                        ("literal", b'{"a":tru')]:
        s["hdr_page_end_" + label] = raw(b" " * (4088 - len(tail)) + tail)
        assert len(s["hdr_page_end_" + label]) == 4096
    return s


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="directory to write the seeds into")
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--tiny", default=os.path.join(here, "..", "..", "build", "test-models",
                                                   "tiny.safetensors"))
    ap.add_argument("--max-bytes", type=int, default=65536,
                    help="largest seed written (libFuzzer's -max_len should be at least this)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    seeds = header_seeds()

    hp = dict(MINI_HP)
    seeds["mini"] = model_file(hp)
    seeds["mini_f64"] = model_file(hp, dtype="F64")
    seeds["mini_single_head"] = model_file(hp, head_moe=False)
    seeds["mini_tasks"] = model_file(hp, mapping={"omat": "omat", "oc20": "oc20",
                                                  "omol": "omol", "alias": "omat"})
    seeds["mini_v12"] = model_file(hp, model_id="UMA-S-1.2")
    seeds["mini_shared"] = model_file(hp, shared=True)
    seeds["mini_2layers_2experts"] = model_file(dict(hp, num_layers=2, num_experts=2))
    seeds["mini_balanced"] = model_file(dict(hp, sphere_channels=2, charge_balanced_channels=[0, 1],
                                             spin_balanced_channels=[1]))
    seeds["mini_wide"] = model_file(dict(hp, sphere_channels=2, hidden_channels=3,
                                         edge_channels=2, num_distance_basis=3,
                                         max_num_elements=4), shared=True)

    if os.path.exists(args.tiny):
        with open(args.tiny, "rb") as f:
            tiny = f.read()
        n = struct.unpack("<Q", tiny[:8])[0]
        seeds["tiny_header_only"] = tiny[:8 + n]
        seeds["tiny_header_1k_data"] = tiny[:8 + n + 1024]
        if len(tiny) <= args.max_bytes:
            seeds["tiny_full"] = tiny
    else:
        print("make_seeds: %s not found, no tiny_* seeds" % args.tiny, file=sys.stderr)

    written = 0
    for name, data in sorted(seeds.items()):
        if len(data) > args.max_bytes:
            print("make_seeds: skipping %s (%d bytes > --max-bytes)" % (name, len(data)),
                  file=sys.stderr)
            continue
        with open(os.path.join(args.out, name), "wb") as f:
            f.write(data)
        written += 1
    print("make_seeds: wrote %d seeds to %s (largest %d bytes)"
          % (written, args.out, max(len(d) for d in seeds.values() if len(d) <= args.max_bytes)))


if __name__ == "__main__":
    main()
