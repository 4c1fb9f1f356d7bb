"""The .glmq model file: a valid safetensors container, read zero-copy through mmap.

Layout (docs/FORMAT.md is the spec):
    u64 little-endian N | N bytes of JSON header, space-padded so 8 + N is a multiple of 64 | data
Every tensor's data starts at a multiple of 64 bytes from the file start. Because safetensors
requires the data section to be covered without gaps, alignment gaps are filled by small U8
padding tensors named ``__pad__.<k>``, which readers ignore.
"""
import base64
import json
import mmap
import os

import numpy as np

from .errors import GlmcpuError

FORMAT_NAME = "glmcpu"
FORMAT_VERSION = 1
ALIGN = 64
PAD_PREFIX = "__pad__."
MAX_HEADER = 100_000_000

# safetensors dtype string -> numpy dtype of the raw stored elements.
# F16 and BF16 are kept as 16-bit patterns (uint16); kernels widen them.
ST_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.uint16, "BF16": np.uint16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_,
}
ST_ITEMSIZE = {k: np.dtype(v).itemsize for k, v in ST_DTYPES.items()}


def read_safetensors_header(path):
    """Parse a safetensors header. Returns (header dict, data_start, file_size).

    Validates offsets against the file size, so a truncated file is reported here.
    """
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise GlmcpuError(f"{path}: file is {size} bytes, too short to be a safetensors/glmcpu file")
            n = int.from_bytes(head, "little")
            if n <= 1 or n > MAX_HEADER or 8 + n > size:
                raise GlmcpuError(
                    f"{path}: not a safetensors/glmcpu file or truncated "
                    f"(header length field {n}, file size {size})")
            raw = f.read(n)
    except OSError as e:
        raise GlmcpuError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise GlmcpuError(f"{path}: not a safetensors/glmcpu file (header is not valid JSON; corrupted?)") from None
    if not isinstance(header, dict):
        raise GlmcpuError(f"{path}: not a safetensors/glmcpu file (header is not a JSON object)")
    data_start = 8 + n
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dt = info["dtype"]
            shape = [int(s) for s in info["shape"]]
            b, e = (int(v) for v in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise GlmcpuError(f"{path}: corrupted header entry for tensor {name!r}") from None
        if dt not in ST_DTYPES:
            raise GlmcpuError(f"{path}: tensor {name!r} has unsupported dtype {dt!r}")
        if any(s < 0 for s in shape) or e - b != int(np.prod(shape, dtype=np.int64)) * ST_ITEMSIZE[dt] or b < 0:
            raise GlmcpuError(f"{path}: corrupted header: tensor {name!r} size does not match its shape")
        end = max(end, e)
    if data_start + end > size:
        raise GlmcpuError(
            f"{path}: file is truncated: header needs {data_start + end} bytes, file has {size} "
            f"(re-download or re-run glmcpu convert)")
    return header, data_start, size


class Mapped:
    """A read-only memory map of a safetensors file; tensor(name) returns zero-copy numpy views."""

    def __init__(self, path):
        self.path = str(path)
        self.header, self.data_start, self.size = read_safetensors_header(self.path)
        self._file = open(self.path, "rb")
        try:
            self._mm = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as e:
            self._file.close()
            raise GlmcpuError(f"{self.path}: cannot memory-map: {e}") from None

    @property
    def names(self):
        return [k for k in self.header if k != "__metadata__" and not k.startswith(PAD_PREFIX)]

    def info(self, name):
        return self.header[name]

    def tensor(self, name):
        info = self.header[name]
        b, e = info["data_offsets"]
        dt = np.dtype(ST_DTYPES[info["dtype"]])
        shape = tuple(info["shape"])
        count = (e - b) // dt.itemsize
        arr = np.frombuffer(self._mm, dtype=dt, count=count, offset=self.data_start + b)
        return arr.reshape(shape)

    def close(self):
        # numpy views keep the mmap alive; closing only the file handle is always safe.
        self._file.close()


class ModelFile(Mapped):
    """A glmcpu model file: a safetensors container whose __metadata__ describes the model."""

    def __init__(self, path):
        if not os.path.exists(path):
            raise GlmcpuError(f"{path}: no such file")
        if os.path.isdir(path):
            raise GlmcpuError(f"{path}: is a directory; give a .glmq file made by 'glmcpu convert'")
        super().__init__(path)
        meta = self.header.get("__metadata__")
        if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
            self.close()
            raise GlmcpuError(
                f"{path}: a safetensors file but not a glmcpu model (no glmcpu metadata); "
                f"convert the Hugging Face checkpoint with 'glmcpu convert'")
        try:
            version = int(meta["format_version"])
        except (KeyError, ValueError):
            self.close()
            raise GlmcpuError(f"{path}: corrupted glmcpu metadata (format_version)") from None
        if version != FORMAT_VERSION:
            self.close()
            hint = "upgrade glmcpu" if version > FORMAT_VERSION else "re-run glmcpu convert"
            raise GlmcpuError(f"{path}: file format version {version}, this glmcpu reads version "
                              f"{FORMAT_VERSION}: {hint}")
        try:
            self.format_version = version
            self.family = meta["family"]
            self.hf_config = json.loads(meta["config"])
            self.params = json.loads(meta["params"])
            self.quantization = json.loads(meta["quantization"])
            self.tensor_types = json.loads(meta["tensors"])
            self.tokenizer_info = json.loads(meta.get("tokenizer", "null"))
        except (KeyError, json.JSONDecodeError, TypeError) as e:
            self.close()
            raise GlmcpuError(f"{path}: corrupted glmcpu metadata ({e})") from None
        self.meta = meta
        for name in self.tensor_types:
            if name not in self.header:
                self.close()
                raise GlmcpuError(f"{path}: corrupted file: tensor {name!r} listed in metadata is missing")

    def tokenizer_bytes(self):
        """The tokenizer file stored by the converter, or None."""
        if not self.tokenizer_info:
            return None
        return base64.b64decode(self.tokenizer_info["data"])
