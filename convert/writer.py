"""Write a glmcpu model file (a safetensors container, docs/FORMAT.md) by streaming tensors.

The header (all names, shapes and offsets) is known before any data is read, so it is written
first and each tensor's bytes follow, a block of rows at a time. The file is written to a
temporary name beside the output and renamed into place only when complete: an error or Ctrl-C
never leaves a partial file at the output path.
"""
import contextlib
import json
import os
import shutil
import tempfile

import numpy as np

from glmcpu.errors import GlmcpuError
from glmcpu.file import ALIGN, PAD_PREFIX, ST_ITEMSIZE


class Part:
    """One physical safetensors tensor of the output."""

    def __init__(self, name, st_dtype, shape):
        self.name, self.st_dtype, self.shape = name, st_dtype, tuple(int(s) for s in shape)
        self.nbytes = int(np.prod(self.shape, dtype=np.int64)) * ST_ITEMSIZE[st_dtype]
        self.offset = None


def layout(parts, metadata):
    """Assign aligned offsets (inserting padding tensors) and build the padded header bytes."""
    header = {"__metadata__": metadata}
    pos, n_pad = 0, 0
    for p in parts:
        gap = (-pos) % ALIGN
        if gap:
            header[f"{PAD_PREFIX}{n_pad}"] = {"dtype": "U8", "shape": [gap], "data_offsets": [pos, pos + gap]}
            n_pad += 1
            pos += gap
        p.offset = pos
        header[p.name] = {"dtype": p.st_dtype, "shape": list(p.shape), "data_offsets": [pos, pos + p.nbytes]}
        pos += p.nbytes
    raw = json.dumps(header, ensure_ascii=True, separators=(",", ":")).encode("utf-8")
    raw += b" " * ((-(8 + len(raw))) % ALIGN)
    return len(raw).to_bytes(8, "little") + raw, pos


def check_output_path(out):
    out = os.path.abspath(out)
    if os.path.isdir(out):
        raise GlmcpuError(f"{out}: is a directory; give a file path for the output, e.g. model.glmq")
    d = os.path.dirname(out)
    if not os.path.isdir(d):
        raise GlmcpuError(f"{d}: output directory does not exist")
    if not os.access(d, os.W_OK):
        raise GlmcpuError(f"{d}: output directory is not writable")
    return out


def write_file(out, parts, metadata, fill):
    """Write the file. ``fill(f)`` writes every part's bytes in order; it calls ``f.seek_part(p)``
    before each part and ``f.write(bytes)`` for its blocks."""
    out = check_output_path(out)
    head, data_size = layout(parts, metadata)
    total = len(head) + data_size
    free = shutil.disk_usage(os.path.dirname(out)).free
    if free < total:
        raise GlmcpuError(f"not enough disk space for {out}: need {total / 1e9:.2f} GB, "
                          f"{free / 1e9:.2f} GB free")
    with replaced_when_done(out) as f:
        f.write(head)
        w = _PartWriter(f, len(head))
        fill(w)
        w.finish(data_size)
    return total


@contextlib.contextmanager
def replaced_when_done(out):
    """A binary file to write ``out`` through: a temporary file beside it, synced and renamed into
    place when the block ends normally, deleted on any error or interrupt (``out`` untouched)."""
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(out) + ".", suffix=".tmp", dir=os.path.dirname(out))
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, out)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


class _PartWriter:
    def __init__(self, f, data_start):
        self.f, self.data_start = f, data_start
        self.pos = 0
        self.part = None
        self.written = 0

    def _close_part(self):
        if self.part is not None and self.written != self.part.nbytes:
            raise RuntimeError(f"wrote {self.written} bytes for {self.part.name}, expected {self.part.nbytes}")

    def seek_part(self, part):
        self._close_part()
        gap = part.offset - self.pos
        if gap < 0:
            raise RuntimeError("parts written out of order")
        self.f.write(b"\0" * gap)
        self.pos = part.offset
        self.part, self.written = part, 0

    def write(self, arr):
        b = memoryview(np.ascontiguousarray(arr)).cast("B")
        self.f.write(b)
        self.pos += len(b)
        self.written += len(b)

    def finish(self, data_size):
        self._close_part()
        if self.pos != data_size:
            raise RuntimeError("data size mismatch")
