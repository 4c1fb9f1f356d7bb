"""Numba kernels: pure functions over preallocated arrays, output argument first, no globals.

Every kernel is compiled with ``cache=True`` and keeps dtypes stable (float32 activations,
float32 / float16-as-uint16 weights) so each compiles to exactly one signature.

With NUMBA_DISABLE_JIT=1 every kernel runs as plain Python (numpy twins stand in for the LLVM
intrinsics, see nojit.py) and gives the same results, slowly: for debugging on tiny models.
``has_nonfinite(x)`` is the guard the forward pass uses on its logits.
"""
from .f16 import f16_to_f32
from .matmul import (matvec_f32, matmul_f32, matvec_f16, matmul_f16,
                     embed_f32, embed_f16, dequant_rows_f16, matmul_bf16, embed_bf16)
from .norm import rmsnorm, layernorm
from .rope import rope_inplace, rope_2d_inplace
from .attention import attention
from .act import swiglu, gelu_tanh
from . import quant, avx2, kquant_avx2, q8_avx2
from .quant import (quantize_act, matvec_q4, matmul_q4, matvec_q8_0, matmul_q8_0,
                    dequant_row_q4, dequant_row_q8_0, embed_q4, embed_q8_0)
from .avx2 import pair_act, matvec_q4_avx2, matmul_q4_avx2, matmul_few_q4_avx2
from .kquant import quantize_q8_K, matmul_kquant, dequant_rows_kquant, matmul_q5_0, dequant_rows_q5_0
from .kquant_avx2 import permute_q8_K, matvec_kquant_avx2, matmul_kquant_avx2, matvec_q5_0_avx2, matmul_q5_0_avx2
from .q5_1 import matmul_q5_1, dequant_rows_q5_1
from .q8_avx2 import matvec_q8_0_avx2, matmul_q8_0_avx2
from .guard import has_nonfinite, first_nonfinite
from .nojit import JIT

__all__ = [
    "f16_to_f32", "matvec_f32", "matmul_f32", "matvec_f16", "matmul_f16",
    "embed_f32", "embed_f16", "dequant_rows_f16", "matmul_bf16", "embed_bf16", "rmsnorm", "rope_inplace", "attention", "swiglu",
    "layernorm", "rope_2d_inplace", "gelu_tanh",
    "quantize_act", "matvec_q4", "matmul_q4", "matvec_q8_0", "matmul_q8_0",
    "dequant_row_q4", "dequant_row_q8_0", "embed_q4", "embed_q8_0",
    "pair_act", "matvec_q4_avx2", "matmul_q4_avx2", "matmul_few_q4_avx2", "first_nonfinite", "has_nonfinite",
    "quantize_q8_K", "matmul_kquant", "dequant_rows_kquant", "matmul_q5_0", "dequant_rows_q5_0",
    "permute_q8_K", "matvec_kquant_avx2", "matmul_kquant_avx2", "matvec_q5_0_avx2", "matmul_q5_0_avx2",
    "matmul_q5_1", "dequant_rows_q5_1",
    "matvec_q8_0_avx2", "matmul_q8_0_avx2",
]
