"""Write a seeded random-weight checkpoint in the exact Hugging Face layout of a GLM-family model.

Random weights decode exactly as fast as real ones, so these checkpoints are what the speed
benchmarks run on (no real weights can be downloaded here). Tensors are written one block of
rows at a time into float16 safetensors shards plus model.safetensors.index.json, so making the
~12 GB ChatGLM3-6B checkpoint needs well under 1 GB of memory.

    python benchmarks/synth.py chatglm3-6b -o /data/chatglm3-6b-random [--seed 0]
    python benchmarks/synth.py --list
"""
import argparse
import json
import os
import shutil
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
TOKENIZERS = os.path.join(os.path.dirname(os.path.dirname(HERE)), "shared", "tokenizers")

GLM_BASE = {
    "model_type": "chatglm", "architectures": ["ChatGLMModel"], "add_bias_linear": False, "add_qkv_bias": True,
    "apply_query_key_layer_scaling": True, "apply_residual_connection_post_layernorm": False,
    "attention_dropout": 0.0, "attention_softmax_in_fp32": True, "bias_dropout_fusion": True,
    "fp32_residual_connection": False, "hidden_dropout": 0.0, "layernorm_epsilon": 1e-05,
    "multi_query_attention": True, "original_rope": True, "post_layer_norm": True, "rmsnorm": True,
    "tie_word_embeddings": False, "torch_dtype": "float16", "use_cache": True, "eos_token_id": 2, "pad_token_id": 0,
}

HF_BASE = {
    "model_type": "glm", "architectures": ["GlmForCausalLM"], "hidden_act": "silu", "attention_dropout": 0.0,
    "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "torch_dtype": "bfloat16", "use_cache": True,
    "eos_token_id": [151329, 151336, 151338], "pad_token_id": 151329,
}

SHAPES = {
    "chatglm3-6b": dict(GLM_BASE, _name_or_path="THUDM/chatglm3-6b", num_layers=28, hidden_size=4096,
                        ffn_hidden_size=13696, num_attention_heads=32, multi_query_group_num=2, kv_channels=128,
                        padded_vocab_size=65024, seq_length=8192),
    "glm4-9b": dict(GLM_BASE, _name_or_path="THUDM/glm-4-9b-chat", num_layers=40, hidden_size=4096,
                    ffn_hidden_size=13696, num_attention_heads=32, multi_query_group_num=2, kv_channels=128,
                    padded_vocab_size=151552, seq_length=131072, rope_ratio=500, layernorm_epsilon=1.5625e-07,
                    eos_token_id=[151329, 151336, 151338], pad_token_id=151329, torch_dtype="bfloat16"),
    "chatglm3-1b": dict(GLM_BASE, _name_or_path="THUDM/chatglm3-6b", num_layers=16, hidden_size=2048,
                        ffn_hidden_size=5504, num_attention_heads=16, multi_query_group_num=2, kv_channels=128,
                        padded_vocab_size=65024, seq_length=8192),
    "chatglm-6b": {"_name_or_path": "THUDM/chatglm-6b", "model_type": "chatglm", "architectures": ["ChatGLMModel"],
                   "bos_token_id": 130004, "eos_token_id": 130005, "mask_token_id": 130000,
                   "gmask_token_id": 130001, "pad_token_id": 3, "hidden_size": 4096, "inner_hidden_size": 16384,
                   "layernorm_epsilon": 1e-05, "max_sequence_length": 2048, "num_attention_heads": 32,
                   "num_layers": 28, "position_encoding_2d": True, "torch_dtype": "float16", "use_cache": True,
                   "vocab_size": 130528},
    # transformers-native layouts (GlmForCausalLM / Glm4ForCausalLM), from the releases' config.json
    "glm-edge-1.5b-chat": dict(HF_BASE, _name_or_path="THUDM/glm-edge-1.5b-chat", num_hidden_layers=28,
                               hidden_size=2048, intermediate_size=6144, num_attention_heads=16,
                               num_key_value_heads=4, head_dim=128, partial_rotary_factor=1.0, vocab_size=59264,
                               max_position_embeddings=8192, tie_word_embeddings=True, attention_bias=False,
                               eos_token_id=[59246, 59253, 59255], pad_token_id=59246),
    "glm-edge-4b-chat": dict(HF_BASE, _name_or_path="THUDM/glm-edge-4b-chat", num_hidden_layers=40,
                             hidden_size=3072, intermediate_size=8192, num_attention_heads=24,
                             num_key_value_heads=6, head_dim=128, partial_rotary_factor=1.0, vocab_size=59264,
                             max_position_embeddings=8192, tie_word_embeddings=False, attention_bias=False,
                             eos_token_id=[59246, 59253, 59255], pad_token_id=59246),
    "glm-4-9b-0414": dict(HF_BASE, _name_or_path="THUDM/GLM-4-9B-0414", model_type="glm4",
                          architectures=["Glm4ForCausalLM"], num_hidden_layers=40, hidden_size=4096,
                          intermediate_size=13696, num_attention_heads=32, num_key_value_heads=2, head_dim=128,
                          partial_rotary_factor=0.5, vocab_size=151552, max_position_embeddings=32768,
                          tie_word_embeddings=False, attention_bias=True),
    # tiny, for the benchmark smoke tests
    "tiny": dict(GLM_BASE, _name_or_path="THUDM/chatglm3-6b", num_layers=2, hidden_size=128, ffn_hidden_size=256,
                 num_attention_heads=4, multi_query_group_num=2, kv_channels=32, padded_vocab_size=65024,
                 seq_length=8192),
}
# folder under ../shared/tokenizers, tokenizer_config file there (GLM-Edge's own tokenizer is not available)
TOKENIZER_FILES = {"chatglm3-6b": ("chatglm2-chatglm3", "tokenizer_config.chatglm3.json"),
                   "chatglm3-1b": ("chatglm2-chatglm3", "tokenizer_config.chatglm3.json"),
                   "tiny": ("chatglm2-chatglm3", "tokenizer_config.chatglm3.json"),
                   "glm4-9b": ("glm-4-9b-chat", "tokenizer_config.json"),
                   "chatglm-6b": ("chatglm-6b", "tokenizer_config.json"),
                   "glm-4-9b-0414": ("glm-4-hf", "tokenizer_config.0414.json")}


def tensor_shapes(cfg):
    """HF tensor name -> shape, in checkpoint order: the family's name map over its architecture's
    tensor table (glmcpu.families.checkpoint_shapes), so it cannot drift from the converter."""
    from glmcpu import families
    return families.checkpoint_shapes(families.detect(cfg), cfg)


def _fill(f, name, shape, rng, block_bytes=64 << 20):
    """Write float16 values: 1 for norm weights, N(0, 0.02) elsewhere, a block of rows at a time."""
    if name.endswith("norm.weight"):
        f.write(np.ones(shape, np.float16).tobytes())
        return
    rows = shape[0]
    cols = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
    step = max(1, block_bytes // (4 * cols))
    for r in range(0, rows, step):
        n = min(step, rows - r)
        block = rng.standard_normal(n * cols, dtype=np.float32)
        block *= np.float32(0.02)
        f.write(block.astype(np.float16).tobytes())


def write_checkpoint(shape_name, out, seed=0, shard_bytes=2 << 30, log=print):
    cfg = SHAPES[shape_name]
    shapes = tensor_shapes(cfg)
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(seed)
    # assign tensors to shards
    shards, cur, size = [], [], 0
    for name, shape in shapes.items():
        nbytes = int(np.prod(shape, dtype=np.int64)) * 2
        if cur and size + nbytes > shard_bytes:
            shards.append(cur)
            cur, size = [], 0
        cur.append(name)
        size += nbytes
    shards.append(cur)
    n = len(shards)
    weight_map, total = {}, 0
    t0 = time.perf_counter()
    for k, names in enumerate(shards):
        fname = f"model-{k + 1:05d}-of-{n:05d}.safetensors"
        header, pos = {"__metadata__": {"format": "pt", "glmcpu_synth": f"{shape_name} seed={seed}"}}, 0
        for name in names:
            nbytes = int(np.prod(shapes[name], dtype=np.int64)) * 2
            header[name] = {"dtype": "F16", "shape": list(shapes[name]), "data_offsets": [pos, pos + nbytes]}
            pos += nbytes
        raw = json.dumps(header).encode()
        raw += b" " * ((-len(raw)) % 8)
        tmp = os.path.join(out, fname + ".tmp")
        with open(tmp, "wb") as f:
            f.write(len(raw).to_bytes(8, "little") + raw)
            for name in names:
                _fill(f, name, shapes[name], rng)
                weight_map[name] = fname
        os.replace(tmp, os.path.join(out, fname))
        total += pos
        log(f"  {fname}: {len(names)} tensors, {pos / 1e9:.2f} GB ({time.perf_counter() - t0:.0f}s)")
    with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=1)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    folder, tok_config = TOKENIZER_FILES.get(shape_name, (None, None))
    src = os.path.join(TOKENIZERS, folder) if folder else None
    if src and os.path.isdir(src):
        for fn in ("tokenizer.model", "ice_text.model", "tokenizer.json"):
            if os.path.isfile(os.path.join(src, fn)):
                shutil.copy(os.path.join(src, fn), out)
        shutil.copy(os.path.join(src, tok_config), os.path.join(out, "tokenizer_config.json"))
    return total


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("shape", nargs="?", choices=sorted(SHAPES))
    ap.add_argument("-o", "--output", help="output directory")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--list", action="store_true", help="list the shapes")
    args = ap.parse_args(argv)
    if args.list or not args.shape:
        for name, cfg in SHAPES.items():
            n = sum(int(np.prod(s, dtype=np.int64)) for s in tensor_shapes(cfg).values())
            print(f"{name:20s} {n / 1e9:6.2f} B parameters, {2 * n / 1e9:6.1f} GB in float16")
        return 0
    if not args.output:
        ap.error("-o/--output is required")
    t0 = time.perf_counter()
    total = write_checkpoint(args.shape, args.output, args.seed)
    print(f"wrote {args.output}: {args.shape}, {total / 1e9:.2f} GB in {time.perf_counter() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
