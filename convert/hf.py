"""Read a Hugging Face checkpoint directory one tensor at a time, without torch.

Supported weight files: model.safetensors, sharded safetensors (model.safetensors.index.json),
pytorch_model.bin and sharded .bin (pytorch_model.bin.index.json). Tensors are memory-mapped and
converted to float32 a block of rows at a time, so peak memory stays near one block, not the model.
"""
import json
import os

import numpy as np

from glmcpu.errors import GlmcpuError
from glmcpu.file import ST_DTYPES, Mapped
from .torch_pickle import TorchCheckpoint

FLOAT_DTYPES = ("F32", "F16", "BF16")


def to_f32(raw, st_dtype):
    """Widen a raw block (float32 / float16 bits / bfloat16 bits) to a float32 array."""
    if st_dtype == "F32":
        return np.asarray(raw, dtype=np.float32)
    if st_dtype == "F16":
        return np.asarray(raw).view(np.float16).astype(np.float32)
    if st_dtype == "BF16":
        return (np.asarray(raw).astype(np.uint32) << 16).view(np.float32)
    if st_dtype == "F64":
        return np.asarray(raw).astype(np.float32)
    raise GlmcpuError(f"unsupported tensor dtype {st_dtype}")


class Tensor:
    """One checkpoint tensor: name, shape, source dtype; data read lazily.

    When the tensor is a contiguous run of bytes at a known file offset (safetensors, and the
    uncompressed storages of torch zips), rows are read with pread into a fresh buffer, so the
    converter's resident memory is one block, not the mapped file; otherwise ``read`` gives a
    (memory-mapped) view."""

    def __init__(self, name, shape, st_dtype, path, read, offset=None, np_dtype=None):
        self.name = name
        self.shape = tuple(shape)
        self.st_dtype = st_dtype
        self.path = path
        self._read = read
        self.offset, self.np_dtype = offset, np_dtype

    def raw(self, r0=None, r1=None):
        """Raw rows r0:r1 in the stored dtype (all rows by default)."""
        if self.offset is None or len(self.shape) == 0:
            raw = self._read()
            return raw if r0 is None else raw[r0:r1]
        dt = np.dtype(self.np_dtype)
        row = int(np.prod(self.shape[1:], dtype=np.int64)) * dt.itemsize
        r0 = 0 if r0 is None else r0
        r1 = self.shape[0] if r1 is None else r1
        n = (r1 - r0) * row
        with open(self.path, "rb") as f:
            buf = os.pread(f.fileno(), n, self.offset + r0 * row)
        if len(buf) != n:
            raise GlmcpuError(f"{self.path}: file is truncated (tensor {self.name!r})")
        return np.frombuffer(buf, dtype=dt).reshape((r1 - r0,) + self.shape[1:])

    def rows_f32(self, r0=None, r1=None):
        """float32 copy of rows r0:r1 (the whole tensor for 1-D or when no range is given)."""
        return to_f32(self.raw(r0, r1), self.st_dtype)

    @property
    def nbytes_f32(self):
        return int(np.prod(self.shape, dtype=np.int64)) * 4


def read_json(path):
    """The parsed JSON file at path; any failure (unreadable, not UTF-8, not JSON, nested too
    deeply, an integer too long) is one GlmcpuError."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as e:
        raise GlmcpuError(f"{path}: cannot read: {e.strerror or e}") from None
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise GlmcpuError(f"{path}: not valid JSON ({str(e)[:80] or type(e).__name__})") from None


class Checkpoint:
    """A Hugging Face checkpoint directory: ``config`` (config.json as a dict), ``tensors``
    (name -> Tensor, from every weight file), ``weight_files`` (their paths)."""

    def __init__(self, src):
        self.src = str(src)
        if not os.path.exists(self.src):
            raise GlmcpuError(f"{self.src}: no such directory")
        if not os.path.isdir(self.src):
            raise GlmcpuError(f"{self.src}: not a directory; give the Hugging Face checkpoint directory "
                              f"(the one with config.json)")
        cfg_path = os.path.join(self.src, "config.json")
        if not os.path.isfile(cfg_path):
            raise GlmcpuError(f"{self.src}: no config.json; give the Hugging Face checkpoint directory "
                              f"that holds config.json and the weights")
        self.config = read_json(cfg_path)
        if not isinstance(self.config, dict):
            raise GlmcpuError(f"{cfg_path}: not a JSON object")
        self.tensors = {}
        self.weight_files = []
        self._open_weights()

    def _path(self, name):
        return os.path.join(self.src, name)

    def _open_weights(self):
        cands = ["model.safetensors.index.json", "model.safetensors",
                 "pytorch_model.bin.index.json", "pytorch_model.bin"]
        found = [c for c in cands if os.path.isfile(self._path(c))]
        if not found:
            raise GlmcpuError(f"{self.src}: no weights found (expected one of {', '.join(cands)})")
        first = found[0]
        if first.endswith(".index.json"):
            self._open_index(first)
        else:
            self._open_file(first)

    def _open_index(self, fname):
        """Open every shard a sharded checkpoint's index names; each tensor it lists must be in
        the shard it names."""
        idx_path = self._path(fname)
        index = read_json(idx_path)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict):
            raise GlmcpuError(f"{idx_path}: not a valid index (needs a 'weight_map' object)")
        ext = fname[: -len(".index.json")].rsplit(".", 1)[-1]  # safetensors or bin
        for name, shard in weight_map.items():
            if (not isinstance(shard, str) or not shard.endswith("." + ext) or os.path.basename(shard) != shard
                    or shard.startswith(".")):
                raise GlmcpuError(f"{idx_path}: tensor {name!r} is mapped to {shard!r:.80}, which is not the "
                                  f"name of a .{ext} file in the checkpoint directory")
        shards = sorted(set(weight_map.values()))
        for s in shards:
            if not os.path.isfile(self._path(s)):
                raise GlmcpuError(f"{idx_path}: names shard {s!r}, which is missing from {self.src}")
        for s in shards:
            self._open_file(s)
        for name, shard in weight_map.items():
            t = self.tensors.get(name)
            if t is None or os.path.basename(t.path) != shard:
                raise GlmcpuError(f"{idx_path}: tensor {name!r} is not in shard {shard!r}")

    def _open_file(self, fname):
        path = self._path(fname)
        self.weight_files.append(path)
        if fname.endswith(".safetensors"):
            m = Mapped(path)
            for name in m.names:
                info = m.info(name)
                self._add(Tensor(name, info["shape"], info["dtype"], path, lambda m=m, n=name: m.tensor(n),
                                 offset=m.data_start + info["data_offsets"][0], np_dtype=ST_DTYPES[info["dtype"]]))
        else:
            ck = TorchCheckpoint(path)
            for name, t in ck.tensors.items():
                off = ck.contiguous_offset(t)
                self._add(Tensor(name, t.shape, t.st_dtype, path, lambda ck=ck, t=t: ck.read(t),
                                 offset=off, np_dtype=t.storage.type.np_dtype))

    def _add(self, t):
        if t.name in self.tensors:
            raise GlmcpuError(f"{t.path}: tensor {t.name!r} also appears in {self.tensors[t.name].path}")
        self.tensors[t.name] = t

    def find_file(self, *names):
        for n in names:
            p = self._path(n)
            if os.path.isfile(p):
                return p
        return None
