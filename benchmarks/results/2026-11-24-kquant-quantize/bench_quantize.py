"""K-quant quantizer speed: the numpy reference (glmcpu.kquants.QUANTIZE[kind], threads=2) against
the numba kernels (glmcpu.kquants.quantize_fast, numba on 2 threads), per type, on the same float32
rows, timed in alternation round after round; medians. MB/s = float32 input bytes per second.
Wall time and this process's CPU time are both recorded: on a shared, loaded machine the wall
time says how long a conversion waits, CPU time / 2 what the work itself costs.

    python bench_quantize.py --rows 512 --cols 4096 --rounds 9 --json quantize.json
"""
import argparse
import json
import os
import statistics
import sys
import time

import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    a = ap.parse_args()
    import numba
    from glmcpu import kquants as KQ
    numba.set_num_threads(a.threads)
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((a.rows, a.cols)) * 0.02).astype(np.float32)   # weight-like rows
    kinds = ["q4_K", "q5_K", "q6_K", "q8_K"]
    t0 = time.perf_counter()
    for k in kinds:                                   # numba's cache loaded (or compiled) here
        KQ.quantize_fast(k, x[:1])
    warm = time.perf_counter() - t0
    runs = {k: {"ref": [], "fast": []} for k in kinds}
    for _ in range(a.rounds):
        for k in kinds:
            for name, fn in (("ref", lambda: KQ.QUANTIZE[k](x, threads=a.threads)),
                             ("fast", lambda: KQ.quantize_fast(k, x))):
                w, c = time.perf_counter(), time.process_time()
                fn()
                runs[k][name].append((time.perf_counter() - w, time.process_time() - c))
            assert np.array_equal(KQ.QUANTIZE[k](x[:8]), KQ.quantize_fast(k, x[:8]))
    mb = x.nbytes / 1e6
    res = {"rows": a.rows, "cols": a.cols, "rounds": a.rounds, "threads": a.threads, "input_MB": mb,
           "warmup_s": warm, "load": os.getloadavg(), "numba": numba.__version__, "numpy": np.__version__,
           "kinds": {}}
    print(f"# {a.rows}x{a.cols} float32 ({mb:.1f} MB), {a.threads} threads, {a.rounds} alternating rounds, "
          f"medians; load {os.getloadavg()}; numba cache load/compile {warm:.2f} s")
    print("| type | ref MB/s (wall) | numba MB/s (wall) | speedup | ref MB/s (CPU/threads) | numba MB/s (CPU/threads) | speedup |")
    print("|---|---|---|---|---|---|---|")
    for k in kinds:
        r = {n: (statistics.median(t[0] for t in v), statistics.median(t[1] for t in v))
             for n, v in runs[k].items()}
        ref_w, fast_w = mb / r["ref"][0], mb / r["fast"][0]
        ref_c, fast_c = mb / (r["ref"][1] / a.threads), mb / (r["fast"][1] / a.threads)
        res["kinds"][k] = {"raw_s": runs[k], "ref_MBps_wall": ref_w, "fast_MBps_wall": fast_w,
                           "ref_MBps_cpu": ref_c, "fast_MBps_cpu": fast_c}
        print(f"| {k} | {ref_w:.1f} | {fast_w:.1f} | {fast_w / ref_w:.1f}x | {ref_c:.1f} | {fast_c:.1f} | "
              f"{fast_c / ref_c:.1f}x |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
