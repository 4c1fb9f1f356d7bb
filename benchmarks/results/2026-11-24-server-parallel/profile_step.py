"""Where a batched decode step spends its time: per component, k rows (k sequences), median over steps.

    python profile_step.py MODEL.glmq STEPS THREADS 1,2,4,8
"""
import collections, threading, time, sys
import numpy as np
import glmcpu
from glmcpu import kernels as K
from glmcpu.generate import SamplingParams
from glmcpu.requests import GenerationRequest, Sequence

acc = collections.defaultdict(float)
KS = [int(x) for x in sys.argv[4].split(",")]

def timed(name, f):
    def g(*a, **kw):
        t0 = time.perf_counter()
        r = f(*a, **kw)
        acc[name] += time.perf_counter() - t0
        return r
    return g

def main():
    m = glmcpu.load(sys.argv[1], n_ctx=512, threads=int(sys.argv[3]), n_slots=8)
    arch = m.arch
    for b in arch.blocks:
        for nm in ("attn_qkv", "attn_output", "ffn_up_gate", "ffn_down"):
            setattr(b, nm, timed(nm, getattr(b, nm)))
    arch.output = timed("output", arch.output)
    import glmcpu.models.chatglm as C
    C.K = type("KK", (), {})()
    for nm in ("rmsnorm", "rope_inplace", "attention", "swiglu"):
        setattr(C.K, nm, timed(nm, getattr(K, nm)))
    arch.cache.write = timed("cache.write", arch.cache.write)
    tok = m.tokenizer
    ids = tok.encode("床前明月光，疑是地上霜。举头望明月，低头思故乡。" * 4, add_special_tokens=True)
    seqs = []
    for s in range(8):
        m.forward_batch([(s, ids)])
    rows = {}
    for rnd in range(int(sys.argv[2])):
        for k in KS:
            acc.clear()
            t0 = time.perf_counter()
            m.forward_batch([(s, [100 + rnd]) for s in range(k)])
            tot = time.perf_counter() - t0
            d = dict(acc); d["total"] = tot
            rows.setdefault(k, []).append(d)
    # the per-sequence Python side: Sequence.feed (sampling at temperature 2, penalties off) per token
    req = GenerationRequest(ids, SamplingParams(max_new_tokens=400, temperature=2.0, top_p=1.0, seed=1))
    logits = np.random.default_rng(0).standard_normal(m.vocab_size).astype(np.float32)
    seq = Sequence(m, req, 0)
    seq.todo = []
    t0 = time.perf_counter(); n = 0
    while not seq.done and n < 200:
        seq.feed(1, logits); n += 1
    feed_ms = (time.perf_counter() - t0) / n * 1e3
    names = ["total", "attn_qkv", "attn_output", "ffn_up_gate", "ffn_down", "output", "attention", "rmsnorm", "rope_inplace", "swiglu", "cache.write"]
    print("ms per step (median over %s steps): k rows" % sys.argv[2])
    print("%-12s" % "" + "".join("%10s" % f"k={k}" for k in rows))
    for nm in names:
        print("%-12s" % nm + "".join("%10.2f" % (np.median([r.get(nm, 0) for r in rows[k]]) * 1e3) for k in rows))
    other = {k: np.median([r["total"] - sum(v for kk, v in r.items() if kk != "total") for r in rows[k]]) * 1e3 for k in rows}
    print("%-12s" % "other" + "".join("%10.2f" % other[k] for k in rows))
    print("Sequence.feed (temperature sampling, vocab %d): %.2f ms per token" % (m.vocab_size, feed_ms))
t = threading.Thread(target=main); t.start(); t.join()
