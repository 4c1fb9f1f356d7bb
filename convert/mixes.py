"""The K-quant mixes people download (Q4_K_M, Q5_K_M): which type each tensor gets.

The rule is llama.cpp's ``llama_tensor_get_type`` (src/llama-quant.cpp, as vendored in
llama-cpp-python 0.3.36) for a dense model (no experts, not Falcon, not a 70B), with
use_more_bits(i, n) = i < n/8 or i >= 7n/8 or (i - n/8) % 3 == 2:

    output.weight (and token_embd.weight when tied)   q6_K  (q8_0 if its rows are not a multiple of 256)
    blk.i.attn_v / attn_qkv                           q6_K if use_more_bits(i, n_layer), else the base type
    blk.i.ffn_down                                    q6_K if use_more_bits(i, n_layer), else the base type
    every other matrix (token_embd included)          the base type: q4_K (Q4_K_M) or q5_K (Q5_K_M)

then rows that are not a multiple of 256 fall back as llama.cpp's tensor_type_fallback does: q5_0
for q4_K, q5_1 for q5_K, q8_0 for q6_K. GLM's 13696-wide ffn_down rows take this path.
One difference: llama.cpp's attn_v rule applies to attn_v alone where the checkpoint has
separate q/k/v (glm-4-9b-chat-hf, GLM-Edge, GLM-4-0414); glmcpu stores them as one fused QKV
matrix, which then takes the attn_v type whole.
"""
import re

from glmcpu import qtypes

MIXES = {"q4_k_m": "q4_k", "q5_k_m": "q5_k"}


def use_more_bits(i, n):
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def mix_type(mix, name, cols, n_layer, tied):
    """The storage type name of matrix ``name`` (rows of ``cols`` values) in ``mix``, and a note
    when it fell back from the type the rule chose."""
    base = MIXES[mix]
    want = base
    m = re.match(r"^blk\.(\d+)\.(attn_qkv|ffn_down)\.weight$", name)
    if name == "output.weight" or (tied and name == "token_embd.weight"):
        want = "q6_k" if cols % 256 == 0 else "q8_0"
    elif m and use_more_bits(int(m.group(1)), n_layer):
        want = "q6_k"
    if not qtypes.fits(qtypes.get(want), cols):
        fallback = {"q4_k": "q5_0", "q5_k": "q5_1"}.get(want, "q8_0")
        return fallback, f"note: {name} has rows of {cols} values, not a multiple of 256: {fallback} instead of {want}"
    return want, None
