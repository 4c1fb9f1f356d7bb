"""Fuzz the glmcpu model-file reader and the Hugging Face checkpoint reader.

    python tools/fuzz_loader.py --minutes 10             # random cases until the time is up
    python tools/fuzz_loader.py --cases 300 --seed 7     # a fixed, reproducible run
    python tools/fuzz_loader.py --case model-q4:tensor_entry:123456   # rerun one case, in-process
    python tools/fuzz_loader.py --minutes 10 --protect params --skip config_value
                                    # the readers alone: leave the hyper-parameters and config.json
                                    # values (checked by the architectures and families) unchanged

What must hold (issue 16): every corrupted input ends in success or in exactly one GlmcpuError
line; never another exception, a crash, a hang or an allocation of absurd size.

Pristine inputs are made once from the golden checkpoints (../shared/golden):
    model-f16   chatglm3-tiny converted to f16, no tokenizer (a small header)
    model-q4    chatglm3-tiny converted to q4_0 with the ChatGLM3 tokenizer embedded
    model-v1    chatglm1-tiny (the ChatGLM-6B architecture) converted to f16
    model-0414  glm4-0414-tiny-bf16-sharded (GLM-4-0414, post-norms) converted to q8_0
    hf-st       the chatglm3-tiny checkpoint (config.json + model.safetensors)
    hf-sharded  the same tensors split over two safetensors shards + model.safetensors.index.json
    hf-bin      chatglm2-tiny-bin (two torch .bin shards + pytorch_model.bin.index.json)
    hf-0414     glm4-0414-tiny-bf16-sharded (four bf16 safetensors shards + index, model_type glm4)
A case applies one mutator (MODEL_MUTATORS / HF_MUTATORS below) to one source, writes the result
to a scratch directory and hands it to a worker process that opens it as a user would:
    model file   glmcpu.file.ModelFile(path); glmcpu.load(path); if that loads, a forward pass
                 over two tokens and the tokenizer on a short text
    checkpoint   glmcpu.convert.hf.Checkpoint(dir); glmcpu.convert.pipeline.convert(dir, out) to
                 f16 and to q4_0; for each that converts, the model-file check on out
The worker runs with an address-space limit (an absurd allocation fails there as a MemoryError)
and reports its peak resident memory; a case also has a time limit (a hang). Any outcome but
"ok" or "one GlmcpuError line" is a finding: its input is saved under --out with the case id,
which reruns it in-process with --case (give the same --protect). Exit status 1 if anything
was found.

Mutators are plain functions ``(source, draw) -> (bytes or files, description)``; ``draw`` gives
``int(lo, hi)``, ``choice(seq)`` and ``value()`` (a hostile JSON value). tests/test_fuzz.py
drives the same mutators through hypothesis (bounded, in CI); this script through ``random``.
"""
import argparse
import copy
import io
import json
import os
import pickletools
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN = os.path.join(os.path.dirname(REPO), "shared", "golden")
TOKENIZERS = os.path.join(os.path.dirname(REPO), "shared", "tokenizers")

# Values a corrupted or hostile file may hold where a number, string, list or object belongs.
EVIL_KINDS = {
    "null": [None],
    "bool": [True, False],
    "int": [0, 1, -1, 2, 7, 31, 32, 33, 64, 127, 128, 129, 4096, 2**31 - 1, 2**31, 2**32 + 1, 2**53 + 1, 2**62,
            2**63, 2**64, -(2**63), 10**30],
    "float": [0.5, -0.0, 1e-300, 1e308, float("nan"), float("inf"), float("-inf"), 32.0],
    "str": ["", "0", "1", "32", "128", "F16", "U8", "q4_0", "f32", "chatglm", "\u00e9\x00"],
    "list": [[], [0], [1, 2], [-1, 5], [0, 2**62], [2**62, 2**62], [[1]], ["a"]],
    "dict": [{}, {"a": 1}, {"type": "f16"}],
}
EVIL = [v for vs in EVIL_KINDS.values() for v in vs]
B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


class RandomDraw:
    """The draw interface over random.Random (hypothesis drives the same interface in the test)."""

    def __init__(self, seed):
        self.rng = random.Random(seed)

    def int(self, lo, hi):
        r = self.rng.random()
        if r < 0.08:
            return lo
        if r < 0.16:
            return hi
        return self.rng.randint(lo, hi)

    def choice(self, seq):
        return seq[self.rng.randrange(len(seq))]

    def value(self, depth=2):
        if depth == 0 or self.rng.random() < 0.8:
            return self.choice(EVIL_KINDS[self.choice(sorted(EVIL_KINDS))])
        if self.rng.random() < 0.5:
            return [self.value(depth - 1) for _ in range(self.rng.randint(0, 3))]
        return {self.choice(["a", "type", "shape", "0"]): self.value(depth - 1) for _ in range(self.rng.randint(0, 3))}


# ---------------------------------------------------------------- safetensors containers

class Container:
    """A safetensors file split into its parts: ``header`` (dict), ``data`` (bytes after it);
    ``align`` is the header padding the writer used (64 for glmcpu files, 8 for safetensors')."""

    def __init__(self, raw, align):
        self.raw, self.align = raw, align
        self.n = int.from_bytes(raw[:8], "little")
        self.text = raw[8:8 + self.n]
        self.header = json.loads(self.text)
        self.data = raw[8 + self.n:]
        self.meta = dict(self.header.get("__metadata__", {}))
        self.fuzz_keys = sorted(self.meta)  # the metadata entries the mutators may change
        self.tensors = [k for k in self.header if k != "__metadata__"]
        tok = self.meta.get("tokenizer")
        b64 = json.loads(tok)["data"].encode() if tok and tok != "null" else None
        self.b64_span = (raw.index(b64), raw.index(b64) + len(b64)) if b64 else None
        self.boundaries = self._boundaries()

    def protected(self):
        """Byte spans of the metadata values the mutators must leave alone (those not in fuzz_keys)."""
        spans = []
        for key, value in self.meta.items():
            if key not in self.fuzz_keys:
                text = json.dumps(value).encode()
                at = self.raw.find(text, 8, 8 + self.n)
                if at >= 0:
                    spans.append((at, at + len(text)))
        return spans

    def header_pos(self, d, lo, hi, length=1):
        """A header position in lo..hi where ``length`` bytes touch no protected span (lo if none)."""
        pos = d.int(lo, hi)
        for _ in range(4):
            hit = [e for b, e in self.protected() if pos < e and pos + length > b]
            if not hit:
                return pos
            pos = min(max(hit), hi)
        return lo

    def _boundaries(self):
        """Byte offsets where the file's structure changes: inside the length field, the header's
        start and end, the start of each header key, each tensor's first and last byte."""
        out = set(range(9)) | {8 + self.n}
        for key in list(self.header) + list(self.meta):
            at = self.raw.find(json.dumps(key).encode(), 8)
            if 0 <= at < 8 + self.n:
                out.add(at)
        for name in self.tensors:
            b, e = self.header[name]["data_offsets"]
            out |= {8 + self.n + b, 8 + self.n + e}
        return sorted(o for o in out if o < len(self.raw))

    def pack(self, header, data=None):
        return pack(header, self.data if data is None else data, self.align)


def pack(header, data, align):
    """A safetensors file from a header dict (written as given, however wrong) and data bytes."""
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * ((-(8 + len(raw))) % align)
    return len(raw).to_bytes(8, "little") + raw + data


def _set_byte(raw, pos, value):
    return raw[:pos] + bytes([value]) + raw[pos + 1:]


def _json_paths(obj, prefix=()):
    """Every path (tuple of keys / indices) to a node of a parsed JSON value, the root first."""
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _json_paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _json_paths(v, prefix + (i,))
    return out


def _mutate_json(obj, d):
    """A copy of obj with one node replaced by a hostile value or deleted. Returns (obj, what)."""
    obj = copy.deepcopy(obj)
    path = d.choice(_json_paths(obj))
    if not path:
        v = d.value()
        return v, f"whole value -> {v!r:.60}"
    parent = obj
    for k in path[:-1]:
        parent = parent[k]
    if isinstance(parent, dict) and d.int(0, 3) == 0:
        del parent[path[-1]]
        return obj, f"deleted {'/'.join(map(str, path))}"
    v = d.value()
    parent[path[-1]] = v
    return obj, f"{'/'.join(map(str, path))} -> {v!r:.60}"


# ---------------------------------------------------------------- model-file mutators

def m_truncate(src, d):
    cut = d.int(0, len(src.raw) - 1)
    return src.raw[:cut], f"truncated to {cut} bytes"


def m_truncate_boundary(src, d):
    cut = min(max(d.choice(src.boundaries) + d.int(-1, 1), 0), len(src.raw) - 1)
    return src.raw[:cut], f"truncated at structural boundary {cut}"


def m_length_field(src, d):
    if d.int(0, 1):
        n = d.choice([0, 1, 2, src.n - 1, src.n + 1, src.n + 64, len(src.raw), len(src.raw) - 7,
                      2**31, 2**32, 2**60, 2**63, 2**64 - 1])
        return n.to_bytes(8, "little") + src.raw[8:], f"header length field = {n}"
    pos, v = d.int(0, 7), d.int(0, 255)
    return _set_byte(src.raw, pos, v), f"length field byte {pos} = {v}"


def m_header_byte(src, d):
    lo, hi = 8, 8 + src.n - 1
    if src.b64_span and d.int(0, 1):
        lo = src.b64_span[1]
    elif src.b64_span:
        hi = src.b64_span[0] - 1
    pos, v = src.header_pos(d, lo, hi), d.int(0, 255)
    return _set_byte(src.raw, pos, v), f"header byte {pos} ({src.raw[pos:pos + 1]!r}) = {v}"


def m_tokenizer_byte(src, d):
    if not src.b64_span:
        return m_header_byte(src, d)
    pos = d.int(*src.b64_span) if d.int(0, 3) else src.b64_span[1] - d.int(1, 3)
    v = d.choice(list(B64 + b"=!- \\\"\n\x00\xff"))
    return _set_byte(src.raw, pos, v), f"tokenizer base64 byte {pos} = {bytes([v])!r}"


def m_header_splice(src, d):
    """Cut or repeat a slice of the header text (the length field is kept, or fixed up)."""
    k = d.int(1, 32)
    a = src.header_pos(d, 8, 8 + src.n - 1, k) - 8
    text = src.text
    if d.int(0, 1):
        new = text[:a] + text[a + k:]
        new += b" " * (src.n - len(new))
        what = f"cut header bytes {a}..{a + k}"
    else:
        new = text[:a] + text[a:a + k] + text[a:]
        what = f"repeated header bytes {a}..{a + k}"
    return len(new).to_bytes(8, "little") + new + src.data, what


def m_data_byte(src, d):
    if not src.data:
        return m_truncate(src, d)
    pos, v = d.int(0, len(src.data) - 1), d.int(0, 255)
    return src.raw[:8 + src.n] + _set_byte(src.data, pos, v), f"data byte {pos} = {v}"


def m_append(src, d):
    k = d.int(1, 100)
    return src.raw + bytes([d.int(0, 255)]) * k, f"{k} bytes appended"


def m_tensor_entry(src, d):
    """One header tensor entry made to lie: dtype, shape, offsets, moved, deleted or renamed."""
    h = copy.deepcopy(src.header)
    name = d.choice(src.tensors)
    e = h[name]
    b, end = e["data_offsets"]
    action = d.choice(["dtype", "shape", "dim", "offsets", "shift", "overlap", "beyond", "field", "delete",
                       "rename", "entry"])
    if action == "dtype":
        e["dtype"] = d.choice(["F32", "F16", "BF16", "I8", "U8", "I64", "BOOL", "F8_E4M3", "f16", "", None, 16])
    elif action == "shape":
        e["shape"] = d.value()
    elif action == "dim":
        shape = list(e["shape"]) or [1]
        i = d.int(0, len(shape) - 1)
        shape[i] = d.choice([0, 1, shape[i] - 1, shape[i] + 1, 2 * shape[i], -shape[i], 2**62, 2**64])
        e["shape"] = shape if d.int(0, 3) else shape[::-1] + [1]
    elif action == "offsets":
        e["data_offsets"] = d.value()
    elif action == "shift":
        k = d.choice([-128, -64, -1, 1, 64, 128])
        e["data_offsets"] = [b + k, end + k]
    elif action == "overlap":
        other = h[d.choice(src.tensors)]
        e["data_offsets"] = list(other["data_offsets"])
    elif action == "beyond":
        e["data_offsets"] = [b, end + d.choice([1, 64, len(src.data), 2**40, 2**63])]
    elif action == "field":
        e[d.choice(["dtype", "shape", "data_offsets"])] = d.value()
    elif action == "delete":
        del h[name]
    elif action == "rename":
        h[name + d.choice(["x", ".scales", ""]) if name[-1:] != "x" else name[:-1]] = h.pop(name)
    else:
        h[name] = d.value()
    return src.pack(h), f"tensor {name!r}: {action}"


def m_meta_string(src, d):
    """A metadata entry replaced by another string, a non-string, or deleted."""
    if not src.fuzz_keys:
        return m_tensor_entry(src, d)
    h = copy.deepcopy(src.header)
    key = d.choice(src.fuzz_keys + ["__metadata__"])
    if key == "__metadata__":
        h[key] = d.value()
        return src.pack(h), "__metadata__ replaced"
    v = d.choice(["delete", "", "null", "{}", "[]", "1", "2", "0", "99999999999999999999", "glmcpu", "chatglm3",
                  "glm4", "nope", '{"arch": "chatglm"}', "1.0", " 1", "\u0661", None, 1, [], {}])
    if v == "delete":
        del h["__metadata__"][key]
    else:
        h["__metadata__"][key] = v
    return src.pack(h), f"metadata {key!r} = {v!r:.40}"


def m_meta_json(src, d):
    """One node inside a JSON-valued metadata entry replaced by a hostile value or deleted."""
    keys = [k for k in src.fuzz_keys if src.meta[k][:1] in ("{", "[")]
    if not keys:
        return m_meta_string(src, d)
    key = d.choice(keys)
    obj, what = _mutate_json(json.loads(src.meta[key]), d)
    h = copy.deepcopy(src.header)
    h["__metadata__"][key] = json.dumps(obj)
    return src.pack(h), f"metadata {key}: {what}"


def m_quantization(src, d):
    """Quantization parameters that disagree: file-wide group size or tile height, a tensor's
    type, group size, shape or parts."""
    h = copy.deepcopy(src.header)
    meta = h["__metadata__"]
    odd = [None, True, 0, 1, 16, 31, 32, 33, 64, 96, 128, 256, 1024, 1025, 2**31, 2**62, -128, "128", 128.0, [128]]
    if d.int(0, 2) == 0:
        q = json.loads(meta["quantization"])
        key = d.choice(["group_size", "tile_rows", "dtype"])
        q[key] = d.choice(odd + ["q4_0", "f16"])
        meta["quantization"] = json.dumps(q)
        return src.pack(h), f"quantization {key} = {q[key]!r}"
    tensors = json.loads(meta["tensors"])
    quantized = [n for n, e in tensors.items() if "group_size" in e] or list(tensors)
    name = d.choice(quantized)
    e = tensors[name]
    field = d.choice(["type", "group_size", "shape", "parts", "roles"])
    if field == "type":
        e["type"] = d.choice(["f32", "f16", "q8_0", "q4_0", "q4_1", "q5_0", "Q4_0", "", None, 4])
    elif field == "group_size":
        e["group_size"] = d.choice(odd)
    elif field == "shape":
        n, k = (e["shape"] + [1, 1])[:2]
        e["shape"] = d.choice([[n, k + 32], [n + 1, k], [n + 128, k], [k, n], [n], [n, k, 1], [n, 0], [0, k],
                               [n, k // 2], [2**62, k], [n, 2**62]])
    elif field == "parts":
        parts = dict(e.get("parts", {}))
        victim = d.choice(sorted(parts)) if parts else name
        what = d.choice(["drop", "rename", "extra", "other"])
        if what == "drop":
            parts.pop(victim, None)
        elif what == "rename":
            parts[victim + ".x"] = parts.pop(victim, "data")
        elif what == "extra":
            parts[name + ".mins"] = "mins"
        else:
            parts[d.choice(sorted(tensors))] = parts.pop(victim, "data")
        e["parts"] = parts
    else:
        parts = dict(e.get("parts", {}))
        if parts:
            p = d.choice(sorted(parts))
            parts[p] = d.choice(["data", "quants", "scales", "mins", "", None])
        e["parts"] = parts
    meta["tensors"] = json.dumps(tensors)
    return src.pack(h), f"tensors[{name!r}].{field} = {e.get(field if field != 'roles' else 'parts')!r:.60}"


def m_tokenizer_field(src, d):
    """The embedded tokenizer entry made wrong: its base64 text, SHA-256, type, name or config."""
    tok = json.loads(src.meta.get("tokenizer", "null"))
    if not tok or "tokenizer" not in src.fuzz_keys:
        return m_meta_json(src, d)
    field = d.choice(["data", "data", "data", "sha256", "type", "filename", "config"])
    data = tok["data"]
    if field == "data":
        i = d.int(0, len(data) - 1)
        how = d.choice(["strip padding", "drop char", "insert char", "swap", "truncate", "other file", "value"])
        if how == "strip padding":
            v = data.rstrip("=")
        elif how == "drop char":
            v = data[:i] + data[i + 1:]
        elif how == "insert char":
            v = data[:i] + d.choice(["!", "=", "A", " ", "\n", "\u00e9"]) + data[i:]
        elif how == "swap":
            v = data[:i] + ("B" if data[i] != "B" else "C") + data[i + 1:]
        elif how == "truncate":
            v = data[:i]
        elif how == "other file":
            v = "aGVsbG8="
        else:
            v = d.value()
        tok["data"] = v
        what = how
    else:
        tok[field] = d.choice([d.value(), "sentencepiece", "tiktoken", "tokenizer.json", tok[field] if
                               field != "sha256" else tok[field][:-1] + "0"])
        what = f"{tok[field]!r:.40}"
    h = copy.deepcopy(src.header)
    h["__metadata__"]["tokenizer"] = json.dumps(tok)
    return src.pack(h), f"tokenizer {field}: {what}"


MODEL_MUTATORS = {f.__name__[2:]: f for f in (
    m_truncate, m_truncate_boundary, m_length_field, m_header_byte, m_tokenizer_byte, m_header_splice,
    m_data_byte, m_append, m_tensor_entry, m_meta_string, m_meta_json, m_quantization, m_tokenizer_field)}


# ---------------------------------------------------------------- Hugging Face checkpoint mutators

class Checkpoint:
    """A pristine checkpoint directory held in memory: file name -> bytes."""

    def __init__(self, files):
        self.files = files

    @classmethod
    def read(cls, path):
        return cls({n: open(os.path.join(path, n), "rb").read() for n in sorted(os.listdir(path))
                    if n != "expected.npz"})

    def names(self, suffix):
        return [n for n in self.files if n.endswith(suffix)]


def _with(src, name, data):
    files = dict(src.files)
    if data is None:
        files.pop(name, None)
    else:
        files[name] = data
    return files


def h_config_value(src, d):
    obj, what = _mutate_json(json.loads(src.files["config.json"]), d)
    return _with(src, "config.json", json.dumps(obj).encode()), f"config.json: {what}"


def h_config_bytes(src, d):
    raw = src.files["config.json"]
    if d.int(0, 1):
        pos = d.int(0, len(raw) - 1)
        return _with(src, "config.json", _set_byte(raw, pos, d.int(0, 255))), f"config.json byte {pos} changed"
    cut = d.int(0, len(raw) - 1)
    return _with(src, "config.json", raw[:cut]), f"config.json truncated to {cut}"


def h_safetensors(src, d):
    """A model-file mutator applied to one safetensors weight file of the checkpoint."""
    names = src.names(".safetensors")
    if not names:
        return h_bin_zip(src, d)
    name = d.choice(names)
    c = Container(src.files[name], 8)
    mut = d.choice([m_truncate, m_truncate_boundary, m_length_field, m_header_byte, m_header_splice, m_append,
                    m_tensor_entry, m_data_byte])
    data, what = mut(c, d)
    return _with(src, name, data), f"{name}: {what}"


def h_index(src, d):
    """The shard index made to name missing shards or tensors, or to be the wrong shape."""
    names = src.names(".index.json")
    if not names:
        return h_safetensors(src, d)
    name = d.choice(names)
    idx = json.loads(src.files[name])
    wm = idx["weight_map"]
    tensor = d.choice(sorted(wm))
    shards = sorted(set(wm.values()))
    how = d.choice(["missing shard", "other shard", "missing tensor", "outside", "value", "no map", "map value",
                    "delete shard file"])
    files = dict(src.files)
    if how == "missing shard":
        wm[tensor] = "model-99999-of-99999" + shards[0][shards[0].rindex("."):]
    elif how == "other shard":
        wm[tensor] = d.choice(shards)
    elif how == "missing tensor":
        wm[tensor + ".missing"] = d.choice(shards)
    elif how == "outside":
        wm[tensor] = d.choice(["../" + shards[0], "/etc/passwd", "config.json", name, "", "."])
    elif how == "value":
        wm[tensor] = d.value()
    elif how == "no map":
        idx = {"metadata": idx.get("metadata")}
    elif how == "map value":
        idx["weight_map"] = d.value()
    else:
        files.pop(d.choice(shards))
    files[name] = json.dumps(idx).encode()
    return files, f"{name}: {how} ({tensor})"


def _zip_members(raw):
    with zipfile.ZipFile(io.BytesIO(raw)) as z:
        return [(i.filename, z.read(i.filename)) for i in z.infolist()]


def _zip(members, deflate=()):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members:
            z.writestr(name, data, compress_type=zipfile.ZIP_DEFLATED if name in deflate else zipfile.ZIP_STORED)
    return buf.getvalue()


def _pickle_int(v):
    if 0 <= v < 256:
        return b"K" + bytes([v])
    if -2**31 <= v < 2**31:
        return b"J" + struct.pack("<i", v)
    n = (v.bit_length() + 8) // 8
    return b"\x8a" + bytes([n]) + v.to_bytes(n, "little", signed=True)


def _pickle_str(s):
    b = s.encode("utf-8", "surrogatepass")
    return b"X" + struct.pack("<I", len(b)) + b


def h_pickle(src, d):
    """The state-dict pickle of one .bin shard changed: an integer (offset, size, stride, storage
    length) or string (key, storage type) replaced, an opcode dropped or repeated, bytes flipped
    or cut."""
    names = src.names(".bin")
    if not names:
        return h_safetensors(src, d)
    name = d.choice(names)
    members = _zip_members(src.files[name])
    i = next(k for k, (n, _) in enumerate(members) if n.endswith("data.pkl"))
    pkl = members[i][1]
    ops = list(pickletools.genops(pkl))
    how = d.choice(["int", "string", "global", "drop op", "repeat op", "byte", "truncate"])
    if how in ("int", "string", "global", "drop op", "repeat op"):
        kinds = {"int": ("BININT", "BININT1", "BININT2", "LONG1"), "string": ("BINUNICODE", "SHORT_BINUNICODE"),
                 "global": ("GLOBAL",)}.get(how)
        cand = [k for k, (op, arg, pos) in enumerate(ops) if kinds is None or op.name in kinds] or list(range(len(ops)))
        k = d.choice(cand)
        op, arg, pos = ops[k]
        end = ops[k + 1][2] if k + 1 < len(ops) else len(pkl)
        if how == "int":
            new = _pickle_int(d.choice([0, 1, -1, 2, arg - 1, arg + 1, 2 * arg + 1, 2**31 - 1, 2**40, 2**62, -2**40]))
        elif how == "string":
            new = _pickle_str(d.choice(["", "0", "1", "999", "storage", "cpu", "x" * 300, arg[:-1], arg + "x"]))
        elif how == "global":
            new = b"c" + d.choice([b"torch\nFloatStorage\n", b"torch\nHalfStorage\n", b"torch\nByteStorage\n",
                                   b"torch\nBoolStorage\n", b"torch\nLongStorage\n", b"torch\nNope\n",
                                   b"collections\nOrderedDict\n", b"torch._utils\n_rebuild_tensor_v2\n",
                                   b"torch._utils\n_rebuild_parameter\n", b"builtins\ngetattr\n"])
        elif how == "drop op":
            new = b""
        else:
            new = pkl[pos:end] * 2
        pkl = pkl[:pos] + new + pkl[end:]
        what = f"{how} at op {k} ({op.name} {arg!r:.30})"
    elif how == "byte":
        pos = d.int(0, len(pkl) - 1)
        pkl = _set_byte(pkl, pos, d.int(0, 255))
        what = f"pickle byte {pos} changed"
    else:
        cut = d.int(0, len(pkl) - 1)
        pkl = pkl[:cut]
        what = f"pickle truncated to {cut}"
    members[i] = (members[i][0], pkl)
    return _with(src, name, _zip(members)), f"{name}: {what}"


def h_storage(src, d):
    """A tensor storage of one .bin shard cut short, removed, or stored compressed."""
    names = src.names(".bin")
    if not names:
        return h_safetensors(src, d)
    name = d.choice(names)
    members = _zip_members(src.files[name])
    cand = [k for k, (n, _) in enumerate(members) if "/data/" in n]
    k = d.choice(cand)
    how = d.choice(["cut", "remove", "deflate", "extend"])
    deflate = ()
    if how == "cut":
        members[k] = (members[k][0], members[k][1][:d.int(0, len(members[k][1]) - 1)])
    elif how == "remove":
        del members[k]
    elif how == "extend":
        members[k] = (members[k][0], members[k][1] + bytes(64))
    else:
        deflate = {members[k][0]}
    return _with(src, name, _zip(members, deflate)), f"{name}: storage {k} {how}"


def h_bin_zip(src, d):
    """Bytes of one .bin shard's zip structure changed or cut, at random or at a zip record."""
    names = src.names(".bin")
    if not names:
        return h_safetensors(src, d)
    name = d.choice(names)
    raw = src.files[name]
    records, at = [], raw.find(b"PK")
    while at >= 0:
        if raw[at + 2:at + 4] in (b"\x03\x04", b"\x01\x02", b"\x05\x06", b"\x06\x06"):
            records.append(at)
        at = raw.find(b"PK", at + 1)
    pos = d.choice(records) + d.int(0, 45) if d.int(0, 1) else d.int(0, len(raw) - 1)
    pos = min(pos, len(raw) - 1)
    if d.int(0, 1):
        return _with(src, name, raw[:pos]), f"{name} truncated to {pos}"
    return _with(src, name, _set_byte(raw, pos, d.int(0, 255))), f"{name} byte {pos} changed"


HF_MUTATORS = {f.__name__[2:]: f for f in (
    h_config_value, h_config_bytes, h_safetensors, h_index, h_pickle, h_storage, h_bin_zip)}


# ---------------------------------------------------------------- sources

def make_sources(scratch):
    """The pristine inputs, built once in ``scratch``: {name: Container or Checkpoint}."""
    from glmcpu.convert.pipeline import convert

    def converted(case, dtype, **kw):
        out = os.path.join(scratch, f"{case}-{dtype}.glmq")
        convert(os.path.join(GOLDEN, case), out, dtype=dtype, progress=False, **kw)
        with open(out, "rb") as f:
            return Container(f.read(), 64)

    case = os.path.join(GOLDEN, "chatglm3-tiny")
    st = Checkpoint.read(case)
    whole = Container(st.files["model.safetensors"], 8)
    names = whole.tensors
    shard_names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    files = {"config.json": st.files["config.json"]}
    weight_map = {}
    for s, part in enumerate((names[: len(names) // 2], names[len(names) // 2:])):
        header, blobs, pos = {}, [], 0
        for n in part:
            b, e = whole.header[n]["data_offsets"]
            header[n] = dict(whole.header[n], data_offsets=[pos, pos + e - b])
            blobs.append(whole.data[b:e])
            pos += e - b
            weight_map[n] = shard_names[s]
        files[shard_names[s]] = pack(header, b"".join(blobs), 8)
    files["model.safetensors.index.json"] = json.dumps({"metadata": {}, "weight_map": weight_map}).encode()
    return {
        "model-f16": converted("chatglm3-tiny", "f16"),
        "model-q4": converted("chatglm3-tiny", "q4_0",
                              tokenizer=os.path.join(TOKENIZERS, "chatglm2-chatglm3", "tokenizer.model")),
        "model-v1": converted("chatglm1-tiny", "f16"),
        "model-0414": converted("glm4-0414-tiny-bf16-sharded", "q8_0"),
        "hf-st": st,
        "hf-sharded": Checkpoint(files),
        "hf-bin": Checkpoint.read(os.path.join(GOLDEN, "chatglm2-tiny-bin")),
        "hf-0414": Checkpoint.read(os.path.join(GOLDEN, "glm4-0414-tiny-bf16-sharded")),
    }


def mutate(sources, case_id, draw):
    """Apply case ``source:mutator:...`` with ``draw``. Returns (kind, bytes or files, description)."""
    source, mutator = case_id.split(":")[:2]
    src = sources[source]
    if isinstance(src, Container):
        data, what = MODEL_MUTATORS[mutator](src, draw)
        return "model", data, what
    files, what = HF_MUTATORS[mutator](src, draw)
    return "hf", files, what


def write_case(kind, data, where):
    """Write a mutated input under directory ``where``; returns the path to check."""
    os.makedirs(where, exist_ok=True)
    if kind == "model":
        path = os.path.join(where, "model.glmq")
        with open(path, "wb") as f:
            f.write(data)
        return path
    path = os.path.join(where, "ckpt")
    os.makedirs(path)
    for name, b in data.items():
        with open(os.path.join(path, name), "wb") as f:
            f.write(b)
    return path


# ---------------------------------------------------------------- checks

class Finding(Exception):
    """An outcome the loaders must never have (besides exceptions other than GlmcpuError)."""


def _error(e):
    msg = str(e)
    if not msg.strip() or "\n" in msg.strip():
        raise Finding(f"GlmcpuError message is not one line: {msg!r:.300}")
    return "error", msg


def check_model_file(path):
    """Open a model file as a user would. Returns ("ok", None) or ("error", message); anything
    else (another exception, a Finding) is raised."""
    import glmcpu
    from glmcpu.errors import GlmcpuError
    from glmcpu.file import ModelFile
    try:
        ModelFile(path).close()
        opened = True
    except GlmcpuError as e:
        _error(e)
        if path not in str(e):
            raise Finding(f"ModelFile's error does not name the file: {str(e)[:200]!r}") from None
        opened = False
    try:
        m = glmcpu.load(path, n_ctx=8, threads=1)
    except GlmcpuError as e:
        return _error(e)
    if not opened:
        raise Finding("glmcpu.load accepted a file ModelFile refused")
    try:
        c = m.config  # ChatGLM-6B prompts must hold [gMASK] <sop>; other models take any ids
        m.forward([getattr(c, "gmask_token_id", 0), getattr(c, "bos_token_id", 1)])
        try:
            tok = m.tokenizer
        except GlmcpuError:
            tok = None
        if tok is not None:
            tok.decode(tok.encode("hello world"))
    except GlmcpuError as e:
        return _error(e)
    return "ok", None


def check_checkpoint(path):
    """Read and convert a checkpoint directory, then check the converted file. Same contract."""
    from glmcpu.convert.hf import Checkpoint as HFCheckpoint
    from glmcpu.convert.pipeline import convert
    from glmcpu.errors import GlmcpuError
    try:
        HFCheckpoint(path)
    except GlmcpuError as e:
        _error(e)
    outcome = None
    for dtype in ("f16", "q4_0"):
        out = os.path.join(os.path.dirname(path), f"out-{dtype}.glmq")
        try:
            convert(path, out, dtype=dtype, progress=False)
        except GlmcpuError as e:
            outcome = _error(e)
            continue
        outcome = check_model_file(out)
    return outcome


def check(kind, path):
    return check_model_file(path) if kind == "model" else check_checkpoint(path)


# ---------------------------------------------------------------- worker process

def worker_main(mem_limit):
    """Run checks sent as JSON lines on stdin; answer one JSON line each on the original stdout."""
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (mem_limit, mem_limit))
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything the code under test prints goes to stderr, not into the protocol
    for line in sys.stdin:
        job = json.loads(line)
        try:
            outcome, msg = check(job["kind"], job["path"])
            res = {"outcome": outcome, "message": msg}
        except Finding as e:
            res = {"outcome": "finding", "message": str(e)}
        except BaseException as e:  # noqa: B902 - every other exception is what we look for
            res = {"outcome": "exception", "message": f"{type(e).__name__}: {str(e)[:300]}",
                   "traceback": traceback.format_exc()[-3000:]}
        res["maxrss_mb"] = _peak_rss_mb()
        out.write(json.dumps(res) + "\n")
        out.flush()


def _peak_rss_mb():
    """This process's own peak resident memory: VmHWM, the high-water mark of its address space.
    (getrusage's ru_maxrss is not it: Linux carries the parent's peak across fork and exec, so a
    worker started by a big pytest process would report the parent's size.)"""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Worker:
    """A process running ``worker_main``: the code under test runs there, so that a crash, a hang
    or an absurd allocation is an outcome of one case instead of the end of the caller.

    run(kind, path) -> {"outcome": "ok" | "error" | "exception" | "finding" | "crash" | "hang" |
    "memory", "message", "traceback"?}; after any of the last four the process is restarted."""

    def __init__(self, mem_limit_mb=3072, rss_limit_mb=1024, timeout=60.0):
        self.mem_limit = mem_limit_mb << 20
        self.rss_limit_mb, self.timeout = rss_limit_mb, timeout
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", str(self.mem_limit)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True)
        self.fresh = True

    def stop(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            for pipe in (self.proc.stdin, self.proc.stdout):
                try:
                    pipe.close()
                except OSError:
                    pass
            self.proc = None

    def run(self, kind, path):
        import selectors
        if self.proc is None:
            self.start()
        # a fresh process imports numba and loads the compiled kernels first: give it longer
        timeout = max(self.timeout, 300.0) if self.fresh else self.timeout
        self.fresh = False
        try:
            self.proc.stdin.write(json.dumps({"kind": kind, "path": path}) + "\n")
            self.proc.stdin.flush()
        except OSError:  # it died since the last case
            code = self.proc.wait()
            self.stop()
            return {"outcome": "crash", "message": f"the worker died with status {code}"}
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            ready = sel.select(timeout)
        if not ready:
            self.stop()
            return {"outcome": "hang", "message": f"no answer in {timeout:.0f} s"}
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            self.stop()
            return {"outcome": "crash", "message": f"the worker died with status {code}"}
        res = json.loads(line)
        if res["maxrss_mb"] > self.rss_limit_mb:
            self.stop()
            res = dict(res, outcome="memory", message=f"peak resident memory {res['maxrss_mb']:.0f} MB "
                                                      f"(limit {self.rss_limit_mb} MB); was {res['outcome']}: "
                                                      f"{res['message']}")
        return res


# ---------------------------------------------------------------- main

def save_finding(out, case, where, report):
    """Copy the case's input and its report to out/<case>, completed under a temporary name first."""
    os.makedirs(out, exist_ok=True)
    dest = os.path.join(out, case.replace(":", "_"))
    tmp = tempfile.mkdtemp(dir=out, prefix=".partial-")
    shutil.copytree(where, os.path.join(tmp, "input"))
    with open(os.path.join(tmp, "FINDING.txt"), "w") as f:
        f.write(report)
    shutil.rmtree(dest, ignore_errors=True)
    os.rename(tmp, dest)


def run(args):
    sources_dir = tempfile.mkdtemp(prefix="glmcpu-fuzz-")
    worker = Worker(args.mem_limit_mb, args.rss_limit_mb, args.timeout)
    stats, findings, n = {}, 0, 0
    try:
        sources = make_sources(sources_dir)
        for src in sources.values():
            if isinstance(src, Container):
                src.fuzz_keys = [k for k in src.fuzz_keys if k not in args.protect]
        cases = [f"{s}:{m}" for s, src in sources.items()
                 for m in (MODEL_MUTATORS if isinstance(src, Container) else HF_MUTATORS) if m not in args.skip]
        rng = random.Random(args.seed)
        deadline = time.time() + args.minutes * 60
        while time.time() < deadline and (args.cases is None or n < args.cases):
            case = f"{rng.choice(cases)}:{rng.getrandbits(32)}"
            kind, data, what = mutate(sources, case, RandomDraw(case))
            where = tempfile.mkdtemp(dir=sources_dir)
            res = worker.run(kind, write_case(kind, data, where))
            n += 1
            st = stats.setdefault(":".join(case.split(":")[:2]), {"ok": 0, "error": 0, "finding": 0})
            if res["outcome"] in ("ok", "error"):
                st[res["outcome"]] += 1
            else:
                st["finding"] += 1
                findings += 1
                save_finding(args.out, case, where, f"case {case}\n{what}\n{res['outcome']}: {res['message']}\n"
                                                    f"{res.get('traceback', '')}")
                print(f"FINDING {case}: {what}\n  {res['outcome']}: {res['message']}", flush=True)
            shutil.rmtree(where, ignore_errors=True)
            if args.verbose:
                print(f"{case}: {what} -> {res['outcome']}: {str(res.get('message'))[:120]}", flush=True)
    finally:
        worker.stop()
        shutil.rmtree(sources_dir, ignore_errors=True)
    print(f"{n} cases, {findings} findings (seed {args.seed})")
    width = max((len(k) for k in stats), default=0)
    for k in sorted(stats):
        s = stats[k]
        print(f"  {k:<{width}}  ok {s['ok']:5d}  GlmcpuError {s['error']:5d}  findings {s['finding']}")
    return 1 if findings else 0


def replay(case, protect=()):
    """Rerun one case in this process, with the full traceback of whatever it raises."""
    scratch = tempfile.mkdtemp(prefix="glmcpu-fuzz-")
    try:
        sources = make_sources(scratch)
        for src in sources.values():
            if isinstance(src, Container):
                src.fuzz_keys = [k for k in src.fuzz_keys if k not in protect]
        kind, data, what = mutate(sources, case, RandomDraw(case))
        print(f"{case}: {what}")
        print(check(kind, write_case(kind, data, os.path.join(scratch, "case"))))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="how long to run (default 10)")
    ap.add_argument("--cases", type=int, default=None, help="stop after this many cases")
    ap.add_argument("--seed", type=int, default=None, help="seed of the case sequence (default: random)")
    ap.add_argument("--out", default="fuzz-findings", help="directory for findings (default ./fuzz-findings)")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds a case may take (default 60)")
    ap.add_argument("--mem-limit-mb", type=int, default=3072, help="worker address-space limit (default 3072)")
    ap.add_argument("--rss-limit-mb", type=int, default=1024, help="peak RSS that counts as absurd (default 1024)")
    ap.add_argument("--skip", nargs="*", default=[], metavar="MUTATOR", help="mutators not to run")
    ap.add_argument("--protect", nargs="*", default=[], metavar="KEY",
                    help="metadata entries of the model files to leave alone (e.g. params)")
    ap.add_argument("--case", help="rerun one case SOURCE:MUTATOR:SEED in-process and print its outcome")
    ap.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    ap.add_argument("-v", "--verbose", action="store_true", help="print every case")
    args = ap.parse_args(argv)
    if args.worker:
        return worker_main(args.worker)
    if args.case:
        return replay(args.case, args.protect)
    if args.seed is None:
        args.seed = random.SystemRandom().getrandbits(32)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
