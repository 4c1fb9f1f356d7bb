"""Smoke tests: every benchmark script runs on a tiny synthetic model, so they cannot rot.
(No timing is asserted anywhere in the test suite.)"""
import json
import os
import subprocess
import sys

from helpers import REPO

BENCH = os.path.join(REPO, "benchmarks")


def run(*args):
    r = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_synth_convert_bench(tmp_path):
    ck = tmp_path / "tiny"
    run(os.path.join(BENCH, "synth.py"), "tiny", "-o", str(ck), "--seed", "3")
    idx = json.load(open(ck / "model.safetensors.index.json"))
    assert "transformer.output_layer.weight" in idx["weight_map"]
    model = tmp_path / "tiny.glmq"
    run("-m", "glmcpu", "convert", str(ck), "-o", str(model), "--dtype", "q4_0", "-q")
    out = run(os.path.join(BENCH, "bench_generate.py"), "-m", str(model), "--quick", "--repeat", "1",
              "--json", str(tmp_path / "r.json"))
    res = json.load(open(tmp_path / "r.json"))
    assert res["decode"] and res["prefill"] and res["weight_bytes_per_token"] > 0 and res["peak_rss_bytes"] > 0
    from glmcpu import kernels as K
    assert res["kernels_4bit"] == ("avx2" if K.avx2.available() else "portable")   # what the model ran
    assert "decode" in out
    out = run("-m", "glmcpu", "bench", "-m", str(model), "--quick", "--repeat", "1", "--plot", str(tmp_path / "p.png"))
    assert "prefill" in out
    assert open(tmp_path / "p.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    # the synthetic checkpoint is deterministic in its seed
    ck2 = tmp_path / "tiny2"
    run(os.path.join(BENCH, "synth.py"), "tiny", "-o", str(ck2), "--seed", "3")
    name = "model-00001-of-00001.safetensors"
    assert open(ck / name, "rb").read() == open(ck2 / name, "rb").read()


def test_synth_v1_shape_converts(tmp_path):
    sys.path.insert(0, BENCH)
    import synth
    shapes = synth.tensor_shapes(synth.SHAPES["chatglm-6b"])
    assert shapes["transformer.layers.0.attention.query_key_value.weight"] == (3 * 4096, 4096)
    assert shapes["lm_head.weight"] == (130528, 4096)


def test_bench_kernels_quick():
    out = run(os.path.join(BENCH, "bench_kernels.py"), "--quick", "--repeat", "1")
    assert "validated against the numpy reference" in out and "| q4_0 | small |" in out


def test_quant_quality_script():
    out = run(os.path.join(BENCH, "quant_quality.py"))
    assert out.count("\n| ") >= 24 and "| glm4-tiny | q4_0 | 32 |" in out
