"""Read PyTorch ``.bin`` checkpoints (torch.save zip format) without importing torch.

A torch checkpoint is a zip archive holding ``<prefix>/data.pkl`` (a pickle of the state dict)
and ``<prefix>/data/<key>`` (raw little-endian storage bytes). Unpickling arbitrary pickles runs
arbitrary code, so ``RestrictedUnpickler`` resolves only the few globals a tensor state dict needs
and refuses everything else. Tensors come back as lazy ``TorchTensor`` descriptors; their bytes are
memory-mapped from the (uncompressed) zip entry when read, one tensor at a time.
"""
import collections
import mmap
import pickle
import struct
import zipfile

import numpy as np

from glmcpu.errors import GlmcpuError

# torch storage class name -> (safetensors dtype name, numpy dtype of stored elements)
STORAGE_DTYPES = {
    "FloatStorage": ("F32", np.float32),
    "HalfStorage": ("F16", np.uint16),
    "BFloat16Storage": ("BF16", np.uint16),
    "DoubleStorage": ("F64", np.float64),
    "LongStorage": ("I64", np.int64),
    "IntStorage": ("I32", np.int32),
    "ShortStorage": ("I16", np.int16),
    "CharStorage": ("I8", np.int8),
    "ByteStorage": ("U8", np.uint8),
    "BoolStorage": ("BOOL", np.bool_),
}


class StorageType:
    def __init__(self, name):
        self.name = name
        self.st_dtype, self.np_dtype = STORAGE_DTYPES[name]


class StorageRef:
    def __init__(self, storage_type, key, numel):
        self.type = storage_type
        self.key = str(key)
        self.numel = int(numel)


class TorchTensor:
    """A tensor described by the pickle: storage + offset + shape + stride (no data read yet)."""

    def __init__(self, storage, offset, shape, stride):
        self.storage = storage
        self.offset = int(offset)
        self.shape = tuple(int(s) for s in shape)
        self.stride = tuple(int(s) for s in stride)

    @property
    def st_dtype(self):
        return self.storage.type.st_dtype


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    if not isinstance(storage, StorageRef):
        raise pickle.UnpicklingError("tensor without a storage")
    return TorchTensor(storage, storage_offset, size, stride)


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _rebuild_tensor_v2(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


def _rebuild_parameter_with_state(data, requires_grad=False, backward_hooks=None, state=None):
    return data


class UnsafePickleError(GlmcpuError):
    pass


class RestrictedUnpickler(pickle.Unpickler):
    """Accepts only the globals a tensor state dict needs; anything else is refused."""

    SAFE = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
    }

    def __init__(self, file, source):
        super().__init__(file)
        self.source = source

    def find_class(self, module, name):
        if (module, name) in self.SAFE:
            return self.SAFE[(module, name)]
        if module == "torch" and name in STORAGE_DTYPES:
            return StorageType(name)
        raise UnsafePickleError(
            f"{self.source}: refusing to load: the pickle references '{module}.{name}', which a tensor "
            f"state dict never needs (the file may be malicious); convert it to safetensors with a "
            f"trusted tool, or use a checkpoint from a trusted source")

    def persistent_load(self, pid):
        # ('storage', storage_type, key, location, numel)
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], StorageType)):
            raise UnsafePickleError(f"{self.source}: refusing to load: unexpected persistent id {pid!r:.80}")
        return StorageRef(pid[1], pid[2], pid[4])


def _zip_member_offset(f, info):
    """Absolute offset of an uncompressed zip member's data (after its local file header)."""
    f.seek(info.header_offset)
    local = f.read(30)
    if len(local) != 30 or local[:4] != b"PK\x03\x04":
        raise GlmcpuError("bad zip local header")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    return info.header_offset + 30 + name_len + extra_len


class TorchCheckpoint:
    """One torch.save zip file. ``tensors``: name -> TorchTensor; ``read(t)`` -> numpy view."""

    def __init__(self, path):
        self.path = str(path)
        try:
            self._zip = zipfile.ZipFile(self.path)
        except zipfile.BadZipFile:
            with open(self.path, "rb") as f:
                magic = f.read(2)
            if magic[:1] == b"\x80":
                raise GlmcpuError(
                    f"{self.path}: legacy (pre-1.6) torch serialization is not supported; "
                    f"re-save it with a recent torch or convert it to safetensors") from None
            raise GlmcpuError(f"{self.path}: not a torch checkpoint (not a zip archive; truncated or corrupted?)") from None
        except OSError as e:
            raise GlmcpuError(f"{self.path}: cannot read: {e}") from None
        names = self._zip.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkl) != 1:
            raise GlmcpuError(f"{self.path}: not a torch checkpoint (no data.pkl in the archive)")
        self.prefix = pkl[0][: -len("data.pkl")]
        bo = self.prefix + "byteorder"
        if bo in names and self._zip.read(bo).strip() != b"little":
            raise GlmcpuError(f"{self.path}: unsupported: big-endian torch checkpoint")
        try:
            with self._zip.open(pkl[0]) as f:
                obj = RestrictedUnpickler(f, self.path).load()
        except GlmcpuError:
            raise
        except Exception as e:  # malformed pickle data
            raise GlmcpuError(f"{self.path}: corrupted torch checkpoint ({type(e).__name__}: {e})") from None
        if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict):
            raise GlmcpuError(f"{self.path}: the pickle is not a state dict")
        self.tensors = {k: v for k, v in obj.items() if isinstance(v, TorchTensor)}
        self._file = open(self.path, "rb")
        self._mm = None

    def contiguous_offset(self, t):
        """File offset of tensor t's first element if it is stored contiguously, uncompressed and
        entirely inside its storage; None otherwise (then read() is used)."""
        member = f"{self.prefix}data/{t.storage.key}"
        try:
            info = self._zip.getinfo(member)
        except KeyError:
            return None
        if info.compress_type != zipfile.ZIP_STORED or not t.shape:
            return None
        expect, acc = [], 1
        for s in reversed(t.shape):
            expect.insert(0, acc)
            acc *= s
        dt = np.dtype(t.storage.type.np_dtype)
        if tuple(expect) != t.stride or (t.offset + acc) * dt.itemsize > info.file_size:
            return None
        return _zip_member_offset(self._file, info) + t.offset * dt.itemsize

    def read(self, t):
        """Raw numpy view (stored dtype, e.g. uint16 for f16/bf16) of tensor t, zero-copy if possible."""
        member = f"{self.prefix}data/{t.storage.key}"
        try:
            info = self._zip.getinfo(member)
        except KeyError:
            raise GlmcpuError(f"{self.path}: corrupted torch checkpoint (missing {member})") from None
        dt = np.dtype(t.storage.type.np_dtype)
        if info.file_size < t.storage.numel * dt.itemsize:
            raise GlmcpuError(f"{self.path}: corrupted torch checkpoint (storage {member} is too short)")
        if info.compress_type == zipfile.ZIP_STORED:
            if self._mm is None:
                self._mm = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
            off = _zip_member_offset(self._file, info)
            if off + info.file_size > len(self._mm):
                raise GlmcpuError(f"{self.path}: torch checkpoint is truncated")
            flat = np.frombuffer(self._mm, dtype=dt, count=t.storage.numel, offset=off)
        else:
            flat = np.frombuffer(self._zip.read(member), dtype=dt, count=t.storage.numel)
        n = int(np.prod(t.shape, dtype=np.int64))
        if n == 0:
            return np.zeros(t.shape, dt)
        last = t.offset + sum((s - 1) * st for s, st in zip(t.shape, t.stride))
        if t.offset < 0 or last >= flat.size:
            raise GlmcpuError(f"{self.path}: corrupted torch checkpoint (tensor exceeds its storage)")
        return np.lib.stride_tricks.as_strided(
            flat[t.offset:], shape=t.shape, strides=[s * dt.itemsize for s in t.stride], writeable=False)
