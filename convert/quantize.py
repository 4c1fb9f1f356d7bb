"""Storage types for weights: how a float32 block of rows becomes the stored parts.

A QType describes, for a logical [rows, cols] float32 tensor, the physical safetensors tensors
("parts") that hold it and how to encode a block of rows (a multiple of the tile height) into
them. The quantizers themselves are the scalar numpy reference in glmcpu/quants.py.
"""
import numpy as np

from glmcpu import quants as Q
from glmcpu.errors import GlmcpuError

F16_MAX = 65504.0
TILE_ROWS = 128  # rows interleaved per tile in the quantized layouts (docs/FORMAT.md)


class QType:
    name = None
    bits = None      # nominal bits per weight at group size 32, for reports
    row_align = 1    # blocks of rows handed to encode() are multiples of this

    def parts(self, shape, gs):
        """[(suffix, role, safetensors dtype, physical shape)]; suffix '' is the tensor's own name."""
        raise NotImplementedError

    def encode(self, rows, name, gs):
        """float32 [r, cols] (or [n] for 1-D) -> list of arrays, one per part, covering those rows."""
        raise NotImplementedError


class F32(QType):
    name, bits = "f32", 32.0

    def parts(self, shape, gs):
        return [("", "data", "F32", tuple(shape))]

    def encode(self, rows, name, gs):
        return [np.ascontiguousarray(rows, dtype=np.float32)]


class F16(QType):
    name, bits = "f16", 16.0

    def parts(self, shape, gs):
        return [("", "data", "F16", tuple(shape))]

    def encode(self, rows, name, gs):
        big = max(float(rows.max(initial=0.0)), -float(rows.min(initial=0.0)))  # no temporary array
        if big > F16_MAX:
            raise GlmcpuError(f"tensor {name!r} has values up to {big:.6g}, beyond float16 range; "
                              f"use --dtype f32")
        return [rows.astype(np.float16).view(np.uint16)]


class _Grouped(QType):
    row_align = TILE_ROWS
    per = None  # bytes per 32-element sub-block

    def parts(self, shape, gs):
        n, k = shape
        nt = -(-n // TILE_ROWS)
        out = [("", "quants", self.qdtype, (nt, k // 32, self.per, TILE_ROWS)),
               (".scales", "scales", "F16", (nt, k // gs, TILE_ROWS))]
        if self.has_min:
            out.append((".mins", "mins", "F16", (nt, k // gs, TILE_ROWS)))
        return out

    def encode(self, rows, name, gs):
        n, k = rows.shape
        enc = self.quantize(rows, gs)
        big = [np.abs(a.astype(np.float32)).max(initial=0) for a in enc[1:]]
        if not all(np.isfinite(b) for b in big):
            raise GlmcpuError(f"tensor {name!r}: a group scale overflows float16; use --dtype f32 or f16")
        q = Q.tile(enc[0], TILE_ROWS, self.per).reshape(-1, k // 32, self.per, TILE_ROWS)
        rest = [Q.tile(a.view(np.uint16), TILE_ROWS, 1).reshape(-1, k // gs, TILE_ROWS) for a in enc[1:]]
        return [q] + rest


class Q8_0(_Grouped):
    name, bits, per, qdtype, has_min = "q8_0", 8.5, 32, "I8", False
    quantize = staticmethod(Q.quantize_q8_0)


class Q4_0(_Grouped):
    name, bits, per, qdtype, has_min = "q4_0", 4.5, 16, "U8", False
    quantize = staticmethod(Q.quantize_q4_0)


class Q4_1(_Grouped):
    name, bits, per, qdtype, has_min = "q4_1", 5.0, 16, "U8", True
    quantize = staticmethod(Q.quantize_q4_1)


QTYPES = {q.name: q for q in (F32(), F16(), Q8_0(), Q4_0(), Q4_1())}


def get_qtype(name):
    try:
        return QTYPES[name]
    except KeyError:
        raise GlmcpuError(f"unknown dtype {name!r}; choose one of {', '.join(QTYPES)}") from None


def pick_group_size(cols, gs):
    """The group size used for a row length: gs if it divides cols, else the largest smaller
    supported size that does; None if not even 32 divides it (the tensor is then kept in f16)."""
    for g in sorted((g for g in Q.GROUP_SIZES if g <= gs), reverse=True):
        if cols % g == 0:
            return g
    return None
