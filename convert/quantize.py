"""Storage types for weights. Each qtype turns a float32 block of rows into the stored arrays.

A qtype describes, for a logical [rows, cols] float32 tensor, the physical safetensors tensors
that hold it (``parts``) and how to encode a block of rows into them. The scalar numpy
encode/decode here is the executable spec of docs/FORMAT.md; the runtime kernels are tested
against ``decode``.
"""
import numpy as np

from glmcpu.errors import GlmcpuError

F16_MAX = 65504.0


class QType:
    name = None
    bits = None  # bits per weight, for reports

    def parts(self, shape):
        """[(suffix, safetensors dtype, physical shape)]; suffix '' is the tensor's own name."""
        raise NotImplementedError

    def encode(self, rows, name):
        """float32 [r, cols] (or [n] for 1-D) -> list of arrays, one per part, covering those rows."""
        raise NotImplementedError

    def decode(self, arrays):
        """Stored arrays -> float32 (reference dequantization)."""
        raise NotImplementedError


class F32(QType):
    name, bits = "f32", 32.0

    def parts(self, shape):
        return [("", "F32", tuple(shape))]

    def encode(self, rows, name):
        return [np.ascontiguousarray(rows, dtype=np.float32)]

    def decode(self, arrays):
        return np.asarray(arrays[0], dtype=np.float32)


class F16(QType):
    name, bits = "f16", 16.0

    def parts(self, shape):
        return [("", "F16", tuple(shape))]

    def encode(self, rows, name):
        big = np.abs(rows).max(initial=0.0)
        if big > F16_MAX:
            raise GlmcpuError(f"tensor {name!r} has values up to {big:.6g}, beyond float16 range; "
                              f"use --dtype f32")
        return [rows.astype(np.float16).view(np.uint16)]

    def decode(self, arrays):
        return np.asarray(arrays[0]).view(np.float16).astype(np.float32)


QTYPES = {q.name: q for q in (F32(), F16())}


def get_qtype(name):
    try:
        return QTYPES[name]
    except KeyError:
        raise GlmcpuError(f"unknown dtype {name!r}; choose one of {', '.join(QTYPES)}") from None
