#!/usr/bin/env python3
"""Bad inputs -> what the user sees, for the model loader and the converter (stdlib only).

    python3 tests/fuzz/bad_inputs.py [--eval build/umas-eval] [--convert tools/umas_convert.py]
                                     [--tiny build/test-models/tiny.safetensors]
                                     [--checkpoint tests/data/checkpoints/tiny.pt]

Builds each bad input from the tiny model / checkpoint in a temporary directory, runs the real
command-line tools on it once (umas-eval --model X --task omat STRUCTURE; umas-convert IN OUT),
and prints a Markdown table of the input, exit status, wall time and the message (stderr).
docs/reliability.md holds its output. Exit status 1 when an input crashes a tool (signal) or a
converter run prints a Python traceback.
"""

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
import fuzz_converter as fc  # noqa: E402  (pickle assembler, checkpoint builders)
import make_seeds as ms  # noqa: E402


def split_model(blob):
    n = struct.unpack("<Q", blob[:8])[0]
    return json.loads(blob[8:8 + n]), blob[8 + n:]


def join_model(header, data):
    return ms.safetensors(header, data)


def loader_cases(tiny):
    header, data = split_model(tiny)
    meta = json.loads(header["__metadata__"]["umas"])
    name = "backbone.mix_csd.weight"
    cases = []

    def case(label, blob):
        cases.append((label, blob))

    def with_header(fn):
        h = json.loads(json.dumps(header))
        fn(h)
        return join_model(h, data)

    def with_meta(fn):
        m = json.loads(json.dumps(meta))
        fn(m)
        return with_header(lambda h: h["__metadata__"].__setitem__("umas", json.dumps(m)))

    case("missing file", None)
    case("a directory", "DIR")
    case("empty file", b"")
    case("7 bytes", b"\x01" * 7)
    case("a text file (README.md)", open(os.path.join(ROOT, "README.md"), "rb").read())
    case("truncated to half", tiny[:len(tiny) // 2])
    case("header only (data cut off)", tiny[:8 + struct.unpack("<Q", tiny[:8])[0]])
    case("last byte missing", tiny[:-1])
    case("header length field 2^63", struct.pack("<Q", 1 << 63) + tiny[8:])
    bad = bytearray(tiny)
    bad[8 + 1] = ord("}")
    case("corrupt JSON header (byte 9 = '}')", bytes(bad))
    case("plain safetensors, no __metadata__", with_header(lambda h: h.pop("__metadata__")))
    case("__metadata__.umas not JSON",
         with_header(lambda h: h["__metadata__"].__setitem__("umas", "{oops")))
    case("format_version 2", with_meta(lambda m: m.__setitem__("format_version", 2)))
    case("lmax 3 (not UMA-S)", with_meta(lambda m: m["backbone"].__setitem__("lmax", 3)))
    case("norm_type layer_norm", with_meta(lambda m: m["backbone"].__setitem__("norm_type",
                                                                                "layer_norm")))
    case("num_experts 5 (tensors have 4)",
         with_meta(lambda m: m["backbone"].__setitem__("num_experts", 5)))
    case("element_references too short",
         with_meta(lambda m: m["tasks"]["omat"].__setitem__("element_references", [0.0])))
    case("wrong dtype (F16)", with_header(lambda h: h[name].__setitem__("dtype", "F16")))
    case("wrong dtype (F64, bytes of F32)", with_header(lambda h: h[name].__setitem__("dtype", "F64")))
    case("wrong shape (same size, transposed)",
         with_header(lambda h: h[name].__setitem__("shape", h[name]["shape"][::-1])))
    case("wrong shape (5 dims)",
         with_header(lambda h: h[name].__setitem__("shape", [1, 1, 1] + h[name]["shape"])))
    case("data_offsets past the end",
         with_header(lambda h: h[name].__setitem__("data_offsets", [0, len(data) + 4])))
    case("data_offsets reversed",
         with_header(lambda h: h[name].__setitem__("data_offsets", h[name]["data_offsets"][::-1])))
    case("missing tensor", with_header(lambda h: h.pop(name)))
    case("missing dataset embedding",
         with_header(lambda h: h.pop("backbone.dataset_embedding.dataset_emb_dict.omat.weight")))
    case("header ends at page end in '{\"a\":1,' (cJSON CVE-2023-53154 shape)",
         ms.raw(b" " * (4088 - 7) + b'{"a":1,'))
    # 4000 copies of one task name with distinct datasets: parse_tasks is cubic
    m = json.dumps(ms.metadata(dict(ms.MINI_HP), {"a": "d"}, True))
    mapping = "{" + ",".join('"a":"%x"' % i for i in range(4000)) + "}"
    m = m.replace('"dataset_mapping": {"a": "d"}', '"dataset_mapping": ' + mapping)
    case("dataset_mapping with 4000 entries (57 KB file)",
         ms.raw(json.dumps({"__metadata__": {"umas": m}})))
    return cases


def converter_cases(tiny_pt):
    with zipfile.ZipFile(tiny_pt) as z:
        entries = [(i.filename, z.read(i.filename)) for i in z.infolist()]
    pkl_name = next(n for n, _ in entries if n.endswith("data.pkl"))
    raw = open(tiny_pt, "rb").read()
    cases = []

    def case(label, blob):
        cases.append((label, blob))

    def rebuild(fn):
        return fc.build_zip(fn(list(entries)))

    case("missing file", None)
    case("a directory", "DIR")
    case("empty file", b"")
    case("a text file (README.md)", open(os.path.join(ROOT, "README.md"), "rb").read())
    case("truncated zip (half)", raw[:len(raw) // 2])
    case("zip without data.pkl", rebuild(lambda e: [x for x in e if x[0] != pkl_name]))
    case("two data.pkl", rebuild(lambda e: e + [("other/data.pkl", dict(e)[pkl_name])]))
    case("legacy (non-zip) torch.save: a bare pickle", dict(entries)[pkl_name])
    case("data.pkl truncated", rebuild(lambda e: [(n, d[:len(d) // 2] if n == pkl_name else d)
                                                  for n, d in e]))
    case("byteorder big", rebuild(lambda e: [(n, b"big" if n.endswith("byteorder") else d)
                                             for n, d in e]))
    case("a storage entry missing", rebuild(lambda e: [x for x in e if x[0] != "tiny/data/3"]))
    case("a storage entry shorter", rebuild(lambda e: [(n, d[:-4] if n == "tiny/data/3" else d)
                                                       for n, d in e]))
    for label, mod, name in [("os.system", "os", "system"),
                             ("builtins.eval", "builtins", "eval"),
                             ("subprocess.Popen", "subprocess", "Popen")]:
        p = fc.P().glob(mod, name).raw(b"(").str("touch /tmp/umas-pwned").raw(b"tR").done()
        case("unsafe pickle global %s (GLOBAL+REDUCE)" % label, fc.checkpoint_with(p))
    p = fc.P(4).stack_glob("posix", "system").raw(b"(").str("touch /tmp/umas-pwned") \
        .raw(b"tR").done()
    case("unsafe pickle global posix.system (STACK_GLOBAL)", fc.checkpoint_with(p))
    case("checkpoint without model_config",
         fc.checkpoint_with(fc.emit(fc.P(), {"tasks_config": [], "ema_state_dict": {}}).done()))
    case("integer tensor in ema_state_dict",
         fc.minimal_checkpoint({"0": struct.pack("<2q", 1, 2)},
                               {"w": fc.T("0", [2], storage="LongStorage")}))
    case("tensor view past its storage",
         fc.minimal_checkpoint({"0": struct.pack("<2f", 1, 2)},
                               {"w": fc.T("0", [2], offset=1, numel=2)}))
    crashes = os.path.join(HERE, "crashes")
    for label, name in [("zip entry needs version 9.9 to extract", "converter-zip-version.pt"),
                        ("zip entry name not UTF-8 despite the UTF-8 flag",
                         "converter-zip-bad-utf8-name.pt"),
                        ("storage entry marked encrypted", "converter-storage-encrypted.pt"),
                        ("storage entry with compression method 99",
                         "converter-storage-unknown-compression.pt"),
                        ("config dict key that unwraps to a list",
                         "converter-unhashable-config-key.pt")]:
        if os.path.exists(os.path.join(crashes, name)):
            case(label, open(os.path.join(crashes, name), "rb").read())
    case("memo index bomb (LONG_BINPUT 2^26; 9-byte data.pkl)",
         fc.checkpoint_with(fc.P().raw(b"N" + b"r" + struct.pack("<I", 1 << 26)).done()))
    p = fc.P().raw(b"N")
    for _ in range(22):
        p.raw(b"q\x000h\x00h\x00\x86")
    case("shared-reference bomb, depth 22, in a persistent id",
         fc.checkpoint_with(p.raw(b"Q").done()))
    return cases


def run(cmd, timeout=600):
    t = time.monotonic()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=timeout)
        rc, err = p.returncode, p.stderr.strip()
    except subprocess.TimeoutExpired:
        rc, err = "timeout", ""
    return rc, err, time.monotonic() - t


def cell(text, limit=260):
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[:limit] + " ... [%d chars]" % len(text)
    return text.replace("|", "\\|")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eval", default=os.path.join(ROOT, "build", "umas-eval"))
    ap.add_argument("--convert", default=os.path.join(ROOT, "tools", "umas_convert.py"))
    ap.add_argument("--tiny", default=os.path.join(ROOT, "build", "test-models", "tiny.safetensors"))
    ap.add_argument("--checkpoint", default=os.path.join(ROOT, "tests", "data", "checkpoints",
                                                         "tiny.pt"))
    ap.add_argument("--structure", default=os.path.join(ROOT, "tests", "data", "structures",
                                                        "cu_fcc_108.extxyz"))
    ap.add_argument("--skip-slow", action="store_true", help="leave out the 4000-task file")
    args = ap.parse_args()
    bad = 0
    with tempfile.TemporaryDirectory(prefix="umas-bad-inputs-") as tmp:
        def place(label, blob, suffix):
            if blob is None:
                return os.path.join(tmp, "does-not-exist" + suffix)
            if blob == "DIR":
                path = os.path.join(tmp, "a-directory" + suffix)
                os.makedirs(path, exist_ok=True)
                return path
            path = os.path.join(tmp, "input" + suffix)
            with open(path, "wb") as f:
                f.write(blob)
            return path

        print("Loader (`umas-eval --model FILE --task omat %s`):\n"
              % os.path.relpath(args.structure, ROOT))
        print("| bad model file | exit | time | message |\n|---|---|---|---|")
        for label, blob in loader_cases(open(args.tiny, "rb").read()):
            if args.skip_slow and "4000" in label:
                continue
            path = place(label, blob, ".safetensors")
            rc, err, sec = run([args.eval, "--model", path, "--task", "omat", args.structure])
            if not isinstance(rc, int) or rc < 0:
                bad += 1
            err = err.replace(tmp + "/", "")
            print("| %s | %s | %.2f s | %s |" % (cell(label), rc, sec, cell(err)))

        print("\nConverter (`umas-convert IN.pt OUT.safetensors`):\n")
        print("| bad checkpoint | exit | time | message |\n|---|---|---|---|")
        cases = converter_cases(args.checkpoint)
        cases.append(("output directory does not exist", open(args.checkpoint, "rb").read()))
        for label, blob in cases:
            path = place(label, blob, ".pt")
            out = os.path.join(tmp, "out.safetensors")
            if label.startswith("output directory"):
                out = os.path.join(tmp, "no-such-dir", "out.safetensors")
            rc, err, sec = run([sys.executable, args.convert, path, out])
            if not isinstance(rc, int) or rc < 0 or "Traceback" in err:
                bad += 1
            err = err.replace(tmp + "/", "")
            print("| %s | %s | %.2f s | %s |" % (cell(label), rc, sec, cell(err)))
        if os.path.exists("/tmp/umas-pwned"):
            print("\n**/tmp/umas-pwned exists: a payload ran**")
            bad += 1
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
