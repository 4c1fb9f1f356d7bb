"""Read PyTorch ``.bin`` checkpoints (torch.save zip format) without importing torch.

A torch checkpoint is a zip archive holding ``<prefix>/data.pkl`` (a pickle of the state dict)
and ``<prefix>/data/<key>`` (raw little-endian storage bytes). Unpickling arbitrary pickles runs
arbitrary code, so ``RestrictedUnpickler`` resolves only the few globals a tensor state dict needs
and refuses everything else. Tensors come back as lazy ``TorchTensor`` descriptors; their bytes are
memory-mapped from the (uncompressed) zip entry when read, one tensor at a time.

The archive and the pickle are untrusted input: every way they can be wrong (not a zip, a
truncated or corrupted member, a pickle that is malformed or claims more bytes than it holds, a
tensor whose shape or strides reach outside its storage) ends in one GlmcpuError. The pickle is
read whole (it is small: the tensors' bytes live elsewhere) and its opcodes are walked with
``pickletools`` before it is unpickled, so no length field in it can size an allocation beyond
the pickle itself.
"""
import collections
import io
import mmap
import os
import pickle
import pickletools
import struct
import zipfile

import numpy as np

from glmcpu.errors import GlmcpuError

MAX_PICKLE = 256 << 20   # bytes of data.pkl; a real state dict's pickle is far smaller
MAX_DEFLATE_RATIO = 1032  # deflate cannot expand data more than this

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


class _Sealed:
    """The pickle's BUILD opcode would set attributes of any object it built (a hostile pickle
    could so rewrite a checked tensor's strides); these objects refuse it."""

    def __setstate__(self, state):
        raise pickle.UnpicklingError(f"unexpected state for a {type(self).__name__}")


class StorageType(_Sealed):
    def __init__(self, name):
        self.name = name
        self.st_dtype, self.np_dtype = STORAGE_DTYPES[name]


def _count(v):
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


class StorageRef(_Sealed):
    def __init__(self, storage_type, key, numel):
        if not isinstance(key, (str, int)) or isinstance(key, bool) or not _count(numel):
            raise pickle.UnpicklingError(f"bad storage reference (key {key!r:.40}, size {numel!r:.40})")
        self.type = storage_type
        self.key = str(key)
        self.numel = numel


class TorchTensor(_Sealed):
    """A tensor described by the pickle: storage + offset + shape + stride (no data read yet).
    Offset, sizes and strides are non-negative integers (checked here)."""

    def __init__(self, storage, offset, shape, stride):
        if not (isinstance(shape, (tuple, list)) and isinstance(stride, (tuple, list)) and len(shape) == len(stride)
                and _count(offset) and all(_count(v) for v in (*shape, *stride))):
            raise pickle.UnpicklingError(f"bad tensor geometry (offset {offset!r:.40}, size {shape!r:.60}, "
                                         f"stride {stride!r:.60})")
        self.storage = storage
        self.offset = offset
        self.shape = tuple(shape)
        self.stride = tuple(stride)

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


def _zip_member_offset(f, info, path):
    """Absolute offset of an uncompressed zip member's data (after its local file header)."""
    local = os.pread(f.fileno(), 30, info.header_offset)
    if len(local) != 30 or local[:4] != b"PK\x03\x04":
        raise GlmcpuError(f"{path}: corrupted torch checkpoint (bad zip header of {info.filename})")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    return info.header_offset + 30 + name_len + extra_len


def check_pickle(data, source):
    """Walk the pickle's opcodes without building anything: a pickle that is malformed, cut
    short, whose length fields claim more bytes than it has, or whose memo indices are far
    beyond what it could have stored (the unpickler sizes its memo table by the largest index)
    is refused here, before unpickling could size an allocation from them."""
    try:
        for op, arg, pos in pickletools.genops(data):
            if op.name in ("PUT", "BINPUT", "LONG_BINPUT") and not 0 <= arg <= pos:
                raise ValueError(f"memo index {arg} at byte {pos}")
    except Exception as e:  # genops raises ValueError and others on every kind of malformed input
        raise GlmcpuError(f"{source}: corrupted torch checkpoint (malformed pickle: {str(e)[:100]})") from None


class TorchCheckpoint:
    """One torch.save zip file. ``tensors``: name -> TorchTensor; ``read(t)`` -> numpy view."""

    def __init__(self, path):
        self.path = str(path)
        try:
            self._zip = zipfile.ZipFile(self.path)
        except OSError as e:
            raise GlmcpuError(f"{self.path}: cannot read: {e.strerror or e}") from None
        except Exception:  # BadZipFile, and whatever else a damaged central directory raises
            with open(self.path, "rb") as f:
                magic = f.read(2)
            if magic[:1] == b"\x80":
                raise GlmcpuError(
                    f"{self.path}: legacy (pre-1.6) torch serialization is not supported; "
                    f"re-save it with a recent torch or convert it to safetensors") from None
            raise GlmcpuError(f"{self.path}: not a torch checkpoint (not a zip archive; truncated or "
                              f"corrupted?)") from None
        self._file = open(self.path, "rb")
        self._mm = None
        self.file_size = os.fstat(self._file.fileno()).st_size
        try:
            self._read_state_dict()
        except BaseException:
            self._zip.close()
            self._file.close()
            raise

    def _read_state_dict(self):
        names = self._zip.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkl) != 1:
            raise GlmcpuError(f"{self.path}: not a torch checkpoint (no data.pkl in the archive)")
        self.prefix = pkl[0][: -len("data.pkl")]
        bo = self.prefix + "byteorder"
        if bo in names and self._read_member(bo, 16).strip() != b"little":
            raise GlmcpuError(f"{self.path}: unsupported: big-endian torch checkpoint")
        data = self._read_member(pkl[0], MAX_PICKLE)
        check_pickle(data, self.path)
        try:
            obj = RestrictedUnpickler(io.BytesIO(data), self.path).load()
        except GlmcpuError:
            raise
        except Exception as e:  # malformed pickle data
            raise GlmcpuError(f"{self.path}: corrupted torch checkpoint ({type(e).__name__}: {str(e)[:100]})") from None
        if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict):
            raise GlmcpuError(f"{self.path}: the pickle is not a state dict")
        self.tensors = {k: v for k, v in obj.items() if isinstance(v, TorchTensor)}
        bad = [k for k in self.tensors if not isinstance(k, str)]
        if bad:
            raise GlmcpuError(f"{self.path}: corrupted torch checkpoint (tensor name {bad[0]!r:.40} is not a string)")

    def _member(self, name):
        """The zip entry of member ``name`` after checking its sizes are possible for this file."""
        try:
            info = self._zip.getinfo(name)
        except KeyError:
            raise GlmcpuError(f"{self.path}: corrupted torch checkpoint (missing {name})") from None
        if info.compress_size > self.file_size or (
                info.compress_type != zipfile.ZIP_STORED
                and info.file_size > MAX_DEFLATE_RATIO * info.compress_size + 1024):
            raise GlmcpuError(f"{self.path}: corrupted torch checkpoint (impossible sizes for {name})")
        return info

    def _read_member(self, name, limit):
        """Bytes of member ``name`` (at most ``limit``; a longer member is refused)."""
        info = self._member(name)
        if info.file_size > limit:
            raise GlmcpuError(f"{self.path}: corrupted torch checkpoint ({name} is {info.file_size} bytes, "
                              f"more than {limit})")
        try:
            with self._zip.open(info) as f:
                return f.read(info.file_size)
        except Exception as e:  # BadZipFile (bad CRC, cut short), zlib.error, EOFError, encrypted, ...
            raise GlmcpuError(f"{self.path}: corrupted torch checkpoint (cannot read {name}: "
                              f"{str(e)[:80] or type(e).__name__})") from None

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
        return _zip_member_offset(self._file, info, self.path) + t.offset * dt.itemsize

    def read(self, t):
        """Raw numpy view (stored dtype, e.g. uint16 for f16/bf16) of tensor t, zero-copy if possible."""
        member = f"{self.prefix}data/{t.storage.key}"
        info = self._member(member)
        dt = np.dtype(t.storage.type.np_dtype)
        nbytes = t.storage.numel * dt.itemsize
        if info.file_size < nbytes:
            raise GlmcpuError(f"{self.path}: corrupted torch checkpoint (storage {member} is too short)")
        n = 1
        for s in t.shape:
            n *= s
        if n == 0:
            return np.zeros(t.shape, dt)
        last = t.offset + sum((s - 1) * st for s, st in zip(t.shape, t.stride))
        if last >= t.storage.numel:
            raise GlmcpuError(f"{self.path}: corrupted torch checkpoint (tensor exceeds its storage)")
        if info.compress_type == zipfile.ZIP_STORED:
            if self._mm is None:
                self._mm = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
            off = _zip_member_offset(self._file, info, self.path)
            if off + nbytes > len(self._mm):
                raise GlmcpuError(f"{self.path}: torch checkpoint is truncated")
            flat = np.frombuffer(self._mm, dtype=dt, count=t.storage.numel, offset=off)
        else:
            flat = np.frombuffer(self._read_member(member, info.file_size)[:nbytes], dtype=dt)
            if flat.size != t.storage.numel:
                raise GlmcpuError(f"{self.path}: corrupted torch checkpoint (storage {member} is too short)")
        return np.lib.stride_tricks.as_strided(
            flat[t.offset:], shape=t.shape, strides=[s * dt.itemsize for s in t.stride], writeable=False)
