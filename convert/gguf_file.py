"""The GGUF container (llama.cpp's ggml/docs/gguf.md), read and written here.

A GGUF file is a header (magic "GGUF", version, tensor count, key/value count), the key/values,
the tensor infos (name, dimensions innermost first, ggml type, offset into the data section) and
the data section, aligned to ``general.alignment`` (32 by default). Read: the file is memory-mapped
and only the metadata is parsed (a GLM-4 vocabulary with 318k merges parses in well under a second;
gguf.GGUFReader takes about 20 s on it); tensor data are numpy views of the map, checked to lie
inside the file. Write: header, key/values and tensor infos first, then the tensors streamed one at a
time, into a temporary file renamed into place when complete.
"""
import mmap
import struct

import numpy as np

from glmcpu.errors import GlmcpuError

MAGIC = b"GGUF"
VERSIONS = (2, 3)
ALIGNMENT = 32
# value types (ggml/docs/gguf.md: gguf_metadata_value_type) -> struct format of a scalar
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = range(13)
SCALARS = {UINT8: "<B", INT8: "<b", UINT16: "<H", INT16: "<h", UINT32: "<I", INT32: "<i", FLOAT32: "<f",
           BOOL: "<?", UINT64: "<Q", INT64: "<q", FLOAT64: "<d"}
MAX_DIMS = 4
# ggml type id -> (values per block, bytes per block): the types a GLM GGUF may hold (ggml.h, ggml.c)
BLOCKS = {0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34), 9: (32, 36),
          10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210), 15: (256, 292),
          16: (256, 66), 17: (256, 74), 18: (256, 98), 19: (256, 50), 20: (32, 18), 21: (256, 110),
          22: (256, 82), 23: (256, 136), 24: (1, 1), 25: (1, 2), 26: (1, 4), 27: (1, 8), 28: (1, 8),
          29: (256, 56), 30: (1, 2), 34: (256, 54), 35: (256, 66), 39: (32, 17)}
TYPE_NAMES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1", 10: "Q2_K",
              11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS", 17: "IQ2_XS",
              18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S", 23: "IQ4_XS", 24: "I8",
              25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M", 30: "BF16", 34: "TQ1_0", 35: "TQ2_0",
              39: "MXFP4"}


class TensorInfo:
    def __init__(self, name, dims, ggml_type, offset):
        self.name, self.dims, self.ggml_type, self.offset = name, dims, ggml_type, offset
        self.shape = tuple(reversed(dims))  # numpy order: rows first
        self.type_name = TYPE_NAMES.get(ggml_type, f"type {ggml_type}")

    @property
    def nbytes(self):
        el, nbytes = BLOCKS[self.ggml_type]
        rows = int(np.prod(self.dims[1:], dtype=np.int64)) if len(self.dims) > 1 else 1
        return rows * (self.dims[0] // el) * nbytes


class GGUFFile:
    """A GGUF file's key/values (``kv``, strings decoded; invalid UTF-8 kept as bytes) and tensor
    infos (``tensors``, in file order); ``data(info)`` is a tensor's bytes as uint8 [rows, row bytes]."""

    def __init__(self, path):
        self.path = path
        try:
            with open(path, "rb") as f:
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:
            raise GlmcpuError(f"{path}: empty file, not a GGUF file") from None
        except OSError as e:
            raise GlmcpuError(f"{path}: cannot read: {e.strerror or e}") from None
        try:
            self._parse()
        except (struct.error, IndexError, ValueError, OverflowError, MemoryError):
            raise GlmcpuError(f"{path}: truncated or damaged GGUF file (the download may be incomplete)") from None

    def _string(self, off):
        n, = struct.unpack_from("<Q", self._map, off)
        raw = self._map[off + 8:off + 8 + n]
        if len(raw) != n:
            raise ValueError("truncated string")
        try:
            return raw.decode("utf-8"), off + 8 + n
        except UnicodeDecodeError:
            return raw, off + 8 + n

    def _value(self, vtype, off, depth=0):
        if vtype in SCALARS:
            fmt = SCALARS[vtype]
            return struct.unpack_from(fmt, self._map, off)[0], off + struct.calcsize(fmt)
        if vtype == STRING:
            return self._string(off)
        if vtype == ARRAY and depth == 0:
            etype, count = struct.unpack_from("<IQ", self._map, off)
            off += 12
            if etype in SCALARS:
                dt = np.dtype(SCALARS[etype].replace("?", "u1"))
                end = off + dt.itemsize * count
                if end > len(self._map):
                    raise ValueError("truncated array")
                arr = np.frombuffer(self._map, dtype=dt, count=count, offset=off).tolist()
                return ([bool(x) for x in arr] if etype == BOOL else arr), end
            if count > len(self._map):
                raise ValueError("absurd array length")
            out = []
            for _ in range(count):
                v, off = self._value(etype, off, depth + 1)
                out.append(v)
            return out, off
        raise ValueError(f"GGUF value type {vtype}")

    def _parse(self):
        m = self._map
        if m[:4] != MAGIC:
            raise GlmcpuError(f"{self.path}: not a GGUF file (no GGUF magic)")
        version, n_tensors, n_kv = struct.unpack_from("<IQQ", m, 4)
        if version & 0xFFFF == 0:
            raise GlmcpuError(f"{self.path}: a big-endian GGUF file; glmcpu reads little-endian ones")
        if version not in VERSIONS:
            raise GlmcpuError(f"{self.path}: GGUF version {version}; glmcpu reads versions {VERSIONS}")
        if n_kv > len(m) or n_tensors > len(m):
            raise ValueError("absurd counts")
        off, self.kv = 24, {}
        for _ in range(n_kv):
            key, off = self._string(off)
            vtype, = struct.unpack_from("<I", m, off)
            self.kv[key], off = self._value(vtype, off + 4)
        self.tensors = []
        for _ in range(n_tensors):
            name, off = self._string(off)
            n_dims, = struct.unpack_from("<I", m, off)
            if not 1 <= n_dims <= MAX_DIMS:
                raise GlmcpuError(f"{self.path}: tensor {name!r} has {n_dims} dimensions")
            dims = struct.unpack_from(f"<{n_dims}Q", m, off + 4)
            ggml_type, offset = struct.unpack_from("<IQ", m, off + 4 + 8 * n_dims)
            off += 4 + 8 * n_dims + 12
            self.tensors.append(TensorInfo(name, tuple(int(d) for d in dims), ggml_type, offset))
        align = self.kv.get("general.alignment", ALIGNMENT)
        if not isinstance(align, int) or align <= 0 or align & (align - 1):
            raise GlmcpuError(f"{self.path}: invalid general.alignment {align!r}")
        self.data_start = off + (-off) % align
        for t in self.tensors:
            if t.ggml_type not in BLOCKS:
                continue  # named when used: the caller says what it cannot read
            if t.dims[0] % BLOCKS[t.ggml_type][0]:
                raise GlmcpuError(f"{self.path}: tensor {t.name!r} rows of {t.dims[0]} values are not whole "
                                  f"{t.type_name} blocks")
            if t.offset % align or self.data_start + t.offset + t.nbytes > len(m):
                raise GlmcpuError(f"{self.path}: tensor {t.name!r} lies outside the file (truncated download?)")

    def data(self, info):
        """A tensor's bytes: uint8 [rows, row bytes] (1-D tensors: one row), a view of the map."""
        if info.ggml_type not in BLOCKS:
            raise GlmcpuError(f"{self.path}: tensor {info.name!r} is {info.type_name}, which glmcpu cannot read")
        rows = int(np.prod(info.dims[1:], dtype=np.int64)) if len(info.dims) > 1 else 1
        a = np.frombuffer(self._map, np.uint8, count=info.nbytes, offset=self.data_start + info.offset)
        return a.reshape(rows, info.nbytes // rows if rows else 0)


# ---------------------------------------------------------------- writing

def _pack_string(s):
    b = s.encode("utf-8") if isinstance(s, str) else bytes(s)
    return struct.pack("<Q", len(b)) + b


def _array_type(values):
    if all(isinstance(v, (str, bytes)) for v in values):
        return STRING
    if all(isinstance(v, bool) for v in values):
        return BOOL
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return INT32
    return FLOAT32


def _pack_value(value, vtype, etype=None):
    if vtype in SCALARS:
        return struct.pack(SCALARS[vtype], value)
    if vtype == STRING:
        return _pack_string(value)
    if vtype == ARRAY:
        etype = _array_type(value) if etype is None else etype
        if etype == STRING:
            return struct.pack("<IQ", etype, len(value)) + b"".join(_pack_string(v) for v in value)
        dt = np.dtype(SCALARS[etype].replace("?", "u1"))
        return struct.pack("<IQ", etype, len(value)) + np.asarray(value, dt).tobytes()
    raise ValueError(f"GGUF value type {vtype}")


class GGUFWriter:
    """Write a GGUF: ``add(key, value, vtype)`` for every key/value, ``add_tensor(name, shape,
    ggml_type)`` for every tensor (numpy order), then ``write(out, tensors)`` with an iterable of
    each tensor's bytes in the same order. The file appears at ``out`` only when complete."""

    def __init__(self, arch):
        self.kv = [("general.architecture", arch, STRING)]
        self.infos = []

    def add(self, key, value, vtype, etype=None):
        self.kv.append((key, value, vtype, etype) if etype is not None else (key, value, vtype))

    def add_tensor(self, name, shape, ggml_type):
        info = TensorInfo(name, tuple(int(d) for d in reversed(shape)), ggml_type, 0)
        self.infos.append(info)
        return info

    def _head(self):
        out = [MAGIC, struct.pack("<IQQ", 3, len(self.infos), len(self.kv))]
        for entry in self.kv:
            key, value, vtype = entry[:3]
            out += [_pack_string(key), struct.pack("<I", vtype), _pack_value(value, vtype, *entry[3:])]
        pos = 0
        for t in self.infos:
            t.offset = pos
            pos += t.nbytes + (-t.nbytes) % ALIGNMENT
            out += [_pack_string(t.name), struct.pack(f"<I{len(t.dims)}Q", len(t.dims), *t.dims),
                    struct.pack("<IQ", t.ggml_type, t.offset)]
        head = b"".join(out)
        return head + b"\0" * ((-len(head)) % ALIGNMENT)

    def write(self, out, tensors):
        from .writer import replaced_when_done
        with replaced_when_done(out) as f:
            f.write(self._head())
            n = 0
            for info, data in zip(self.infos, tensors):
                n += 1
                b = memoryview(np.ascontiguousarray(data)).cast("B")
                if len(b) != info.nbytes:
                    raise RuntimeError(f"{info.name}: {len(b)} bytes, expected {info.nbytes}")
                f.write(b)
                f.write(b"\0" * ((-len(b)) % ALIGNMENT))
            if n != len(self.infos):
                raise RuntimeError(f"{n} tensors written, {len(self.infos)} announced")
