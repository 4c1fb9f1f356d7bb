"""The .glmq model file: a valid safetensors container, read zero-copy through mmap.

Layout (docs/FORMAT.md is the spec):
    u64 little-endian N | N bytes of JSON header, space-padded so 8 + N is a multiple of 64 | data
Every tensor's data starts at a multiple of 64 bytes from the file start. Because safetensors
requires the data section to be covered without gaps, alignment gaps are filled by small U8
padding tensors named ``__pad__.<k>``, which readers ignore.

Everything is checked once, when the file is opened, so that whatever is wrong with a file ends
in one ``GlmcpuError`` naming the file and the problem, and a file that opens is safe to use
straight from the map:
  - the header (``read_safetensors_header``): as the safetensors library checks it, the tensors
    cover the data section exactly (no gap, no overlap, nothing after the last one) and each
    one's byte length is its shape times its dtype's size; no number read from the file is used
    to size an allocation before it is checked against the file's size;
  - the glmcpu metadata (``ModelFile``): every entry has its documented JSON type; for each
    logical tensor, its parts have exactly the names, dtypes and shapes its storage type
    implies (quantized types: group size, tile height); the tokenizer bytes are valid base64
    whose SHA-256 is the one recorded.
The hyper-parameters (``params``) are checked by the architecture that reads them.
"""
import base64
import binascii
import hashlib
import json
import math
import mmap
import os
import stat

import numpy as np

from .errors import GlmcpuError
from .quants import GROUP_SIZES, QK
from .qtypes import GROUPED, QTYPES

FORMAT_NAME = "glmcpu"
FORMAT_VERSION = 1
ALIGN = 64
PAD_PREFIX = "__pad__."
MAX_HEADER = 100_000_000  # bytes: the header size limit the safetensors library enforces
MAX_TILE_ROWS = 1024      # a tile height beyond this is corruption (the converter writes 128)

# safetensors dtype string -> numpy dtype of the raw stored elements.
# F16 and BF16 are kept as 16-bit patterns (uint16); kernels widen them.
ST_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.uint16, "BF16": np.uint16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_,
}
ST_ITEMSIZE = {k: np.dtype(v).itemsize for k, v in ST_DTYPES.items()}



def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


class _DuplicateKey(ValueError):
    pass


def _unique_object(pairs):
    """json object hook: a key given twice is corruption (json.loads would keep the last)."""
    obj = {}
    for k, v in pairs:
        if k in obj:
            raise _DuplicateKey(f"key {k!r} appears twice")
        obj[k] = v
    return obj


def parse_json(text):
    """json.loads that refuses duplicate keys; every failure is a ValueError (syntax, nesting too
    deep, an integer too long to convert, a duplicate key)."""
    try:
        return json.loads(text, object_pairs_hook=_unique_object)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _check_entry(path, name, info):
    """(dtype, shape, begin, end) of one header tensor entry, or a corruption error."""
    if not isinstance(info, dict):
        raise GlmcpuError(f"{path}: corrupted header: entry of tensor {name!r} is not an object")
    dt, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dt, str) or dt not in ST_DTYPES:
        raise GlmcpuError(f"{path}: tensor {name!r} has unsupported dtype {dt!r:.40}; "
                          f"the file is corrupted or was not written by a safetensors writer")
    if not isinstance(shape, list) or not all(_is_int(s) and s >= 0 for s in shape):
        raise GlmcpuError(f"{path}: corrupted header: tensor {name!r} has shape {shape!r:.60}")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(v) for v in offsets)
            or not 0 <= offsets[0] <= offsets[1]):
        raise GlmcpuError(f"{path}: corrupted header: tensor {name!r} has data_offsets {offsets!r:.60}")
    b, e = offsets
    if e - b != math.prod(shape) * ST_ITEMSIZE[dt]:
        raise GlmcpuError(f"{path}: corrupted header: tensor {name!r} size does not match its shape "
                          f"({shape!r:.60} {dt} is not {e - b} bytes)")
    return dt, shape, b, e


def _check_coverage(path, spans, data_start, size):
    """The tensors [(begin, end, name)] must cover the data section exactly, as safetensors requires."""
    spans.sort()
    end = max((e for b, e, n in spans), default=0)
    if data_start + end > size:
        last = max(spans, key=lambda s: s[1])[2]
        raise GlmcpuError(
            f"{path}: file is truncated (or its header corrupted): tensor {last!r} ends at byte "
            f"{data_start + end}, the file has {size} bytes (re-download or re-run glmcpu convert)")
    pos, prev = 0, None
    for b, e, name in spans:
        if b < pos:
            raise GlmcpuError(f"{path}: corrupted header: tensors {prev!r} and {name!r} overlap")
        if b > pos:
            raise GlmcpuError(f"{path}: corrupted header: {b - pos} bytes before tensor {name!r} "
                              f"belong to no tensor")
        pos, prev = e, name
    if data_start + pos != size:
        raise GlmcpuError(f"{path}: corrupted file: {size - data_start - pos} bytes after the last "
                          f"tensor belong to no tensor")


def _read_header(f, path, size):
    """Parse and check the safetensors header of the open file f. Returns (header, data_start)."""
    if size < 8:
        raise GlmcpuError(f"{path}: file is {size} bytes, too short to be a safetensors/glmcpu file")
    n = int.from_bytes(f.read(8), "little")
    if n < 2 or n > MAX_HEADER or 8 + n > size:
        raise GlmcpuError(
            f"{path}: not a safetensors/glmcpu file or truncated "
            f"(header length field {n}, file size {size})")
    raw = f.read(n)
    if len(raw) != n:
        raise GlmcpuError(f"{path}: file is truncated (changed while being read?)")
    try:
        header = parse_json(raw.decode("utf-8"))
    except ValueError as e:  # also UnicodeDecodeError
        raise GlmcpuError(f"{path}: not a safetensors/glmcpu file (header is not valid JSON: "
                          f"{str(e):.80}; corrupted?)") from None
    if not isinstance(header, dict):
        raise GlmcpuError(f"{path}: not a safetensors/glmcpu file (header is not a JSON object)")
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise GlmcpuError(f"{path}: corrupted header: __metadata__ must map names to strings")
    data_start = 8 + n
    spans = []
    for name, info in header.items():
        if name != "__metadata__":
            dt, shape, b, e = _check_entry(path, name, info)
            spans.append((b, e, name))
    _check_coverage(path, spans, data_start, size)
    return header, data_start


def _open_regular(path):
    """The file at path opened for reading; only a regular file (a FIFO would block the open, a
    device has no size)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise GlmcpuError(f"{path}: not a regular file")
        return open(path, "rb")
    except OSError as e:
        raise GlmcpuError(f"{path}: cannot read: {e.strerror or e}") from None


def read_safetensors_header(path):
    """Parse and check a safetensors header. Returns (header dict, data_start, file_size).

    The tensors must exactly cover the data section, so a truncated file is reported here.
    """
    with _open_regular(path) as f:
        try:
            size = os.fstat(f.fileno()).st_size
            header, data_start = _read_header(f, path, size)
        except OSError as e:
            raise GlmcpuError(f"{path}: cannot read: {e.strerror or e}") from None
    return header, data_start, size


class Mapped:
    """A read-only memory map of a checked safetensors file; tensor(name) returns zero-copy views."""

    def __init__(self, path):
        self.path = str(path)
        self._file = _open_regular(self.path)
        try:
            self.size = os.fstat(self._file.fileno()).st_size
            self.header, self.data_start = _read_header(self._file, self.path, self.size)
            self._mm = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as e:
            self._file.close()
            raise GlmcpuError(f"{self.path}: cannot read or memory-map: {e}") from None
        except BaseException:
            self._file.close()
            raise

    @property
    def names(self):
        return [k for k in self.header if k != "__metadata__" and not k.startswith(PAD_PREFIX)]

    def info(self, name):
        return self.header[name]

    def tensor(self, name):
        """Zero-copy read-only view of tensor ``name`` in its stored dtype and shape."""
        info = self.header[name]
        b, e = info["data_offsets"]
        dt = np.dtype(ST_DTYPES[info["dtype"]])
        arr = np.frombuffer(self._mm, dtype=dt, count=(e - b) // dt.itemsize, offset=self.data_start + b)
        return arr.reshape(tuple(info["shape"]))

    def close(self):
        # numpy views keep the mmap alive; closing only the file handle is always safe.
        self._file.close()


class ModelFile(Mapped):
    """A glmcpu model file: a safetensors container whose __metadata__ describes the model.

    Attributes: format_version, family (str), hf_config, params, quantization, tensor_types
    (dicts from the metadata, checked as described in the module docstring), tokenizer_info
    (dict or None), meta (the raw __metadata__ strings)."""

    def __init__(self, path):
        if not os.path.exists(path):
            raise GlmcpuError(f"{path}: no such file")
        if os.path.isdir(path):
            raise GlmcpuError(f"{path}: is a directory; give a .glmq file made by 'glmcpu convert'")
        super().__init__(path)
        try:
            self._read_metadata()
        except BaseException:
            self.close()
            raise

    def _fail(self, what):
        raise GlmcpuError(f"{self.path}: corrupted glmcpu file: {what} (re-download or re-run glmcpu convert)")

    def _read_metadata(self):
        meta = self.header.get("__metadata__")
        if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
            raise GlmcpuError(
                f"{self.path}: a safetensors file but not a glmcpu model (no glmcpu metadata); "
                f"convert the Hugging Face checkpoint with 'glmcpu convert'")
        v = meta.get("format_version", "")
        if not (v.isascii() and v.isdigit() and len(v) <= 6):
            self._fail(f"format_version is {v!r:.40}")
        version = int(v)
        if version != FORMAT_VERSION:
            hint = "upgrade glmcpu" if version > FORMAT_VERSION else "re-run glmcpu convert"
            raise GlmcpuError(f"{self.path}: file format version {version}, this glmcpu reads version "
                              f"{FORMAT_VERSION}: {hint}")
        self.format_version = version
        self.meta = meta
        self._check_alignment()
        self.family = meta.get("family")
        if not self.family:
            self._fail("no model family")
        self.hf_config = self._json_entry("config", dict)
        self.params = self._json_entry("params", dict)
        if not isinstance(self.params.get("arch"), str):
            self._fail("params has no architecture name ('arch')")
        self.quantization = self._json_entry("quantization", dict)
        self.tensor_types = self._json_entry("tensors", dict)
        self.tokenizer_info = self._json_entry("tokenizer", (dict, type(None)), default="null")
        tile_rows = self._check_quantization()
        claimed = {}
        for name, entry in self.tensor_types.items():
            for part in self._check_tensor(name, entry, tile_rows):
                if part in claimed:
                    self._fail(f"tensor {part!r} is a part of both {claimed[part]!r} and {name!r}")
                claimed[part] = name
        self._tokenizer_data = self._check_tokenizer()

    def _check_alignment(self):
        if self.data_start % ALIGN:
            self._fail(f"the data section starts at byte {self.data_start}, not a multiple of {ALIGN}")
        for name, info in self.header.items():
            if name != "__metadata__" and info["data_offsets"][0] % ALIGN:
                self._fail(f"tensor {name!r} is not {ALIGN}-byte aligned")

    def _json_entry(self, key, types, default=None):
        text = self.meta.get(key, default)
        if text is None:
            self._fail(f"metadata has no {key!r}")
        try:
            value = parse_json(text)
        except ValueError as e:
            self._fail(f"metadata {key!r} is not valid JSON ({str(e):.80})")
        if not isinstance(value, types):
            self._fail(f"metadata {key!r} is not a JSON {'object' if types is dict else 'object or null'}")
        return value

    def _check_quantization(self):
        """The tile height (None when no tensor is quantized); group_size and tile_rows checked."""
        q = self.quantization
        quantized = any(isinstance(e, dict) and isinstance(e.get("type"), str) and e["type"] in GROUPED
                        for e in self.tensor_types.values())
        if "group_size" in q and not (_is_int(q["group_size"]) and q["group_size"] in GROUP_SIZES):
            self._fail(f"quantization group_size is {q['group_size']!r:.40}, not one of {GROUP_SIZES}")
        if "tile_rows" not in q:
            if quantized:
                self._fail("quantized tensors but no quantization tile_rows")
            return None
        R = q["tile_rows"]
        if not (_is_int(R) and 1 <= R <= MAX_TILE_ROWS):
            self._fail(f"quantization tile_rows is {R!r:.40}, not an integer in 1..{MAX_TILE_ROWS}")
        return R

    def _check_tensor(self, name, entry, tile_rows):
        """Check one logical tensor's description against its parts. Returns the part names."""
        if not isinstance(entry, dict):
            self._fail(f"description of tensor {name!r} is not an object")
        t, shape, parts = entry.get("type"), entry.get("shape"), entry.get("parts")
        if not isinstance(t, str):
            self._fail(f"tensor {name!r} has no storage type")
        if t not in QTYPES:
            raise GlmcpuError(f"{self.path}: tensor {name!r} has storage type {t!r:.40}, which this glmcpu "
                              f"cannot read (upgrade glmcpu)")
        if (not isinstance(shape, list) or not 1 <= len(shape) <= 2
                or not all(_is_int(s) and s >= 1 for s in shape)):
            self._fail(f"tensor {name!r} ({t}) has shape {shape!r:.60}")
        q = QTYPES[t]
        want = {name + suffix: role for role, (suffix, dt) in q.storage.items()}
        if parts != want:
            self._fail(f"tensor {name!r} ({t}) has parts {parts!r:.120}, expected {want}")
        if q.grouped:
            phys = self._quantized_shapes(name, q, shape, entry.get("group_size"), tile_rows)
        elif q.quantized:  # ggml's rows (K-quants, q5_0): whole blocks
            if len(shape) != 2 or shape[1] % q.ggml_block[0]:
                self._fail(f"{q.name} tensor {name!r} has shape {shape}; rows must be a multiple of "
                           f"{q.ggml_block[0]} long")
            phys = q.part_shapes(shape, None, None)
        else:
            phys = q.part_shapes(shape, None, None)
        for role, (suffix, dt) in q.storage.items():
            info = self.header.get(name + suffix)
            if info is None or (name + suffix).startswith(PAD_PREFIX) or name + suffix == "__metadata__":
                self._fail(f"part {role!r} of {name!r} ({name + suffix!r}) is missing")
            if info["dtype"] != dt or tuple(info["shape"]) != phys[role]:
                self._fail(f"part {role!r} of {name!r} is {info['dtype']} {info['shape']}, "
                           f"expected {dt} {list(phys[role])}")
        return list(want)

    def _quantized_shapes(self, name, q, shape, gs, R):
        """Physical shapes of the parts of a quantized [n, k] tensor (docs/FORMAT.md)."""
        if len(shape) != 2 or shape[1] % QK:
            self._fail(f"quantized tensor {name!r} has shape {shape}; rows must be a multiple of {QK} long")
        n, k = shape
        if not (_is_int(gs) and gs in GROUP_SIZES) or k % gs:
            self._fail(f"quantized tensor {name!r} has group_size {gs!r:.40}; expected one of "
                       f"{GROUP_SIZES} dividing its row length {k}")
        return q.part_shapes(shape, gs, R)

    def _check_tokenizer(self):
        """The tokenizer file's bytes (None without one): base64 decoded, SHA-256 checked."""
        info = self.tokenizer_info
        if info is None:
            return None
        for key, types in (("type", str), ("filename", str), ("data", str), ("sha256", (str, type(None))),
                           ("config", (dict, type(None)))):
            if not isinstance(info.get(key), types):
                self._fail(f"tokenizer entry has a missing or invalid {key!r}")
        try:
            data = base64.b64decode(info["data"], validate=True)
        except (binascii.Error, ValueError):
            self._fail("the stored tokenizer is not valid base64")
        digest = info.get("sha256")
        if digest is not None and hashlib.sha256(data).hexdigest() != digest.lower():
            self._fail("the stored tokenizer does not match its SHA-256")
        return data

    def tokenizer_bytes(self):
        """The tokenizer file stored by the converter (checked at open), or None."""
        return self._tokenizer_data
