"""Weight matrices and the kernel that multiplies by each, chosen once at load from the stored type.

Every Linear has ``__call__(out [T, n_out], x [T, n_in])`` (y = x W^T) and ``embed(out, ids)``
(rows of W, for the token embedding). Modes, chosen at load:
  fast       numba kernels; quantized types quantize activations to int8 per 32-block
  exact      weights dequantized to float32 at load (a copy) and float32 kernels: the exact
             forward on the dequantized weights
  reference  numpy scalar reference (glmcpu.quants.matmul_ref), float64 accumulation: defines
             what the fast kernels compute
"""
import numpy as np

from glmcpu import kernels as K
from glmcpu import quants as Q
from glmcpu import qtypes
from .errors import GlmcpuError

MODES = ("fast", "exact", "reference")
EMPTY_U16 = np.zeros((0, 0, 0), np.uint16)
EMPTY_U16.setflags(write=False)


class Workspace:
    """Scratch shared by all Linears of a model, allocated once at load."""

    def __init__(self, chunk, max_in, threads, tile_rows=128):
        R, TB = tile_rows, K.quant.TB
        n = self.n_ranges = 4 * threads
        self.row_buf = np.zeros((n, max_in), np.float32)              # f16 matmul: widened rows
        self.acc1 = np.zeros((n, R), np.float32)                      # quantized matvec
        self.p16_1 = np.zeros((n, R), np.int16)
        self.p32_1 = np.zeros((n, R), np.int32)
        self.acc = np.zeros((n, TB, R), np.float32)                   # quantized matmul
        self.p16 = np.zeros((n, TB, R), np.int16)
        self.p32 = np.zeros((n, TB, R), np.int32)
        self.w = np.zeros((n, 32, R), np.int16)                       # an unpacked sub-block
        self.xq = np.zeros((chunk, max_in), np.int8)                  # int8 activations
        self.xd = np.zeros((chunk, max_in // 32), np.float32)
        self.xs = np.zeros((chunk, max_in // 32), np.int32)
        # 4-bit kernels: the AVX2 ones where the CPU has it (decided here, once), else portable
        self.avx2 = K.avx2.available(R)
        if self.avx2:
            self.w8 = np.zeros((n, 32 * R), np.uint8)                 # an unpacked sub-block
            self.xp = np.zeros((chunk, max_in // 2), np.int16)        # paired int8 activations
        self._act = {}

    def act(self, n_in):
        """Views [chunk, n_in] of the activation buffers (C-contiguous, one per width): xq, xd,
        xs and (AVX2 kernels only, else None) the paired activations xp [chunk, n_in / 2]."""
        if n_in not in self._act:
            c = self.xq.shape[0]
            self._act[n_in] = (self.xq.reshape(-1)[: c * n_in].reshape(c, n_in),
                               self.xd.reshape(-1)[: c * (n_in // 32)].reshape(c, n_in // 32),
                               self.xs.reshape(-1)[: c * (n_in // 32)].reshape(c, n_in // 32),
                               self.xp.reshape(-1)[: c * (n_in // 2)].reshape(c, n_in // 2)
                               if self.avx2 else None)
        return self._act[n_in]

    def unpacked_rows(self):
        """For the Linears stored as ggml's rows (allocated at load, when the first asks): per-range
        scratch for one unpacked row, rq [n_ranges, max_in] int32 (the values)."""
        if not hasattr(self, "rq"):
            self.rq = np.zeros((self.n_ranges, self.xq.shape[1]), np.int32)
        return self.rq

    def q5_1(self):
        """q5_1's per-range scratch: (rq, rd32, rm32 [n_ranges, max_in / 32] float32: a row's block
        scales and minimums)."""
        if not hasattr(self, "rm32"):
            self.rm32 = np.zeros((self.n_ranges, self.xq.shape[1] // 32), np.float32)
        rq, rd = self.q5_0()
        return rq, rd, self.rm32

    def q5_0(self):
        """q5_0's per-range scratch: (rq, rd32 [n_ranges, max_in / 32] float32, a row's block scales)."""
        if not hasattr(self, "rd32"):
            self.rd32 = np.zeros((self.n_ranges, self.xq.shape[1] // 32), np.float32)
        return self.unpacked_rows(), self.rd32

    def kquant(self, n_in):
        """For the K-quant Linears (allocated at load, when the first asks): per-range row scratch
        (rq, rd, rdm, rm) and views [chunk, ...] of the q8_K activations of width n_in (aq, ad, asum)."""
        if not hasattr(self, "kd"):
            n, (c, m) = self.n_ranges, self.xq.shape
            self.rd = np.zeros((n, m // 256), np.float32)
            self.rdm = np.zeros((n, m // 256), np.float32)
            self.rm = np.zeros((n, m // 16), np.int32)
            self.kd = np.zeros((c, m // 256), np.float32)
            self.ksum = np.zeros((c, m // 16), np.int32)
        c = self.xq.shape[0]
        return ((self.unpacked_rows(), self.rd, self.rdm, self.rm),
                (self.xq.reshape(-1)[: c * n_in].reshape(c, n_in),
                 self.kd.reshape(-1)[: c * (n_in // 256)].reshape(c, n_in // 256),
                 self.ksum.reshape(-1)[: c * (n_in // 16)].reshape(c, n_in // 16)))

    def kquant_avx2(self, n_in):
        """For the K-quant Linears on the AVX2 kernels (allocated at load, when the first asks):
        per-range tile scratch (wq, sp, mn, dd, sumf) of kernels.kquant_avx2.matmul_kquant_avx2
        (the matvec uses sp) and views [chunk, ...] of the permuted activations of width n_in
        (xq2 [chunk, n_in + PAD] int8, xqu [chunk, n_in + PAD] uint8, rows padded, see the kernel)
        and the matvec's sub-block sums asum2 [1, n_in / 32] int32 (one token), and flat buffers
        for the matmul's transposed scales adT [n_in / 256, T] and sub-block sums a2T [n_in / 32, T]
        (float32; shaped per call, as T varies)."""
        KA = K.kquant_avx2
        if not hasattr(self, "kq_wq"):
            n, (c, m) = self.n_ranges, self.xq.shape
            self.kq_wq = np.zeros((n, KA.RT * 256), np.uint8)
            self.kq_sp = np.zeros((n, KA.RT * 8), np.int32)
            self.kq_mn = np.zeros((n, KA.RT * 8), np.int32)
            self.kq_dd = np.zeros((n, 2 * KA.RT), np.float32)
            self.kq_sumf = np.zeros((n, KA.TB * KA.RT), np.float32)
            self.kq_xq2 = np.zeros((c, m + KA.PAD), np.int8)
            self.kq_xqu = np.zeros((c, m + KA.PAD), np.uint8)
            self.kq_asum2 = np.zeros((1, m // 32), np.int32)
            self.kq_adT = np.zeros(m // 256 * c, np.float32)
            self.kq_a2T = np.zeros(m // 32 * c, np.float32)
        c = self.xq.shape[0]

        def view(a, width):
            return a.reshape(-1)[: c * width].reshape(c, width)
        return ((self.kq_wq, self.kq_sp, self.kq_mn, self.kq_dd, self.kq_sumf),
                (view(self.kq_xq2, n_in + KA.PAD), view(self.kq_xqu, n_in + KA.PAD), self.kq_asum2[:, : n_in // 32],
                 self.kq_adT, self.kq_a2T))

    def q5_0_avx2(self):
        """q5_0's AVX2 scratch (allocated at load, when the first asks): the transposed activation
        scales and sums xdt [max_in / 32, chunk] float32, xst int32, scr [n_ranges, 8] float32, and
        the tiled matmul's per-range scratch (vals, wt, dr, accf; kernels.kquant_avx2)."""
        if not hasattr(self, "q5_xdt"):
            KA, n = K.kquant_avx2, self.n_ranges
            c, m = self.xq.shape
            self.q5_xdt = np.zeros((m // 32, c), np.float32)
            self.q5_xst = np.zeros((m // 32, c), np.int32)
            self.q5_scr = np.zeros((n, 8), np.float32)
            self.q5_tile = (np.zeros((n, KA.RT5 * 32), np.uint8), np.zeros((n, KA.RT5 * 32), np.uint8),
                            np.zeros((n, KA.RT5), np.float32), np.zeros((n, KA.TB5 * KA.RT5), np.float32))
        return self.q5_xdt, self.q5_xst, self.q5_scr, self.q5_tile

    def q8_0_avx2(self):
        """For the q8_0 Linears on the AVX2 kernels (allocated at load, when the first asks): per-range
        scratch of kernels.q8_avx2.matmul_q8_0_avx2, acc [n_ranges, TA, R] float32 (the float sums of
        TA = min(chunk, 256) tokens: each weight block is interleaved once per TA tokens) and xw
        [n_ranges, TB * 32] int16 (one 32-block's activations of TB tokens, widened)."""
        if not hasattr(self, "q8_acc"):
            n, c, R = self.n_ranges, self.xq.shape[0], self.acc1.shape[1]
            self.q8_acc = np.zeros((n, min(c, 256), R), np.float32)
            self.q8_xw = np.zeros((n, K.quant.TB * 32), np.int16)
        return self.q8_acc, self.q8_xw

    def nbytes(self):
        return sum(v.nbytes for v in vars(self).values() if isinstance(v, np.ndarray))


class LinearF32:
    type = "f32"

    def __init__(self, w):
        self.w = w
        self.n_out, self.n_in = w.shape

    def __call__(self, out, x):
        if x.shape[0] == 1:
            K.matvec_f32(out[0], x[0], self.w)
        else:
            K.matmul_f32(out, x, self.w)

    def embed(self, out, ids):
        K.embed_f32(out, self.w, ids)


class LinearF16:
    type = "f16"

    def __init__(self, w, ws):
        self.w, self.ws = w, ws
        self.n_out, self.n_in = w.shape

    def __call__(self, out, x):
        if x.shape[0] == 1:
            K.matvec_f16(out[0], x[0], self.w)
        else:
            K.matmul_f16(out, self.ws.row_buf, x, self.w)

    def embed(self, out, ids):
        K.embed_f16(out, self.w, ids)


class LinearBF16:
    type = "bf16"

    def __init__(self, w, ws):
        self.w, self.ws = w, ws
        self.n_out, self.n_in = w.shape

    def __call__(self, out, x):
        K.matmul_bf16(out, self.ws.row_buf, x, self.w)

    def embed(self, out, ids):
        K.embed_bf16(out, self.w, ids)

    def dequantize(self):
        return (self.w.astype(np.uint32) << np.uint32(16)).view(np.float32)


class LinearKQuant:
    """q4_k / q5_k / q6_k: ggml's rows (w [n_out, n_in / 256 * block bytes]), q8_K activations;
    AVX2 kernels when the workspace chose them (kernels/kquant_avx2.py, the same bits)."""

    def __init__(self, qtype, kind, w, ws):
        self.type, self.kind, self.w = qtype, kind, w
        self.n_out = w.shape[0]
        self.n_in = w.shape[1] // {4: 144, 5: 176, 6: 210}[kind] * 256
        self.scratch, (self.aq, self.ad, self.asum) = ws.kquant(self.n_in)
        if ws.avx2:
            self.tile, self.perm = ws.kquant_avx2(self.n_in)
            self._run = self._avx2
        else:
            self._run = self._portable

    def __call__(self, out, x):
        self._run(out, x)

    def _portable(self, out, x):
        T = x.shape[0]
        aq, ad, asum = self.aq[:T], self.ad[:T], self.asum[:T]
        K.quantize_q8_K(aq, ad, asum, x)
        K.matmul_kquant(out, *self.scratch, self.w, aq, ad, asum, self.kind)

    def _avx2(self, out, x):
        T = x.shape[0]
        aq, ad, asum = self.aq[:T], self.ad[:T], self.asum[:T]
        xq2, xqu, asum2, adT, a2T = self.perm
        K.quantize_q8_K(aq, ad, asum, x)
        if T == 1:
            K.kquant_avx2.pair_sums(asum2, asum)
            K.matvec_kquant_avx2(out[0], self.tile[1], self.w, aq, ad, asum, asum2, self.kind)
        else:
            nb = self.n_in // 256
            adT, a2T = adT[: nb * T].reshape(nb, T), a2T[: 8 * nb * T].reshape(8 * nb, T)
            K.permute_q8_K(xq2[:T], xqu[:T], adT, a2T, aq, ad, asum)
            K.matmul_kquant_avx2(out, *self.tile, self.w, xq2[:T], xqu[:T], adT, a2T, self.kind)

    def embed(self, out, ids):
        K.dequant_rows_kquant(out, self.w, ids, self.kind)

    def dequantize(self):
        out = np.empty((self.n_out, self.n_in), np.float32)
        K.dequant_rows_kquant(out, self.w, np.arange(self.n_out), self.kind)
        return out


Q5_TILED_FROM = 32


class LinearQ5_0:
    """q5_0: ggml's rows (w [n_out, n_in / 32 * 22]), the int8 activations of the other 32-block types."""
    type = "q5_0"

    def __init__(self, w, ws):
        self.w, self.ws = w, ws
        self.n_out, self.n_in = w.shape[0], w.shape[1] // 22 * 32
        self.rq, self.rd = ws.q5_0()
        self.xq, self.xd, self.xs, _ = ws.act(self.n_in)
        self._run = self._avx2 if ws.avx2 else self._portable   # the same bits (kernels/kquant_avx2.py)
        if ws.avx2:
            self.xdt, self.xst, self.scr, self.tile = ws.q5_0_avx2()

    def __call__(self, out, x):
        T = x.shape[0]
        xq, xd, xs = self.xq[:T], self.xd[:T], self.xs[:T]
        K.quantize_act(xq, xd, xs, x)
        self._run(out, xq, xd, xs)

    def _portable(self, out, xq, xd, xs):
        K.matmul_q5_0(out, self.rq, self.rd, self.w, xq, xd)

    def _avx2(self, out, xq, xd, xs):
        if xq.shape[0] == 1:
            K.matvec_q5_0_avx2(out[0], self.w, xq, xd, xs, self.scr)
            return
        if xq.shape[0] >= Q5_TILED_FROM:      # enough tokens to pay for unpacking each block once
            K.kquant_avx2.matmul_q5_0_tiled_avx2(out, *self.tile, self.w, xq, xd, xs)
            return
        nb = self.n_in // 32
        xdt, xst = self.xdt[:nb], self.xst[:nb]
        if xq.shape[0] >= 8:
            K.kquant_avx2.transpose_act(xdt, xst, xd, xs)
        K.matmul_q5_0_avx2(out, self.w, xq, xd, xs, xdt, xst, self.scr)

    def embed(self, out, ids):
        K.dequant_rows_q5_0(out, self.w, ids)

    def dequantize(self):
        out = np.empty((self.n_out, self.n_in), np.float32)
        K.dequant_rows_q5_0(out, self.w, np.arange(self.n_out))
        return out


class LinearQ5_1:
    """q5_1: ggml's rows (w [n_out, n_in / 32 * 24]), the int8 activations of the other 32-block
    types; portable kernels (kernels/q5_1.py: it holds the few fallback matrices of a Q5_K_M file)."""
    type = "q5_1"

    def __init__(self, w, ws):
        self.w, self.ws = w, ws
        self.n_out, self.n_in = w.shape[0], w.shape[1] // 24 * 32
        self.rq, self.rd, self.rm = ws.q5_1()
        self.xq, self.xd, self.xs, _ = ws.act(self.n_in)

    def __call__(self, out, x):
        T = x.shape[0]
        xq, xd, xs = self.xq[:T], self.xd[:T], self.xs[:T]
        K.quantize_act(xq, xd, xs, x)
        K.matmul_q5_1(out, self.rq, self.rd, self.rm, self.w, xq, xd, xs)

    def embed(self, out, ids):
        K.dequant_rows_q5_1(out, self.w, ids)

    def dequantize(self):
        out = np.empty((self.n_out, self.n_in), np.float32)
        K.dequant_rows_q5_1(out, self.w, np.arange(self.n_out))
        return out


class LinearQ4:
    """q4_0 (mins empty) and q4_1; AVX2 kernels when the workspace chose them (same results)."""

    def __init__(self, qtype, qs, d, m, n_out, ws):
        self.type, self.qs, self.d, self.m, self.ws = qtype, qs, d, m, ws
        self.n_out, self.n_in = n_out, qs.shape[1] * 32
        self.xq, self.xd, self.xs, self.xp = ws.act(self.n_in)
        self._run = self._avx2 if ws.avx2 else self._portable

    def __call__(self, out, x):
        self._run(out, x)

    def _portable(self, out, x):
        T, ws = x.shape[0], self.ws
        xq, xd, xs = self.xq[:T], self.xd[:T], self.xs[:T]
        K.quantize_act(xq, xd, xs, x)
        if T == 1:
            K.matvec_q4(out[0], ws.acc1, ws.p16_1, xq, xd, xs, self.qs, self.d, self.m, self.n_out)
        else:
            K.matmul_q4(out, ws.acc, ws.p16, ws.w, xq, xd, xs, self.qs, self.d, self.m, self.n_out)

    def _avx2(self, out, x):
        T, ws = x.shape[0], self.ws
        xq, xd, xs, xp = self.xq[:T], self.xd[:T], self.xs[:T], self.xp[:T]
        K.quantize_act(xq, xd, xs, x)
        K.pair_act(xp, xq)
        if T == 1:
            K.matvec_q4_avx2(out[0], ws.acc1, ws.p16_1, xp, xd, xs, self.qs, self.d, self.m, self.n_out)
        elif T <= K.quant.TB:    # several sequences decoding together: no unpacked copy
            K.matmul_few_q4_avx2(out, ws.acc, ws.p16, xp, xd, xs, self.qs, self.d, self.m, self.n_out)
        else:
            K.matmul_q4_avx2(out, ws.acc, ws.p16, ws.w8, xp, xd, xs, self.qs, self.d, self.m, self.n_out)

    def embed(self, out, ids):
        K.embed_q4(out, self.qs, self.d, self.m, ids)

    def dequantize(self):
        out = np.empty((self.n_out, self.n_in), np.float32)
        for r in range(self.n_out):
            K.dequant_row_q4(out[r], self.qs, self.d, self.m, r)
        return out


class LinearQ8_0:
    """q8_0; AVX2 kernels when the workspace chose them (kernels/q8_avx2.py, the same bits)."""
    type = "q8_0"

    def __init__(self, qs, d, n_out, ws):
        self.qs, self.d, self.ws = qs, d, ws
        self.n_out, self.n_in = n_out, qs.shape[1] * 32
        self.xq, self.xd, self.xs, _ = ws.act(self.n_in)
        if ws.avx2:
            self.acc, self.xw = ws.q8_0_avx2()
            self._run = self._avx2
        else:
            self._run = self._portable

    def __call__(self, out, x):
        self._run(out, x)

    def _portable(self, out, x):
        T, ws = x.shape[0], self.ws
        xq, xd, xs = self.xq[:T], self.xd[:T], self.xs[:T]
        K.quantize_act(xq, xd, xs, x)
        if T == 1:
            K.matvec_q8_0(out[0], ws.acc1, ws.p32_1, xq, xd, self.qs, self.d, self.n_out)
        else:
            K.matmul_q8_0(out, ws.acc, ws.p32, ws.w, xq, xd, self.qs, self.d, self.n_out)

    def _avx2(self, out, x):
        T, ws = x.shape[0], self.ws
        xq, xd, xs = self.xq[:T], self.xd[:T], self.xs[:T]
        K.quantize_act(xq, xd, xs, x)
        if T == 1:
            K.matvec_q8_0_avx2(out[0], ws.acc1, ws.p32_1, xq, xd, self.qs, self.d, self.n_out)
        else:
            K.matmul_q8_0_avx2(out, self.acc, ws.p32, ws.w, self.xw, xq, xd, self.qs, self.d, self.n_out)

    def embed(self, out, ids):
        K.embed_q8_0(out, self.qs, self.d, ids)

    def dequantize(self):
        out = np.empty((self.n_out, self.n_in), np.float32)
        for r in range(self.n_out):
            K.dequant_row_q8_0(out[r], self.qs, self.d, r)
        return out


class LinearReference:
    """numpy reference: for quantized types glmcpu.quants.matmul_ref on the untiled (ggml row
    order) arrays, or for the K-quants kquants.kernel_dot on q8_K activations (glmcpu.kquants),
    which the fast kernels must equal bit for bit; float64 products otherwise."""

    def __init__(self, lin):
        self.type = "reference"
        self.n_out, self.n_in = lin.n_out, lin.n_in
        self.w = dequantize_linear(lin)
        self.kind = getattr(lin, "type", None)
        if self.kind in ("q4_0", "q4_1", "q8_0"):
            n = self.n_out
            self.q = Q.untile(lin.qs, n)                       # [n, k] int8 or [n, k/2] nibbles
            self.d = Q.untile(lin.d[:, :, None, :], n).view(np.float16)
            self.m = Q.untile(lin.m[:, :, None, :], n).view(np.float16) if self.kind == "q4_1" else None
            self.gs = self.n_in // self.d.shape[1]

        if isinstance(lin, LinearKQuant):
            self.blocks, self.kq = lin.w, "q%d_K" % lin.kind
        if isinstance(lin, (LinearQ5_0, LinearQ5_1)):
            self.blocks = lin.w

    def __call__(self, out, x):
        if self.kind in ("q4_0", "q4_1", "q8_0"):
            out[:] = Q.matmul_ref(self.kind, self.q, self.d, self.m, self.gs, x)
        elif self.kind in ("q5_0", "q5_1"):
            out[:] = Q.matmul_ref(self.kind, np.asarray(self.blocks), None, None, 32, x)
        elif self.kind in ("q4_k", "q5_k", "q6_k"):
            from glmcpu import kquants
            out[:] = kquants.kernel_dot(self.kq, np.asarray(self.blocks), kquants.quantize_q8_K(x))
        else:
            out[:] = (x.astype(np.float64) @ self.w.astype(np.float64).T).astype(np.float32)

    def embed(self, out, ids):
        out[:] = self.w[ids]


def _part(mf, name, role, info):
    for pname, prole in info.get("parts", {name: "data"}).items():
        if prole == role:
            if pname not in mf.header:
                break
            return mf.tensor(pname)
    raise GlmcpuError(f"{mf.path}: corrupted file: part {role!r} of {name!r} is missing")


def make_linear(mf, name, shape, ws, mode="fast"):
    """The Linear for tensor ``name`` of ModelFile ``mf``, checking its stored type and shape."""
    info = mf.tensor_types.get(name)
    if info is None:
        raise GlmcpuError(f"{mf.path}: corrupted file: tensor {name!r} is missing")
    if tuple(info["shape"]) != tuple(shape):
        raise GlmcpuError(f"{mf.path}: corrupted file: {name!r} has shape {info['shape']}, expected {list(shape)}")
    q = qtypes.QTYPES.get(info["type"])
    if q is None:
        raise GlmcpuError(f"{mf.path}: tensor {name!r} has type {info['type']!r}, which this glmcpu cannot run "
                          f"(upgrade glmcpu)")
    try:
        parts = {role: _part(mf, name, role, info) for role in q.storage}
        want = q.part_shapes(shape, info.get("group_size"), ws.acc1.shape[1]) if q.grouped else q.part_shapes(shape, None, None)
        for role, a in parts.items():
            if a.shape != want[role]:
                raise GlmcpuError(f"{mf.path}: corrupted file: part {role!r} of {name!r} has shape {a.shape}, "
                                  f"expected {want[role]}")
        lin = q.linear(parts, shape, ws)
    except (KeyError, TypeError, ValueError) as e:
        raise GlmcpuError(f"{mf.path}: corrupted file: bad description of {name!r} ({e})") from None
    if lin.type == "f32" and lin.w.dtype != np.float32 or lin.type in ("f16", "bf16") and lin.w.dtype != np.uint16:
        raise GlmcpuError(f"{mf.path}: corrupted file: {name!r} stored with the wrong dtype")
    if mode == "fast":
        return lin
    if mode == "exact":
        w32 = dequantize_linear(lin)
        w32.setflags(write=False)
        return LinearF32(w32)
    return LinearReference(lin)


def dequantize_linear(lin):
    if isinstance(lin, LinearF32):
        return np.array(lin.w, np.float32)
    if isinstance(lin, LinearF16):
        return lin.w.view(np.float16).astype(np.float32)
    return lin.dequantize()


def load_vector(mf, name, n):
    """A float32 [n] vector (norm weight or bias)."""
    info = mf.tensor_types.get(name)
    if info is None or info["type"] != "f32" or tuple(info["shape"]) != (n,):
        raise GlmcpuError(f"{mf.path}: corrupted file: {name!r} missing or not float32 [{n}]")
    return mf.tensor(name)
