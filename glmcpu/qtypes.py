"""Storage types: the one registry of how a weight tensor is stored, quantized and run.

Each entry (a QType) says, for a logical [rows, cols] float32 tensor:
  - the physical safetensors tensors ("parts") that hold it in a glmcpu file (``storage``,
    ``part_shapes``) and how a block of rows is encoded into them (``encode``, the numpy
    reference quantizers of glmcpu/quants.py),
  - how to read it back (``dequantize``) and the Linear that runs it (``linear``),
  - its ggml type: id, block size and bytes, and how its parts map to and from ggml's block
    layout (``from_ggml`` / ``to_ggml``), bit for bit (GGUF import and export).
Callers (converter, loader, CLI, info, benchmarks, tests) ask this table; adding a type means
adding an entry here and its kernels.
"""
import numpy as np

from glmcpu import quants as Q
from glmcpu.errors import GlmcpuError

F16_MAX = 65504.0
TILE_ROWS = 128  # rows interleaved per tile in the quantized layouts (docs/FORMAT.md)


class QType:
    name = None
    grouped = False     # stored in groups of gs values, row-tiled (q8_0, q4_0, q4_1)
    bits = None         # nominal bits per weight at group size 32, for reports
    row_align = 1       # blocks of rows handed to encode() are multiples of this
    quantized = False
    storage = None      # role -> (part name suffix, safetensors dtype), in file order
    ggml_type = None    # enum ggml_type
    ggml_block = None   # (elements, bytes) of one ggml block

    def parts(self, shape, gs):
        """[(suffix, role, safetensors dtype, physical shape)]; suffix '' is the tensor's own name."""
        shapes = self.part_shapes(shape, gs, TILE_ROWS)
        return [(suffix, role, dt, shapes[role]) for role, (suffix, dt) in self.storage.items()]

    def part_shapes(self, shape, gs, tile_rows):
        """role -> physical shape of a logical ``shape`` tensor."""
        raise NotImplementedError

    def encode(self, rows, name, gs):
        """float32 [r, cols] (or [n] for 1-D) -> list of arrays, one per part, covering those rows."""
        raise NotImplementedError

    def dequantize(self, parts, shape):
        """parts (role -> stored array, whole tensor) -> float32 values of the logical shape."""
        raise NotImplementedError

    def linear(self, parts, shape, ws):
        """The Linear that runs this type (glmcpu/linear.py) over the stored parts."""
        raise NotImplementedError

    def ggml_row_bytes(self, cols):
        el, nbytes = self.ggml_block
        return cols // el * nbytes

    def from_ggml(self, raw, shape):
        """raw ggml rows (uint8 [r, ggml_row_bytes(cols)]) -> the arrays encode() gives for them
        (r a multiple of row_align, or the last rows of the tensor); no value changes."""
        raise NotImplementedError

    def to_ggml(self, parts, shape, gs):
        """parts (role -> stored array, whole tensor) -> uint8 [rows, ggml_row_bytes(cols)]."""
        raise NotImplementedError


class _Plain(QType):
    """One stored value per weight, in the same bytes as ggml's (F32, F16, BF16)."""
    elem = None  # numpy dtype of the stored values

    def part_shapes(self, shape, gs, tile_rows):
        return {"data": tuple(shape)}

    def from_ggml(self, raw, shape):
        return [np.ascontiguousarray(raw).view(self.elem).reshape((-1,) + tuple(shape[1:]))]

    def to_ggml(self, parts, shape, gs):
        return np.ascontiguousarray(parts["data"]).reshape(shape[0] if len(shape) > 1 else 1, -1).view(np.uint8)


class F32(_Plain):
    name, bits, ggml_type, ggml_block, elem = "f32", 32.0, 0, (1, 4), np.float32
    storage = {"data": ("", "F32")}

    def encode(self, rows, name, gs):
        return [np.ascontiguousarray(rows, dtype=np.float32)]

    def dequantize(self, parts, shape):
        return np.array(parts["data"], np.float32).reshape(shape)

    def linear(self, parts, shape, ws):
        from glmcpu.linear import LinearF32
        return LinearF32(parts["data"])



class F16(_Plain):
    name, bits, ggml_type, ggml_block, elem = "f16", 16.0, 1, (1, 2), np.uint16
    storage = {"data": ("", "F16")}

    def encode(self, rows, name, gs):
        big = max(float(rows.max(initial=0.0)), -float(rows.min(initial=0.0)))  # no temporary array
        if big > F16_MAX:
            raise GlmcpuError(f"tensor {name!r} has values up to {big:.6g}, beyond float16 range; "
                              f"use --dtype f32")
        return [rows.astype(np.float16).view(np.uint16)]

    def dequantize(self, parts, shape):
        return parts["data"].view(np.float16).astype(np.float32).reshape(shape)

    def linear(self, parts, shape, ws):
        from glmcpu.linear import LinearF16
        return LinearF16(parts["data"], ws)



def bf16_bits(x):
    """float32 -> bfloat16 bits (uint16), rounded to nearest even: ggml's / torch's rounding."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32)
    return ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype(np.uint16)


def bf16_to_f32(bits):
    return (np.asarray(bits, np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)


class BF16(_Plain):
    """bfloat16: the top half of a float32. Exact for bfloat16 checkpoints and BF16 GGUFs."""
    name, bits, ggml_type, ggml_block, elem = "bf16", 16.0, 30, (1, 2), np.uint16
    storage = {"data": ("", "BF16")}

    def encode(self, rows, name, gs):
        bits = bf16_bits(rows)
        if rows.size and not np.isfinite(bf16_to_f32(bits)).all():
            raise GlmcpuError(f"tensor {name!r} has values beyond bfloat16 range; use --dtype f32")
        return [bits]

    def dequantize(self, parts, shape):
        return bf16_to_f32(parts["data"]).reshape(shape)

    def linear(self, parts, shape, ws):
        from glmcpu.linear import LinearBF16
        return LinearBF16(parts["data"], ws)



class _Grouped(QType):
    """32-element sub-blocks, one float16 scale (and minimum) per group of gs elements; parts
    row-tiled by TILE_ROWS (glmcpu/quants.py). With gs = 32 a group is exactly a ggml block:
    {f16 d; [f16 m;] quants}."""
    row_align = TILE_ROWS
    quantized = True
    grouped = True  # a group size (32/64/128) and the tile height apply
    per = None        # bytes per 32-element sub-block
    qdtype = None     # numpy dtype of the quant bytes
    has_min = False

    @property
    def storage(self):
        s = {"quants": ("", "I8" if self.qdtype == np.int8 else "U8"), "scales": (".scales", "F16")}
        if self.has_min:
            s["mins"] = (".mins", "F16")
        return s

    @property
    def ggml_block(self):
        return (Q.QK, 2 * (2 if self.has_min else 1) + self.per)

    def part_shapes(self, shape, gs, tile_rows):
        n, k = shape
        nt = -(-n // tile_rows)
        groups = (nt, k // gs, tile_rows)
        return {"quants": (nt, k // Q.QK, self.per, tile_rows), "scales": groups, "mins": groups}

    def _tile(self, q, scales, k, gs):
        """Row-major quants [r, k or k/2] and float16 scale arrays [r, k/gs] -> the tiled parts."""
        return ([Q.tile(q, TILE_ROWS, self.per).reshape(-1, k // Q.QK, self.per, TILE_ROWS)]
                + [Q.tile(np.ascontiguousarray(a).view(np.uint16), TILE_ROWS, 1).reshape(-1, k // gs, TILE_ROWS)
                   for a in scales])

    def _untile(self, parts, n):
        """The tiled parts -> row-major quants [n, k or k/2] and float16 [n, k/gs] scale arrays."""
        roles = ("scales", "mins") if self.has_min else ("scales",)
        return (np.ascontiguousarray(Q.untile(parts["quants"], n)),
                [np.ascontiguousarray(Q.untile(parts[r][:, :, None, :], n)).view(np.float16) for r in roles])

    def encode(self, rows, name, gs):
        n, k = rows.shape
        enc = self.quantize(rows, gs)
        big = [np.abs(a.astype(np.float32)).max(initial=0) for a in enc[1:]]
        if not all(np.isfinite(b) for b in big):
            raise GlmcpuError(f"tensor {name!r}: a group scale overflows float16; use --dtype f32 or f16")
        return self._tile(enc[0], enc[1:], k, gs)

    def dequantize(self, parts, shape):
        n, k = shape
        q, scales = self._untile(parts, n)
        return self.reference_dequantize(q, *scales, gs=k // scales[0].shape[1])

    def from_ggml(self, raw, shape):
        n, k = raw.shape[0], shape[1]
        el, nbytes = self.ggml_block
        blocks = np.ascontiguousarray(raw).reshape(n, k // el, nbytes)
        n_scales = 2 if self.has_min else 1
        scales = [np.ascontiguousarray(blocks[:, :, 2 * i:2 * i + 2]).view(np.uint16).reshape(n, k // el)
                  for i in range(n_scales)]
        q = np.ascontiguousarray(blocks[:, :, 2 * n_scales:]).reshape(n, k // el * self.per).view(self.qdtype)
        return self._tile(q, scales, k, Q.QK)

    def to_ggml(self, parts, shape, gs):
        n, k = shape
        if gs != Q.QK:
            raise GlmcpuError(f"{self.name} with group size {gs} cannot be written as ggml's {self.name.upper()} "
                              f"(its blocks hold 32 values with one scale); convert with --group-size 32")
        q, scales = self._untile(parts, n)
        el, nbytes = self.ggml_block
        out = np.empty((n, k // el, nbytes), np.uint8)
        for i, s in enumerate(scales):
            out[:, :, 2 * i:2 * i + 2] = s.view(np.uint8).reshape(n, k // el, 2)
        out[:, :, 2 * len(scales):] = q.view(np.uint8).reshape(n, k // el, self.per)
        return out.reshape(n, -1)


class Q8_0(_Grouped):
    name, bits, per, qdtype, has_min, ggml_type = "q8_0", 8.5, 32, np.int8, False, 8
    quantize = staticmethod(Q.quantize_q8_0)
    reference_dequantize = staticmethod(Q.dequantize_q8_0)

    def linear(self, parts, shape, ws):
        from glmcpu.linear import LinearQ8_0
        return LinearQ8_0(parts["quants"], parts["scales"], shape[0], ws)


class _Q4(_Grouped):
    def linear(self, parts, shape, ws):
        from glmcpu.linear import EMPTY_U16, LinearQ4
        return LinearQ4(self.name, parts["quants"], parts["scales"], parts.get("mins", EMPTY_U16), shape[0], ws)


class Q4_0(_Q4):
    name, bits, per, qdtype, has_min, ggml_type = "q4_0", 4.5, 16, np.uint8, False, 2
    quantize = staticmethod(Q.quantize_q4_0)
    reference_dequantize = staticmethod(Q.dequantize_q4_0)


class Q4_1(_Q4):
    name, bits, per, qdtype, has_min, ggml_type = "q4_1", 5.0, 16, np.uint8, True, 3
    quantize = staticmethod(Q.quantize_q4_1)
    reference_dequantize = staticmethod(Q.dequantize_q4_1)


class _GGMLRows(QType):
    """A type stored as ggml's rows themselves (one part, uint8 [n, k / block values * block bytes]),
    so GGUF import and export copy the bytes."""
    quantized = True

    @property
    def storage(self):
        return {"blocks": ("", "U8")}

    def part_shapes(self, shape, gs, tile_rows):
        n, k = shape
        el, nbytes = self.ggml_block
        return {"blocks": (n, k // el * nbytes)}

    def from_ggml(self, raw, shape):
        return [np.ascontiguousarray(raw)]

    def to_ggml(self, parts, shape, gs):
        return np.ascontiguousarray(parts["blocks"])


class Q5_0(_GGMLRows):
    """ggml's q5_0 (32 values: f16 d, 32 high bits, 16 nibble bytes; (q - 16) * d), run like the
    other 32-block types on int8 activations. It holds the rows llama.cpp's Q4_K_M mix cannot
    store as q4_K (GLM's 13696-wide ffn_down)."""
    name, bits, ggml_type, ggml_block = "q5_0", 5.5, 6, (32, 22)

    def encode(self, rows, name, gs):
        b = Q.quantize_q5_0(rows)
        if not np.isfinite(Q.dequantize_q5_0(b, rows.shape[1])).all():
            raise GlmcpuError(f"tensor {name!r}: a block scale overflows float16; use --dtype f32 or f16")
        return [b]

    def dequantize(self, parts, shape):
        return Q.dequantize_q5_0(np.asarray(parts["blocks"]), shape[1])

    def linear(self, parts, shape, ws):
        from glmcpu.linear import LinearQ5_0
        return LinearQ5_0(parts["blocks"], ws)


class Q5_1(_GGMLRows):
    """ggml's q5_1 (32 values: f16 d, f16 m, 32 high bits, 16 nibble bytes; q * d + m), run like the
    other 32-block types on int8 activations. It holds the rows llama.cpp's Q5_K_M mix cannot store
    as q5_K (GLM's 13696-wide ffn_down)."""
    name, bits, ggml_type, ggml_block = "q5_1", 6.0, 7, (32, 24)

    def encode(self, rows, name, gs):
        b = Q.quantize_q5_1(rows)
        if not np.isfinite(Q.dequantize_q5_1(b, rows.shape[1])).all():
            raise GlmcpuError(f"tensor {name!r}: a block scale or minimum overflows float16; use --dtype f32 or f16")
        return [b]

    def dequantize(self, parts, shape):
        return Q.dequantize_q5_1(np.asarray(parts["blocks"]), shape[1])

    def linear(self, parts, shape, ws):
        from glmcpu.linear import LinearQ5_1
        return LinearQ5_1(parts["blocks"], ws)


class _KQuant(_GGMLRows):
    """ggml's K-quants (glmcpu/kquants.py: the byte layouts and reference quantizers): 256-value
    super-blocks, stored as ggml's rows exactly (one part, uint8 [n, k/256 * block bytes]), run by
    kernels/kquant.py on q8_K activations. Rows must be a multiple of 256 long."""
    kind = None  # kquants' name, "q4_K"

    def encode(self, rows, name, gs):
        from glmcpu import kquants
        b = kquants.quantize_fast(self.kind, rows)
        # every value is finite when the float16 super-block scales are (d, and dmin for q4_K /
        # q5_K: the other factors are 6- or 8-bit integers), so only those are checked
        el, nbytes = self.ggml_block
        blocks = b.reshape(b.shape[0], -1, nbytes)
        offsets = (208,) if self.kind == "q6_K" else (0, 2)
        if not all(np.isfinite(blocks[:, :, o:o + 2].copy().view(np.float16)).all() for o in offsets):
            raise GlmcpuError(f"tensor {name!r}: a super-block scale overflows float16; use --dtype f32 or f16")
        return [b]

    def dequantize(self, parts, shape):
        from glmcpu import kquants
        return kquants.DEQUANTIZE[self.kind](np.asarray(parts["blocks"]), shape[1])

    def linear(self, parts, shape, ws):
        from glmcpu.linear import LinearKQuant
        return LinearKQuant(self.name, int(self.name[1]), parts["blocks"], ws)


class Q4_K(_KQuant):
    name, kind, bits, ggml_type, ggml_block = "q4_k", "q4_K", 4.5, 12, (256, 144)


class Q5_K(_KQuant):
    name, kind, bits, ggml_type, ggml_block = "q5_k", "q5_K", 5.5, 13, (256, 176)


class Q6_K(_KQuant):
    name, kind, bits, ggml_type, ggml_block = "q6_k", "q6_K", 6.5625, 14, (256, 210)


QTYPES = {q.name: q for q in (F32(), F16(), BF16(), Q8_0(), Q4_0(), Q4_1(), Q5_0(), Q5_1(), Q4_K(), Q5_K(), Q6_K())}
NAMES = tuple(QTYPES)
QUANTIZED = tuple(n for n, q in QTYPES.items() if q.quantized)
GROUPED = tuple(n for n, q in QTYPES.items() if q.grouped)
BY_GGML_TYPE = {q.ggml_type: q for q in QTYPES.values()}


def get(name):
    """The storage type ``name``; a clear error naming the choices otherwise."""
    try:
        return QTYPES[name]
    except (KeyError, TypeError):
        raise GlmcpuError(f"unknown dtype {name!r}; choose one of {', '.join(QTYPES)}") from None


def fits(q, cols):
    """Whether rows of ``cols`` values can be stored as ``q`` (whole blocks)."""
    return cols % (q.ggml_block[0] if q.quantized else 1) == 0


def pick_group_size(cols, gs):
    """The group size used for a row length: gs if it divides cols, else the largest smaller
    supported size that does; None if not even 32 divides it (the tensor is then kept in f16)."""
    for g in sorted((g for g in Q.GROUP_SIZES if g <= gs), reverse=True):
        if cols % g == 0:
            return g
    return None
