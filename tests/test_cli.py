"""The CLI, as a user runs it: `glmcpu ...` (the installed script) and `python -m glmcpu ...`."""
import os
import shutil
import subprocess
import sys

import pytest

from helpers import golden

GLMCPU = shutil.which("glmcpu") or os.path.join(os.path.dirname(sys.executable), "glmcpu")


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)


def test_console_script_is_installed():
    assert os.path.isfile(GLMCPU), "the `glmcpu` script is missing: install the project (pip install -e .)"
    r = run([GLMCPU, "--version"])
    assert r.returncode == 0 and r.stdout.startswith("glmcpu ")


@pytest.mark.parametrize("entry", ["script", "module"])
def test_convert_info_verify(tmp_path, entry):
    base = [GLMCPU] if entry == "script" else [sys.executable, "-m", "glmcpu"]
    out = tmp_path / "model.bin.anyname"  # any output path works; .glmq is only a suggestion
    r = run(base + ["convert", golden("chatglm2-tiny-bin"), "-o", str(out), "--dtype", "f32"])
    assert r.returncode == 0, r.stderr
    assert "name" in r.stdout and "shape" in r.stdout and "bytes" in r.stdout  # summary table
    assert "blk.1.ffn_down.weight" in r.stdout and "64x96" in r.stdout
    assert f"wrote {out}" in r.stdout
    r = run(base + ["info", str(out)])
    assert r.returncode == 0, r.stderr
    assert "family:         chatglm2" in r.stdout and "32.00" in r.stdout
    r = run(base + ["verify", str(out), os.path.join(golden("chatglm2-tiny-bin"), "expected.npz")])
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip().splitlines()[-1].startswith("OK: worst")


def test_verify_reports_not_ok_for_the_wrong_reference(tmp_path):
    out = tmp_path / "m.glmq"
    assert run([sys.executable, "-m", "glmcpu", "convert", golden("chatglm3-tiny"), "-o", str(out), "-q"]).returncode == 0
    r = run([sys.executable, "-m", "glmcpu", "verify", str(out), os.path.join(golden("glm4-tiny"), "expected.npz")])
    assert r.returncode == 1 and "NOT OK" in r.stdout


def test_progress_bar_on_a_terminal(tmp_path):
    """With a tty on stderr the converter draws a progress bar over tensors."""
    import pty
    out = tmp_path / "m.glmq"
    master, slave = pty.openpty()
    p = subprocess.Popen([sys.executable, "-m", "glmcpu", "convert", golden("glm4-tiny"), "-o", str(out)],
                         stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    p.wait(timeout=300)
    os.close(master)
    text = b"".join(chunks).decode(errors="replace")
    assert p.returncode == 0
    assert "convert [" in text and "17/17" in text


@pytest.mark.parametrize("case", ["chatglm1-tiny", "glm4-0414-tiny-bf16-sharded", "glm-edge-tiny-bf16"])
def test_info_on_every_architecture(tmp_path, case, converted):
    """`glmcpu info` once crashed on ChatGLM-6B (v1) files with KeyError: 'n_kv_head'."""
    r = run([GLMCPU, "info", converted(case, "f32")])
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "layers:         2" in r.stdout
    if case == "chatglm1-tiny":
        assert "2-D (position and block position)" in r.stdout
    if case == "glm-edge-tiny-bf16":
        assert "16 of 16 dims" in r.stdout  # partial_rotary_factor 1.0


def test_progress_shows_rate_and_eta_and_stays_off_non_terminals():
    import io
    from glmcpu.progress import Progress
    s = io.StringIO()
    bar = Progress(17, "convert", enabled=True, stream=s)
    for i in range(17):
        bar.update(1, f"blk.{i}.attn")
    bar.close()
    last = s.getvalue().rstrip("\n").split("\r")[-1]
    assert last.startswith("convert [") and " 17/17 [" in last and "it/s]" in last and "<" in last
    assert last.endswith("blk.16.attn") and s.getvalue().endswith("\n")
    for enabled in (None, False):
        stream = io.StringIO()
        bar = Progress(5, "x", enabled=enabled, stream=stream)
        bar.update(5, "note")
        bar.close()
        assert stream.getvalue() == "" and bar.n == 5
