"""End-to-end speed of a model file (same code as `glmcpu bench`); see glmcpu/bench.py.

    python benchmarks/bench_generate.py -m model.glmq [--threads 2] [--json out.json] [--plot decode.png]
"""
import sys

from glmcpu.bench import main

if __name__ == "__main__":
    sys.exit(main())
