"""Does llama.cpp run the GGUF glmcpu exports, with the same logits? (issue 14)

    pip install llama-cpp-python                 # any recent version; not a glmcpu dependency
    python benchmarks/gguf_crosscheck.py [--cases ...] [--dtypes f32 f16 q8_0 q4_0] [--json out.json]

For each golden case llama.cpp knows (ChatGLM3, glm-4-9b-chat-hf, GLM-Edge, GLM-4-0414) and each
type: the checkpoint (with its real tokenizer cut to the tiny vocabulary, as tests/gguf_reference.py
builds it) is converted to a glmcpu file, exported to GGUF, loaded by llama.cpp (llama_cpp.Llama,
logits for every position), and both engines run the golden prompt and greedy continuation. Printed
per case: max |llama.cpp - glmcpu| / max |glmcpu| over all positions, whether the argmax agrees at
every position, and whether llama.cpp's tokenizer gives glmcpu's ids for a few texts. llama.cpp
runs with a float32 KV cache, as glmcpu does. Quantized types differ by more: llama.cpp quantizes
the activations its own way (and on these tiny random models a few-percent change can flip an
argmax).
"""
import argparse
import json
import os
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

CASES = ["chatglm3-tiny", "glm4-hf-tiny", "glm-edge-tiny-bf16", "glm4-0414-tiny-bf16-sharded"]
TEXTS = ["你好", "hello world", "床前明月光，疑是地上霜。"]


def run_case(case, dtype, tmp):
    import llama_cpp
    import glmcpu
    from glmcpu.convert import convert
    from glmcpu.convert.gguf_export import export
    from gguf_reference import tiny_checkpoint
    from helpers import GOLDEN
    src, _ = tiny_checkpoint(case, os.path.join(tmp, case))
    glmq, gguf = os.path.join(tmp, f"{case}-{dtype}.glmq"), os.path.join(tmp, f"{case}-{dtype}.gguf")
    if not os.path.exists(glmq):
        convert(src, glmq, dtype=dtype, progress=False)
        export(glmq, gguf, progress=False)
    e = np.load(os.path.join(GOLDEN, case, "expected.npz"))
    ids = [int(t) for t in np.concatenate([e["prompt_ids"], e["decode_ids"]])]
    ours = glmcpu.load(glmq, n_ctx=256).forward(ids)
    # float32 KV cache (llama.cpp's default is float16, glmcpu's float32): only the weights differ in kind
    llm = llama_cpp.Llama(model_path=gguf, n_ctx=256, logits_all=True, verbose=False, n_threads=2,
                          type_k=0, type_v=0)
    llm.eval(ids)
    theirs = np.array(llm.scores[: len(ids)], np.float32)
    tok = glmcpu.load(glmq, n_ctx=16).tokenizer
    same_tok = all(llm.tokenize(t.encode(), add_bos=False, special=False) == tok.encode(t) for t in TEXTS)
    return {"case": case, "dtype": dtype, "tokens": len(ids),
            "max_rel": float(np.abs(theirs - ours).max() / np.abs(ours).max()),
            "argmax_same": bool((theirs.argmax(1) == ours.argmax(1)).all()), "tokenizer_same": same_tok}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", nargs="*", default=CASES)
    ap.add_argument("--dtypes", nargs="*", default=["f32", "f16", "q8_0", "q4_0"])
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args(argv)
    try:
        import llama_cpp
    except ImportError:
        sys.exit("llama-cpp-python is not installed: pip install llama-cpp-python")
    print(f"llama-cpp-python {llama_cpp.__version__}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases:
            for dtype in args.dtypes:
                r = run_case(case, dtype, tmp)
                rows.append(r)
                print(f"{case:30s} {dtype:5s} max rel diff {r['max_rel']:.2e}  argmax same: {r['argmax_same']}  "
                      f"tokenizer same: {r['tokenizer_same']}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"llama_cpp_python": llama_cpp.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
