"""The transformers-native families end to end with the real GLM-4 tokenizer.json and chat
templates (every quant type against its reference: tests/test_golden_hf.py): convert, info, chat prompts equal to the official template's ids, tool
prompts, run, perplexity, bench."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import glmcpu
from glmcpu.chat_template import render
from glmcpu.convert import convert
from glmcpu.errors import GlmcpuError
from helpers import GOLDEN, TOKENIZERS, random_checkpoint

GOLD_HF = json.load(open(os.path.join(GOLDEN, "tokenizer_hf.json"), encoding="utf-8"))
TEMPLATE_FILE = {"glm": "tokenizer_config.json", "glm4-0414": "tokenizer_config.0414.json"}
GOLD_KEY = {"glm": "glm4-hf", "glm4-0414": "glm4-0414"}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf-e2e")
    out = {}
    for fam in ("glm", "glm4-0414"):
        src = random_checkpoint(str(root / fam), fam, hidden=32, layers=2, heads=4, groups=2, ffn=64)
        path = str(root / f"{fam}.glmq")
        convert(src, path, dtype="q4_0", progress=False)
        out[fam] = (src, path)
    return out


@pytest.mark.parametrize("family", ["glm", "glm4-0414"])
def test_chat_prompt_equals_official_template_ids(models, family):
    m = glmcpu.load(models[family][1], n_ctx=512)
    assert m.family == family
    for case in GOLD_HF[GOLD_KEY[family]]["chat"]:
        ids = m.chat_prompt(case["messages"], tools=case.get("tools"), parse_special=True)
        assert ids == case["ids"]
        assert m.chat_prompt(case["messages"], tools=case.get("tools")) == case["ids"]  # no special text inside


@pytest.mark.parametrize("family", ["glm", "glm4-0414"])
def test_template_stored_in_file_is_the_release_template(models, family):
    m = glmcpu.load(models[family][1], n_ctx=64)
    tc = json.load(open(os.path.join(TOKENIZERS, "glm-4-hf", TEMPLATE_FILE[family]), encoding="utf-8"))
    assert m.chat_template == tc["chat_template"]
    msgs = [{"role": "user", "content": "hi"}]
    assert m.tokenizer.decode(m.chat_prompt(msgs)) == render(tc["chat_template"], msgs)


@pytest.mark.parametrize("family", ["glm", "glm4-0414"])
def test_stops_are_the_config_eos_ids(models, family):
    from glmcpu.chat import stop_ids
    m = glmcpu.load(models[family][1], n_ctx=64)
    assert stop_ids(m.tokenizer, m.config.eos_token_ids) == {151329, 151336, 151338}


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "glmcpu", *args], capture_output=True, text=True, timeout=300)


def test_cli_info_run_perplexity_bench(models, tmp_path):
    path = models["glm"][1]
    r = _cli("info", path, "--brief")
    assert r.returncode == 0, r.stderr
    assert "family:         glm" in r.stdout and "chat template:  jinja" in r.stdout
    r = _cli("run", "-m", path, "-p", "你好", "-n", "4", "--temp", "0", "--ctx", "128")
    assert r.returncode == 0, r.stderr
    text = tmp_path / "t.txt"
    text.write_text("床前明月光，疑是地上霜。举头望明月，低头思故乡。" * 4, encoding="utf-8")
    r = _cli("perplexity", "-m", path, "-f", str(text), "--ctx", "32")
    assert r.returncode == 0, r.stderr
    assert float(r.stdout.strip().splitlines()[-1].split(":")[1]) > 1
    r = _cli("bench", "-m", path, "--quick", "--no-bandwidth", "--ctx", "64")
    assert r.returncode == 0, r.stderr


def test_greedy_chat_equals_argmax_of_forward(models):
    """Model.chat with temperature 0 emits the argmax chain of Model.forward on the prompt ids."""
    m = glmcpu.load(models["glm4-0414"][1], n_ctx=128)
    msgs = [{"role": "user", "content": "你好"}]
    ids = m.chat_prompt(msgs)
    ref = glmcpu.load(models["glm4-0414"][1], n_ctx=128)
    logits = ref.forward(ids)[-1]
    want = []
    for _ in range(5):
        t = int(np.argmax(logits))
        if t in (151329, 151336, 151338):
            break
        want.append(t)
        logits = ref.forward([t])[0]
    got = m.chat(msgs, stream=False, temperature=0, max_new_tokens=5)
    assert got == m.tokenizer.decode(want, skip_special_tokens=True)


def test_file_without_template_refuses_chat_clearly(tmp_path):
    src = random_checkpoint(str(tmp_path / "src"), "glm", hidden=32, layers=1, heads=2, groups=1, ffn=64)
    os.remove(os.path.join(src, "tokenizer_config.json"))
    path = str(tmp_path / "m.glmq")
    convert(src, path, dtype="f16", progress=False)
    m = glmcpu.load(path, n_ctx=32)
    with pytest.raises(GlmcpuError, match="no chat template"):
        m.chat_prompt([{"role": "user", "content": "hi"}])


def test_tokenizer_dir_option(tmp_path):
    src = random_checkpoint(str(tmp_path / "src"), "glm", hidden=32, layers=1, heads=2, groups=1, ffn=64)
    tokdir = tmp_path / "tok"
    tokdir.mkdir()
    for f in ("tokenizer.json", "tokenizer_config.json"):
        os.replace(os.path.join(src, f), tokdir / f)
    path = str(tmp_path / "m.glmq")
    convert(src, path, dtype="f16", progress=False, tokenizer_dir=str(tokdir))
    case = GOLD_HF["glm4-hf"]["encode"][0]
    assert glmcpu.load(path, n_ctx=32).tokenizer.encode(case["text"]) == case["ids"]
