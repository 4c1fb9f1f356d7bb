"""glmcpu perplexity: windows score every token exactly once; values equal a direct computation."""
import math
import subprocess
import sys

import numpy as np
import pytest

import glmcpu
from glmcpu.convert import convert
from glmcpu.perplexity import log_softmax_at, perplexity
from helpers import random_checkpoint

TEXT = "床前明月光，疑是地上霜。举头望明月，低头思故乡。" * 6


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    root = tmp_path_factory.mktemp("ppl")
    src = random_checkpoint(str(root / "src"), "chatglm3", seed=4)
    path = str(root / "m.glmq")
    convert(src, path, dtype="f32", progress=False)
    return path


def _direct(path, text):
    m = glmcpu.load(path)
    ids = m.tokenizer.prefix_ids() + m.tokenizer.encode(text)
    logits = m.forward(ids).astype(np.float64)
    lp = [logits[i] [ids[i + 1]] - np.log(np.exp(logits[i] - logits[i].max()).sum()) - logits[i].max()
          for i in range(len(ids) - 1)]
    return math.exp(-np.mean(lp)), len(ids) - 1


def test_single_window_equals_direct_computation(model_path):
    want, n = _direct(model_path, TEXT)
    got, n_got = perplexity(glmcpu.load(model_path, n_ctx=1024), TEXT, progress=False)
    assert n_got == n and abs(got - want) / want < 1e-6


def test_windows_score_each_token_once(model_path):
    m = glmcpu.load(model_path, n_ctx=32)
    ppl, n = perplexity(m, TEXT, progress=False)
    assert n == len(m.tokenizer.prefix_ids() + m.tokenizer.encode(TEXT)) - 1
    assert math.isfinite(ppl) and ppl > 1
    ppl2, n2 = perplexity(m, TEXT, stride=8, progress=False)
    assert n2 == n


def test_log_softmax_at():
    x = np.random.default_rng(0).standard_normal((3, 7)).astype(np.float32)
    t = np.array([0, 6, 3])
    ref = np.log(np.exp(x.astype(np.float64)) / np.exp(x.astype(np.float64)).sum(1, keepdims=True))[np.arange(3), t]
    np.testing.assert_allclose(log_softmax_at(x, t), ref, rtol=1e-12)


def test_cli_prints_perplexity_line(model_path, tmp_path):
    f = tmp_path / "t.txt"
    f.write_text(TEXT, encoding="utf-8")
    r = subprocess.run([sys.executable, "-m", "glmcpu", "perplexity", "-m", model_path, "-f", str(f), "--ctx", "64"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("perplexity: ") and float(last.split()[1]) > 1
    r = subprocess.run([sys.executable, "-m", "glmcpu", "perplexity", "-m", model_path, "-f", str(tmp_path / "nope")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and r.stderr.startswith("error: ") and "nope" in r.stderr
