import os, sys, time
import numpy as np
import glmcpu
path = sys.argv[1]
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
models = {}
for name, simd in (("portable", "off"), ("avx2", "")):
    os.environ["GLMCPU_SIMD"] = simd
    m = glmcpu.load(path, n_ctx=512, threads=2)
    assert m.arch.ws.avx2 == (simd == ""), name
    models[name] = m
ids = np.arange(100, 228)
res = {k: {"prefill": [], "decode": []} for k in models}
logits = {}
for r in range(rounds):
    for name, m in models.items():
        m.reset()
        t0 = time.perf_counter(); lp = m.forward(ids, all_logits=False); t1 = time.perf_counter()
        res[name]["prefill"].append(t1 - t0)
        ld = []
        for i in range(8):
            t0 = time.perf_counter(); ld.append(m.forward([int(ids[i])])); res[name]["decode"].append(time.perf_counter() - t0)
        logits[name] = np.concatenate([lp] + ld)
assert np.array_equal(logits["portable"].view(np.uint32), logits["avx2"].view(np.uint32)), "logits differ"
print(f"{path}: logits identical (prefill of 128 + 8 decode steps), 2 threads, {rounds} rounds alternating, medians (best)")
for name in models:
    p, d = np.array(res[name]["prefill"]), np.array(res[name]["decode"])
    print(f"  {name:9s} prefill 128 tokens: {np.median(p)*1e3:8.1f} ms ({128/np.median(p):6.1f} tok/s, best {128/p.min():6.1f});"
          f" decode: {np.median(d)*1e3:7.1f} ms/token ({1/np.median(d):5.1f} tok/s, best {1/d.min():5.1f})")
