"""Dequantizers for ggml block types glmcpu reads but does not store, so that a GGUF holding them
can be requantized (``glmcpu convert FILE.gguf --dtype ...``): ggml's ``dequantize_row_<type>``,
value for value. The types glmcpu stores (F32 ... Q5_0, the K-quants) dequantize through their
registry entry (glmcpu/qtypes.py); what is left here is Q5_1, which llama.cpp's Q5_K_M mix uses for
rows that are not a multiple of 256 (the GLM FFN width 13696).

    block_q5_1 (24 bytes, 32 values): f16 d, f16 m, u32 qh, u8 qs[16]; value = q * d + m
    where for j < 16: q[j] = qs[j] & 15 | bit j of qh << 4, q[j + 16] = qs[j] >> 4 | bit j + 16 of qh << 4
"""
import numpy as np


def dequantize_q5_1(raw, cols):
    b = np.ascontiguousarray(raw).reshape(-1, 24)
    d = b[:, 0:2].copy().view(np.float16).astype(np.float32)                 # [B, 1]
    m = b[:, 2:4].copy().view(np.float16).astype(np.float32)
    qh = b[:, 4:8].copy().view("<u4")                                         # [B, 1]
    qs = b[:, 8:24]
    bits = (qh >> np.arange(32, dtype=np.uint32)[None, :]) & 1                # [B, 32]
    q = np.concatenate([qs & 15, qs >> 4], axis=1).astype(np.int32) | (bits.astype(np.int32) << 4)
    return ((q.astype(np.float32) * d) + m).reshape(raw.shape[0], cols)


DEQUANTIZE = {"Q5_1": dequantize_q5_1}
