"""Nothing in the runtime or the converter imports torch."""
import ast
import os
import subprocess
import sys

from helpers import REPO, golden

BLOCKER = "raise ImportError('torch is blocked in this test: glmcpu must not import it')\n"


def test_no_module_imports_torch():
    offenders = []
    for pkg in ("glmcpu", "kernels", "convert"):
        for root, _, files in os.walk(os.path.join(REPO, pkg)):
            for f in files:
                if f.endswith(".py"):
                    path = os.path.join(root, f)
                    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
                        names = []
                        if isinstance(node, ast.Import):
                            names = [a.name for a in node.names]
                        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                            names = [node.module]
                        if any(n == "torch" or n.startswith("torch.") for n in names):
                            offenders.append(path)
    assert not offenders


def test_convert_bin_and_run_with_torch_blocked(tmp_path):
    block = tmp_path / "block"
    os.makedirs(block / "torch")
    (block / "torch" / "__init__.py").write_text(BLOCKER)
    out = tmp_path / "m.glmq"
    code = (
        "import sys, numpy as np, glmcpu\n"
        "from glmcpu.convert import convert\n"
        f"convert({golden('chatglm2-tiny-bin')!r}, {str(out)!r}, progress=False)\n"
        f"e = np.load({os.path.join(golden('chatglm2-tiny-bin'), 'expected.npz')!r})\n"
        f"m = glmcpu.load({str(out)!r}, kv='f32')\n"
        "d = np.abs(m.forward(e['prompt_ids']) - e['prefill_logits']).max() / np.abs(e['prefill_logits']).max()\n"
        "assert d < 1e-5, d\n"
        "assert 'torch' not in sys.modules\n"
        "print('ok')\n")
    env = dict(os.environ, PYTHONPATH=str(block))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"
    # the blocker really blocks
    r = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True, text=True, env=env)
    assert r.returncode != 0 and "blocked" in r.stderr
