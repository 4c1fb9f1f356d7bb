"""The built-in demo model: shipped in the package, used when no -m is given, and trained
(held-out perplexity far below a random model of the same shape)."""
import os
import subprocess
import sys


import glmcpu
from glmcpu.convert import convert
from helpers import REPO, random_checkpoint

sys.path.insert(0, os.path.join(REPO, "benchmarks"))
from demo_perplexity import entry_perplexity, read_entries  # noqa: E402

HELDOUT = os.path.join(REPO, "tests", "data", "demo_heldout_tang.txt")


def test_shipped_file():
    path = glmcpu.demo_model_path()
    assert os.path.getsize(path) < 20e6
    m = glmcpu.load(path, n_ctx=256)
    assert m.family == "chatglm3" and not m.is_chat and m.file.quantization["dtype"] == "q4_0"
    assert m.tokenizer.encode("床前明月光")


def test_run_without_model_uses_demo():
    r = subprocess.run([sys.executable, "-m", "glmcpu", "run", "-p", "床前明月光", "-n", "24", "--seed", "0"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "built-in demo model" in r.stderr
    assert len(r.stdout.strip()) >= 4
    assert any("\u4e00" <= ch <= "\u9fff" for ch in r.stdout)  # Chinese text, like the training data


def test_heldout_perplexity_far_below_random_model(tmp_path):
    entries = read_entries(HELDOUT)
    assert len(entries) >= 5
    trained, n = entry_perplexity(glmcpu.load(glmcpu.demo_model_path(), n_ctx=512), entries)
    cfg = glmcpu.load(glmcpu.demo_model_path()).config
    src = random_checkpoint(str(tmp_path / "rand"), "chatglm3", hidden=cfg.n_embd, layers=cfg.n_layer,
                            heads=cfg.n_head, groups=cfg.n_kv_head, ffn=cfg.n_ff, seed=1)
    convert(src, str(tmp_path / "rand.glmq"), dtype="q4_0", progress=False)
    rand, _ = entry_perplexity(glmcpu.load(str(tmp_path / "rand.glmq"), n_ctx=512), entries)
    assert trained < 0.01 * rand, (trained, rand)


def test_perplexity_cli_default_model():
    r = subprocess.run([sys.executable, "-m", "glmcpu", "perplexity", "-f", HELDOUT, "--ctx", "128", "-q"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "built-in demo model" in r.stderr
    assert r.stdout.strip().splitlines()[-1].startswith("perplexity: ")
