# usage: python profile_sampling.py  (8 Sequences feeding random logits: serial vs a 2-thread pool)
import time, numpy as np
from concurrent.futures import ThreadPoolExecutor
import glmcpu
from glmcpu.generate import SamplingParams
from glmcpu.requests import GenerationRequest, Sequence
m = glmcpu.load("/work/data/c3-1b-q4_0.glmq", n_ctx=2048, threads=1, n_slots=8)
lg = np.random.default_rng(0).standard_normal(m.vocab_size).astype(np.float32)
def seqs(tp):
    out = []
    for s in range(8):
        r = GenerationRequest([1, 2, 3], SamplingParams(max_new_tokens=1000, temperature=2.0, top_p=tp, seed=s))
        q = Sequence(m, r, s); q.todo = []; out.append(q)
    return out
pool = ThreadPoolExecutor(2)
for tp in (1.0, 0.8):
    for mode in ("serial", "pool", "serial", "pool"):
        ss = seqs(tp); ts = []
        for step in range(15):
            t0 = time.perf_counter()
            if mode == "pool": list(pool.map(lambda q: q.feed(1, lg), ss))
            else: [q.feed(1, lg) for q in ss]
            ts.append(time.perf_counter() - t0)
        print(f"top_p {tp} {mode}: {np.median(ts)*1000:.1f} ms per step of 8", flush=True)
