"""Round-trip error and size of every quantized storage type, and of the K-quant mixes at real
model shapes (docs/QUANTIZATION.md, "K-quants").

    python benchmarks/kquant_error.py          # prints the two markdown tables

Error: relative RMS of dequantize(quantize(x)) - x on 512 x 4096 standard-normal rows (seed 0),
through the registry's reference quantizers (bit-identical to ggml's). Sizes: the bytes each type
takes for every matrix of the architecture's tensor table (norms f32), per family config shape.
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from glmcpu import families, models, qtypes  # noqa: E402
from glmcpu.convert.mixes import MIXES, mix_type  # noqa: E402


def rel_rms(name, x):
    q = qtypes.get(name)
    gs = 32 if q.grouped else None
    y = q.dequantize(dict(zip(q.storage, q.encode(x, "x", gs))), x.shape)
    return float(np.sqrt(np.mean((y - x) ** 2)) / np.sqrt(np.mean(x ** 2)))


def matrix_bytes(name, shape):
    q = qtypes.get(name)
    if not qtypes.fits(q, shape[1]):
        q = qtypes.get("q8_0")
    return sum(int(np.prod(s)) * (1 if dt in ("U8", "I8") else 2 if dt in ("F16", "BF16") else 4)
               for _, _, dt, s in q.parts(shape, 32 if q.grouped else None))


def model_bits(dtype, family, config):
    params = family.params(config)
    table = models.tensor_table(params)
    tied = families.is_tied(family, config)
    total, n = 0, 0
    for name, shape in table.items():
        n += int(np.prod(shape))
        if len(shape) == 1:
            total += 4 * shape[0]
            continue
        kind = mix_type(dtype, name, shape[1], params["n_layer"], tied)[0] if dtype in MIXES else dtype
        total += matrix_bytes(kind, shape)
    return total, 8 * total / n


def main():
    x = np.random.default_rng(0).standard_normal((512, 4096)).astype(np.float32)
    print("| type | bits/weight | rel. RMS error |\n|---|---|---|")
    for name in ("q4_0", "q4_1", "q4_k", "q5_0", "q5_k", "q6_k", "q8_0"):
        q = qtypes.get(name)
        el, nbytes = q.ggml_block
        print(f"| {name} | {8 * nbytes / el:.4g} | {rel_rms(name, x):.4f} |")
    from synth import SHAPES
    print("\n| model shape | " + " | ".join(("q4_0", "q4_k_m", "q5_k_m", "q8_0")) + " |\n" + "|---" * 5 + "|")
    for key in ("chatglm3-6b", "glm4-9b", "glm-edge-1.5b-chat", "glm-4-9b-0414"):
        config = SHAPES[key]
        family = families.detect(config)
        cells = []
        for dtype in ("q4_0", "q4_k_m", "q5_k_m", "q8_0"):
            total, bpw = model_bits(dtype, family, config)
            cells.append(f"{total / 1e9:.2f} GB, {bpw:.2f} b/w")
        print(f"| {key} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
