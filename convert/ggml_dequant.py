"""Dequantizers for ggml block types glmcpu reads but does not store, so that a GGUF holding them
can be requantized (``glmcpu convert FILE.gguf --dtype ...``): ggml's ``dequantize_row_<type>``,
value for value. llama.cpp's K-quant mixes store rows whose length is not a multiple of 256 (the
GLM FFN width 13696) as Q5_0 / Q5_1 and the rest as Q4_K / Q5_K / Q6_K (glmcpu/kquants.py).

    block_q5_0 (22 bytes, 32 values): f16 d, u32 qh, u8 qs[16]; value = (q - 16) * d
    block_q5_1 (24 bytes, 32 values): f16 d, f16 m, u32 qh, u8 qs[16]; value = q * d + m
    where for j < 16: q[j] = qs[j] & 15 | bit j of qh << 4, q[j + 16] = qs[j] >> 4 | bit j + 16 of qh << 4
"""
import numpy as np

from glmcpu import kquants


def _q5(raw, cols, has_min):
    nbytes = 24 if has_min else 22
    b = np.ascontiguousarray(raw).reshape(-1, nbytes)
    d = b[:, 0:2].copy().view(np.float16).astype(np.float32)                 # [B, 1]
    m = b[:, 2:4].copy().view(np.float16).astype(np.float32) if has_min else None
    o = 4 if has_min else 2
    qh = b[:, o:o + 4].copy().view("<u4")                                     # [B, 1]
    qs = b[:, o + 4:o + 20]
    bits = (qh >> np.arange(32, dtype=np.uint32)[None, :]) & 1                # [B, 32]
    q = np.concatenate([qs & 15, qs >> 4], axis=1).astype(np.int32) | (bits.astype(np.int32) << 4)
    y = (q.astype(np.float32) * d) + m if has_min else (q - 16).astype(np.float32) * d
    return y.reshape(raw.shape[0], cols)


DEQUANTIZE = {
    "Q5_0": lambda raw, cols: _q5(raw, cols, False),
    "Q5_1": lambda raw, cols: _q5(raw, cols, True),
    "Q4_K": kquants.dequantize_q4_K,
    "Q5_K": kquants.dequantize_q5_K,
    "Q6_K": kquants.dequantize_q6_K,
}
