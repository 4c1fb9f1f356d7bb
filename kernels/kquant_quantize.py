"""K-quant quantizers in numba: ggml's quantize_row_{q4_K,q5_K,q6_K,q8_K}_ref, byte for byte.

glmcpu/kquants.py is the spec (numpy, vectorised over sub-blocks) and its docstring the byte
layouts. These kernels do the same float32 operations in the same order: no fastmath (no
reassociation, no fused multiply-add), every constant a float32, ggml's nearest_int bit trick
(the low mantissa bits of v + 1.5 * 2^23, so NaN gives 0 and |v| >= 2^22 what the C gives),
error_model="numpy" (IEEE division: x / 0 is inf or NaN, as in C), C's integer narrowing (an int
stored in a uint8 / int8 keeps its low byte) and float16 rounding to nearest even.

Layout: a chunk of CHUNK super-blocks is searched with its sub-blocks side by side in lanes,
xt [n, S] (n = 32 for q4_K / q5_K, 16 for q6_K; lane s = sub-block s of the chunk, row i its
element i). Every inner loop runs over lanes: each lane's sum still adds its elements one at a
time in C's order, and LLVM vectorises across lanes without reassociating anything. The packing
runs per super-block. Chunks go in parallel (prange); each writes only its own output rows.

Entry points, xb [B, 256] float32 (finite: glmcpu.kquants checks) -> out [B, block bytes] uint8:
    quantize_k45(out, xb, nmax, rmin, rdelta, nstep, chunk)  q4_K (15, -1, 0.1, 20) / q5_K (31, -0.5, 0.1, 15)
    quantize_q6_K(out, xb, chunk)
    quantize_q8_K_rows(out, xb)
"""
import numpy as np
from numba import njit, prange

from .f16 import f16_to_f32

QK_K = 256
CHUNK = 8   # super-blocks searched together: 64 lanes (q4_K / q5_K) or 128 (q6_K), in L1


# ---------------------------------------------------------------- scalar helpers

@njit(cache=True, inline="always")
def nearest_int(v):
    """ggml's nearest_int of a float32: (bits(v + 1.5 * 2^23) & 0x7FFFFF) - 0x400000, int32."""
    t = np.float32(v + np.float32(12582912.0)).view(np.int32)
    return np.int32((t & np.int32(0x7FFFFF)) - np.int32(0x400000))   # numba widens; |result| <= 2^22


@njit(cache=True)
def f32_to_f16_bits(f):
    """float32 -> IEEE half bits as uint16, round to nearest even, overflow to inf (numpy's
    astype(float16) and GGML_FP32_TO_FP16 on F16C); a NaN keeps the top of its payload."""
    b = np.int64(np.float32(f).view(np.uint32))
    sign = (b >> 16) & 0x8000
    e = b & 0x7F800000
    m = b & 0x007FFFFF
    if e >= 0x47800000:                        # overflow, inf or NaN
        if e == 0x7F800000 and m != 0:
            h = 0x7C00 + (m >> 13)
            if h == 0x7C00:
                h += 1
            return np.uint16(sign + h)
        return np.uint16(sign + 0x7C00)
    if e <= 0x38000000:                        # a half subnormal or zero
        if e < 0x33000000:
            return np.uint16(sign)
        sig = (0x00800000 + m) >> (113 - (e >> 23))
        if (sig & 0x3FFF) != 0x1000 or (b & 0x7FF) != 0:   # + half an ulp, but not on a tie to even
            sig += 0x1000
        return np.uint16(sign + (sig >> 13))
    if (m & 0x3FFF) != 0x1000:                 # + half an ulp, but not on a tie to even
        m += 0x1000
    return np.uint16(sign + (m >> 13) + ((e - 0x38000000) >> 13))   # a carry moves the exponent


@njit(cache=True, inline="always")
def _put_f16(out, b, o, h):
    out[b, o] = np.uint8(h & 0xFF)
    out[b, o + 1] = np.uint8(h >> 8)


# ---------------------------------------------------------------- q4_K and q5_K

@njit(cache=True, error_model="numpy")
def _make_qkx2_lanes(L, scale, the_min, xt, nmax, rmin, rdelta, nstep):
    """ggml's make_qkx2_quants(32, nmax, x, weights, L, &the_min, Laux, rmin, rdelta, nstep,
    use_mad=false) on every lane of xt [32, S], with q4_K / q5_K's weights av_x + |x|
    (av_x = sqrtf(sum x^2 / 32)). -> L [32, S] uint8, scale [S], the_min [S] float32."""
    n, S = xt.shape
    f32 = np.float32
    w = np.empty((n, S), np.float32)
    lf = np.empty((n, S), np.float32)
    sum_x2 = np.zeros(S, np.float32)
    mn = np.empty(S, np.float32)
    mx = np.empty(S, np.float32)
    sum_w = np.empty(S, np.float32)
    sum_x = np.empty(S, np.float32)
    vmin = np.empty(S, np.float32)
    best_err = np.zeros(S, np.float32)
    best_is = np.empty(S, np.float32)
    best_vm = np.empty(S, np.float32)
    isc = np.empty(S, np.float32)
    sl = np.empty(S, np.float32)
    sl2 = np.empty(S, np.float32)
    sxl = np.empty(S, np.float32)
    err = np.empty(S, np.float32)
    ts = np.empty(S, np.float32)
    tm = np.empty(S, np.float32)
    dd = np.empty(S, np.float32)
    nm = np.int32(nmax)
    fnmax = f32(nmax)
    # weights
    for i in range(n):
        for s in range(S):
            sum_x2[s] += xt[i, s] * xt[i, s]
    for s in range(S):
        av = np.sqrt(f32(sum_x2[s] / f32(32.0)))
        for i in range(n):
            w[i, s] = f32(av + abs(xt[i, s]))
    # min, max, sum_w, sum_x
    for s in range(S):
        mn[s] = xt[0, s]
        mx[s] = xt[0, s]
        sum_w[s] = w[0, s]
        sum_x[s] = sum_w[s] * xt[0, s]
    for i in range(1, n):
        for s in range(S):
            x = xt[i, s]
            lo = mn[s]
            hi = mx[s]
            mn[s] = x if x < lo else lo         # `if (x[i] < min) min = x[i];`, branch-free
            mx[s] = x if x > hi else hi
            sum_w[s] += w[i, s]
            sum_x[s] += w[i, s] * x
    for s in range(S):
        if mn[s] > 0:
            mn[s] = f32(0.0)
        vmin[s] = mn[s]
        best_vm[s] = mn[s]
        best_is[s] = fnmax / (mx[s] - mn[s])
        scale[s] = f32(1.0) / best_is[s]
    # the first guess
    for i in range(n):
        for s in range(S):
            l = nearest_int(best_is[s] * (xt[i, s] - mn[s]))
            l = min(nm, max(np.int32(0), l))
            diff = f32(f32(scale[s] * f32(l)) + mn[s]) - xt[i, s]
            best_err[s] += w[i, s] * f32(diff * diff)
    # the search, from the best minimum so far
    for step in range(nstep + 1):
        num = f32(rmin + f32(rdelta * f32(step))) + fnmax
        for s in range(S):
            isc[s] = num / (mx[s] - vmin[s])
            sl[s] = f32(0.0)
            sl2[s] = f32(0.0)
            sxl[s] = f32(0.0)
            err[s] = f32(0.0)
        for i in range(n):
            for s in range(S):
                l = nearest_int(isc[s] * (xt[i, s] - vmin[s]))
                fl = f32(min(nm, max(np.int32(0), l)))
                lf[i, s] = fl
                wl = w[i, s] * fl
                sl[s] += wl
                sl2[s] += wl * fl
                sxl[s] += wl * xt[i, s]
        for s in range(S):
            D = sum_w[s] * sl2[s] - sl[s] * sl[s]
            this_scale = (sum_w[s] * sxl[s] - sum_x[s] * sl[s]) / D
            this_min = (sl2[s] * sum_x[s] - sl[s] * sxl[s]) / D
            if this_min > 0:
                this_min = f32(0.0)
                this_scale = sxl[s] / sl2[s]
            dd[s] = D
            ts[s] = this_scale
            tm[s] = this_min
        for i in range(n):
            for s in range(S):
                diff = f32(f32(ts[s] * lf[i, s]) + tm[s]) - xt[i, s]
                err[s] += w[i, s] * f32(diff * diff)
        for s in range(S):
            if dd[s] > 0 and err[s] < best_err[s]:
                best_err[s] = err[s]
                scale[s] = ts[s]
                best_is[s] = isc[s]
                best_vm[s] = vmin[s]
                vmin[s] = tm[s]
    # the winner's levels, recomputed (the same operations on the same values)
    for i in range(n):
        for s in range(S):
            l = nearest_int(best_is[s] * (xt[i, s] - best_vm[s]))
            L[i, s] = np.uint8(min(nm, max(np.int32(0), l)))
    for s in range(S):
        if mx[s] == mn[s]:                      # max == min: all levels 0, scale 0, min as found
            for i in range(n):
                L[i, s] = 0
            scale[s] = f32(0.0)
            vmin[s] = mn[s]
        the_min[s] = -vmin[s]


@njit(cache=True)
def _lanes(xb, b0, b1, n):
    """Super-blocks b0..b1-1 of xb [B, 256] as lanes: xt [n, (b1 - b0) * 256 / n], column c the
    c-th sub-block of n values (so the search runs across sub-blocks, one per SIMD lane)."""
    per = 256 // n
    xt = np.empty((n, (b1 - b0) * per), np.float32)
    for k in range(b1 - b0):
        for j in range(per):
            for i in range(n):
                xt[i, per * k + j] = xb[b0 + k, n * j + i]
    return xt


@njit(cache=True, error_model="numpy")
def _k45_chunk(out, xb, b0, b1, nmax, rmin, rdelta, nstep):
    """Super-blocks b0..b1-1 of xb [B, 256] -> rows b0..b1-1 of out (144 bytes q4_K, 176 q5_K)."""
    f32 = np.float32
    nsb = b1 - b0
    S = 8 * nsb
    xt = _lanes(xb, b0, b1, 32)
    L = np.empty((32, S), np.uint8)
    scales = np.empty(S, np.float32)
    mins = np.empty(S, np.float32)
    _make_qkx2_lanes(L, scales, mins, xt, nmax, rmin, rdelta, nstep)
    ls = np.empty(8, np.int32)
    lm = np.empty(8, np.int32)
    q = np.empty(256, np.uint8)
    nm = np.int32(nmax)
    qs0 = 48 if nmax == 31 else 16
    for k in range(nsb):
        b = b0 + k
        c = 8 * k
        max_scale = f32(0.0)
        max_min = f32(0.0)
        for j in range(8):
            if scales[c + j] > max_scale:
                max_scale = scales[c + j]
            if mins[c + j] > max_min:
                max_min = mins[c + j]
        inv_scale = f32(63.0) / max_scale if max_scale > 0 else f32(0.0)
        inv_min = f32(63.0) / max_min if max_min > 0 else f32(0.0)
        for j in range(8):
            ls[j] = min(63, nearest_int(inv_scale * scales[c + j]) & 0xFF)   # uint8, then MIN(63, .)
            lm[j] = min(63, nearest_int(inv_min * mins[c + j]) & 0xFF)
        for j in range(4):
            out[b, 4 + j] = np.uint8(ls[j] | ((ls[j + 4] >> 4) << 6))
            out[b, 8 + j] = np.uint8(lm[j] | ((lm[j + 4] >> 4) << 6))
            out[b, 12 + j] = np.uint8((ls[j + 4] & 15) | ((lm[j + 4] & 15) << 4))
        hd = f32_to_f16_bits(max_scale / f32(63.0))
        hm = f32_to_f16_bits(max_min / f32(63.0))
        _put_f16(out, b, 0, hd)
        _put_f16(out, b, 2, hm)
        d = f16_to_f32(hd)
        dmin = f16_to_f32(hm)
        # requantize with the scales as stored
        for j in range(8):
            dj = d * f32(ls[j])
            if dj != 0:                         # `if (!d) continue;` (NaN goes on)
                dm = dmin * f32(lm[j])
                for i in range(32):
                    l = nearest_int((xb[b, 32 * j + i] + dm) / dj)
                    q[32 * j + i] = np.uint8(min(nm, max(np.int32(0), l)))
            else:
                for i in range(32):
                    q[32 * j + i] = L[i, c + j]
        if nmax == 31:
            for e in range(32):
                out[b, 16 + e] = 0
        for h in range(4):
            for e in range(32):
                l1 = q[64 * h + e]
                l2 = q[64 * h + 32 + e]
                if nmax == 31:
                    out[b, 16 + e] |= np.uint8(((l1 >> 4) << (2 * h)) | ((l2 >> 4) << (2 * h + 1)))
                out[b, qs0 + 32 * h + e] = np.uint8((l1 & 15) | ((l2 & 15) << 4))


@njit(cache=True, parallel=True)
def quantize_k45(out, xb, nmax, rmin, rdelta, nstep, chunk):
    """xb [B, 256] float32 -> out [B, 144] (q4_K: nmax 15, rmin -1, rdelta 0.1, nstep 20) or
    [B, 176] (q5_K: 31, -0.5, 0.1, 15) uint8, ggml's quantize_row_q4_K_ref / q5_K_ref.
    rmin, rdelta float32; chunk super-blocks per search."""
    B = xb.shape[0]
    nc = (B + chunk - 1) // chunk
    for c in prange(nc):
        _k45_chunk(out, xb, c * chunk, min(B, (c + 1) * chunk), nmax, rmin, rdelta, nstep)


# ---------------------------------------------------------------- q6_K

@njit(cache=True, error_model="numpy")
def _qx_trial(sumlx, suml2, xt, w, wx, iscale, nmax):
    """One pass of make_qx_quants at iscale [S]: sumlx = sum (w x) l, suml2 = sum (w l) l, per lane."""
    n, S = xt.shape
    nm = np.int32(nmax)
    for s in range(S):
        sumlx[s] = np.float32(0.0)
        suml2[s] = np.float32(0.0)
    for i in range(n):
        for s in range(S):
            l = nearest_int(iscale[s] * xt[i, s])
            fl = np.float32(min(nm - 1, max(-nm, l)))
            sumlx[s] += wx[i, s] * fl
            suml2[s] += np.float32(w[i, s] * fl) * fl


@njit(cache=True, error_model="numpy")
def _make_qx_lanes(L, scale, xt, nmax):
    """ggml's make_qx_quants(16, nmax, x, L, rmse_type=1, NULL) on every lane of xt [16, S]
    -> L [16, S] uint8 (0..2 nmax - 1), scale [S] float32."""
    n, S = xt.shape
    f32 = np.float32
    nm = np.int32(nmax)
    amax = np.zeros(S, np.float32)
    vmax = np.zeros(S, np.float32)
    w = np.empty((n, S), np.float32)
    wx = np.empty((n, S), np.float32)
    iscale = np.empty(S, np.float32)
    best_is = np.empty(S, np.float32)
    best = np.empty(S, np.float32)
    sumlx = np.empty(S, np.float32)
    suml2 = np.empty(S, np.float32)
    for i in range(n):
        for s in range(S):
            x = xt[i, s]
            ax = abs(x)
            bigger = ax > amax[s]               # the first of the largest |x|
            vmax[s] = x if bigger else vmax[s]
            amax[s] = ax if bigger else amax[s]
            w[i, s] = x * x
            wx[i, s] = w[i, s] * x
    for s in range(S):
        iscale[s] = f32(-nmax) / vmax[s]
        best_is[s] = iscale[s]
    _qx_trial(sumlx, suml2, xt, w, wx, iscale, nmax)
    for s in range(S):
        scale[s] = sumlx[s] / suml2[s] if suml2[s] != 0 else f32(0.0)
        best[s] = scale[s] * sumlx[s]
    for step in range(-9, 10):
        if step == 0:
            continue
        num = -(f32(nmax) + f32(f32(0.1) * f32(step)))
        for s in range(S):
            iscale[s] = num / vmax[s]
        _qx_trial(sumlx, suml2, xt, w, wx, iscale, nmax)
        for s in range(S):
            if suml2[s] > 0 and sumlx[s] * sumlx[s] > best[s] * suml2[s]:
                best_is[s] = iscale[s]
                scale[s] = sumlx[s] / suml2[s]
                best[s] = scale[s] * sumlx[s]
    for i in range(n):
        for s in range(S):
            l = nearest_int(best_is[s] * xt[i, s])
            L[i, s] = np.uint8(min(nm - 1, max(-nm, l)) + nm)
    for s in range(S):
        if amax[s] < f32(1e-15):                # GROUP_MAX_EPS: all zero
            for i in range(n):
                L[i, s] = 0
            scale[s] = f32(0.0)


@njit(cache=True, error_model="numpy")
def _q6_K_chunk(out, xb, b0, b1):
    """Super-blocks b0..b1-1 of xb [B, 256] -> rows b0..b1-1 of out [B, 210]."""
    f32 = np.float32
    nsb = b1 - b0
    S = 16 * nsb
    xt = _lanes(xb, b0, b1, 16)
    L = np.empty((16, S), np.uint8)
    scales = np.empty(S, np.float32)
    _make_qx_lanes(L, scales, xt, 32)
    sc = np.empty(16, np.int32)
    q = np.empty(256, np.int32)
    for k in range(nsb):
        b = b0 + k
        c = 16 * k
        max_scale = f32(0.0)
        max_abs = f32(0.0)
        for j in range(16):
            a = abs(scales[c + j])
            if a > max_abs:
                max_abs = a
                max_scale = scales[c + j]
        if max_abs < f32(1e-15):                # memset 0, d = +0
            for o in range(210):
                out[b, o] = 0
            continue
        iscale = f32(-128.0) / max_scale
        hd = f32_to_f16_bits(f32(1.0) / iscale)
        _put_f16(out, b, 208, hd)
        d = f16_to_f32(hd)
        for j in range(16):
            v = min(127, nearest_int(iscale * scales[c + j])) & 0xFF     # int8: the low byte
            out[b, 192 + j] = np.uint8(v)
            sc[j] = v - 256 if v >= 128 else v
        for j in range(16):
            dj = d * f32(sc[j])
            if dj != 0:
                for i in range(16):
                    l = nearest_int(xb[b, 16 * j + i] / dj)
                    q[16 * j + i] = min(31, max(-32, l)) + 32
            else:
                for i in range(16):
                    q[16 * j + i] = L[i, c + j]
        for h in range(2):
            for e in range(32):
                q1 = q[128 * h + e]
                q2 = q[128 * h + 32 + e]
                q3 = q[128 * h + 64 + e]
                q4 = q[128 * h + 96 + e]
                out[b, 64 * h + e] = np.uint8((q1 & 15) | ((q3 & 15) << 4))
                out[b, 64 * h + 32 + e] = np.uint8((q2 & 15) | ((q4 & 15) << 4))
                out[b, 128 + 32 * h + e] = np.uint8((q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4)
                                                    | ((q4 >> 4) << 6))


@njit(cache=True, parallel=True)
def quantize_q6_K(out, xb, chunk):
    """xb [B, 256] float32 -> out [B, 210] uint8, ggml's quantize_row_q6_K_ref."""
    B = xb.shape[0]
    nc = (B + chunk - 1) // chunk
    for c in prange(nc):
        _q6_K_chunk(out, xb, c * chunk, min(B, (c + 1) * chunk))


# ---------------------------------------------------------------- q8_K

@njit(cache=True, parallel=True, error_model="numpy")
def quantize_q8_K_rows(out, xb):
    """xb [B, 256] float32 -> out [B, 292] uint8, ggml's block_q8_K (f32 d, i8 qs[256], i16
    bsums[16]) from quantize_row_q8_K_ref; an all-zero block is all zero bytes."""
    B = xb.shape[0]
    for b in prange(B):
        amax = np.float32(0.0)
        vmax = np.float32(0.0)
        for j in range(QK_K):
            a = abs(xb[b, j])
            if a > amax:
                amax = a
                vmax = xb[b, j]
        if amax == 0:
            for o in range(292):
                out[b, o] = 0
            continue
        iscale = np.float32(-127.0) / vmax
        for g in range(16):
            s = 0
            for i in range(16):
                v = min(127, nearest_int(iscale * xb[b, 16 * g + i])) & 0xFF
                out[b, 4 + 16 * g + i] = np.uint8(v)
                s += v - 256 if v >= 128 else v
            out[b, 260 + 2 * g] = np.uint8(s & 0xFF)
            out[b, 261 + 2 * g] = np.uint8((s >> 8) & 0xFF)
        db = np.int64(np.float32(np.float32(1.0) / iscale).view(np.uint32))
        for k in range(4):
            out[b, k] = np.uint8((db >> (8 * k)) & 0xFF)
